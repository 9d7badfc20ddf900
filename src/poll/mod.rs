//! `login-etl poll`: the function as a long-running SQS consumer (ECS,
//! Kubernetes, a VM), with the very same handler as the Lambda.
//!
//! Each of `--concurrency` workers loops: gather a batch as the
//! event-source mapping does ([`queue::Queue::gather`]), hand it to the
//! handler on a database connection of its own, delete what the handler
//! finished. The sequence of one batch:
//!
//! 1. receive (visibility = the queue's, or `--visibility-timeout`); its
//!    receipt handles are leased ([`Leases`]);
//! 2. while the handler runs, a heartbeat renews the visibility of the
//!    leased messages a third of it after the call that granted the lease
//!    was sent, without waiting for answers or for other batches, so
//!    nothing is redelivered while it is being written, however slowly SQS
//!    answers;
//! 3. the handler validates, masks, writes and COMMITs; rejects go to the
//!    DLQ; after an infrastructure failure it backs the records off, and
//!    releases their leases first, so no heartbeat can shorten a backoff;
//! 4. every lease of the batch is released, then the messages the handler
//!    finished (written, duplicates, rejects whose DLQ copy SQS accepted,
//!    erased users) are deleted with `DeleteMessageBatch`; the reported
//!    failures stay in the queue and come back after their visibility.
//!
//! So a message is deleted only after the COMMIT that wrote it (or the DLQ
//! send that moved it). `kill -9` at any point loses nothing (undeleted
//! messages come back after the visibility timeout) and doubles nothing (a
//! row already committed counts as a duplicate then, `ON CONFLICT`).
//!
//! SIGTERM or SIGINT stops the receives (a long poll is abandoned; what it
//! would have returned stays invisible until its visibility timeout), lets
//! the batches in flight finish within `--grace-period`, and exits 0. A
//! batch's own time limit (`--batch-timeout`) is shorter than the grace
//! period, so a batch in flight ends (written, or backed off) within it. A
//! second signal stops at once.
//!
//! FIFO queues: SQS returns no message of a message group while another
//! of the group is in flight, and the heartbeat keeps a batch in flight
//! until its messages are deleted or released: one batch per group at a
//! time, in order, whatever the concurrency.

pub mod health;
mod options;
pub use options::outage_warning;
pub mod queue;

pub use options::{
    DEFAULT_BATCH_SIZE, DEFAULT_BATCH_TIMEOUT_SECONDS, DEFAULT_CONCURRENCY,
    DEFAULT_GRACE_PERIOD_SECONDS, PollOptions, PollError,
};

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::signal::unix::Signal;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::error::HandlerError;
use crate::ingest::backoff::{BatchLease, Leases};
use crate::ingest::event::SqsBatch;
use crate::ingest::handler::{BatchHandler, Deadline, Outcome};
use health::{Health, Part};
use queue::{Gathered, Granted, Queue};

/// The shortest time between two renewals of a batch's leases.
const MIN_BEAT: Duration = Duration::from_millis(500);
/// A batch's renewals in flight at once, at most (SQS not answering).
const MAX_RENEWALS_IN_FLIGHT: usize = 3;
/// Pause after a failed receive, doubled up to [`MAX_RECEIVE_PAUSE`].
const RECEIVE_PAUSE: Duration = Duration::from_secs(1);
const MAX_RECEIVE_PAUSE: Duration = Duration::from_secs(30);

/// What the consumer did, reported when it stops.
#[derive(Debug, Default)]
pub struct Stats {
    /// Batches handled.
    pub batches: AtomicU64,
    /// Messages received.
    pub received: AtomicU64,
    /// Messages deleted after the handler finished them.
    pub deleted: AtomicU64,
    /// Finished messages SQS did not delete (redelivered, then duplicates).
    pub not_deleted: AtomicU64,
    /// Messages left in the queue (reported failures, or a failed batch).
    pub left: AtomicU64,
    /// Heartbeat renewals sent when no renewal had been confirmed within
    /// the visibility timeout (the lease had run out, at the latest then).
    pub late_renewals: AtomicU64,
}

impl Stats {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

struct Worker {
    handler: BatchHandler,
    queue: Queue,
    leases: Arc<Leases>,
    health: Arc<Health>,
    stats: Arc<Stats>,
    batch_size: usize,
    batch_window: Duration,
    batch_timeout: Duration,
}

/// What the consumer starts with: its queue, its handler, its leases and
/// its health endpoint.
struct Started {
    queue: Queue,
    dlq_from: &'static str,
    handler: crate::ingest::handler::BatchHandler,
    leases: Arc<Leases>,
    health: Arc<Health>,
}

/// The cold start: configuration, the queue's settings, the handler (the
/// secrets, the database), the health endpoint.
async fn start(options: &PollOptions) -> Result<Started, PollError> {
    let mut config = Config::for_consumer_from_env()?;
    config.source_queue_url = Some(options.queue_url.clone());
    let (queue, dlq_from) = open_queue(options, &mut config).await?;
    if let Some(said) = options::outage_warning(config.backoff, queue.info().max_receive_count) {
        warn!("{said}");
    }
    check_window(options.batch_window, queue.visibility_timeout())?;
    let leases = Arc::new(Leases::default());
    let handler = crate::startup::build_with(&config, Some(Arc::clone(&leases)))
        .await?
        .with_connections(options.concurrency);
    let refused = keys_at_start(&handler).await;
    let health = serve_health(options, &handler, refused).await?;
    Ok(Started {
        queue,
        dlq_from,
        handler,
        leases,
        health,
    })
}

/// Runs the consumer until SIGTERM or SIGINT; returns its counts. The
/// signals are heard from the first moment: one during the cold start
/// (a pod stopped while it starts) stops it cleanly, before any receive.
pub async fn run(options: PollOptions) -> Result<Arc<Stats>, PollError> {
    options.validate()?;
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| PollError::Signals(e.to_string()))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| PollError::Signals(e.to_string()))?;
    let started = tokio::select! {
        started = start(&options) => started?,
        _ = sigterm.recv() => return Ok(stopped_while_starting("SIGTERM")),
        _ = sigint.recv() => return Ok(stopped_while_starting("SIGINT")),
    };
    let Started {
        queue,
        dlq_from,
        handler,
        leases,
        health,
    } = started;

    info!(
        queue = %options.queue_url,
        fifo = queue.info().fifo,
        concurrency = options.concurrency,
        threads = tokio::runtime::Handle::current().metrics().num_workers(),
        batch_size = options.batch_size,
        batch_window_ms = options.batch_window.as_millis() as u64,
        visibility_timeout_s = queue.visibility_timeout(),
        batch_timeout_s = options.batch_timeout.as_secs(),
        grace_period_s = options.grace_period.as_secs(),
        dead_letter_queue = dlq_from,
        max_receive_count = queue.info().max_receive_count,
        health = ?options.health_addr,
        "polling"
    );
    let stats = Arc::new(Stats::default());
    let worker = Arc::new(Worker {
        handler,
        queue,
        leases,
        health: Arc::clone(&health),
        stats: Arc::clone(&stats),
        batch_size: options.batch_size,
        batch_window: options.batch_window,
        batch_timeout: options.batch_timeout,
    });
    let (stop, stopped) = watch::channel(false);
    let mut workers = JoinSet::new();
    for _ in 0..options.concurrency {
        workers.spawn(Arc::clone(&worker).work(stopped.clone()));
    }
    let signal = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    health.stopping();
    let _ = stop.send(true);
    info!(
        signal,
        grace_period_s = options.grace_period.as_secs(),
        "stopping: no more receives; finishing the batches in flight"
    );
    finish(workers, options.grace_period, (&mut sigterm, &mut sigint)).await?;
    Ok(stats)
}

/// Whether a batch's failure `class` is the configuration's (keys, schema,
/// privileges): no retry mends it, so the consumer is not ready.
fn is_configuration(class: &str) -> bool {
    crate::error::Misconfiguration::ALL
        .iter()
        .any(|m| m.class() == class)
}

/// A signal before the first receive: nothing in flight, nothing to finish.
fn stopped_while_starting(signal: &'static str) -> Arc<Stats> {
    info!(signal, "stopping before the first receive");
    Arc::new(Stats::default())
}

/// Waits for the workers to finish their batches in flight, at most
/// `grace_period`, or until a second signal.
async fn finish(
    mut workers: JoinSet<()>,
    grace_period: Duration,
    (sigterm, sigint): (&mut Signal, &mut Signal),
) -> Result<(), PollError> {
    let grace = tokio::time::sleep(grace_period);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            done = workers.join_next() => match done {
                None => break,
                Some(Err(e)) if e.is_panic() => warn!("a worker panicked; its batch's messages return after the visibility timeout"),
                Some(_) => {}
            },
            _ = &mut grace => {
                let batches = workers.len();
                workers.abort_all();
                return Err(PollError::GraceExceeded { batches, grace_s: grace_period.as_secs() });
            }
            _ = sigterm.recv() => {
                let batches = workers.len();
                workers.abort_all();
                return Err(PollError::Interrupted { batches });
            }
            _ = sigint.recv() => {
                let batches = workers.len();
                workers.abort_all();
                return Err(PollError::Interrupted { batches });
            }
        }
    }
    Ok(())
}

/// Opens the queue (its attributes) and finds the dead-letter queue:
/// `DLQ_URL`, or else the queue's `RedrivePolicy` target. Returns the queue
/// and where the DLQ came from (for the start line).
async fn open_queue(
    options: &PollOptions,
    config: &mut Config,
) -> Result<(Queue, &'static str), PollError> {
    let aws = crate::secrets::sdk_config().await;
    let queue = Queue::open(
        queue::long_poll_client(&aws),
        options.queue_url.clone(),
        options.visibility_timeout,
    )
    .await?;
    if config.dlq_url.is_some() {
        return Ok((queue, "DLQ_URL"));
    }
    config.dlq_url = queue.dead_letter_url().await?;
    if config.dlq_url.is_some() {
        return Ok((queue, "the queue's RedrivePolicy"));
    }
    warn!(
        "no dead-letter queue (no DLQ_URL, no RedrivePolicy on the queue): rejected messages stay in the queue and come back after each visibility timeout"
    );
    Ok((queue, "none"))
}

/// Says at start what every batch would be refused for, where the keys
/// or the schema are not what the database records or needs (a missing
/// erasure key, a secret replaced, a version behind, a schema not
/// migrated): at ERROR, with the fix; the reason `/readyz` gives until
/// it is mended. A database that does not answer within
/// [`KEYS_AT_START_WITHIN`] is left to the first batch and the probe.
async fn keys_at_start(handler: &BatchHandler) -> Option<String> {
    match tokio::time::timeout(
        KEYS_AT_START_WITHIN,
        handler.verify_keys(KEYS_AT_START_WITHIN),
    )
    .await
    {
        Ok(Ok(())) => None,
        Ok(Err(e)) if is_configuration(HandlerError::class_of(&e)) => {
            let class = HandlerError::class_of(&e);
            error!(error = %e, class, "every batch would be refused for the configuration: nothing is written until it is mended");
            Some(format!(
                "refused at start ({class}); the ERROR line says what to set"
            ))
        }
        Ok(Err(e)) => {
            info!(error = %e, "could not check the keys and schema against the database at start; the first batch will");
            None
        }
        Err(_) => {
            info!("the database did not answer the start's check in time; the first batch will");
            None
        }
    }
}

/// How long the start's check of the keys and schema may take.
const KEYS_AT_START_WITHIN: Duration = Duration::from_secs(10);

/// The health state, and with `--health-addr` its endpoint and the
/// database probe (a `SELECT 1` on a connection of its own, every
/// [`health::PROBE_INTERVAL`]).
async fn serve_health(
    options: &PollOptions,
    handler: &BatchHandler,
    refused_at_start: Option<String>,
) -> Result<Arc<Health>, PollError> {
    let stuck_after =
        Duration::from_secs(u64::from(queue::WAIT_SECONDS) + 60) + options.batch_timeout;
    let health = Arc::new(Health::new(stuck_after));
    health.queue(Part::Ok);
    health.refused(refused_at_start.clone());
    let Some(addr) = options.health_addr else {
        return Ok(health);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| PollError::Health {
            addr,
            cause: e.to_string(),
        })?;
    tokio::spawn(health::serve(listener, Arc::clone(&health)));
    let mut probe = handler.spare_sink().await;
    let probed = Arc::clone(&health);
    let checker = handler.key_checker();
    tokio::spawn(async move {
        let mut refused = refused_at_start;
        loop {
            probed.database(match probe.ping().await {
                Ok(()) => Part::Ok,
                Err(e) => Part::Down(e.to_string()),
            });
            // A refusal at start is asked again (a migrate, a secret
            // mended): on an idle queue no batch would clear it.
            let asked = async {
                let deadline = Instant::now() + KEYS_AT_START_WITHIN;
                probe
                    .batch_keys(&checker, Some(deadline), false)
                    .await
                    .map(|_| ())
            };
            if let Some(why) = &refused
                && matches!(
                    tokio::time::timeout(KEYS_AT_START_WITHIN, asked).await,
                    Ok(Ok(()))
                )
            {
                probed.mended(why);
                refused = None;
            }
            tokio::time::sleep(health::PROBE_INTERVAL).await;
        }
    });
    Ok(health)
}

impl Worker {
    /// Gathers and handles batches until `stop`.
    async fn work(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut pause = RECEIVE_PAUSE;
        while !*stop.borrow() {
            match self
                .queue
                .gather(self.batch_size, self.batch_window, &mut stop)
                .await
            {
                Ok(Gathered { batch, granted }) => {
                    pause = RECEIVE_PAUSE;
                    self.health.queue(Part::Ok);
                    if let Some(granted) = granted {
                        self.handle(batch, granted).await;
                    }
                }
                Err(e) => {
                    warn!(error = %e, pause_ms = pause.as_millis() as u64, "receive failed; retrying after a pause");
                    self.health.queue(Part::Down(e.to_string()));
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                    pause = (pause * 2).min(MAX_RECEIVE_PAUSE);
                }
            }
        }
    }

    /// One batch: lease, handle under the heartbeat, release, delete.
    async fn handle(&self, batch: SqsBatch, granted: Granted) {
        let handles: Vec<String> = batch
            .records()
            .filter_map(|r| r.receipt_handle.clone())
            .collect();
        Stats::add(&self.stats.received, batch.len());
        let lease = self.leases.take(handles);
        let deadline = Instant::now() + self.batch_timeout;
        let handled = {
            let work = self.handler.handle(&batch, Deadline::at(deadline));
            tokio::pin!(work);
            tokio::select! {
                result = &mut work => result,
                () = self.heartbeat(&lease, granted) => unreachable!("the heartbeat never ends"),
            }
        };
        // The heartbeat has stopped; the leases end before the deletes.
        drop(lease);
        Stats::add(&self.stats.batches, 1);
        self.health.progress();
        match handled {
            Ok(Outcome { response, summary }) => {
                let failed: HashSet<&str> = response
                    .batch_item_failures
                    .iter()
                    .map(|f| f.item_identifier.as_str())
                    .collect();
                let done: Vec<&str> = batch
                    .records()
                    .filter(|r| {
                        r.message_id
                            .as_deref()
                            .is_some_and(|id| !failed.contains(id))
                    })
                    .filter_map(|r| r.receipt_handle.as_deref())
                    .collect();
                let (deleted, not_deleted) = self.queue.delete(&done).await;
                Stats::add(&self.stats.deleted, deleted);
                Stats::add(&self.stats.not_deleted, not_deleted);
                Stats::add(&self.stats.left, failed.len());
                self.health.database(match summary.failure {
                    Some(class) => Part::Down(format!("the last batch's write failed ({class})")),
                    None => Part::Ok,
                });
                self.health
                    .refused(summary.failure.filter(|c| is_configuration(c)).map(|c| {
                        format!("the last batch was refused ({c}); the WARN line says what to set")
                    }));
            }
            Err(e) => {
                Stats::add(&self.stats.left, batch.len());
                warn!(
                    error = %e,
                    records = batch.len(),
                    "batch failed; its messages return to the queue after the visibility timeout"
                );
                self.health
                    .database(Part::Down(format!("the last batch failed ({})", e.class())));
                if is_configuration(e.class()) {
                    self.health.refused(Some(format!(
                        "the last batch was refused ({}); the WARN line says what to set",
                        e.class()
                    )));
                }
            }
        }
    }

    /// Renews the visibility of the batch's leased messages, without
    /// waiting for other batches (see [`Leases`]). Never returns.
    ///
    /// Each renewal is timed from the *sending* of the one before (or of the
    /// receive that granted the lease), a third of the visibility after it
    /// ([`next_beat`]), and does not wait for the one before to be answered.
    /// A slow SQS answer (a busy machine, a throttled endpoint, a stuck
    /// connection) then delays no later renewal: a renewal has two thirds
    /// of the shortest possible lease to reach SQS. A batch whose receive
    /// (long poll, then batch window) took a third of the visibility or
    /// more is renewed at once, since its leases may have begun any time
    /// during it.
    async fn heartbeat(&self, lease: &BatchLease, mut granted: Granted) {
        let seconds = self.queue.visibility_timeout();
        let visibility = Duration::from_secs(u64::from(seconds));
        let mut last_sent = granted.sent;
        let mut in_flight: JoinSet<(Granted, usize)> = JoinSet::new();
        let confirmed_renewal = |joined: Result<(Granted, usize), tokio::task::JoinError>,
                                 granted: &mut Granted| {
            // A renewal whose task panicked renewed nothing we know of.
            if let Ok((renewed, confirmed)) = joined
                && confirmed > 0
                && renewed.sent > granted.sent
            {
                *granted = renewed;
            }
        };
        loop {
            tokio::select! {
                biased;
                Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                    confirmed_renewal(joined, &mut granted);
                    continue;
                }
                () = tokio::time::sleep_until(next_beat(last_sent, visibility).into()),
                    if in_flight.len() < MAX_RENEWALS_IN_FLIGHT => {}
            }
            let renewing = lease.renewing().await;
            if renewing.still.is_empty() {
                // Released (backed off): nothing of this batch is leased again.
                drop(renewing);
                return std::future::pending().await;
            }
            // Answers that came while waiting count before judging lateness.
            while let Some(joined) = in_flight.try_join_next() {
                confirmed_renewal(joined, &mut granted);
            }
            let sent = Instant::now();
            if let Some(late) = sent.checked_duration_since(granted.answered + visibility) {
                Stats::add(&self.stats.late_renewals, 1);
                warn!(
                    late_ms = late.as_millis() as u64,
                    messages = renewing.still.len(),
                    "no renewal of these messages' lease was confirmed within the visibility timeout (the process was starved of CPU, or SQS answered slowly): they may be received again while their batch is in flight (their rows are still written once); give the consumer more CPU or raise --visibility-timeout"
                );
            }
            last_sent = sent;
            let queue = self.queue.clone();
            in_flight.spawn(async move {
                let still: Vec<&str> = renewing.still.iter().map(String::as_str).collect();
                let confirmed = queue.extend(&still, seconds).await;
                drop(renewing);
                (
                    Granted {
                        sent,
                        answered: Instant::now(),
                    },
                    confirmed,
                )
            });
        }
    }
}

/// When to renew a lease of `visibility` whose last granting call (receive
/// or renewal) was sent at `sent`: a third of it later, which leaves two
/// thirds of the shortest possible lease for the renewal to reach SQS; at
/// least [`MIN_BEAT`] apart.
fn next_beat(sent: Instant, visibility: Duration) -> Instant {
    sent + (visibility / 3).max(MIN_BEAT)
}

/// Whether `--batch-window` leaves the heartbeat time to renew the leases
/// of a batch's first messages: they are not renewed while the batch is
/// being gathered, so the window must end well within their visibility.
fn check_window(window: Duration, visibility_s: u32) -> Result<(), PollError> {
    if window * 2 > Duration::from_secs(u64::from(visibility_s)) {
        return Err(PollError::Usage(format!(
            "--batch-window ({} s) must be at most half the visibility timeout ({visibility_s} s): the first messages of a batch would be received again while it is still being gathered; raise --visibility-timeout (or the queue's VisibilityTimeout) or shorten --batch-window",
            window.as_secs_f64()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
