//! The stack's setup resource (`Custom::LoginEtlDatabase`): CloudFormation's
//! custom-resource protocol around [`super::run`]. The template's setup
//! function (`LOGIN_ETL_TASK=setup`, inside the VPC) gets each Create,
//! Update and Delete; it connects as the RDS master user (the RDS-managed
//! secret: username and password) to the host and database the template
//! names, runs setup, and PUTs the outcome to the pre-signed `ResponseURL`.
//! A Delete changes nothing: the data, the roles and their secrets outlive
//! the stack. Every request is answered, a failure with its reason, before
//! the function's own timeout: CloudFormation would otherwise wait an hour.
//!
//! Anyone allowed `lambda:InvokeFunction` on the function can send the same
//! JSON as CloudFormation, so nothing of the request decides what is done:
//! the plan comes from the function's environment (`SETUP_*`, set by the
//! template, [`Configured`]). A request is answered only at CloudFormation's
//! response bucket for this region, only for this stack, and acted on only
//! when its properties are the environment's (CloudFormation updates the
//! function before the resource that names it): a forged request can at
//! most run the setup a real update would.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{error, info};

use super::{Auth, Plan, SetupReport};
use crate::database::settings::DbConfig;
use crate::profile::Profile;
use crate::table::privileges::Role;

/// CloudFormation's request (the fields this resource reads).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Request {
    request_type: String,
    #[serde(rename = "ResponseURL")]
    response_url: String,
    stack_id: String,
    request_id: String,
    logical_resource_id: String,
    #[serde(default)]
    physical_resource_id: Option<String>,
    #[serde(default)]
    resource_properties: Properties,
}

/// The resource's properties, as the template gives them (CloudFormation
/// passes every value as a string), and as its setup function's
/// environment holds them ([`Properties::from_environment`]). Each
/// defaults, so that a request missing one is still answered, FAILED
/// with what is missing ([`plan`]), never left to CloudFormation's hour.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct Properties {
    /// The RDS-managed master user secret: `{"username", "password"}`.
    master_secret_arn: String,
    host: String,
    port: String,
    db_name: String,
    prefix: String,
    schema: String,
    profile: String,
    retention_days: String,
    auth: String,
    secrets: String,
    secret_host: String,
    secret_port: String,
    /// `role=ARN` for each principal that reads a role's secret (the
    /// function's role reads ingest's).
    readers: Vec<String>,
    /// Principals that may read every role's secret (the admins who run
    /// README's block against this database later: DbSecretReaderPrincipalArns).
    admin_readers: Vec<String>,
    /// The setup function's role (so no STS endpoint is needed in the VPC).
    setup_role_arn: String,
    /// The roles that deploy the stack (DeployPrincipalArns): with setup's,
    /// the only ones that may rewrite a secret's policy or delete it.
    rewriters: Vec<String>,
    /// A queue made before the stack (ExistingQueueArn's URL; empty: the
    /// stack makes its own), judged before the event-source mapping that
    /// drains it exists.
    queue_url: String,
    /// The dead-letter queue the function sends to (ExistingDlqArn).
    dlq_arn: String,
    /// The maxReceiveCount the stack's own queue would have
    /// (OutageToleranceMinutes with BackoffMaxSeconds, or MaxReceiveCount).
    min_receive_count: String,
    /// The visibility timeout the stack's own queue would have.
    min_visibility_timeout: String,
}

impl Properties {
    /// The properties as the template set them in the setup function's
    /// environment: `SETUP_<NAME>` for each (`SETUP_MASTER_SECRET_ARN`,
    /// ...), a list's entries joined by commas.
    fn from_environment(env: &dyn Fn(&str) -> Option<String>) -> Self {
        let text = |name: &str| env(&format!("SETUP_{name}")).unwrap_or_default();
        let list = |name: &str| text(name).split(',').map(str::to_owned).collect();
        Self {
            master_secret_arn: text("MASTER_SECRET_ARN"),
            host: text("HOST"),
            port: text("PORT"),
            db_name: text("DB_NAME"),
            prefix: text("PREFIX"),
            schema: text("SCHEMA"),
            profile: text("PROFILE"),
            retention_days: text("RETENTION_DAYS"),
            auth: text("AUTH"),
            secrets: text("SECRETS"),
            secret_host: text("SECRET_HOST"),
            secret_port: text("SECRET_PORT"),
            readers: list("READERS"),
            admin_readers: list("ADMIN_READERS"),
            setup_role_arn: text("ROLE_ARN"),
            rewriters: list("REWRITERS"),
            queue_url: text("QUEUE_URL"),
            dlq_arn: text("DLQ_ARN"),
            min_receive_count: text("MIN_RECEIVE_COUNT"),
            min_visibility_timeout: text("MIN_VISIBILITY_TIMEOUT"),
        }
    }

    /// Each property by its name in the template, as one text (a list's
    /// entries, empty ones left out, joined by commas).
    fn named(&self) -> [(&'static str, String); 20] {
        let list = |l: &[String]| {
            let kept: Vec<&str> = l
                .iter()
                .map(String::as_str)
                .filter(|e| !e.is_empty())
                .collect();
            kept.join(",")
        };
        [
            ("MasterSecretArn", self.master_secret_arn.clone()),
            ("Host", self.host.clone()),
            ("Port", self.port.clone()),
            ("DbName", self.db_name.clone()),
            ("Prefix", self.prefix.clone()),
            ("Schema", self.schema.clone()),
            ("Profile", self.profile.clone()),
            ("RetentionDays", self.retention_days.clone()),
            ("Auth", self.auth.clone()),
            ("Secrets", self.secrets.clone()),
            ("SecretHost", self.secret_host.clone()),
            ("SecretPort", self.secret_port.clone()),
            ("Readers", list(&self.readers)),
            ("AdminReaders", list(&self.admin_readers)),
            ("SetupRoleArn", self.setup_role_arn.clone()),
            ("Rewriters", list(&self.rewriters)),
            ("QueueUrl", self.queue_url.clone()),
            ("DlqArn", self.dlq_arn.clone()),
            ("MinReceiveCount", self.min_receive_count.clone()),
            ("MinVisibilityTimeout", self.min_visibility_timeout.clone()),
        ]
    }

    /// The names of the properties `other` gives otherwise (never their
    /// values: a request's are anyone's).
    fn differences(&self, other: &Properties) -> Vec<&'static str> {
        self.named()
            .into_iter()
            .zip(other.named())
            .filter(|((_, mine), (_, theirs))| mine != theirs)
            .map(|((name, _), _)| name)
            .collect()
    }
}

/// Time kept back from the function's deadline to send the answer.
const ANSWER_MARGIN: Duration = Duration::from_secs(20);

/// The longest `Reason` sent (CloudFormation takes 4 KiB in all).
const REASON_MAX: usize = 2_000;

/// The logical id of the one resource the setup function serves.
const RESOURCE: &str = "DatabaseSetup";

/// What the template configured in the setup function's environment
/// (`env`: the process's, or a test's): its stack, its region, the
/// emulator its SDK is pointed at (LocalStack's `AWS_ENDPOINT_URL`), and
/// the properties setup acts on.
#[derive(Debug)]
pub struct Configured {
    stack_id: String,
    region: String,
    emulator: Option<String>,
    properties: Properties,
}

impl Configured {
    /// Reads `SETUP_STACK_ID`, `AWS_REGION`, `AWS_ENDPOINT_URL` and each
    /// property's `SETUP_*` variable.
    pub fn from_environment(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        let required = |name: &str| {
            env(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                format!("the setup function's environment has no {name}: deploy it with the release's template, which sets it")
            })
        };
        Ok(Self {
            stack_id: required("SETUP_STACK_ID")?,
            region: required("AWS_REGION")?,
            emulator: env("AWS_ENDPOINT_URL").filter(|v| !v.is_empty()),
            properties: Properties::from_environment(env),
        })
    }
}

/// Answers one request; `remaining` is the invocation's time left, `env`
/// the function's environment. An error means the request was not
/// answered: it could not be (CloudFormation then times out), or its
/// `ResponseURL` is not CloudFormation's (nothing is sent there).
pub async fn handle(
    event: Value,
    remaining: Duration,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<(), String> {
    let request: Request = serde_json::from_value(event).map_err(|e| {
        format!("the setup function got an event that is not a CloudFormation custom-resource request ({e}): it is invoked by its stack's Custom::LoginEtlDatabase only")
    })?;
    let configured = Configured::from_environment(env)?;
    if let Err(why) = response_url_is_cloudformations(&request.response_url, &configured) {
        // Never answered: an answer there would tell its sender what failed.
        error!(
            request_type = %request.request_type,
            resource = %request.logical_resource_id,
            "setup request refused, not answered: {why}"
        );
        return Err(format!("refused, not answered: {why}"));
    }
    info!(
        request_type = %request.request_type,
        resource = %request.logical_resource_id,
        "setup resource request"
    );
    let outcome = match (
        request.request_type.as_str(),
        refusal(&request, &configured),
    ) {
        (_, Some(why)) => Err(why),
        // The data, the roles and their secrets outlive the stack.
        ("Delete", None) => Ok(Value::Object(Default::default())),
        ("Create" | "Update", None) => {
            let limit = remaining.saturating_sub(ANSWER_MARGIN);
            let queue_then_database = async {
                queue_fits(&configured.properties).await?;
                set_up(&configured.properties, env).await
            };
            match tokio::time::timeout(limit, queue_then_database).await {
                Ok(done) => done.map(|report| data(&report)),
                Err(_) => Err(format!(
                    "setup did not finish within {} s (the setup function's 900 s timeout, less {} s to answer): look for a session holding a lock on the tables (login-etl doctor names it) or a database that does not answer, then deploy again (setup is idempotent; a first create that failed: delete the stack first, which keeps the database and the secrets)",
                    limit.as_secs(),
                    ANSWER_MARGIN.as_secs()
                )),
            }
        }
        (other, None) => Err(format!("unknown RequestType {other}")),
    };
    if let Err(why) = &outcome {
        error!(error = %why, "setup failed");
    }
    let answer = answer(&request, outcome);
    put(&request.response_url, answer.to_string()).await
}

/// Why a request whose answer goes to CloudFormation is not acted on:
/// another stack's or resource's, or properties other than the
/// template's (a Delete does nothing, whatever they say).
fn refusal(request: &Request, configured: &Configured) -> Option<String> {
    if request.stack_id != configured.stack_id || request.logical_resource_id != RESOURCE {
        return Some(format!(
            "refused: this setup function serves its own stack's {RESOURCE} only, and the request is for {} of another stack; nothing was read or changed",
            request.logical_resource_id
        ));
    }
    if request.request_type == "Delete" {
        return None;
    }
    let differ = configured
        .properties
        .differences(&request.resource_properties);
    (!differ.is_empty()).then(|| format!(
        "refused: the request's {} differ from the setup function's configuration (its SETUP_* environment, which CloudFormation sets before it sends an update); nothing was read or changed. A request CloudFormation sends has the template's values: update the stack with the parameters you want",
        differ.join(", ")
    ))
}

/// `url` is CloudFormation's response bucket in `configured`'s region
/// (`https://cloudformation-custom-resource-response-<region without
/// dashes>.s3[.-<region>].amazonaws.com[.cn]/...`), or, with the SDK
/// pointed at an emulator, on that emulator's origin.
fn response_url_is_cloudformations(url: &str, configured: &Configured) -> Result<(), String> {
    let parsed: hyper::Uri = url
        .parse()
        .map_err(|_| "its ResponseURL is not a URL".to_owned())?;
    let host = parsed.host().unwrap_or_default().to_ascii_lowercase();
    let origin = |uri: &hyper::Uri| {
        (
            uri.scheme_str().map(str::to_ascii_lowercase),
            uri.host().map(str::to_ascii_lowercase),
            uri.port_u16(),
        )
    };
    if let Some(emulator) = &configured.emulator {
        let emulator: hyper::Uri = emulator
            .parse()
            .map_err(|_| "AWS_ENDPOINT_URL is not a URL".to_owned())?;
        if origin(&parsed) == origin(&emulator) {
            return Ok(());
        }
    }
    let region = configured.region.to_ascii_lowercase();
    let bucket = format!(
        "cloudformation-custom-resource-response-{}",
        region.replace('-', "")
    );
    let domain = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    let hosts = [
        format!("{bucket}.s3.{domain}"),
        format!("{bucket}.s3.{region}.{domain}"),
        format!("{bucket}.s3-{region}.{domain}"),
    ];
    let https =
        parsed.scheme_str() == Some("https") && matches!(parsed.port_u16(), None | Some(443));
    // The object's key is CloudFormation's `<StackId>|<LogicalResourceId>|
    // <RequestId>`, signed: any account may be given a URL into the same
    // bucket, but only this stack's requests are keyed under its StackId.
    let key = percent_encoding::percent_decode_str(parsed.path().trim_start_matches('/'))
        .decode_utf8_lossy()
        .into_owned();
    let this_stack = key.starts_with(&format!("{}|", configured.stack_id));
    if https && hosts.contains(&host) && this_stack {
        Ok(())
    } else if https && hosts.contains(&host) {
        Err("its ResponseURL is CloudFormation's bucket, but not for a request of this stack (its key names another stack): the setup function answers its own stack's requests only".to_owned())
    } else {
        Err(format!(
            "its ResponseURL's host {host:?} is not CloudFormation's response bucket for {region} ({}): the setup function answers CloudFormation only",
            hosts[0]
        ))
    }
}

/// The resource's attributes: each role's secret ARN (`IngestSecretArn`, ...)
/// and the schema's line.
fn data(report: &SetupReport) -> Value {
    let mut data = serde_json::Map::new();
    for (role, arn) in &report.secrets {
        let name = role.as_str();
        let title = name[..1].to_uppercase() + &name[1..];
        data.insert(format!("{title}SecretArn"), Value::String(arn.clone()));
    }
    data.insert("Schema".into(), Value::String(report.schema.clone()));
    Value::Object(data)
}

/// The response CloudFormation reads from the pre-signed URL.
fn answer(request: &Request, outcome: Result<Value, String>) -> Value {
    let p = &request.resource_properties;
    let physical = request.physical_resource_id.clone().unwrap_or_else(|| {
        format!(
            "login-etl-setup:{}:{}/{}/{}",
            p.host, p.port, p.db_name, p.prefix
        )
    });
    let (status, reason, data) = match outcome {
        Ok(data) => ("SUCCESS", "login-etl setup done".to_owned(), data),
        Err(why) => {
            let mut reason = format!("login-etl setup: {why}");
            if reason.len() > REASON_MAX {
                let mut end = REASON_MAX;
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                reason.truncate(end);
            }
            ("FAILED", reason, json!({}))
        }
    };
    json!({
        "Status": status,
        "Reason": reason,
        "PhysicalResourceId": physical,
        "StackId": request.stack_id,
        "RequestId": request.request_id,
        "LogicalResourceId": request.logical_resource_id,
        "NoEcho": false,
        "Data": data,
    })
}

/// A queue made before the stack, judged before the event-source mapping
/// that drains it exists (the function, and so its mapping, waits for
/// this resource): a visibility timeout, a RedrivePolicy to the function's
/// dead-letter queue and a maxReceiveCount as the stack's own queue would
/// have. One that does not fit fails the deploy with the commands that
/// fix it, and nothing of it is received. Its access policy names the
/// function's role, which exists only with the stack: doctor judges it
/// once deployed.
async fn queue_fits(p: &Properties) -> Result<(), String> {
    use crate::cli::queue_check::{self, Receives, StackPrincipals, Wanted};
    if p.queue_url.is_empty() {
        return Ok(());
    }
    let number = |text: &str, what: &str| {
        text.parse::<u32>()
            .map_err(|_| format!("{what} {text:?} is not a number: the template gives it"))
    };
    let wanted = Wanted {
        visibility: number(&p.min_visibility_timeout, "MinVisibilityTimeout")?,
        receives: Receives::AtLeast(number(&p.min_receive_count, "MinReceiveCount")?),
        dead_letter_arn: Some(p.dlq_arn.clone()).filter(|a| !a.is_empty()),
        visibility_note: "",
    };
    let stack = StackPrincipals {
        function_role: String::new(),
        dlq_operator: None,
        deploy: Vec::new(),
    };
    let aws = crate::secrets::sdk_config().await;
    let found = queue_check::examine(&aws, &p.queue_url, &wanted, &stack).await;
    if found.drains.is_empty() {
        info!("the existing queue fits the function");
        return Ok(());
    }
    let each: Vec<String> = found
        .drains
        .iter()
        .map(|f| format!("{} {}; fix: {}", f.subject, f.problem, f.fix))
        .collect();
    Err(format!(
        "the existing queue does not fit the function yet, and nothing of it was received (the event-source mapping is made after this check): {}. Then deploy again (a first create that failed: delete the stack first)",
        each.join(". ")
    ))
}

/// Reads the master secret and runs setup as its user; the connection's
/// other settings (TLS, timeouts) from `env`.
async fn set_up(
    p: &Properties,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<SetupReport, String> {
    let plan = plan(p)?;
    let aws = crate::secrets::sdk_config().await;
    let master = crate::secrets::Secrets::new(&aws)
        .string(&p.master_secret_arn)
        .await
        .map_err(|e| e.to_string())?;
    let master: Value = serde_json::from_str(&master).map_err(|_| {
        format!(
            "the master secret {} is not JSON: give MasterSecretArn the RDS-managed master user secret (username and password)",
            p.master_secret_arn
        )
    })?;
    let field = |name: &str| {
        master[name].as_str().map(str::to_owned).ok_or_else(|| {
            format!(
                "the master secret {} has no {name}: give MasterSecretArn the RDS-managed master user secret (username and password)",
                p.master_secret_arn
            )
        })
    };
    let (user, password) = (field("username")?, field("password")?);
    let server = |name: &str| match name {
        "PGHOST" => Some(p.host.clone()),
        "PGPORT" => Some(p.port.clone()),
        "PGDATABASE" => Some(p.db_name.clone()),
        "DATABASE_URL" | "DB_SECRET_ID" | "PGUSER" | "PGPASSWORD" => None,
        _ => env(name).filter(|v| !v.trim().is_empty()),
    };
    let admin = DbConfig::from_lookup(&|name: &str| match name {
        "PGUSER" => Some(user.clone()),
        "PGPASSWORD" => Some(password.clone()),
        "DB_AUTH" => None,
        _ => server(name),
    })
    .map_err(|e| e.to_string())?;
    super::run(&plan, &admin, &server, &mut |line| info!("{line}")).await
}

/// The plan the properties describe.
fn plan(p: &Properties) -> Result<Plan, String> {
    for (name, value) in [
        ("MasterSecretArn", &p.master_secret_arn),
        ("Host", &p.host),
        ("DbName", &p.db_name),
        ("Prefix", &p.prefix),
        ("Schema", &p.schema),
        ("Secrets", &p.secrets),
    ] {
        if value.is_empty() {
            return Err(format!(
                "the resource's property {name} is empty: the template gives it (MasterSecretArn, DbHost, DbName, DbRolePrefix)"
            ));
        }
    }
    let admins = p.admin_readers.iter().filter(|a| !a.is_empty());
    let every_role =
        admins.flat_map(|arn| Role::ALL.map(|role| format!("{}={arn}", role.as_str())));
    let readers = p
        .readers
        .iter()
        .cloned()
        .chain(every_role)
        .filter(|r| !r.is_empty())
        .map(|r| super::reader(&r).ok_or_else(|| format!("Readers entry {r} is not role=ARN")))
        .collect::<Result<_, String>>()?;
    let port = |text: &str, what: &str| {
        text.parse::<u16>()
            .map_err(|_| format!("{what} {text} is not a port number"))
    };
    Ok(Plan {
        prefix: p.prefix.clone(),
        schema: p.schema.clone(),
        profile: Profile::parse(&p.profile)
            .ok_or_else(|| format!("Profile {} is neither masking nor full", p.profile))?,
        retention: p
            .retention_days
            .parse()
            .map_err(|e| format!("RetentionDays: {e}"))?,
        auth: match p.auth.as_str() {
            "password" => Auth::Password,
            "iam" => Auth::Iam,
            other => return Err(format!("DbAuth {other} is neither password nor iam")),
        },
        secrets: p.secrets.clone(),
        secret_host: Some(p.secret_host.clone()).filter(|h| !h.is_empty()),
        secret_port: match p.secret_port.as_str() {
            "" => None,
            text => Some(port(text, "SecretPort")?),
        },
        readers,
        admin_arn: Some(p.setup_role_arn.clone()).filter(|a| !a.is_empty()),
        rewriters: p
            .rewriters
            .iter()
            .filter(|a| !a.is_empty())
            .cloned()
            .collect(),
    })
}

/// PUTs the answer to the pre-signed URL (S3's, in AWS), as CloudFormation
/// asks: no content type.
async fn put(url: &str, body: String) -> Result<(), String> {
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| format!("no TLS roots to answer CloudFormation with: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Full<hyper::body::Bytes>> =
        Client::builder(TokioExecutor::new()).build(https);
    let request = hyper::Request::put(url)
        .header("content-type", "")
        .body(Full::new(hyper::body::Bytes::from(body)))
        .map_err(|e| format!("the ResponseURL is not a URL: {e}"))?;
    // The URL is pre-signed: it is never logged.
    let answered = tokio::time::timeout(Duration::from_secs(15), client.request(request))
        .await
        .map_err(|_| "answering CloudFormation timed out after 15 s: the setup function needs a route to S3 (a NAT gateway or an S3 gateway endpoint)".to_owned())?
        .map_err(|e| format!("answering CloudFormation failed ({e}): the setup function needs a route to S3 (a NAT gateway or an S3 gateway endpoint)"))?;
    if !answered.status().is_success() {
        return Err(format!(
            "CloudFormation's response URL answered {}",
            answered.status()
        ));
    }
    info!("setup answer sent");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STACK: &str = "arn:aws:cloudformation:us-east-1:123456789012:stack/s/1";
    const CFN_URL: &str = "https://cloudformation-custom-resource-response-useast1.s3.amazonaws.com/arn%3Aaws%3Acloudformation%3Aus-east-1%3A123456789012%3Astack/s/1%7CDatabaseSetup%7Cr-1?X-Amz-Signature=x";

    fn request(kind: &str) -> Value {
        json!({
            "RequestType": kind,
            "ResponseURL": CFN_URL,
            "StackId": STACK,
            "RequestId": "r-1",
            "LogicalResourceId": "DatabaseSetup",
            "PhysicalResourceId": "kept",
            "ResourceProperties": {
                "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:f",
                "MasterSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:rds!db-1",
                "Host": "db", "Port": "5432", "DbName": "analytics", "Prefix": "login_etl",
                "Schema": "public", "Profile": "masking", "RetentionDays": "90", "Auth": "password",
                "Secrets": "s", "SecretHost": "", "SecretPort": "",
                "Readers": ["ingest=arn:aws:iam::123456789012:role/f", ""],
                "AdminReaders": ["arn:aws:iam::123456789012:role/dba"],
                "SetupRoleArn": "arn:aws:iam::123456789012:role/setup",
                "Rewriters": ["arn:aws:iam::123456789012:role/ci", ""],
                "QueueUrl": "", "DlqArn": "", "MinReceiveCount": "25", "MinVisibilityTimeout": "210",
                "SchemaVersion": "23"
            }
        })
    }

    /// The environment the template gives the setup function for
    /// `request`'s properties.
    fn environment(name: &str) -> Option<String> {
        let value = match name {
            "SETUP_STACK_ID" => STACK,
            "AWS_REGION" => "us-east-1",
            "SETUP_MASTER_SECRET_ARN" => {
                "arn:aws:secretsmanager:us-east-1:123456789012:secret:rds!db-1"
            }
            "SETUP_HOST" => "db",
            "SETUP_PORT" => "5432",
            "SETUP_DB_NAME" => "analytics",
            "SETUP_PREFIX" => "login_etl",
            "SETUP_SCHEMA" => "public",
            "SETUP_PROFILE" => "masking",
            "SETUP_RETENTION_DAYS" => "90",
            "SETUP_AUTH" => "password",
            "SETUP_SECRETS" => "s",
            "SETUP_SECRET_HOST" | "SETUP_SECRET_PORT" => "",
            "SETUP_READERS" => "ingest=arn:aws:iam::123456789012:role/f",
            "SETUP_ADMIN_READERS" => "arn:aws:iam::123456789012:role/dba",
            "SETUP_ROLE_ARN" => "arn:aws:iam::123456789012:role/setup",
            "SETUP_REWRITERS" => "arn:aws:iam::123456789012:role/ci",
            "SETUP_QUEUE_URL" | "SETUP_DLQ_ARN" => "",
            "SETUP_MIN_RECEIVE_COUNT" => "25",
            "SETUP_MIN_VISIBILITY_TIMEOUT" => "210",
            _ => return None,
        };
        Some(value.to_owned())
    }

    fn configured() -> Configured {
        Configured::from_environment(&environment).unwrap()
    }

    #[test]
    fn the_environment_makes_the_plan_and_a_bad_one_is_named() {
        let plan = plan(&configured().properties).unwrap();
        assert_eq!(
            plan.readers[0],
            (Role::Ingest, "arn:aws:iam::123456789012:role/f".into())
        );
        // The admins read every role's secret.
        let dba: Vec<Role> = plan.readers[1..]
            .iter()
            .map(|(role, arn)| {
                assert_eq!(arn, "arn:aws:iam::123456789012:role/dba");
                *role
            })
            .collect();
        assert_eq!(dba, Role::ALL);
        assert_eq!(plan.retention.days(), Some(90));
        assert_eq!(plan.rewriters, ["arn:aws:iam::123456789012:role/ci"]);
        assert_eq!(
            plan.admin_arn.as_deref(),
            Some("arn:aws:iam::123456789012:role/setup")
        );
        let mut bad = configured().properties;
        bad.auth = "kerberos".into();
        assert!(plan_err(&bad).contains("DbAuth kerberos"));
        let none = Configured::from_environment(&|name| {
            (name != "SETUP_STACK_ID")
                .then(|| environment(name))
                .flatten()
        });
        assert!(none.unwrap_err().contains("SETUP_STACK_ID"));
    }

    fn plan_err(p: &Properties) -> String {
        plan(p).unwrap_err()
    }

    #[test]
    fn only_the_templates_properties_for_this_stacks_resource_are_acted_on() {
        let own = configured();
        let real: Request = serde_json::from_value(request("Update")).unwrap();
        assert_eq!(refusal(&real, &own), None, "CloudFormation's own request");
        for (property, forged) in [
            ("RetentionDays", json!("1")),
            ("Host", json!("attacker.example.com")),
            ("Port", json!("6543")),
            ("SecretHost", json!("attacker.example.com")),
            (
                "AdminReaders",
                json!([
                    "arn:aws:iam::123456789012:role/dba",
                    "arn:aws:iam::999999999999:role/x"
                ]),
            ),
            (
                "Readers",
                json!(["maintain=arn:aws:iam::123456789012:role/x"]),
            ),
            (
                "MasterSecretArn",
                json!("arn:aws:secretsmanager:us-east-1:123456789012:secret:other"),
            ),
            ("SetupRoleArn", json!("arn:aws:iam::123456789012:role/x")),
            ("Rewriters", json!([])),
        ] {
            let mut event = request("Update");
            event["ResourceProperties"][property] = forged;
            let r: Request = serde_json::from_value(event).unwrap();
            let why = refusal(&r, &own).expect(property);
            assert!(
                why.contains(&format!("request's {property} differ")),
                "{why}"
            );
            assert!(
                !why.contains("attacker"),
                "a request's values are never echoed: {why}"
            );
        }
        for (field, other) in [
            (
                "StackId",
                "arn:aws:cloudformation:us-east-1:123456789012:stack/other/2",
            ),
            ("LogicalResourceId", "SomethingElse"),
        ] {
            let mut event = request("Create");
            event[field] = json!(other);
            let r: Request = serde_json::from_value(event).unwrap();
            assert!(
                refusal(&r, &own)
                    .unwrap()
                    .contains("its own stack's DatabaseSetup only")
            );
        }
        // A Delete does nothing, whatever its properties say.
        let mut delete = request("Delete");
        delete["ResourceProperties"]["RetentionDays"] = json!("1");
        let r: Request = serde_json::from_value(delete).unwrap();
        assert_eq!(refusal(&r, &own), None);
    }

    #[test]
    fn only_cloudformations_response_bucket_for_the_region_is_answered() {
        let own = configured();
        let key = "arn%3Aaws%3Acloudformation%3Aus-east-1%3A123456789012%3Astack/s/1%7CDatabaseSetup%7Cr-1";
        for url in [
            CFN_URL.to_owned(),
            format!(
                "https://cloudformation-custom-resource-response-useast1.s3.us-east-1.amazonaws.com/{key}?s=1"
            ),
            format!(
                "https://cloudformation-custom-resource-response-useast1.s3-us-east-1.amazonaws.com/{key}"
            ),
            format!(
                "https://CloudFormation-Custom-Resource-Response-UsEast1.S3.amazonaws.com:443/{key}"
            ),
        ] {
            assert_eq!(response_url_is_cloudformations(&url, &own), Ok(()), "{url}");
        }
        for url in [
            format!("http://cloudformation-custom-resource-response-useast1.s3.amazonaws.com/{key}"),
            format!("https://cloudformation-custom-resource-response-useast1.s3.amazonaws.com:8443/{key}"),
            format!("https://cloudformation-custom-resource-response-euwest1.s3.amazonaws.com/{key}"),
            format!("https://cloudformation-custom-resource-response-useast1.s3.amazonaws.com.attacker.example/{key}"),
            format!("https://cloudformation-custom-resource-response-useast1.s3.amazonaws.com@attacker.example/{key}"),
            "https://attacker.example/cloudformation-custom-resource-response-useast1.s3.amazonaws.com".to_owned(),
            format!("https://s3.amazonaws.com/cloudformation-custom-resource-response-useast1/{key}"),
            // A URL into the same bucket that another account's stack was given.
            format!("https://cloudformation-custom-resource-response-useast1.s3.amazonaws.com/{}", key.replace("123456789012", "999999999999")),
            "http://127.0.0.1:4566/k".to_owned(),
            "not a url".to_owned(),
        ] {
            assert!(response_url_is_cloudformations(&url, &own).is_err(), "{url}");
        }
        let china = Configured {
            region: "cn-north-1".into(),
            ..configured()
        };
        let cn = format!(
            "https://cloudformation-custom-resource-response-cnnorth1.s3.cn-north-1.amazonaws.com.cn/{key}"
        );
        assert_eq!(response_url_is_cloudformations(&cn, &china), Ok(()));
        // An emulator (LocalStack) answers on its own origin, no other.
        let emulated = Configured {
            emulator: Some("http://127.0.0.1:4566".into()),
            ..configured()
        };
        assert_eq!(
            response_url_is_cloudformations(
                "http://127.0.0.1:4566/bucket/k?X-Amz-Signature=1",
                &emulated
            ),
            Ok(())
        );
        assert!(
            response_url_is_cloudformations("http://127.0.0.1:4567/bucket/k", &emulated).is_err()
        );
        assert!(
            response_url_is_cloudformations("https://127.0.0.1:4566/bucket/k", &emulated).is_err()
        );
    }

    #[tokio::test]
    async fn a_request_answered_elsewhere_is_neither_acted_on_nor_answered() {
        // The ResponseURL and a forged Host are listeners of the test's:
        // neither may see a connection.
        let answer_to = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let database = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut event = request("Update");
        event["ResponseURL"] = json!(format!("http://{}/answer", answer_to.local_addr().unwrap()));
        event["ResourceProperties"]["Host"] = json!("127.0.0.1");
        event["ResourceProperties"]["Port"] =
            json!(database.local_addr().unwrap().port().to_string());
        let env = |name: &str| environment(name);
        let refused = handle(event, Duration::from_secs(60), &env)
            .await
            .unwrap_err();
        assert!(
            refused.contains("not CloudFormation's response bucket"),
            "{refused}"
        );
        for listener in [&answer_to, &database] {
            // handle has returned: a connection it made would be queued.
            let pending = tokio::time::timeout(Duration::ZERO, listener.accept()).await;
            assert!(pending.is_err(), "a connection was made");
        }
    }

    #[tokio::test]
    async fn a_forged_update_is_answered_failed_with_nothing_read() {
        // An emulator's origin (the test's listener) stands for
        // CloudFormation's bucket; the forged Host is another listener.
        let emulator = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let database = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", emulator.local_addr().unwrap());
        let mut event = request("Update");
        event["ResponseURL"] = json!(format!("{origin}/answer?X-Amz-Signature=1"));
        event["ResourceProperties"]["RetentionDays"] = json!("1");
        event["ResourceProperties"]["Host"] = json!("127.0.0.1");
        event["ResourceProperties"]["Port"] =
            json!(database.local_addr().unwrap().port().to_string());
        let env = move |name: &str| match name {
            "AWS_ENDPOINT_URL" => Some(origin.clone()),
            _ => environment(name),
        };
        let answered =
            tokio::spawn(async move { handle(event, Duration::from_secs(60), &env).await });
        // The one request the emulator sees is the answer: no secret read.
        let (mut stream, _) = emulator.accept().await.unwrap();
        let request = read_http_request(&mut stream).await;
        use tokio::io::AsyncWriteExt;
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        answered.await.unwrap().unwrap();
        assert!(
            request.starts_with("PUT /answer?X-Amz-Signature=1 "),
            "{request}"
        );
        let body: Value = serde_json::from_str(request.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["Status"], "FAILED");
        let reason = body["Reason"].as_str().unwrap();
        assert!(
            reason.contains("request's Host, Port, RetentionDays differ"),
            "{reason}"
        );
        for listener in [&emulator, &database] {
            let pending = tokio::time::timeout(Duration::ZERO, listener.accept()).await;
            assert!(pending.is_err(), "a second connection was made");
        }
    }

    /// One HTTP/1.1 request: its head and its body (by content-length).
    async fn read_http_request(stream: &mut tokio::net::TcpStream) -> String {
        use tokio::io::AsyncReadExt;
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the request ended early");
            bytes.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&bytes).to_string();
            if let Some(head_end) = text.find("\r\n\r\n") {
                let length = text[..head_end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if bytes.len() >= head_end + 4 + length {
                    return text;
                }
            }
        }
    }

    #[test]
    fn an_answer_keeps_the_physical_id_and_bounds_its_reason() {
        let r: Request = serde_json::from_value(request("Update")).unwrap();
        let ok = answer(&r, Ok(json!({"IngestSecretArn": "a"})));
        assert_eq!(ok["Status"], "SUCCESS");
        assert_eq!(ok["PhysicalResourceId"], "kept");
        assert_eq!(ok["Data"]["IngestSecretArn"], "a");
        let failed = answer(&r, Err("é".repeat(5_000)));
        assert_eq!(failed["Status"], "FAILED");
        assert!(failed["Reason"].as_str().unwrap().len() <= REASON_MAX);
        let report = SetupReport {
            secrets: vec![(Role::Maintain, "m".into())],
            schema: "x".into(),
        };
        assert_eq!(data(&report)["MaintainSecretArn"], "m");
    }
}
