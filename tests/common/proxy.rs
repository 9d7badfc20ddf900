//! A TCP proxy on 127.0.0.1 in front of PostgreSQL that cuts chosen
//! connections at a chosen point, to test what happens when the network
//! fails in the middle of a batch.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
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
}

/// A running proxy. Each new connection takes the next plan entry; when the
/// plan is empty, connections pass through.
pub struct Proxy {
    pub port: u16,
    plan: Arc<Mutex<VecDeque<Cut>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let plan: Arc<Mutex<VecDeque<Cut>>> = Arc::default();
        let plan2 = plan.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let cut = plan2.lock().unwrap().pop_front().unwrap_or(Cut::Never);
                tokio::spawn(relay(client, upstream_port, cut));
            }
        });
        Self { port, plan, task }
    }

    pub fn plan(&self, cuts: &[Cut]) {
        self.plan.lock().unwrap().extend(cuts.iter().copied());
    }

    pub fn remaining(&self) -> usize {
        self.plan.lock().unwrap().len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, upstream_port: u16, cut: Cut) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let sent = Arc::new(AtomicU64::new(0));
    let sent2 = sent.clone();
    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let total = sent2.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
            if let Cut::ClientToServerAfter(limit) = cut
                && total >= limit
            {
                // Forward only up to the limit, then drop: a truncated message.
                let keep = n - (total - limit) as usize;
                let _ = sw.write_all(&buf[..keep]).await;
                return;
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if let Cut::ReplyAfterRequest(limit) = cut
                && sent.load(Ordering::SeqCst) >= limit
            {
                return;
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
