//! A Lambda Runtime API on 127.0.0.1 that hands out queued events to any
//! number of function processes (as Lambda does to its execution
//! environments) and records their answers, to run the real binary.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// How an invocation ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The function's response body.
    Response(serde_json::Value),
    /// The function reported an error (`/error`).
    Error(String),
}

#[derive(Default)]
struct State {
    queue: VecDeque<(String, Bytes)>,
    outcomes: HashMap<String, Outcome>,
    init_errors: Vec<String>,
}

/// A running Runtime API.
pub struct RuntimeApi {
    pub port: u16,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl RuntimeApi {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state: Arc<Mutex<State>> = Arc::default();
        let state2 = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state2.clone();
                tokio::spawn(http1::Builder::new().serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |r| route(r, state.clone())),
                ));
            }
        });
        Self { port, state, task }
    }

    /// Queues one event under `request_id`.
    pub fn push(&self, request_id: &str, event: &impl serde::Serialize) {
        let body = Bytes::from(serde_json::to_vec(event).unwrap());
        self.state
            .lock()
            .unwrap()
            .queue
            .push_back((request_id.to_owned(), body));
    }

    /// Waits until `n` invocations have ended; panics after `limit`, or when
    /// `alive` says a function process has exited (a failed cold start).
    pub async fn wait_for(
        &self,
        n: usize,
        limit: Duration,
        mut alive: impl FnMut() -> Result<(), String>,
    ) -> HashMap<String, Outcome> {
        let deadline = Instant::now() + limit;
        loop {
            {
                let s = self.state.lock().unwrap();
                assert!(s.init_errors.is_empty(), "init failed: {:?}", s.init_errors);
                if s.outcomes.len() >= n {
                    return s.outcomes.clone();
                }
                assert!(
                    Instant::now() < deadline,
                    "only {} of {n} invocations ended within {limit:?}",
                    s.outcomes.len()
                );
            }
            if let Err(why) = alive() {
                panic!("{why}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn route(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    if path.ends_with("/invocation/next") {
        // Long poll: wait for an event (the process is killed at the end).
        let (id, event) = loop {
            if let Some(next) = state.lock().unwrap().queue.pop_front() {
                break next;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let deadline = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            + 60_000;
        return Ok(Response::builder()
            .header("Lambda-Runtime-Aws-Request-Id", id)
            .header("Lambda-Runtime-Deadline-Ms", deadline.to_string())
            .header(
                "Lambda-Runtime-Invoked-Function-Arn",
                "arn:aws:lambda:us-east-1:000000000000:function:login-etl",
            )
            .header(
                "Lambda-Runtime-Trace-Id",
                "Root=1-00000000-000000000000000000000000",
            )
            .body(Full::new(event))
            .unwrap());
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).into_owned();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut s = state.lock().unwrap();
    match parts.as_slice() {
        [_, "runtime", "invocation", id, "response"] => {
            let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
            s.outcomes
                .insert((*id).to_owned(), Outcome::Response(value));
        }
        [_, "runtime", "invocation", id, "error"] => {
            s.outcomes.insert((*id).to_owned(), Outcome::Error(text));
        }
        _ => s.init_errors.push(format!("{path}: {text}")),
    }
    Ok(Response::builder()
        .status(202)
        .body(Full::new(Bytes::new()))
        .unwrap())
}
