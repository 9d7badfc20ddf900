//! The stack's setup resource (`Custom::LoginEtlDatabase`): CloudFormation's
//! custom-resource protocol around [`super::run`]. The template's setup
//! function (`LOGIN_ETL_TASK=setup`, inside the VPC) gets each Create,
//! Update and Delete; it connects as the RDS master user (the RDS-managed
//! secret: username and password) to the host and database the properties
//! name, runs setup, and PUTs the outcome to the pre-signed `ResponseURL`.
//! A Delete changes nothing: the data, the roles and their secrets outlive
//! the stack. Every request is answered, a failure with its reason, before
//! the function's own timeout: CloudFormation would otherwise wait an hour.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{error, info};

use super::{Auth, Plan, Report};
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
/// passes every value as a string). Each defaults, so that a request
/// missing one is still answered, FAILED with what is missing
/// ([`plan`]), never left to CloudFormation's hour.
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
}

/// Time kept back from the function's deadline to send the answer.
const ANSWER_MARGIN: Duration = Duration::from_secs(20);

/// The longest `Reason` sent (CloudFormation takes 4 KiB in all).
const REASON_MAX: usize = 2_000;

/// Answers one request; `remaining` is the invocation's time left. An
/// error means no answer could be sent (CloudFormation then times out).
pub async fn handle(event: Value, remaining: Duration) -> Result<(), String> {
    let request: Request = serde_json::from_value(event).map_err(|e| {
        format!("the setup function got an event that is not a CloudFormation custom-resource request ({e}): it is invoked by its stack's Custom::LoginEtlDatabase only")
    })?;
    info!(
        request_type = %request.request_type,
        resource = %request.logical_resource_id,
        "setup resource request"
    );
    let outcome = match request.request_type.as_str() {
        // The data, the roles and their secrets outlive the stack.
        "Delete" => Ok(Value::Object(Default::default())),
        "Create" | "Update" => {
            let limit = remaining.saturating_sub(ANSWER_MARGIN);
            match tokio::time::timeout(limit, set_up(&request.resource_properties)).await {
                Ok(done) => done.map(|report| data(&report)),
                Err(_) => Err(format!(
                    "setup did not finish within {} s (the setup function's 900 s timeout, less {} s to answer): look for a session holding a lock on the tables (login-etl doctor names it) or a database that does not answer, then deploy again (setup is idempotent; a first create that failed: delete the stack first, which keeps the database and the secrets)",
                    limit.as_secs(),
                    ANSWER_MARGIN.as_secs()
                )),
            }
        }
        other => Err(format!("unknown RequestType {other}")),
    };
    if let Err(why) = &outcome {
        error!(error = %why, "setup failed");
    }
    let answer = answer(&request, outcome);
    put(&request.response_url, answer.to_string()).await
}

/// The resource's attributes: each role's secret ARN (`IngestSecretArn`, ...)
/// and the schema's line.
fn data(report: &Report) -> Value {
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

/// Reads the master secret and runs setup as its user.
async fn set_up(p: &Properties) -> Result<Report, String> {
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
        _ => std::env::var(name).ok().filter(|v| !v.trim().is_empty()),
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

    fn request(kind: &str) -> Value {
        json!({
            "RequestType": kind,
            "ResponseURL": "http://127.0.0.1:9/answer",
            "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/s/1",
            "RequestId": "r-1",
            "LogicalResourceId": "DatabaseSetup",
            "PhysicalResourceId": "kept",
            "ResourceProperties": {
                "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:f",
                "MasterSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:rds!db-1",
                "Host": "db", "Port": "5432", "DbName": "analytics", "Prefix": "login_etl",
                "Schema": "public", "Profile": "masking", "RetentionDays": "90", "Auth": "password",
                "Secrets": "s", "Readers": ["ingest=arn:aws:iam::123456789012:role/f", ""],
                "AdminReaders": ["arn:aws:iam::123456789012:role/dba"],
                "Rewriters": ["arn:aws:iam::123456789012:role/ci", ""]
            }
        })
    }

    #[test]
    fn properties_make_the_plan_and_a_bad_one_is_named() {
        let r: Request = serde_json::from_value(request("Create")).unwrap();
        let plan = plan(&r.resource_properties).unwrap();
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
        // DeployPrincipalArns, empty entries (its default) left out.
        assert_eq!(plan.rewriters, ["arn:aws:iam::123456789012:role/ci"]);
        let mut bad: Request = serde_json::from_value(request("Create")).unwrap();
        bad.resource_properties.auth = "kerberos".into();
        assert!(plan_err(&bad).contains("DbAuth kerberos"));
    }

    fn plan_err(r: &Request) -> String {
        plan(&r.resource_properties).unwrap_err()
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
        let report = Report {
            secrets: vec![(Role::Maintain, "m".into())],
            schema: "x".into(),
        };
        assert_eq!(data(&report)["MaintainSecretArn"], "m");
    }
}
