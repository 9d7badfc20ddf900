//! `rotate-key --jobs N`: the chunks of one phase (a listing's partitions,
//! or the vault) re-keyed side by side on N connections of their own.
//!
//! Each chunk is what it is in one stream: its own short transaction,
//! guarded by `key_version = n-1`, so a row or an entry moves exactly once
//! whichever job takes it, and a run killed at any point is finished by the
//! next one. Chunks never share a row (each names its pages of one table),
//! and each takes the row lock of the counters last, just before its
//! COMMIT: jobs wait on each other for a moment there, never in a cycle.
//!
//! The jobs are tasks of their own, so on a multi-threaded runtime (the
//! binary gives `rotate-key --jobs N` one) the HMACs of N chunks are
//! computed on N threads while the database updates N chunks.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_postgres::Client;

use super::{CHUNK_CONFLICT_RETRIES, RekeyError};
use crate::privacy::masking::Masker;
use crate::table::partitions::Segment;

/// Pages `[from, to)` of a table, re-keyed in one transaction.
#[derive(Debug, Clone)]
pub(super) struct Chunk {
    /// A partition's segment and the relation holding it; `None`: the vault.
    pub(super) rows_of: Option<(Segment, String)>,
    /// First page.
    pub(super) from: i64,
    /// Page after the last.
    pub(super) to: i64,
}

/// Connections that re-key chunks side by side; given back after each phase.
pub(super) struct Jobs {
    clients: Vec<Client>,
}

impl Jobs {
    /// Jobs on these connections (none: the run re-keys in one stream).
    pub(super) fn new(clients: Vec<Client>) -> Self {
        Self { clients }
    }

    /// Whether there is more than the run's own connection to work with.
    pub(super) fn side_by_side(&self) -> bool {
        !self.clients.is_empty()
    }

    /// Re-keys `chunks` to version `to`, each connection taking the next
    /// chunk when it is done with one; `tick` hears the entries moved so
    /// far, at most every `every`. The first failure (after
    /// [`CHUNK_CONFLICT_RETRIES`] tries of a chunk that met another transaction)
    /// stops every job after its chunk in flight and is returned; what was
    /// committed stays done. Returns the entries moved.
    pub(super) async fn run(
        &mut self,
        masker: &Masker,
        to: u16,
        chunks: VecDeque<Chunk>,
        every: Duration,
        tick: &mut (dyn FnMut(u64) + Send),
    ) -> Result<u64, RekeyError> {
        let queue = Arc::new(Mutex::new(chunks));
        let moved = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut running = JoinSet::new();
        for client in self.clients.drain(..) {
            running.spawn(job(
                client,
                masker.clone(),
                to,
                Arc::clone(&queue),
                Arc::clone(&moved),
                Arc::clone(&stop),
            ));
        }
        let mut first_error = None;
        let mut last_tick = Instant::now();
        // Zero (after every chunk, in one stream) would spin here.
        let every = every.max(Duration::from_millis(100));
        loop {
            let joined = tokio::select! {
                joined = running.join_next() => joined,
                () = tokio::time::sleep(every.saturating_sub(last_tick.elapsed())) => {
                    last_tick = Instant::now();
                    tick(moved.load(Ordering::Relaxed));
                    continue;
                }
            };
            let Some(joined) = joined else { break };
            let (client, result) =
                joined.expect("a re-key job does not panic (its chunks return errors)");
            self.clients.push(client);
            if let Err(e) = result {
                stop.store(true, Ordering::Relaxed);
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(moved.load(Ordering::Relaxed)),
        }
    }
}

/// One job: chunks from `queue` until it is empty or another job failed;
/// gives its connection back with how it ended.
async fn job(
    mut client: Client,
    masker: Masker,
    to: u16,
    queue: Arc<Mutex<VecDeque<Chunk>>>,
    moved: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> (Client, Result<(), RekeyError>) {
    loop {
        if stop.load(Ordering::Relaxed) {
            return (client, Ok(()));
        }
        let next = queue.lock().expect("no job panics").pop_front();
        let Some(chunk) = next else {
            return (client, Ok(()));
        };
        let mut tries = 0;
        let result = loop {
            let attempt = super::rekey_one(&mut client, &masker, to, &chunk).await;
            match attempt {
                Err(e) if e.is_conflict() && tries < CHUNK_CONFLICT_RETRIES => tries += 1,
                other => break other,
            }
        };
        match result {
            Ok(n) => {
                moved.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => return (client, Err(e)),
        }
    }
}
