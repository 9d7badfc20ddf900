//! Per-message backoff after an infrastructure failure (the database is
//! down, unreachable, out of connections, too slow, or the invocation ran
//! out of time).
//!
//! Failing the invocation would make SQS redeliver the whole batch after
//! the queue's fixed visibility timeout, counting a receive each time, so
//! any outage longer than `maxReceiveCount` visibility periods would move
//! valid logins to the dead-letter queue. Instead the handler reports the
//! records in `batchItemFailures` and first extends each one's visibility
//! with `ChangeMessageVisibilityBatch`, exponentially in its
//! `ApproximateReceiveCount`: the queue rests, the receives stay few, and
//! `maxReceiveCount` can be set for the outage the deployment tolerates
//! (template parameter `OutageToleranceMinutes`).
//!
//! Schedule: the receive `n` (1-based) waits `d = min(max, base * 2^(n-1))`
//! capped at SQS's 43,200 s, with "equal jitter": a uniformly drawn value in
//! `[d - d/2, d]`, so batches that failed together do not all come back at
//! once, and each wait is at least half its ceiling (what the template's
//! arithmetic counts on). A change SQS refuses (throttled, denied, an
//! expired receipt handle) leaves that record to plain redelivery after the
//! queue's visibility timeout: logged and counted, nothing lost.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::operation::get_queue_url::GetQueueUrlError;
use aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry;
use tokio::sync::OnceCell;
use tokio::task::JoinSet;
use tracing::warn;

use crate::ingest::sqs_batch::{self, MAX_ENTRIES};

use crate::config::backoff::SQS_MAX_VISIBILITY_SECONDS;

/// Bound on the visibility changes of one invocation (also cut to the
/// invocation's deadline).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(3);

/// A uniform value in `[0, 1)` from the OS-seeded hasher keys of the
/// standard library: jitter needs no cryptographic randomness, and this
/// needs no crate.
pub fn jitter() -> f64 {
    let bits = RandomState::new().hash_one(Instant::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// `cap`, cut to end 500 ms before `deadline` (the invocation's): the bound
/// of the SQS calls an invocation makes after its write, so the response
/// still goes out in time.
pub(crate) fn before_deadline(cap: Duration, deadline: Option<Instant>) -> Duration {
    deadline.map_or(cap, |d| {
        d.saturating_duration_since(Instant::now())
            .saturating_sub(Duration::from_millis(500))
            .min(cap)
    })
}

/// `arn:aws:sqs:REGION:ACCOUNT:NAME` to (name, account): what
/// `sqs:GetQueueUrl` takes.
pub(crate) fn queue_name_and_account(arn: &str) -> Option<(&str, &str)> {
    let mut parts = arn.rsplitn(3, ':');
    let name = parts.next()?;
    let account = parts.next()?;
    (!name.is_empty() && !account.is_empty()).then_some((name, account))
}

/// Why the URL of a queue named by its ARN is not known.
#[derive(Debug)]
pub(crate) enum QueueUrlError {
    /// The ARN is no SQS queue's.
    NotAQueueArn,
    /// SQS refused `GetQueueUrl`, or did not answer.
    Sqs(Box<SdkError<GetQueueUrlError>>),
}

/// The URL of the queue `arn` names, as SQS gives it (`sqs:GetQueueUrl`,
/// in the queue's own account).
pub(crate) async fn queue_url(client: &Client, arn: &str) -> Result<Option<String>, QueueUrlError> {
    let (name, account) = queue_name_and_account(arn).ok_or(QueueUrlError::NotAQueueArn)?;
    let out = client
        .get_queue_url()
        .queue_name(name)
        .queue_owner_aws_account_id(account)
        .send()
        .await
        .map_err(|e| QueueUrlError::Sqs(Box::new(e)))?;
    Ok(out.queue_url)
}

/// One message to back off.
#[derive(Debug, Clone)]
pub struct Hold<'a> {
    /// Its position in the batch (what the result names).
    pub position: usize,
    /// Its receipt handle from this receive.
    pub receipt_handle: Option<&'a str>,
    /// The new visibility, in seconds from now.
    pub seconds: u32,
}

/// The messages a long-running consumer (`login-etl poll`) keeps invisible
/// with a heartbeat while their batch is in flight, by receipt handle.
///
/// Each batch's leases share a gate of their own. The batch's heartbeat
/// holds it shared while a renewal is in flight, and a backoff first
/// releases the messages it is about to hold with the gate exclusive: so no
/// renewal that SQS answered (or that was given up, after the call's time
/// limit) can land after the backoff's change and shorten it. The gates are
/// per batch so that no batch's renewals wait for another batch's calls.
#[derive(Debug, Default)]
pub struct Leases {
    held: std::sync::Mutex<HashMap<String, Gate>>,
}

type Gate = std::sync::Arc<tokio::sync::RwLock<()>>;

impl Leases {
    /// Starts leasing a batch's receipt handles, until the returned lease
    /// is dropped.
    pub fn take(self: &std::sync::Arc<Self>, handles: Vec<String>) -> BatchLease {
        let gate = Gate::default();
        let mut held = self.held();
        for h in &handles {
            held.insert(h.clone(), std::sync::Arc::clone(&gate));
        }
        BatchLease {
            leases: std::sync::Arc::clone(self),
            handles,
            gate,
        }
    }

    /// Stops leasing these receipt handles before a backoff changes their
    /// visibility, once their batch's renewals in flight are over.
    pub async fn release<'a>(&self, handles: impl IntoIterator<Item = &'a str>) {
        let handles: Vec<&str> = handles.into_iter().collect();
        let mut gates: Vec<Gate> = Vec::new();
        {
            let held = self.held();
            for gate in handles.iter().filter_map(|h| held.get(*h)) {
                if !gates.iter().any(|g| std::sync::Arc::ptr_eq(g, gate)) {
                    gates.push(std::sync::Arc::clone(gate));
                }
            }
        }
        let mut no_renewal_in_flight = Vec::with_capacity(gates.len());
        for gate in &gates {
            no_renewal_in_flight.push(gate.write().await);
        }
        let mut held = self.held();
        for h in handles {
            held.remove(h);
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Gate>> {
        // A panic elsewhere cannot leave the map half-changed: every
        // change is one call on it.
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One batch's leases ([`Leases::take`]); dropped when the batch ends.
#[derive(Debug)]
pub struct BatchLease {
    leases: std::sync::Arc<Leases>,
    handles: Vec<String>,
    gate: Gate,
}

impl BatchLease {
    /// What a renewal holds while it is in flight, and the handles it
    /// renews: those of the batch still leased.
    pub async fn renewing(&self) -> Renewing {
        let gate = std::sync::Arc::clone(&self.gate).read_owned().await;
        let held = self.leases.held();
        let still = self
            .handles
            .iter()
            .filter(|h| held.contains_key(*h))
            .cloned()
            .collect();
        Renewing { still, _gate: gate }
    }
}

impl Drop for BatchLease {
    fn drop(&mut self) {
        let mut held = self.leases.held();
        for h in &self.handles {
            held.remove(h);
        }
    }
}

/// A renewal's hold on its batch's leases while it is in flight.
#[derive(Debug)]
pub struct Renewing {
    /// The receipt handles to renew.
    pub still: Vec<String>,
    _gate: tokio::sync::OwnedRwLockReadGuard<()>,
}

/// Changes the visibility of messages in the source queue.
#[derive(Debug, Clone)]
pub struct Visibility {
    client: Client,
    /// `SOURCE_QUEUE_URL`, or found once with `GetQueueUrl` from the
    /// records' `eventSourceARN`.
    queue_url: std::sync::Arc<OnceCell<String>>,
    /// A consumer's heartbeat leases, released before a hold.
    leases: Option<std::sync::Arc<Leases>>,
}

impl Visibility {
    /// Through `client`, for the queue at `queue_url` (`None`: from the
    /// records' `eventSourceARN`, with `GetQueueUrl`).
    pub fn new(client: Client, queue_url: Option<String>) -> Self {
        Self {
            client,
            queue_url: std::sync::Arc::new(match queue_url {
                Some(url) => OnceCell::new_with(Some(url)),
                None => OnceCell::new(),
            }),
            leases: None,
        }
    }

    /// Releases held messages from `leases` (a consumer's heartbeat) before
    /// changing their visibility.
    pub fn with_leases(mut self, leases: std::sync::Arc<Leases>) -> Self {
        self.leases = Some(leases);
        self
    }

    async fn url(&self, source_arn: Option<&str>) -> Option<String> {
        self.queue_url
            .get_or_try_init(|| async {
                let url = queue_url(&self.client, source_arn.ok_or(())?).await;
                url.map_err(|e| {
                    if let QueueUrlError::Sqs(e) = e {
                        warn!(
                            code = e.code().unwrap_or("none"),
                            error = %DisplayErrorContext(&e),
                            "cannot find the source queue's URL (sqs:GetQueueUrl); set SOURCE_QUEUE_URL"
                        );
                    }
                })?
                .ok_or(())
            })
            .await
            .ok()
            .cloned()
    }

    /// Extends each held message's visibility, in as few
    /// `ChangeMessageVisibilityBatch` calls as SQS allows, sent at once and
    /// bounded by `deadline`. Returns the positions SQS confirmed; every
    /// other one is redelivered after the queue's visibility timeout.
    pub async fn hold(
        &self,
        holds: &[Hold<'_>],
        source_arn: Option<&str>,
        deadline: Option<Instant>,
    ) -> Vec<usize> {
        if holds.is_empty() {
            return Vec::new();
        }
        if let Some(leases) = &self.leases {
            leases
                .release(holds.iter().filter_map(|h| h.receipt_handle))
                .await;
        }
        let limit = before_deadline(CHANGE_TIMEOUT, deadline);
        let work = async {
            let Some(url) = self.url(source_arn).await else {
                return Vec::new();
            };
            let mut calls = JoinSet::new();
            let holds: Vec<(usize, &str, i32)> = holds
                .iter()
                .filter_map(|h| {
                    let seconds = h.seconds.min(SQS_MAX_VISIBILITY_SECONDS) as i32;
                    Some((h.position, h.receipt_handle?, seconds))
                })
                .collect();
            for chunk in holds.chunks(MAX_ENTRIES) {
                let positions = chunk.iter().map(|&(position, ..)| position).collect();
                let entries = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, &(_, handle, seconds))| {
                        ChangeMessageVisibilityBatchRequestEntry::builder()
                            .id(sqs_batch::entry_id(i))
                            .receipt_handle(handle)
                            .visibility_timeout(seconds)
                            .build()
                            .expect("an id and a handle are set")
                    })
                    .collect();
                let (client, url) = (self.client.clone(), url.clone());
                calls.spawn(change_batch(client, url, positions, entries));
            }
            let mut held = Vec::new();
            while let Some(done) = calls.join_next().await {
                if let Ok(positions) = done {
                    held.extend(positions);
                }
            }
            held
        };
        let mut held = match tokio::time::timeout(limit, work).await {
            Ok(held) => held,
            Err(_) => {
                warn!(
                    limit_ms = limit.as_millis() as u64,
                    "changing the visibility of failed records took too long; the unconfirmed ones are redelivered after the queue's visibility timeout"
                );
                Vec::new()
            }
        };
        held.sort_unstable();
        held
    }
}

/// One `ChangeMessageVisibilityBatch` call for `entries`, at `positions` in
/// the batch; the positions SQS confirmed.
async fn change_batch(
    client: aws_sdk_sqs::Client,
    url: String,
    positions: Vec<usize>,
    entries: Vec<ChangeMessageVisibilityBatchRequestEntry>,
) -> Vec<usize> {
    let result = client
        .change_message_visibility_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await;
    sqs_batch::taken_positions(
        result,
        &positions,
        "SQS refused a visibility change; that record is redelivered after the queue's visibility timeout",
        "changing the visibility of failed records failed (check sqs:ChangeMessageVisibility on the queue); they are redelivered after the queue's visibility timeout",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::backoff::Schedule;

    #[tokio::test]
    async fn a_backoff_waits_for_its_own_batchs_renewals_and_no_other_batch_waits() {
        let leases = std::sync::Arc::new(Leases::default());
        let first = leases.take(vec!["a".into(), "b".into()]);
        let second = leases.take(vec!["c".into()]);
        let wait = Duration::from_millis(100);
        let renewing =
            |lease| async move { tokio::time::timeout(wait, BatchLease::renewing(lease)).await };
        // Two renewals of the first batch in flight at once.
        let one = renewing(&first).await.unwrap();
        let two = renewing(&first).await.unwrap();
        assert_eq!(one.still, ["a", "b"]);
        // A backoff of "a" waits until they are over, so none of them can
        // land after the backoff's own change...
        let release = leases.release(["a"]);
        tokio::pin!(release);
        assert!(tokio::time::timeout(wait, &mut release).await.is_err());
        // ...and meanwhile the other batch renews and ends without waiting.
        assert_eq!(renewing(&second).await.unwrap().still, ["c"]);
        drop(one);
        assert!(tokio::time::timeout(wait, &mut release).await.is_err());
        drop(two);
        tokio::time::timeout(wait, &mut release).await.unwrap();
        assert_eq!(renewing(&first).await.unwrap().still, ["b"]);
        // A batch's end drops its leases at once, renewal in flight or not.
        let in_flight = renewing(&second).await.unwrap();
        drop(second);
        assert!(leases.held().get("c").is_none());
        drop(in_flight);
        drop(first);
        assert!(leases.held().is_empty());
    }

    #[test]
    fn the_ceiling_grows_exponentially_is_monotone_and_capped() {
        let s = Schedule { base: 30, max: 900 };
        let ceilings: Vec<u32> = (1..=10).map(|n| s.ceiling(n)).collect();
        assert_eq!(ceilings, [30, 60, 120, 240, 480, 900, 900, 900, 900, 900]);
        assert_eq!(s.ceiling(0), 30, "no count counts as the first receive");
        assert!(ceilings.windows(2).all(|w| w[0] <= w[1]));
        let floors: Vec<u32> = (1..=10).map(|n| s.floor(n)).collect();
        assert!(floors.windows(2).all(|w| w[0] <= w[1]), "{floors:?}");
        assert_eq!(s.floor(1), 15);
    }

    #[test]
    fn jitter_stays_within_half_the_ceiling_and_the_ceiling() {
        let s = Schedule { base: 7, max: 1000 };
        for n in 1..12 {
            let (lo, hi) = (s.floor(n), s.ceiling(n));
            assert!(lo * 2 >= hi && lo <= hi);
            assert_eq!(s.delay(n, 0.0), lo);
            assert_eq!(s.delay(n, 0.999_999_9), hi);
            for _ in 0..200 {
                let d = s.delay(n, jitter());
                assert!((lo..=hi).contains(&d), "{n}: {d} not in {lo}..={hi}");
            }
        }
        let draws: Vec<f64> = (0..500).map(|_| jitter()).collect();
        assert!(draws.iter().all(|j| (0.0..1.0).contains(j)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((0.4..0.6).contains(&mean), "uniform-ish: mean {mean}");
    }

    #[test]
    fn never_beyond_the_12_hour_limit_of_sqs() {
        let s = Schedule {
            base: 40_000,
            max: 100_000,
        };
        assert_eq!(s.ceiling(1), 40_000);
        assert_eq!(s.ceiling(2), SQS_MAX_VISIBILITY_SECONDS);
        assert_eq!(s.ceiling(u32::MAX), SQS_MAX_VISIBILITY_SECONDS);
        assert!(s.delay(99, 0.99) <= SQS_MAX_VISIBILITY_SECONDS);
    }

    #[test]
    fn the_tolerated_outage_is_the_sum_of_the_shortest_waits() {
        let s = Schedule { base: 30, max: 900 };
        // 15 + 30 + 60 + 120 + 240 + 450
        assert_eq!(s.tolerated_seconds(6), 915);
        assert_eq!(s.tolerated_seconds(7), 1_365);
        assert_eq!(s.tolerated_seconds(0), 0);
    }
}
