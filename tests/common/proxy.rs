//! A TCP proxy on 127.0.0.1 in front of PostgreSQL that cuts chosen
//! connections at a chosen point, to test what happens when the network
//! fails in the middle of a batch. It counts what it did, so a test can
//! check that the cut fired where it meant it to.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What to do with one proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Pass everything through.
    Never,
    /// Close both sides once the client has sent this many bytes (the
    /// request in flight never completes, so the server executes nothing).
    ClientToServerAfter(u64),
    /// Once the client has sent this many bytes, close both sides as soon as
    /// the server answers: the server has executed (and committed) the
    /// statement, the client never learns it.
    ReplyAfterRequest(u64),
    /// Close both sides instead of forwarding the first chunk from the
    /// client that contains this text (e.g. the COMMIT never arrives).
    BeforeText(&'static str),
    /// Forward the first chunk from the client that contains this text,
    /// swallow every answer from then on, and close both sides once the
    /// server has answered that command (e.g. the COMMIT is executed, its
    /// answer is lost).
    ReplyAfterText(&'static str),
    /// The same for a statement that is its transaction's only one (the
    /// INSERT path's one-statement write): close both sides once the
    /// server is ready again, idle (its Sync committed the statement), the
    /// answer lost.
    ReplyAfterReady(&'static str),
}

/// ReadyForQuery, idle: a transaction ended, the server waits for more.
const READY_IDLE: &str = "Z\0\0\0\x05I";

/// What the proxy did, for assertions.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections accepted.
    pub accepted: AtomicUsize,
    /// For each cut that fired: bytes the client had sent (and the server
    /// had received) on that connection when it fired.
    pub cuts: Mutex<Vec<u64>>,
}

/// A running proxy. Each new connection takes the next plan entry; when the
/// plan is empty, connections pass through.
pub struct Proxy {
    pub port: u16,
    plan: Arc<Mutex<VecDeque<Cut>>>,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let plan: Arc<Mutex<VecDeque<Cut>>> = Arc::default();
        let counters: Arc<Counters> = Arc::default();
        let (plan2, counters2) = (plan.clone(), counters.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counters2.accepted.fetch_add(1, Ordering::SeqCst);
                let cut = plan2.lock().unwrap().pop_front().unwrap_or(Cut::Never);
                tokio::spawn(relay(client, upstream_port, cut, counters2.clone()));
            }
        });
        Self {
            port,
            plan,
            counters,
            task,
        }
    }

    pub fn plan(&self, cuts: &[Cut]) {
        self.plan.lock().unwrap().extend(cuts.iter().copied());
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    /// Bytes the client had sent when each fired cut fired, in order.
    pub fn cuts(&self) -> Vec<u64> {
        self.counters.cuts.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

async fn relay(client: TcpStream, upstream_port: u16, cut: Cut, counters: Arc<Counters>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let sent = Arc::new(AtomicU64::new(0));
    // Set once the request that arms a reply cut has gone through.
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (sent2, armed2, counters2) = (sent.clone(), armed.clone(), counters.clone());
    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let before = sent2.load(Ordering::SeqCst);
            let total = before + n as u64;
            match cut {
                Cut::ClientToServerAfter(limit) if total >= limit => {
                    // Forward only up to the limit, then drop: a truncated message.
                    let keep = (limit - before) as usize;
                    let _ = sw.write_all(&buf[..keep]).await;
                    sent2.store(limit, Ordering::SeqCst);
                    counters2.cuts.lock().unwrap().push(limit);
                    return;
                }
                Cut::BeforeText(text) if contains(&buf[..n], text) => {
                    counters2.cuts.lock().unwrap().push(before);
                    return;
                }
                Cut::ReplyAfterRequest(limit) if total >= limit => {
                    armed2.store(true, Ordering::SeqCst)
                }
                Cut::ReplyAfterText(text) | Cut::ReplyAfterReady(text)
                    if contains(&buf[..n], text) =>
                {
                    armed2.store(true, Ordering::SeqCst)
                }
                _ => {}
            }
            sent2.store(total, Ordering::SeqCst);
            if sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut swallowed: Vec<u8> = Vec::new();
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if armed.load(Ordering::SeqCst) {
                swallowed.extend_from_slice(&buf[..n]);
                // ReplyAfterText waits, swallowing, until the server has
                // answered the text's command (its tag is the same word), so
                // the close cannot stop the server before it executed it
                // (the text may end with the statement's `;`; the tag has none).
                let answered = match cut {
                    Cut::ReplyAfterText(text) => {
                        let tag = text.trim_end_matches(';');
                        if !contains(&swallowed, tag) && contains(&swallowed, "ROLLBACK") {
                            // A COMMIT sent behind a failed statement (a COPY
                            // that aborted, its COMMIT pipelined with it) is
                            // answered ROLLBACK: not the command the cut waits
                            // for. Its answers go through, and the cut waits
                            // for the next chunk with the text.
                            armed.store(false, Ordering::SeqCst);
                            if cw.write_all(&swallowed).await.is_err() {
                                return;
                            }
                            swallowed.clear();
                            continue;
                        }
                        contains(&swallowed, tag)
                    }
                    // Its statement completed (its tag), then its Sync committed.
                    Cut::ReplyAfterReady(_) => {
                        contains(&swallowed, "SELECT 1\0") && contains(&swallowed, READY_IDLE)
                    }
                    _ => true,
                };
                if answered {
                    let at = sent.load(Ordering::SeqCst);
                    counters.cuts.lock().unwrap().push(at);
                    return;
                }
                continue;
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Whichever side ends first ends the connection (both halves are dropped).
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}
