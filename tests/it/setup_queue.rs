//! The stack's setup resource judges a queue made before the stack before
//! the event-source mapping that drains it exists (the function, and so
//! its mapping, waits for the resource): against moto's SQS, a queue with
//! messages in it whose maxReceiveCount (3) and visibility timeout are
//! under what the stack's own queue would have fails the setup with the
//! commands that fix it, and not one message is received; fixed with
//! those settings, the setup goes on past the queue (to the master
//! secret, which this test does not make). The answer goes to a listener
//! of the test's, standing for CloudFormation's bucket (the emulator's
//! origin, `AWS_ENDPOINT_URL`, as the function's environment has it).

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use common::moto::start_moto;
use common::sqs::sqs_client;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const STACK: &str = "arn:aws:cloudformation:us-east-1:123456789012:stack/s/1";

/// Each DatabaseSetup property with its value, as the template sets both
/// the request's properties and the setup function's SETUP_* variables.
fn properties(queue_url: &str, dlq_arn: &str) -> Vec<(&'static str, &'static str, String)> {
    let own = |name: &'static str, var: &'static str, value: &str| (name, var, value.to_owned());
    vec![
        own(
            "MasterSecretArn",
            "SETUP_MASTER_SECRET_ARN",
            "rds!db-not-made",
        ),
        own("Host", "SETUP_HOST", "127.0.0.1"),
        own("Port", "SETUP_PORT", "5432"),
        own("DbName", "SETUP_DB_NAME", "analytics"),
        own("Prefix", "SETUP_PREFIX", "login_etl"),
        own("Schema", "SETUP_SCHEMA", "public"),
        own("Profile", "SETUP_PROFILE", "masking"),
        own("RetentionDays", "SETUP_RETENTION_DAYS", "90"),
        own("Auth", "SETUP_AUTH", "password"),
        own("Secrets", "SETUP_SECRETS", "s"),
        own("SecretHost", "SETUP_SECRET_HOST", ""),
        own("SecretPort", "SETUP_SECRET_PORT", ""),
        own("Readers", "SETUP_READERS", ""),
        own("AdminReaders", "SETUP_ADMIN_READERS", ""),
        own(
            "SetupRoleArn",
            "SETUP_ROLE_ARN",
            "arn:aws:iam::123456789012:role/setup",
        ),
        own("Rewriters", "SETUP_REWRITERS", ""),
        own("QueueUrl", "SETUP_QUEUE_URL", queue_url),
        own("DlqArn", "SETUP_DLQ_ARN", dlq_arn),
        own("MinReceiveCount", "SETUP_MIN_RECEIVE_COUNT", "25"),
        own(
            "MinVisibilityTimeout",
            "SETUP_MIN_VISIBILITY_TIMEOUT",
            "210",
        ),
    ]
}

/// Sends the Create, takes its answer at the listener, returns it.
async fn create(props: &[(&'static str, &'static str, String)]) -> Value {
    let answers = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", answers.local_addr().unwrap());
    let mut env: HashMap<String, String> = props
        .iter()
        .map(|(_, var, value)| ((*var).to_owned(), value.clone()))
        .collect();
    env.insert("SETUP_STACK_ID".into(), STACK.into());
    env.insert("AWS_REGION".into(), "us-east-1".into());
    env.insert("AWS_ENDPOINT_URL".into(), origin.clone());
    let mut resource_properties = serde_json::Map::new();
    for (name, _, value) in props {
        let value = match *name {
            "Readers" | "AdminReaders" | "Rewriters" => json!([value]),
            _ => json!(value),
        };
        resource_properties.insert((*name).to_owned(), value);
    }
    let event = json!({
        "RequestType": "Create",
        "ResponseURL": format!("{origin}/cfn-responses/answer?X-Amz-Signature=1"),
        "StackId": STACK,
        "RequestId": "r-1",
        "LogicalResourceId": "DatabaseSetup",
        "ResourceProperties": resource_properties,
    });
    let handled = tokio::spawn(async move {
        login_etl::cli::setup::resource::handle(event, Duration::from_secs(120), &|name| {
            env.get(name).cloned()
        })
        .await
    });
    let (mut stream, _) = answers.accept().await.unwrap();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 8192];
    let body = loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the answer ended early");
        bytes.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&bytes).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                break body.to_owned();
            }
        }
    };
    stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    handled.await.unwrap().expect("answered");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
#[ignore = "needs moto_server on PATH or in MOTO_SERVER; run by `make test`"]
async fn an_existing_queue_that_does_not_fit_fails_the_setup_before_anything_drains_it() {
    let (_moto, port) = start_moto();
    let moto = format!("http://127.0.0.1:{port}");
    // The SDK's SQS and Secrets Manager at moto; AWS_ENDPOINT_URL (the
    // answer's origin) is the test's listener, in the function's env.
    common::set_process_env(&[
        ("AWS_ENDPOINT_URL_SQS", moto.as_str()),
        ("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ]);
    let sqs = sqs_client(&moto).await;
    let dlq = sqs
        .create_queue()
        .queue_name("producers-dlq")
        .send()
        .await
        .unwrap();
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(dlq.queue_url().unwrap())
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    let redrive =
        |count: u32| json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": count}).to_string();
    let queue = sqs
        .create_queue()
        .queue_name("producers")
        .attributes(QueueAttributeName::VisibilityTimeout, "30")
        .attributes(QueueAttributeName::RedrivePolicy, redrive(3))
        .send()
        .await
        .unwrap();
    let url = queue.queue_url().unwrap().to_owned();
    for i in 0..5 {
        let body = format!(
            r#"{{"user_id": "u-{i}", "app_version": "2.3.0", "device_type": "ios", "ip": "10.0.0.1", "locale": null, "device_id": "d"}}"#
        );
        sqs.send_message()
            .queue_url(&url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    let counts = || async {
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap();
        let a = attrs.attributes().unwrap();
        (
            a[&QueueAttributeName::ApproximateNumberOfMessages].clone(),
            a[&QueueAttributeName::ApproximateNumberOfMessagesNotVisible].clone(),
        )
    };

    let answer = create(&properties(&url, &dlq_arn)).await;
    assert_eq!(answer["Status"], "FAILED", "{answer}");
    let reason = answer["Reason"].as_str().unwrap();
    assert!(
        reason.contains("maxReceiveCount is 3, under the 25")
            && reason.contains(&format!(
                "aws sqs set-queue-attributes --queue-url {url} --attributes '{{\"RedrivePolicy\""
            ))
            && reason.contains("\\\"maxReceiveCount\\\":\\\"25\\\"")
            && reason.contains("visibility timeout is 30 s, under the 210 s")
            && reason.contains("VisibilityTimeout=210")
            && reason.contains("nothing of it was received"),
        "{reason}"
    );
    assert_eq!(
        counts().await,
        ("5".into(), "0".into()),
        "a message was received"
    );

    // Another dead-letter queue than the stack's: named too.
    let other = properties(&url, "arn:aws:sqs:us-east-1:123456789012:elsewhere");
    let reason = create(&other).await["Reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("not to the stack's ExistingDlqArn"),
        "{reason}"
    );

    // Fixed as the answer says: the setup goes past the queue, to the
    // master secret (not made here).
    sqs.set_queue_attributes()
        .queue_url(&url)
        .attributes(QueueAttributeName::RedrivePolicy, redrive(25))
        .attributes(QueueAttributeName::VisibilityTimeout, "210")
        .send()
        .await
        .unwrap();
    let answer = create(&properties(&url, &dlq_arn)).await;
    let reason = answer["Reason"].as_str().unwrap();
    assert!(
        answer["Status"] == "FAILED"
            && reason.contains("rds!db-not-made")
            && !reason.contains("queue"),
        "{answer}"
    );
    assert_eq!(counts().await, ("5".into(), "0".into()));
}
