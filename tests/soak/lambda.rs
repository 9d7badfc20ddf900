//! Lambda as the soak runs it: each execution environment is the real
//! `login-etl` binary (the bootstrap) talking to a Runtime API of its own
//! on 127.0.0.1, fed by an event-source mapping poller of its own that
//! receives from the source queue, invokes, and deletes what the answer
//! says succeeded (nothing, when the invocation failed, timed out or its
//! environment was killed: those messages come back after their visibility
//! timeout, as in SQS). An invocation that runs past the function's timeout
//! kills its environment, which then starts cold, as Lambda does.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

use super::aws::{self, Aws, Message};
use super::output::{self, PiiSearch, Seen};

/// How an invocation ended.
#[derive(Debug)]
pub enum Outcome {
    /// The function's answer.
    Response(Value),
    /// It reported an error (`/invocation/{id}/error`).
    Error,
    /// No answer: the environment was killed or the invocation timed out.
    Lost,
}

type Pending = (String, Bytes, u64, oneshot::Sender<Outcome>);

/// One environment's Runtime API.
struct RuntimeApi {
    port: u16,
    /// Invocations waiting for `/next`.
    next: tokio::sync::Mutex<mpsc::Receiver<Pending>>,
    send: mpsc::Sender<Pending>,
    /// Handed out, awaiting its answer.
    running: Mutex<Option<(String, oneshot::Sender<Outcome>)>>,
    init_errors: Mutex<Vec<String>>,
}

impl RuntimeApi {
    async fn start() -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (send, next) = mpsc::channel(4);
        let api = Arc::new(Self {
            port: listener.local_addr().unwrap().port(),
            next: tokio::sync::Mutex::new(next),
            send,
            running: Mutex::default(),
            init_errors: Mutex::default(),
        });
        let served = api.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let api = served.clone();
                tokio::spawn(http1::Builder::new().serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |r| {
                        let api = api.clone();
                        async move { Ok::<_, Infallible>(api.route(r).await) }
                    }),
                ));
            }
        });
        api
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        if path.ends_with("/invocation/next") {
            loop {
                let Some((id, body, deadline_ms, answer)) = self.next.lock().await.recv().await
                else {
                    return Response::builder()
                        .status(500)
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                };
                // One its caller gave up on (a killed environment's) is not
                // handed to the next one.
                if !answer.is_closed() {
                    *self.running.lock().unwrap() = Some((id.clone(), answer));
                    return Response::builder()
                        .header("Lambda-Runtime-Aws-Request-Id", id)
                        .header("Lambda-Runtime-Deadline-Ms", deadline_ms.to_string())
                        .header(
                            "Lambda-Runtime-Invoked-Function-Arn",
                            "arn:aws:lambda:us-east-1:000000000000:function:login-etl",
                        )
                        .header(
                            "Lambda-Runtime-Trace-Id",
                            "Root=1-00000000-000000000000000000000000",
                        )
                        .body(Full::new(body))
                        .unwrap();
                }
            }
        }
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body).into_owned();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let outcome = match parts.as_slice() {
            [_, "runtime", "invocation", id, "response"] => Some((
                id.to_string(),
                Outcome::Response(serde_json::from_str(&text).unwrap_or(Value::String(text))),
            )),
            [_, "runtime", "invocation", id, "error"] => Some((id.to_string(), Outcome::Error)),
            _ => {
                self.init_errors
                    .lock()
                    .unwrap()
                    .push(format!("{path}: {text}"));
                None
            }
        };
        if let Some((id, outcome)) = outcome {
            let mut running = self.running.lock().unwrap();
            if running.as_ref().is_some_and(|(r, _)| *r == id) {
                let (_, answer) = running.take().unwrap();
                let _ = answer.send(outcome);
            }
        }
        Response::builder()
            .status(202)
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    /// Drops the invocation in flight or waiting (its environment died):
    /// its caller sees `Lost`.
    fn abandon(&self) {
        self.running.lock().unwrap().take();
    }
}

/// How to start an environment.
#[derive(Clone)]
pub struct Launch {
    pub bin: PathBuf,
    pub env: Vec<(String, String)>,
    pub log_dir: PathBuf,
    pub pii: Arc<PiiSearch>,
}

/// Counts of one environment's poller.
#[derive(Debug, Default)]
pub struct Counts {
    pub invocations: AtomicU64,
    pub answered: AtomicU64,
    pub errors: AtomicU64,
    pub lost: AtomicU64,
    pub cold_starts: AtomicU64,
    pub deleted: AtomicU64,
    /// Answers naming an id not in the batch (which fails the batch).
    pub bad_answers: AtomicU64,
}

/// An execution environment and its poller.
pub struct Environment {
    pub index: usize,
    /// `AWS_LAMBDA_LOG_LEVEL` of this environment.
    pub level: &'static str,
    api: Arc<RuntimeApi>,
    launch: Launch,
    child: tokio::sync::Mutex<Option<Child>>,
    pub seen: Arc<Mutex<Seen>>,
    pub counts: Counts,
    /// Killed on purpose, down until a cold start.
    down: AtomicBool,
    next_request: AtomicU64,
    pub bad_ids: Mutex<BTreeSet<String>>,
}

/// The function's timeout: what the Runtime API gives as the deadline.
pub const FUNCTION_TIMEOUT: Duration = Duration::from_secs(4);

impl Environment {
    pub async fn start(index: usize, level: &'static str, launch: Launch) -> Arc<Self> {
        let env = Arc::new(Self {
            index,
            level,
            api: RuntimeApi::start().await,
            launch,
            child: tokio::sync::Mutex::new(None),
            seen: Arc::default(),
            counts: Counts::default(),
            down: AtomicBool::new(false),
            next_request: AtomicU64::new(0),
            bad_ids: Mutex::default(),
        });
        env.cold_start().await;
        env
    }

    async fn cold_start(&self) {
        let mut cmd = Command::new(&self.launch.bin);
        cmd.env_clear()
            .envs(self.launch.env.iter().map(|(k, v)| (k, v)))
            .env(
                "AWS_LAMBDA_RUNTIME_API",
                format!("127.0.0.1:{}", self.api.port),
            )
            .env("AWS_LAMBDA_LOG_LEVEL", self.level)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("the login-etl binary starts");
        let log = self
            .launch
            .log_dir
            .join(format!("function-{}.log", self.index));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            output::collect(
                stream,
                log.clone(),
                self.launch.pii.clone(),
                self.level,
                self.seen.clone(),
            );
        }
        self.counts.cold_starts.fetch_add(1, Ordering::Relaxed);
        *self.child.lock().await = Some(child);
        self.down.store(false, Ordering::SeqCst);
    }

    /// `kill -9`; the invocation in flight is lost.
    pub async fn kill(&self) {
        self.down.store(true, Ordering::SeqCst);
        if let Some(mut child) = self.child.lock().await.take() {
            let _ = child.kill().await;
        }
        self.api.abandon();
    }

    /// A cold start after a kill.
    pub async fn restart(&self) {
        if self.down.load(Ordering::SeqCst) {
            self.cold_start().await;
        }
    }

    /// Whether the process is alive (or down on purpose).
    async fn exited(&self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.lock().await;
        match child.as_mut() {
            Some(c) => c.try_wait().ok().flatten(),
            None => None,
        }
    }

    async fn invoke(&self, event: &Value) -> Outcome {
        let id = format!(
            "req-{}-{}",
            self.index,
            self.next_request.fetch_add(1, Ordering::Relaxed)
        );
        let deadline = aws::now_ms() as u64 + FUNCTION_TIMEOUT.as_millis() as u64;
        let (tx, rx) = oneshot::channel();
        if self
            .api
            .send
            .send((id, Bytes::from(event.to_string()), deadline, tx))
            .await
            .is_err()
        {
            return Outcome::Lost;
        }
        // A cold start counts against the first invocation's time too.
        let limit = FUNCTION_TIMEOUT + Duration::from_secs(3);
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Outcome::Lost,
            Err(_) => {
                // Past its timeout Lambda ends the environment.
                self.kill().await;
                self.restart().await;
                Outcome::Lost
            }
        }
    }

    /// The event-source mapping's poller for this environment, until `stop`.
    pub async fn poll(
        self: Arc<Self>,
        aws: Aws,
        queue: &'static str,
        visibility: u32,
        seed: u64,
        stop: Arc<AtomicBool>,
    ) {
        let mut rng =
            StdRng::seed_from_u64(seed ^ (self.index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        while !stop.load(Ordering::SeqCst) {
            if self.down.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            if let Some(status) = self.exited().await {
                // It died on its own (a failed cold start exits): Lambda
                // starts another.
                eprintln!(
                    "soak: function environment {} exited ({status}); starting it again",
                    self.index
                );
                self.counts.lost.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.cold_start().await;
                continue;
            }
            // A batch of 1 to 10 most of the time, up to 200 now and then,
            // gathered for up to 100 ms (the batching window); when a
            // backlog of 500 or more is waiting (a burst, or after an
            // outage), often all of it up to 1,000, as an event-source
            // mapping scales its batches: the COPY path.
            let (depth, in_flight) = aws.depth(queue);
            let waiting = depth - in_flight;
            let want = if waiting >= 500 && rng.random_bool(0.5) {
                waiting.min(1_000)
            } else if rng.random_bool(0.8) {
                rng.random_range(1..=10)
            } else {
                rng.random_range(11..=200)
            };
            let mut batch: Vec<Message> = Vec::new();
            let until = tokio::time::Instant::now() + Duration::from_millis(100);
            while batch.len() < want {
                batch.extend(aws.receive(queue, want - batch.len(), visibility));
                if batch.len() >= want || tokio::time::Instant::now() >= until {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if batch.is_empty() {
                continue;
            }
            self.counts.invocations.fetch_add(1, Ordering::Relaxed);
            let event =
                json!({"Records": batch.iter().map(|m| record(m, queue)).collect::<Vec<_>>()});
            match self.invoke(&event).await {
                Outcome::Response(answer) => {
                    self.counts.answered.fetch_add(1, Ordering::Relaxed);
                    let ids: BTreeSet<&str> = batch.iter().map(|m| m.id.as_str()).collect();
                    let failed: Option<BTreeSet<String>> =
                        answer["batchItemFailures"].as_array().map(|a| {
                            a.iter()
                                .map(|f| f["itemIdentifier"].as_str().unwrap_or("").to_owned())
                                .collect()
                        });
                    let Some(failed) = failed else {
                        self.counts.bad_answers.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    if let Some(bad) = failed.iter().find(|f| !ids.contains(f.as_str())) {
                        // An unknown or empty id fails the whole batch.
                        self.counts.bad_answers.fetch_add(1, Ordering::Relaxed);
                        self.bad_ids.lock().unwrap().insert(bad.clone());
                        continue;
                    }
                    let done: Vec<String> = batch
                        .iter()
                        .filter(|m| !failed.contains(&m.id))
                        .filter_map(|m| m.receipt().map(str::to_owned))
                        .collect();
                    let n = aws.delete(queue, &done);
                    self.counts.deleted.fetch_add(n as u64, Ordering::Relaxed);
                }
                Outcome::Error => {
                    self.counts.errors.fetch_add(1, Ordering::Relaxed);
                }
                Outcome::Lost => {
                    self.counts.lost.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    pub fn init_errors(&self) -> Vec<String> {
        self.api.init_errors.lock().unwrap().clone()
    }
}

/// One SQS record of a Lambda event, as the event-source mapping writes it.
fn record(m: &Message, queue: &str) -> Value {
    let attributes: serde_json::Map<String, Value> = m
        .attributes
        .iter()
        .map(|(k, (t, v))| {
            (
                k.clone(),
                json!({"stringValue": v, "stringListValues": [], "binaryListValues": [], "dataType": t}),
            )
        })
        .collect();
    json!({
        "messageId": m.id,
        "receiptHandle": m.receipt(),
        "body": m.body,
        "attributes": {
            "ApproximateReceiveCount": m.receives.to_string(),
            "SentTimestamp": m.sent_ms.to_string(),
            "SenderId": "AIDASOAK",
            "ApproximateFirstReceiveTimestamp": m.first_receive_ms.unwrap_or(m.sent_ms).to_string(),
        },
        "messageAttributes": attributes,
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": aws::arn(queue),
        "awsRegion": "us-east-1",
    })
}
