//! SQS endpoints for the tests: a client with the function's own settings,
//! and a scripted SQS on 127.0.0.1 that refuses chosen entries.

use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A message attribute of text, as Lambda's SQS event carries it.
pub fn string_attribute(value: &str) -> aws_lambda_events::event::sqs::SqsMessageAttribute {
    let mut a = aws_lambda_events::event::sqs::SqsMessageAttribute::default();
    a.string_value = Some(value.to_owned());
    a.data_type = Some("String".to_owned());
    a
}

/// A client with the function's own HTTP and timeout settings, aimed at `endpoint`.
pub async fn sqs_client(endpoint: &str) -> Client {
    let shared = login_etl::secrets::sdk_config().await;
    let config = aws_sdk_sqs::config::Builder::from(&shared)
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .build();
    Client::from_conf(config)
}

/// An SQS endpoint that refuses the entries whose body contains `FAIL_ME`
/// (a copy of `{"device_type": "FAIL_ME"}`, rejected for its missing
/// user id, keeps the device type it shows)
/// (or, with `deny_all`, the whole call, as IAM does) and accepts the rest.
pub async fn scripted_sqs(deny_all: bool) -> u16 {
    serve(move |body| {
        if deny_all {
            return (
                "400 Bad Request",
                serde_json::json!({"__type": "com.amazonaws.sqs#AccessDenied", "message": "not authorized to perform: sqs:SendMessage"}),
            );
        }
        let (mut ok, mut failed) = (Vec::new(), Vec::new());
        for e in body["Entries"].as_array().unwrap() {
            let id = e["Id"].as_str().unwrap();
            if e["MessageBody"].as_str().unwrap().contains("FAIL_ME") {
                failed.push(serde_json::json!({"Id": id, "SenderFault": true, "Code": "InvalidMessageContents", "Message": "refused"}));
            } else {
                ok.push(serde_json::json!({"Id": id, "MessageId": format!("copy-{id}"), "MD5OfMessageBody": "0"}));
            }
        }
        ("200 OK", serde_json::json!({"Successful": ok, "Failed": failed}))
    })
    .await
}

/// An SQS endpoint that accepts every entry of every batch call and keeps
/// each request body (e.g. the `ChangeMessageVisibilityBatch` entries).
pub async fn capturing_sqs() -> (
    u16,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = seen.clone();
    let port = serve(move |body| {
        keep.lock().unwrap().push(body.clone());
        let ok: Vec<serde_json::Value> = body["Entries"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| serde_json::json!({"Id": e["Id"], "MessageId": "m", "MD5OfMessageBody": "0"}))
                    .collect()
            })
            .unwrap_or_default();
        ("200 OK", serde_json::json!({"Successful": ok, "Failed": []}))
    })
    .await;
    (port, seen)
}

/// A JSON-protocol SQS endpoint on 127.0.0.1 answering each request body
/// with `answer` (status line, JSON).
async fn serve(
    answer: impl Fn(&serde_json::Value) -> (&'static str, serde_json::Value) + Send + Sync + 'static,
) -> u16 {
    let answer = std::sync::Arc::new(answer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                loop {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 65536];
                    let (head_end, length) = loop {
                        let Ok(n) = sock.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        req.extend_from_slice(&buf[..n]);
                        if let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&req[..end]).to_lowercase();
                            let length = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                            break (end + 4, length);
                        }
                    };
                    while req.len() < head_end + length {
                        let Ok(n) = sock.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        req.extend_from_slice(&buf[..n]);
                    }
                    let body: serde_json::Value =
                        serde_json::from_slice(&req[head_end..head_end + length]).unwrap();
                    let (status, answer) = answer(&body);
                    let text = answer.to_string();
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/x-amz-json-1.0\r\nx-amzn-RequestId: 1\r\nContent-Length: {}\r\n\r\n{text}",
                        text.len()
                    );
                    if sock.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// Every message in `url`, with all its attributes, each received once:
/// hidden for `hide_seconds` (the queue's visibility when `None`).
pub async fn receive_all(
    client: &Client,
    url: &str,
    hide_seconds: Option<i32>,
) -> Vec<aws_sdk_sqs::types::Message> {
    let mut out = Vec::new();
    loop {
        let got = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .set_visibility_timeout(hide_seconds)
            .message_attribute_names("All")
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default();
        if got.is_empty() {
            return out;
        }
        out.extend(got);
    }
}
