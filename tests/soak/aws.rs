//! The AWS services the soak's processes call, emulated on one 127.0.0.1
//! port: SQS (JSON protocol: queues with visibility timeouts, receive
//! counts and a redrive policy), Secrets Manager (`GetSecretValue`), KMS
//! (`GenerateDataKey`, `Decrypt`, with their encryption context checked)
//! and STS (`GetCallerIdentity`). The soak owns its state, so it reads the
//! queues directly for its checks and decides what each receive returns.
//!
//! SQS semantics kept: a received message is invisible until its visibility
//! timeout (or a `ChangeMessageVisibility`) runs out, and comes back with a
//! higher `ApproximateReceiveCount`; only the newest receipt handle deletes
//! or changes it (an older one is acknowledged and does nothing, as SQS may);
//! a message received more often than the redrive policy's
//! `maxReceiveCount` moves to the dead-letter queue instead of being
//! delivered. A redrive sends each message again as a new one: a new id and
//! `SentTimestamp`, its message attributes kept.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The account of every ARN the emulator hands out.
pub const ACCOUNT: &str = "000000000000";
/// What STS answers for every caller.
pub const CALLER_ARN: &str = "arn:aws:iam::000000000000:user/soak-operator";
/// The vault's KMS key.
pub const KMS_KEY_ARN: &str =
    "arn:aws:kms:us-east-1:000000000000:key/00000000-0000-0000-0000-00000000soak";

/// One message as the queue holds it.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: String,
    pub body: String,
    pub sent_ms: i64,
    pub receives: u32,
    pub first_receive_ms: Option<i64>,
    /// Message attributes: name -> (data type, string value).
    pub attributes: BTreeMap<String, (String, String)>,
    visible_at: Instant,
    receipt: Option<String>,
}

impl Message {
    /// A message sent at `sent_ms` (epoch milliseconds).
    pub fn new(id: String, body: String, sent_ms: i64) -> Self {
        Self {
            id,
            body,
            sent_ms,
            receives: 0,
            first_receive_ms: None,
            attributes: BTreeMap::new(),
            visible_at: Instant::now(),
            receipt: None,
        }
    }

    /// The receipt handle of its newest receive.
    pub fn receipt(&self) -> Option<&str> {
        self.receipt.as_deref()
    }

    fn wire(&self) -> Value {
        let attributes: serde_json::Map<String, Value> = self
            .attributes
            .iter()
            .map(|(k, (t, v))| (k.clone(), json!({"DataType": t, "StringValue": v})))
            .collect();
        let mut m = json!({
            "MessageId": self.id,
            "ReceiptHandle": self.receipt,
            "Body": self.body,
            "MD5OfBody": md5_hex(&self.body),
            "Attributes": {
                "SentTimestamp": self.sent_ms.to_string(),
                "ApproximateReceiveCount": self.receives.to_string(),
                "ApproximateFirstReceiveTimestamp": self.first_receive_ms.unwrap_or(self.sent_ms).to_string(),
                "SenderId": "AIDASOAK",
            },
        });
        if !attributes.is_empty() {
            m["MessageAttributes"] = Value::Object(attributes);
        }
        m
    }
}

fn md5_hex(text: &str) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(text.as_bytes()))
}

/// A queue.
#[derive(Debug)]
pub struct Queue {
    pub name: String,
    pub visibility_timeout: u32,
    /// (dead-letter queue name, maxReceiveCount).
    pub redrive: Option<(String, u32)>,
    pub messages: Vec<Message>,
}

impl Queue {
    pub fn arn(&self) -> String {
        arn(&self.name)
    }
}

pub fn arn(name: &str) -> String {
    format!("arn:aws:sqs:us-east-1:{ACCOUNT}:{name}")
}

#[derive(Default)]
struct State {
    queues: HashMap<String, Queue>,
    secrets: HashMap<String, String>,
    /// Wrapped data key -> (plaintext, encryption context).
    data_keys: HashMap<Vec<u8>, (Vec<u8>, Value)>,
    next_id: u64,
}

/// The running emulator.
#[derive(Clone)]
pub struct Aws {
    pub port: u16,
    state: Arc<Mutex<State>>,
    started: Instant,
}

impl Aws {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let aws = Self {
            port,
            state: Arc::default(),
            started: Instant::now(),
        };
        let server = aws.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(http1::Builder::new().serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |r| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.route(r).await) }
                    }),
                ));
            }
        });
        aws
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn queue_url(&self, name: &str) -> String {
        format!("{}/{ACCOUNT}/{name}", self.endpoint())
    }

    pub fn create_queue(&self, name: &str, visibility_timeout: u32, redrive: Option<(&str, u32)>) {
        self.state.lock().unwrap().queues.insert(
            name.to_owned(),
            Queue {
                name: name.to_owned(),
                visibility_timeout,
                redrive: redrive.map(|(q, n)| (q.to_owned(), n)),
                messages: Vec::new(),
            },
        );
    }

    pub fn put_secret(&self, id: &str, value: &str) {
        self.state
            .lock()
            .unwrap()
            .secrets
            .insert(id.to_owned(), value.to_owned());
    }

    /// Sends `message` to `queue` as a producer would (its id and sent time
    /// are the caller's).
    pub fn send(&self, queue: &str, message: Message) {
        self.state
            .lock()
            .unwrap()
            .queues
            .get_mut(queue)
            .expect("a queue the soak made")
            .messages
            .push(message);
    }

    /// A copy of every message of `queue`.
    pub fn messages(&self, queue: &str) -> Vec<Message> {
        self.state.lock().unwrap().queues[queue].messages.clone()
    }

    /// Messages in `queue`, and how many of them are in flight.
    pub fn depth(&self, queue: &str) -> (usize, usize) {
        let s = self.state.lock().unwrap();
        let q = &s.queues[queue];
        let now = Instant::now();
        (
            q.messages.len(),
            q.messages.iter().filter(|m| m.visible_at > now).count(),
        )
    }

    /// An operator's redrive of every message of `from` into `to`
    /// (StartMessageMoveTask): each a new message, its attributes kept.
    pub fn redrive(&self, from: &str, to: &str) -> usize {
        let mut s = self.state.lock().unwrap();
        let moved: Vec<Message> = std::mem::take(&mut s.queues.get_mut(from).unwrap().messages);
        let now = now_ms();
        let n = moved.len();
        for m in moved {
            s.next_id += 1;
            let mut copy = Message::new(format!("redrive-{}", s.next_id), m.body, now);
            copy.attributes = m.attributes;
            s.queues.get_mut(to).unwrap().messages.push(copy);
        }
        n
    }

    /// Receives up to `max` visible messages of `queue` for `visibility`
    /// seconds, moving those past the redrive policy's count to the
    /// dead-letter queue: what both the event-source mapping (called
    /// directly) and `ReceiveMessage` do.
    pub fn receive(&self, queue: &str, max: usize, visibility: u32) -> Vec<Message> {
        let mut s = self.state.lock().unwrap();
        let now = Instant::now();
        let mut out = Vec::new();
        let mut dead = Vec::new();
        let q = s.queues.get_mut(queue).expect("a queue the soak made");
        let limit = q.redrive.as_ref().map(|(_, n)| *n);
        let mut i = 0;
        while i < q.messages.len() && out.len() < max {
            if q.messages[i].visible_at > now {
                i += 1;
                continue;
            }
            if limit.is_some_and(|n| q.messages[i].receives >= n) {
                dead.push(q.messages.remove(i));
                continue;
            }
            let m = &mut q.messages[i];
            m.receives += 1;
            m.first_receive_ms.get_or_insert_with(now_ms);
            m.receipt = Some(format!(
                "rh-{}-{}-{}",
                m.id,
                m.receives,
                rand::random::<u32>()
            ));
            m.visible_at = now + Duration::from_secs(u64::from(visibility));
            out.push(m.clone());
            i += 1;
        }
        if let (Some((dlq, _)), false) = (q.redrive.clone(), dead.is_empty()) {
            s.queues.get_mut(&dlq).unwrap().messages.extend(dead);
        }
        out
    }

    /// Deletes by receipt handles (the newest of each message only);
    /// returns how many went.
    pub fn delete(&self, queue: &str, receipts: &[String]) -> usize {
        let mut s = self.state.lock().unwrap();
        let q = s.queues.get_mut(queue).unwrap();
        let before = q.messages.len();
        q.messages
            .retain(|m| m.receipt.as_ref().is_none_or(|r| !receipts.contains(r)));
        before - q.messages.len()
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let target = req
            .headers()
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let (status, content_type, text) = match target.split_once('.') {
            Some((service, action)) => {
                let input: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let answer = match service {
                    "AmazonSQS" => self.sqs(action, &input).await,
                    "secretsmanager" => self.secrets(action, &input),
                    "TrentService" => self.kms(action, &input),
                    _ => Err(("UnknownOperationException", format!("no service {service}"))),
                };
                let json_type = if service == "AmazonSQS" { "1.0" } else { "1.1" };
                match answer {
                    Ok(v) => (
                        200,
                        format!("application/x-amz-json-{json_type}"),
                        v.to_string(),
                    ),
                    Err((code, message)) => (
                        400,
                        format!("application/x-amz-json-{json_type}"),
                        json!({"__type": code, "message": message}).to_string(),
                    ),
                }
            }
            // STS: the query protocol.
            None if String::from_utf8_lossy(&body).contains("Action=GetCallerIdentity") => (
                200,
                "text/xml".to_owned(),
                format!(
                    "<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><GetCallerIdentityResult>\
                     <Arn>{CALLER_ARN}</Arn><UserId>AIDASOAK</UserId><Account>{ACCOUNT}</Account>\
                     </GetCallerIdentityResult><ResponseMetadata><RequestId>soak</RequestId></ResponseMetadata></GetCallerIdentityResponse>"
                ),
            ),
            None => (400, "text/plain".to_owned(), "unknown request".to_owned()),
        };
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("x-amzn-requestid", "soak")
            .body(Full::new(Bytes::from(text)))
            .unwrap()
    }

    fn queue_name(&self, input: &Value) -> Result<String, (&'static str, String)> {
        let url = input["QueueUrl"].as_str().unwrap_or("");
        let name = url.rsplit('/').next().unwrap_or("").to_owned();
        if self.state.lock().unwrap().queues.contains_key(&name) {
            Ok(name)
        } else {
            Err((
                "com.amazonaws.sqs#QueueDoesNotExist",
                format!("no queue at {url}"),
            ))
        }
    }

    async fn sqs(&self, action: &str, input: &Value) -> Result<Value, (&'static str, String)> {
        match action {
            "GetQueueUrl" => {
                let name = input["QueueName"].as_str().unwrap_or("");
                if self.state.lock().unwrap().queues.contains_key(name) {
                    Ok(json!({"QueueUrl": self.queue_url(name)}))
                } else {
                    Err((
                        "com.amazonaws.sqs#QueueDoesNotExist",
                        format!("no queue {name}"),
                    ))
                }
            }
            "GetQueueAttributes" => {
                let name = self.queue_name(input)?;
                let s = self.state.lock().unwrap();
                let q = &s.queues[&name];
                let mut attrs = json!({
                    "QueueArn": q.arn(),
                    "VisibilityTimeout": q.visibility_timeout.to_string(),
                    "ApproximateNumberOfMessages": q.messages.len().to_string(),
                });
                if let Some((dlq, n)) = &q.redrive {
                    attrs["RedrivePolicy"] = json!(
                        json!({"deadLetterTargetArn": arn(dlq), "maxReceiveCount": n}).to_string()
                    );
                }
                Ok(json!({"Attributes": attrs}))
            }
            "ReceiveMessage" => {
                let name = self.queue_name(input)?;
                let max = input["MaxNumberOfMessages"]
                    .as_u64()
                    .unwrap_or(1)
                    .clamp(1, 10) as usize;
                let wait = input["WaitTimeSeconds"].as_u64().unwrap_or(0).min(20);
                let visibility = match input["VisibilityTimeout"].as_u64() {
                    Some(v) => v as u32,
                    None => self.state.lock().unwrap().queues[&name].visibility_timeout,
                };
                let until = Instant::now() + Duration::from_secs(wait);
                loop {
                    let got = self.receive(&name, max, visibility);
                    if !got.is_empty() || Instant::now() >= until {
                        return Ok(
                            json!({"Messages": got.iter().map(Message::wire).collect::<Vec<_>>()}),
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
            "DeleteMessageBatch" => {
                let name = self.queue_name(input)?;
                let entries = input["Entries"].as_array().cloned().unwrap_or_default();
                let receipts: Vec<String> = entries
                    .iter()
                    .filter_map(|e| e["ReceiptHandle"].as_str().map(str::to_owned))
                    .collect();
                self.delete(&name, &receipts);
                Ok(
                    json!({"Successful": entries.iter().map(|e| json!({"Id": e["Id"]})).collect::<Vec<_>>(), "Failed": []}),
                )
            }
            "ChangeMessageVisibilityBatch" => {
                let name = self.queue_name(input)?;
                let mut s = self.state.lock().unwrap();
                let q = s.queues.get_mut(&name).unwrap();
                let now = Instant::now();
                let (mut ok, mut failed) = (Vec::new(), Vec::new());
                for e in input["Entries"].as_array().cloned().unwrap_or_default() {
                    let receipt = e["ReceiptHandle"].as_str().unwrap_or("");
                    let seconds = e["VisibilityTimeout"].as_u64().unwrap_or(0);
                    let found = q
                        .messages
                        .iter_mut()
                        .find(|m| m.receipt.as_deref() == Some(receipt));
                    match found {
                        _ if seconds > 43_200 => failed.push(json!({"Id": e["Id"], "SenderFault": true, "Code": "InvalidParameterValue", "Message": "VisibilityTimeout over 43200"})),
                        Some(m) if m.visible_at > now => {
                            m.visible_at = now + Duration::from_secs(seconds);
                            ok.push(json!({"Id": e["Id"]}));
                        }
                        Some(_) => failed.push(json!({"Id": e["Id"], "SenderFault": true, "Code": "MessageNotInflight", "Message": "the message is not in flight"})),
                        None => failed.push(json!({"Id": e["Id"], "SenderFault": true, "Code": "ReceiptHandleIsInvalid", "Message": "an older receipt handle"})),
                    }
                }
                Ok(json!({"Successful": ok, "Failed": failed}))
            }
            "SendMessageBatch" => {
                let name = self.queue_name(input)?;
                let mut s = self.state.lock().unwrap();
                let mut ok = Vec::new();
                for e in input["Entries"].as_array().cloned().unwrap_or_default() {
                    s.next_id += 1;
                    let body = e["MessageBody"].as_str().unwrap_or("").to_owned();
                    let mut m = Message::new(format!("dlq-{}", s.next_id), body.clone(), now_ms());
                    if let Some(attrs) = e["MessageAttributes"].as_object() {
                        for (k, v) in attrs {
                            m.attributes.insert(
                                k.clone(),
                                (
                                    v["DataType"].as_str().unwrap_or("String").to_owned(),
                                    v["StringValue"].as_str().unwrap_or("").to_owned(),
                                ),
                            );
                        }
                    }
                    ok.push(json!({"Id": e["Id"], "MessageId": m.id, "MD5OfMessageBody": md5_hex(&body)}));
                    s.queues.get_mut(&name).unwrap().messages.push(m);
                }
                Ok(json!({"Successful": ok, "Failed": []}))
            }
            other => Err((
                "UnsupportedOperation",
                format!("the soak does not emulate {other}"),
            )),
        }
    }

    fn secrets(&self, action: &str, input: &Value) -> Result<Value, (&'static str, String)> {
        let id = input["SecretId"].as_str().unwrap_or("");
        match action {
            "GetSecretValue" => match self.state.lock().unwrap().secrets.get(id) {
                Some(v) => Ok(json!({
                    "ARN": format!("arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:{id}"),
                    "Name": id, "SecretString": v, "VersionId": "v", "VersionStages": ["AWSCURRENT"],
                    "CreatedDate": self.started.elapsed().as_secs_f64(),
                })),
                None => Err(("ResourceNotFoundException", format!("no secret {id}"))),
            },
            other => Err((
                "UnsupportedOperation",
                format!("the soak does not emulate {other}"),
            )),
        }
    }

    fn kms(&self, action: &str, input: &Value) -> Result<Value, (&'static str, String)> {
        let context = input["EncryptionContext"].clone();
        match action {
            "GenerateDataKey" => {
                if input["KeyId"].as_str() != Some(KMS_KEY_ARN) {
                    return Err(("NotFoundException", "no such key".into()));
                }
                let plain: [u8; 32] = rand::random();
                let wrapped: Vec<u8> =
                    [b"soak-kms:".as_slice(), &rand::random::<[u8; 16]>()].concat();
                self.state
                    .lock()
                    .unwrap()
                    .data_keys
                    .insert(wrapped.clone(), (plain.to_vec(), context));
                Ok(
                    json!({"KeyId": KMS_KEY_ARN, "Plaintext": B64.encode(plain), "CiphertextBlob": B64.encode(wrapped)}),
                )
            }
            "Decrypt" => {
                let blob = B64
                    .decode(input["CiphertextBlob"].as_str().unwrap_or(""))
                    .unwrap_or_default();
                match self.state.lock().unwrap().data_keys.get(&blob) {
                    Some((plain, ctx)) if *ctx == context => Ok(json!({
                        "KeyId": KMS_KEY_ARN, "Plaintext": B64.encode(plain), "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
                    })),
                    _ => Err((
                        "InvalidCiphertextException",
                        "not a blob of this key and context".into(),
                    )),
                }
            }
            other => Err((
                "UnsupportedOperation",
                format!("the soak does not emulate {other}"),
            )),
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
