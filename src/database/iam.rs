//! RDS IAM database authentication: the password is a token, a SigV4
//! presigned URL (`rds-db`, `Action=connect`, the user) for the host and
//! port connected to, valid 15 minutes and only at login. Made here with
//! aws-sigv4 (already in the SDK's graph) exactly as botocore's
//! `generate_db_auth_token` makes it (tests/test_iam_token.py compares
//! them), fresh for every connection and never logged.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use zeroize::Zeroizing;

use crate::error::ConfigError;

/// How long a token is valid (RDS takes at most 15 minutes).
const EXPIRES: Duration = Duration::from_secs(900);

/// botocore's query encoding: RFC 3986's unreserved characters stay.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Signs tokens with the process's AWS credentials, in one region.
#[derive(Clone)]
pub struct TokenSigner {
    credentials: SharedCredentialsProvider,
    region: String,
    /// The time a token is signed at: the system's, or a test's.
    clock: fn() -> SystemTime,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// Why no token could be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot sign an RDS IAM token for {user}@{host}:{port}: {cause}")]
pub struct TokenError {
    host: String,
    port: u16,
    user: String,
    cause: String,
}

impl TokenSigner {
    /// A signer with the credentials and region of `aws` (the SDK's
    /// default chain: `AWS_REGION`, the profile's); refused without a
    /// region, which a token is bound to (no silent default).
    pub fn new(aws: &aws_config::SdkConfig) -> Result<Self, ConfigError> {
        let region = aws.region().map(|r| r.to_string()).ok_or(ConfigError::Missing {
            var: "AWS_REGION",
            hint: "DB_AUTH=iam signs each connection's token for the database's region: set AWS_REGION (Lambda sets it) or a profile's region",
        })?;
        let credentials = aws.credentials_provider().ok_or(ConfigError::Missing {
            var: "AWS_ACCESS_KEY_ID",
            hint: "DB_AUTH=iam signs each connection's token with AWS credentials: give the process credentials (a role, a profile, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
        })?;
        Ok(Self {
            credentials,
            region,
            clock: SystemTime::now,
        })
    }

    /// The same signer reading the time from `clock` (a test that knows
    /// the token a connection will carry).
    #[cfg(any(test, feature = "test-support"))]
    pub fn with_clock(self, clock: fn() -> SystemTime) -> Self {
        Self { clock, ..self }
    }

    /// A fresh token for `user` at `host:port`, now.
    pub async fn token(
        &self,
        host: &str,
        port: u16,
        user: &str,
    ) -> Result<Zeroizing<String>, TokenError> {
        let fail = |cause: String| TokenError {
            host: host.to_owned(),
            port,
            user: user.to_owned(),
            cause,
        };
        let credentials = self
            .credentials
            .provide_credentials()
            .await
            .map_err(|e| fail(format!("no AWS credentials ({e})")))?;
        token(host, port, user, &self.region, credentials, (self.clock)())
            .map_err(|e| fail(e.to_string()))
    }
}

/// The token for `user` at `host:port` in `region`, signed with
/// `credentials` at `now`: the same bytes as botocore's
/// `generate_db_auth_token`.
pub fn token(
    host: &str,
    port: u16,
    user: &str,
    region: &str,
    credentials: Credentials,
    now: SystemTime,
) -> Result<Zeroizing<String>, Box<dyn std::error::Error + Send + Sync>> {
    let encode = |s: &str| utf8_percent_encode(s, QUERY).to_string();
    // botocore sends the host in lower case.
    let host = host.to_ascii_lowercase();
    let base = format!(
        "https://{host}:{port}/?Action=connect&DBUser={}",
        encode(user)
    );
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(EXPIRES);
    let identity: Identity = credentials.into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("rds-db")
        .time(now)
        .settings(settings)
        .build()?
        .into();
    let request = SignableRequest::new(
        "GET",
        base.as_str(),
        std::iter::empty(),
        SignableBody::Bytes(&[]),
    )?;
    let (instructions, _) = sign(request, &params)?.into_parts();
    // botocore puts the session token before the signature; the signature
    // is the same either way (the canonical query is sorted).
    let mut url = base;
    let mut signature = None;
    for (name, value) in instructions.params() {
        if *name == "X-Amz-Signature" {
            signature = Some(value.to_string());
            continue;
        }
        url.push_str(&format!("&{name}={}", encode(value)));
    }
    url.push_str(&format!(
        "&X-Amz-Signature={}",
        signature.ok_or("SigV4 gave no signature")?
    ));
    Ok(Zeroizing::new(
        url.trim_start_matches("https://").to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// botocore 1.44's `generate_db_auth_token` for the same input and
    /// clock (the pytest tests/test_iam_token.py checks the live
    /// comparison; these pin it where botocore is absent).
    #[test]
    fn the_token_is_botocores() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_164_645);
        let creds = |token: Option<&str>| {
            Credentials::new(
                "AKIDEXAMPLE",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                token.map(str::to_owned),
                None,
                "test",
            )
        };
        let host = "mydb.abc123.eu-west-1.rds.amazonaws.com";
        let t = token(host, 5432, "iam_user@x+y", "eu-west-1", creds(None), now).unwrap();
        assert_eq!(
            t.as_str(),
            "mydb.abc123.eu-west-1.rds.amazonaws.com:5432/?Action=connect&DBUser=iam_user%40x%2By&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20240102%2Feu-west-1%2Frds-db%2Faws4_request&X-Amz-Date=20240102T030405Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=bd8df69741c1104431c25d9b5016817b9627bd1820867b6ce04c815c02832346"
        );
        let t = token(
            host,
            5432,
            "iam_user@x+y",
            "eu-west-1",
            creds(Some("FQoGZXIvYXdzE/abc+def==")),
            now,
        )
        .unwrap();
        assert!(
            t.ends_with("&X-Amz-SignedHeaders=host&X-Amz-Security-Token=FQoGZXIvYXdzE%2Fabc%2Bdef%3D%3D&X-Amz-Signature=6d74da58addf928314c8d91a39f2c0ecf9bb5b4a439e5c04ee3a063aaba9debb"),
            "{}",
            t.as_str()
        );
    }
}
