//! The consumer's health endpoint (`--health-addr`), for liveness and
//! readiness probes:
//! - `GET /livez`: 200 while the receive loop makes progress (a receive or
//!   a batch finished recently), 503 when it is stuck;
//! - `GET /readyz`: 200 once the database and the queue have answered and
//!   as long as their last answers were good, 503 before, after a failure,
//!   and while stopping. The body says which part is not ready.
//!
//! The database's state comes from every batch and from a `SELECT 1` (on
//! a connection of its own) every [`PROBE_INTERVAL`], so readiness follows
//! the database while the queue is idle too.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

/// How often the database is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// The state of one dependency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Not asked yet.
    Unknown,
    /// Its last answer was good.
    Ok,
    /// Its last answer was a failure (safe to show: no secrets, no rows).
    Down(String),
}

impl State {
    fn ready(&self) -> bool {
        !self.stopping
            && self.database == Part::Ok
            && self.queue == Part::Ok
            && self.refused.is_none()
    }
}

impl Part {
    fn text(&self) -> String {
        match self {
            Part::Unknown => "not checked yet".into(),
            Part::Ok => "ok".into(),
            Part::Down(why) => format!("down: {why}"),
        }
    }
}

#[derive(Debug)]
struct State {
    database: Part,
    queue: Part,
    /// Why the last batch was refused for the configuration (keys, schema,
    /// privileges); the database probe's `SELECT 1` cannot clear it.
    refused: Option<String>,
    stopping: bool,
    progress: Instant,
}

/// What the probes report; shared by the workers, the database probe and
/// the endpoint.
#[derive(Debug)]
pub struct Health {
    state: Mutex<State>,
    /// No progress for this long: not live.
    stuck_after: Duration,
}

impl Health {
    /// `stuck_after`: the longest a healthy loop goes without progress (a
    /// long poll plus a batch's time limit, plus room).
    pub fn new(stuck_after: Duration) -> Self {
        Self {
            state: Mutex::new(State {
                database: Part::Unknown,
                queue: Part::Unknown,
                refused: None,
                stopping: false,
                progress: Instant::now(),
            }),
            stuck_after,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The database answered (or failed).
    pub fn database(&self, part: Part) {
        self.with(|s| {
            if s.database != part {
                match &part {
                    Part::Down(why) => warn!(reason = %why, "not ready: the database is down"),
                    _ => debug!("the database answers"),
                }
            }
            s.database = part;
        });
    }

    /// The queue answered (or failed); counts as progress.
    pub fn queue(&self, part: Part) {
        self.with(|s| {
            s.queue = part;
            s.progress = Instant::now();
        });
    }

    /// The last batch was refused for the configuration (`Some(why)`), or
    /// written (`None`): not ready while every batch is refused, whatever
    /// the database probe says.
    pub fn refused(&self, why: Option<String>) {
        self.with(|s| {
            if s.refused != why
                && let Some(why) = &why
            {
                warn!(reason = %why, "not ready: batches are refused for the configuration");
            }
            s.refused = why;
        });
    }

    /// The refusal `why` no longer holds (the start's check passes now):
    /// cleared, unless a batch was refused since for another reason.
    pub fn mended(&self, why: &str) {
        self.with(|s| {
            if s.refused.as_deref() == Some(why) {
                info!("the configuration refused at start is mended");
                s.refused = None;
            }
        });
    }

    /// A batch finished: progress.
    pub fn progress(&self) {
        self.with(|s| s.progress = Instant::now());
    }

    /// Shutdown began: no longer ready.
    pub fn stopping(&self) {
        self.with(|s| s.stopping = true);
    }

    /// Whether the database and the queue answered, no batch is refused
    /// for the configuration and nothing is stopping.
    #[cfg(test)]
    pub fn ready(&self) -> bool {
        self.with(|s| s.ready())
    }

    /// The answer to `GET path`: status and JSON body.
    pub fn respond(&self, path: &str) -> (StatusCode, String) {
        self.with(|s| match path {
            "/livez" => {
                let idle = s.progress.elapsed();
                let live = idle <= self.stuck_after;
                let body = serde_json::json!({
                    "live": live,
                    "seconds_since_progress": idle.as_secs(),
                });
                (ok_or_503(live), body.to_string())
            }
            "/readyz" => {
                let ready = s.ready();
                let body = serde_json::json!({
                    "ready": ready,
                    "database": s.database.text(),
                    "queue": s.queue.text(),
                    "configuration": s.refused.as_deref().map_or("ok".to_owned(), |why| format!("refused: {why}")),
                    "stopping": s.stopping,
                });
                (ok_or_503(ready), body.to_string())
            }
            _ => (
                StatusCode::NOT_FOUND,
                r#"{"error":"not found: GET /livez or /readyz"}"#.into(),
            ),
        })
    }
}

fn ok_or_503(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Serves the endpoint on `listener` until the process ends.
pub async fn serve(listener: TcpListener, health: Arc<Health>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "health endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let health = Arc::clone(&health);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (status, body) = health.respond(req.uri().path());
                let response = Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .expect("a valid response");
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_once_both_answered_and_not_while_stopping() {
        let h = Health::new(Duration::from_secs(60));
        assert_eq!(h.respond("/readyz").0, StatusCode::SERVICE_UNAVAILABLE);
        h.queue(Part::Ok);
        assert!(!h.ready(), "the database has not answered yet");
        h.database(Part::Ok);
        assert!(h.ready());
        let (status, body) = h.respond("/readyz");
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains(r#""database":"ok""#), "{body}");
        h.database(Part::Down("connection refused".into()));
        let (status, body) = h.respond("/readyz");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("down: connection refused"), "{body}");
        h.database(Part::Ok);
        assert!(h.ready());
        h.stopping();
        assert!(!h.ready());
        assert_eq!(h.respond("/other").0, StatusCode::NOT_FOUND);
    }

    #[test]
    fn not_ready_while_batches_are_refused_for_the_configuration_whatever_the_probe_says() {
        let h = Health::new(Duration::from_secs(60));
        h.queue(Part::Ok);
        h.database(Part::Ok);
        h.refused(Some("key_mismatch".into()));
        h.database(Part::Ok); // the probe's SELECT 1 still answers
        let (status, body) = h.respond("/readyz");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("refused: key_mismatch"), "{body}");
        h.refused(None); // a batch written
        assert!(h.ready());
    }

    #[test]
    fn not_live_when_the_loop_makes_no_progress() {
        let h = Health::new(Duration::from_millis(0));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(h.respond("/livez").0, StatusCode::SERVICE_UNAVAILABLE);
        let h = Health::new(Duration::from_secs(60));
        assert_eq!(h.respond("/livez").0, StatusCode::OK);
    }
}
