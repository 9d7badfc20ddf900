//! A TCP proxy on 127.0.0.1 in front of PostgreSQL that counts round trips:
//! the times a client had to wait for the server's answer before it could
//! send more.
//!
//! Once armed, it holds the server's answers back, so a client that
//! pipelines sends everything it can before it sees any answer. It hands
//! the held answers over (one round trip) only when the client cannot go on
//! without them:
//! - the client sent `COMMIT` (or `ROLLBACK`): the transaction's last round
//!   trip, its answer; answers then pass until the client sends again;
//! - they end a transaction with no `COMMIT` (a statement's
//!   CommandComplete, then ReadyForQuery, idle): a statement that was its
//!   transaction's only one, committed by its Sync (the INSERT path's
//!   one-statement write), whose answer the client waits for; counted as
//!   that transaction's COMMIT;
//! - they complete a statement's description (ParameterDescription, then
//!   ReadyForQuery): only a prepare asks for one, and the client waits for
//!   it to bind;
//! - they hold a CopyInResponse: the protocol has the client wait for it
//!   before it sends the COPY's data;
//! - the client has sent nothing for [`STALL`] while answers wait: it is
//!   waiting on one of them, whatever it is. This is the round trip a test
//!   exists to catch; the bound only decides how soon it is seen (a client
//!   that pipelines never meets it).
//!
//! Counting is exact either way: a client that needs an answer cannot get
//! it without one of these releases, and each release is one round trip.
//! SSL and GSS encryption requests are answered "no" by the proxy itself,
//! so the protocol stays readable.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long the client may send nothing while answers are held before the
/// proxy takes it as waiting for them.
pub const STALL: Duration = Duration::from_secs(3);

/// Why held answers were handed over: one round trip each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// The client sent COMMIT or ROLLBACK, or a transaction ended without
    /// one (its statement's Sync); this is its answer.
    Commit,
    /// A prepared statement's description.
    Describe,
    /// The COPY's CopyInResponse.
    CopyIn,
    /// The client stopped sending while answers were held.
    Stall,
}

#[derive(Default)]
struct Shared {
    armed: bool,
    turns: Vec<Turn>,
}

/// A running proxy; every connection through it is counted once armed.
pub struct TurnCounter {
    pub port: u16,
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
}

impl TurnCounter {
    pub async fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared: Arc<Mutex<Shared>> = Arc::default();
        let shared2 = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, upstream_port, shared2.clone()));
            }
        });
        Self { port, shared, task }
    }

    /// Counts from now on (the connection's own setup is not counted), from
    /// zero.
    pub fn count_from_now(&self) {
        let mut shared = self.shared.lock().unwrap();
        shared.armed = true;
        shared.turns.clear();
    }

    /// The round trips since [`count_from_now`](Self::count_from_now), in
    /// order.
    pub fn turns(&self) -> Vec<Turn> {
        self.shared.lock().unwrap().turns.clone()
    }
}

impl Drop for TurnCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the client side tells the server side, in order.
enum Event {
    /// Answer this byte to the client (its SSL or GSS request, refused).
    Reply(u8),
    /// The client is sending (more requests: answers are held again).
    Sending,
    /// The client sent COMMIT or ROLLBACK.
    Commit,
}

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;

/// Splits a byte stream into protocol messages: untyped ones (length
/// first) while `startup`, then typed ones (a type byte, then the length).
struct Framer {
    buf: Vec<u8>,
    startup: bool,
}

impl Framer {
    /// The next whole message: its type (`None` for an untyped one) and
    /// its bytes.
    fn next(&mut self) -> Option<(Option<u8>, Vec<u8>)> {
        let head = if self.startup { 0 } else { 1 };
        let len_at = self.buf.get(head..head + 4)?;
        let len = i32::from_be_bytes(len_at.try_into().unwrap()) as usize;
        let total = head + len;
        if self.buf.len() < total {
            return None;
        }
        let msg: Vec<u8> = self.buf.drain(..total).collect();
        Some(((!self.startup).then(|| msg[0]), msg))
    }
}

async fn relay(client: TcpStream, upstream_port: u16, shared: Arc<Mutex<Shared>>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
        return;
    };
    let (mut cr, cw) = client.into_split();
    let (sr, mut sw) = server.into_split();
    let (events, received) = mpsc::unbounded_channel();
    let up = async move {
        let mut framer = Framer {
            buf: Vec::new(),
            startup: true,
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            framer.buf.extend_from_slice(&buf[..n]);
            let (mut forward, mut ends) = (Vec::new(), false);
            while let Some((kind, msg)) = framer.next() {
                if kind.is_none() {
                    let code = msg
                        .get(4..8)
                        .map(|c| i32::from_be_bytes(c.try_into().unwrap()));
                    if matches!(code, Some(SSL_REQUEST | GSSENC_REQUEST)) {
                        let _ = events.send(Event::Reply(b'N'));
                        continue;
                    }
                    framer.startup = false;
                }
                if kind == Some(b'Q') {
                    let text = String::from_utf8_lossy(&msg[5..])
                        .trim_start()
                        .to_ascii_uppercase();
                    ends |= text.starts_with("COMMIT") || text.starts_with("ROLLBACK");
                }
                forward.extend_from_slice(&msg);
            }
            if forward.is_empty() {
                continue;
            }
            // Told before the server can answer what is forwarded.
            let _ = events.send(Event::Sending);
            if ends {
                let _ = events.send(Event::Commit);
            }
            if sw.write_all(&forward).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down(sr, cw, received, shared) => {}
    }
}

/// The server's side: answers pass, or are held and handed over as the
/// module's documentation says.
async fn down(
    mut sr: tokio::net::tcp::OwnedReadHalf,
    mut cw: tokio::net::tcp::OwnedWriteHalf,
    mut events: mpsc::UnboundedReceiver<Event>,
    shared: Arc<Mutex<Shared>>,
) {
    let mut framer = Framer {
        buf: Vec::new(),
        startup: false,
    };
    let mut buf = vec![0u8; 64 * 1024];
    let (mut held, mut holding, mut described) = (Vec::new(), false, false);
    // A statement ran (CommandComplete) since the last release.
    let mut completed = false;
    let mut last_sent = Instant::now();
    let counted = |turn: Turn| shared.lock().unwrap().turns.push(turn);
    loop {
        let waiting = holding && !held.is_empty();
        let release = tokio::select! {
            // Events first: one sent before a request reaches the server is
            // seen before that request's answer.
            biased;
            event = events.recv() => match event {
                None => return,
                Some(Event::Reply(byte)) => {
                    if cw.write_all(&[byte]).await.is_err() {
                        return;
                    }
                    None
                }
                Some(Event::Sending) => {
                    last_sent = Instant::now();
                    holding = shared.lock().unwrap().armed;
                    None
                }
                Some(Event::Commit) if holding => {
                    holding = false;
                    Some(Turn::Commit)
                }
                Some(Event::Commit) => None,
            },
            _ = tokio::time::sleep_until(last_sent + STALL), if waiting => Some(Turn::Stall),
            read = sr.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                framer.buf.extend_from_slice(&buf[..n]);
                if !holding {
                    while framer.next().is_some() {}
                    if cw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    continue;
                }
                held.extend_from_slice(&buf[..n]);
                let mut release = None;
                while let Some((kind, msg)) = framer.next() {
                    match kind {
                        Some(b't') => described = true,
                        Some(b'C') => completed = true,
                        // ReadyForQuery, idle, after a statement ran: its
                        // transaction ended (a prepare runs none).
                        Some(b'Z') if completed && msg.get(5) == Some(&b'I') => {
                            (described, completed, holding) = (false, false, false);
                            release = Some(Turn::Commit);
                        }
                        Some(b'Z') if described => {
                            described = false;
                            release = Some(Turn::Describe);
                        }
                        Some(b'G') => release = Some(Turn::CopyIn),
                        _ => {}
                    }
                }
                release
            }
        };
        if let Some(turn) = release {
            completed = false;
            counted(turn);
            if cw.write_all(&held).await.is_err() {
                return;
            }
            held.clear();
            // A stalled client is not timed again until it sends.
            last_sent = Instant::now();
        }
    }
}
