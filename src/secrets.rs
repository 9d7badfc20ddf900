//! AWS Secrets Manager: the RDS-style database secret and the masking key.
//!
//! Fetched once per cold start (and the database secret once more when
//! PostgreSQL rejects the password after a rotation). Uses the SDK's default
//! credential chain and honours `AWS_ENDPOINT_URL`, so LocalStack works
//! unchanged. Errors name the secret id and what is wrong, never a value.

use std::fmt;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
use aws_smithy_http_client::tls;
use serde_json::Value;

use crate::error::SecretError;

/// Bound on one `GetSecretValue` call, retries included: a cold start must
/// fail clearly, well inside the function timeout, when the endpoint is down.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(6);

/// A Secrets Manager client.
#[derive(Clone, Debug)]
pub struct Secrets {
    client: Client,
}

/// The fields of an RDS-style database secret that the function uses.
#[derive(Clone, PartialEq, Eq)]
pub struct DbSecret {
    /// `username`
    pub username: String,
    /// `password`
    pub password: String,
    /// `host`
    pub host: String,
    /// `port` (number or numeric string), default 5432.
    pub port: u16,
    /// `dbname`, default `postgres` (RDS omits it when no database was named).
    pub dbname: String,
}

impl fmt::Debug for DbSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DbSecret {{ username: {:?}, password: <redacted>, host: {:?}, port: {}, dbname: {:?} }}",
            self.username, self.host, self.port, self.dbname
        )
    }
}

impl DbSecret {
    /// Parses the SecretString of an RDS-style secret; its `password` may be
    /// absent only where `password` is false (RDS IAM authentication).
    pub fn parse(id: &str, text: &str, password: bool) -> Result<Self, SecretError> {
        let json: Value =
            serde_json::from_str(text).map_err(|_| SecretError::NotJson { id: id.to_owned() })?;
        let field = |name: &'static str| -> Result<String, SecretError> {
            match json.get(name) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                _ => Err(SecretError::MissingField {
                    id: id.to_owned(),
                    field: name,
                }),
            }
        };
        let port = match json.get("port") {
            None | Some(Value::Null) => 5432,
            Some(Value::Number(n)) => n.as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(0),
            Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
            Some(_) => 0,
        };
        if port == 0 {
            return Err(SecretError::MissingField {
                id: id.to_owned(),
                field: "port",
            });
        }
        Ok(Self {
            username: field("username")?,
            password: if password {
                field("password")?
            } else {
                field("password").unwrap_or_default()
            },
            host: field("host")?,
            port,
            dbname: field("dbname").unwrap_or_else(|_| "postgres".into()),
        })
    }

    /// Connection settings for this secret.
    pub fn pg_config(&self) -> tokio_postgres::Config {
        self.pg_config_at(&(None, None))
    }

    /// The same, connecting to `at`'s host and port where given instead
    /// of the secret's (`DB_CONNECT_HOST`, `DB_CONNECT_PORT`).
    pub fn pg_config_at(&self, at: &(Option<String>, Option<u16>)) -> tokio_postgres::Config {
        let mut pg = tokio_postgres::Config::new();
        pg.host(at.0.as_deref().unwrap_or(&self.host))
            .port(at.1.unwrap_or(self.port))
            .user(&self.username)
            .dbname(&self.dbname);
        if !self.password.is_empty() {
            pg.password(&self.password);
        }
        pg
    }
}

impl Secrets {
    /// A client from [`sdk_config`].
    pub async fn from_env() -> Self {
        Self::new(&sdk_config().await)
    }

    /// A client with an AWS configuration loaded already (see [`sdk_config`]).
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self {
            client: Client::new(config),
        }
    }

    /// The SecretString of `id`.
    pub async fn string(&self, id: &str) -> Result<String, SecretError> {
        self.value(id).await.map(|(text, _arn)| text)
    }

    /// The SecretString of `id` and the secret's ARN (`id` may be a
    /// name), or `None` when there is no such secret.
    pub async fn string_if_any(&self, id: &str) -> Result<Option<(String, String)>, SecretError> {
        match self.value(id).await {
            Ok(found) => Ok(Some(found)),
            Err(SecretError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The SecretString of `id` and the secret's ARN.
    async fn value(&self, id: &str) -> Result<(String, String), SecretError> {
        let out = self
            .client
            .get_secret_value()
            .secret_id(id)
            .send()
            .await
            .map_err(|e| classify(id, e))?;
        let text = out
            .secret_string
            .ok_or_else(|| SecretError::NotAString { id: id.to_owned() })?;
        Ok((text, out.arn.unwrap_or_else(|| id.to_owned())))
    }

    /// Makes the secret `name` holding `text`; its ARN.
    pub async fn create(&self, name: &str, text: &str) -> Result<String, SecretError> {
        let out = self
            .client
            .create_secret()
            .name(name)
            .secret_string(text)
            .send()
            .await
            .map_err(|e| admin_error(name, e, "secretsmanager:CreateSecret"))?;
        Ok(out.arn.unwrap_or_else(|| name.to_owned()))
    }

    /// The resource policy of `id`, `None` when it has none.
    pub async fn resource_policy(&self, id: &str) -> Result<Option<String>, SecretError> {
        let out = self
            .client
            .get_resource_policy()
            .secret_id(id)
            .send()
            .await
            .map_err(|e| admin_error(id, e, "secretsmanager:GetResourcePolicy"))?;
        Ok(out.resource_policy.filter(|p| !p.trim().is_empty()))
    }

    /// Puts `policy` on `id`, public policies blocked.
    pub async fn put_resource_policy(&self, id: &str, policy: &str) -> Result<(), SecretError> {
        self.client
            .put_resource_policy()
            .secret_id(id)
            .resource_policy(policy)
            .block_public_policy(true)
            .send()
            .await
            .map_err(|e| admin_error(id, e, "secretsmanager:PutResourcePolicy"))?;
        Ok(())
    }

    /// Stores `text` as the current value of `id`; the secret's ARN.
    pub async fn put_string(&self, id: &str, text: &str) -> Result<String, SecretError> {
        let out = self
            .client
            .put_secret_value()
            .secret_id(id)
            .secret_string(text)
            .send()
            .await
            .map_err(|e| admin_error(id, e, "secretsmanager:PutSecretValue"))?;
        Ok(out.arn.unwrap_or_else(|| id.to_owned()))
    }

    /// The database secret `id` (with its password where `password`).
    pub async fn db(&self, id: &str, password: bool) -> Result<DbSecret, SecretError> {
        DbSecret::parse(id, &self.string(id).await?, password)
    }
}

/// An administrator's call on `id` (`password`'s: create, policy, value)
/// that failed: the service's code and message, and the right it needs.
fn admin_error<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    id: &str,
    e: SdkError<E, R>,
    right: &str,
) -> SecretError {
    match &e {
        SdkError::ServiceError(service) => SecretError::Service {
            id: id.to_owned(),
            code: service.err().code().unwrap_or("unknown").to_owned(),
            message: format!(
                "{}; it needs {right}",
                service.err().message().unwrap_or_default()
            ),
        },
        _ => SecretError::Unreachable {
            id: id.to_owned(),
            cause: DisplayErrorContext(&e).to_string(),
        },
    }
}

/// The AWS configuration the function uses: the default chain (region,
/// credentials, `AWS_ENDPOINT_URL`), rustls on ring for HTTPS, bounded
/// timeouts and one retry.
pub async fn sdk_config() -> aws_config::SdkConfig {
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(https)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_attempt_timeout(Duration::from_secs(3))
                .operation_timeout(FETCH_TIMEOUT)
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(2))
        .load()
        .await
}

fn classify(id: &str, e: SdkError<GetSecretValueError>) -> SecretError {
    let id = id.to_owned();
    match &e {
        SdkError::ServiceError(service) => {
            let err = service.err();
            match (err, err.code()) {
                (GetSecretValueError::ResourceNotFoundException(_), _) => {
                    SecretError::NotFound { id }
                }
                (
                    _,
                    Some("AccessDeniedException" | "AccessDenied" | "UnrecognizedClientException"),
                ) => SecretError::AccessDenied {
                    id,
                    code: err.code().unwrap_or_default().to_owned(),
                },
                (_, code) => SecretError::Service {
                    id,
                    code: code.unwrap_or("unknown").to_owned(),
                    message: err.message().unwrap_or_default().to_owned(),
                },
            }
        }
        _ => SecretError::Unreachable {
            id,
            cause: DisplayErrorContext(&e).to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rds_secrets_with_numeric_or_string_port() {
        let s = DbSecret::parse("db", r#"{"engine":"postgres","username":"etl","password":"p@ss","host":"db.example","port":5433,"dbname":"logins","dbInstanceIdentifier":"x"}"#, true)
        .unwrap();
        assert_eq!(
            (
                s.username.as_str(),
                s.host.as_str(),
                s.port,
                s.dbname.as_str()
            ),
            ("etl", "db.example", 5433, "logins")
        );
        let s = DbSecret::parse(
            "db",
            r#"{"username":"etl","password":"p","host":"h","port":"6432"}"#,
            true,
        )
        .unwrap();
        assert_eq!((s.port, s.dbname.as_str()), (6432, "postgres"));
    }

    #[test]
    fn errors_name_the_field_but_never_the_value() {
        let cases = [
            ("not json hunter2", "not JSON"),
            (
                r#"{"username":"etl","host":"h","password":""}"#,
                "`password`",
            ),
            (r#"{"username":"etl","password":"hunter2"}"#, "`host`"),
            (
                r#"{"username":"etl","password":"hunter2","host":"h","port":"hunter2"}"#,
                "`port`",
            ),
            (
                r#"{"username":"etl","password":"hunter2","host":"h","port":70000}"#,
                "`port`",
            ),
        ];
        for (text, want) in cases {
            let msg = DbSecret::parse("prod/db", text, true)
                .unwrap_err()
                .to_string();
            assert!(msg.contains(want) && msg.contains("prod/db"), "{msg}");
            assert!(!msg.contains("hunter2"), "{msg}");
        }
        let s = DbSecret::parse(
            "db",
            r#"{"username":"u","password":"hunter2","host":"h"}"#,
            true,
        )
        .unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
