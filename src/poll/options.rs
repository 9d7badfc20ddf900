//! `login-etl poll`'s settings, checked before anything starts, and why
//! it can stop other than by a signal.

use std::net::SocketAddr;
use std::time::Duration;

use super::queue::{self, QueueError};
use crate::config::backoff::Schedule;
use crate::error::ConfigError;
use crate::startup::InitError;

/// Default `--concurrency`: batches in flight.
pub const DEFAULT_CONCURRENCY: usize = 2;
/// Default `--batch-size` (the event-source mapping's default).
pub const DEFAULT_BATCH_SIZE: usize = 10;
/// Default `--batch-timeout`, in seconds: the time limit of one batch.
pub const DEFAULT_BATCH_TIMEOUT_SECONDS: u64 = 20;
/// Default `--grace-period`, in seconds: within the 30 s that Kubernetes
/// (`terminationGracePeriodSeconds`) and ECS (`stopTimeout`) give by default.
pub const DEFAULT_GRACE_PERIOD_SECONDS: u64 = 25;
/// Largest `--batch-size` (the event-source mapping's limit for standard queues).
pub const MAX_BATCH_SIZE: usize = 10_000;
/// The consumer's settings (the command line of `login-etl poll`).
#[derive(Debug, Clone)]
pub struct PollOptions {
    /// The source queue's URL.
    pub queue_url: String,
    /// Batches in flight, each on a database connection of its own.
    pub concurrency: usize,
    /// Messages per batch, at most.
    pub batch_size: usize,
    /// How long to gather a batch after its first messages arrived.
    pub batch_window: Duration,
    /// Visibility of a receive, renewed by the heartbeat (None: the queue's).
    pub visibility_timeout: Option<u32>,
    /// The time limit of one batch (what a Lambda invocation's timeout is).
    pub batch_timeout: Duration,
    /// After SIGTERM or SIGINT, how long the batches in flight may take.
    pub grace_period: Duration,
    /// Where to serve `/livez` and `/readyz`.
    pub health_addr: Option<SocketAddr>,
}

impl PollOptions {
    /// Refuses settings that cannot work, saying what to change.
    pub fn validate(&self) -> Result<(), PollError> {
        let usage = |m: &str| Err(PollError::Usage(m.into()));
        if !(1..=64).contains(&self.concurrency) {
            return usage("--concurrency must be from 1 to 64");
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return usage("--batch-size must be from 1 to 10000");
        }
        if self.batch_size > queue::MAX_PER_CALL && self.batch_window.is_zero() {
            return usage(
                "a --batch-size above 10 needs a --batch-window of at least 1 second (as the event-source mapping)",
            );
        }
        if self.batch_window > Duration::from_secs(300) {
            return usage("--batch-window must be at most 300 seconds");
        }
        if self
            .visibility_timeout
            .is_some_and(|v| !(1..=43_200).contains(&v))
        {
            return usage("--visibility-timeout must be from 1 to 43200 seconds");
        }
        if self.batch_timeout.is_zero() {
            return usage("--batch-timeout must be at least 1 second");
        }
        if self.grace_period <= self.batch_timeout {
            return usage(
                "--grace-period must be longer than --batch-timeout, so the batches in flight can finish after SIGTERM",
            );
        }
        if !self.queue_url.starts_with("http://") && !self.queue_url.starts_with("https://") {
            return usage(
                "--queue-url: expected the queue URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME), not its name or ARN",
            );
        }
        Ok(())
    }
}

/// Why the consumer stopped other than by a signal.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// A command-line setting cannot work (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// The environment's configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The handler could not be built (secrets, KMS, schema).
    #[error(transparent)]
    Init(#[from] InitError),
    /// The queue did not answer at start.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The health endpoint's address cannot be used.
    #[error(
        "cannot listen on {addr} for the health endpoint ({cause}); choose another --health-addr"
    )]
    Health {
        /// The address.
        addr: SocketAddr,
        /// Why.
        cause: String,
    },
    /// The signal handlers could not be installed.
    #[error("cannot watch for SIGTERM and SIGINT ({0})")]
    Signals(String),
    /// Batches were still in flight when the grace period ended.
    #[error(
        "{batches} batch(es) still in flight when the {grace_s} s grace period ended; their messages return to the queue after the visibility timeout (nothing is lost; rows already committed count as duplicates then). Give --grace-period more room over --batch-timeout"
    )]
    GraceExceeded {
        /// Batches abandoned.
        batches: usize,
        /// The grace period.
        grace_s: u64,
    },
    /// A second signal during the grace period.
    #[error(
        "stopped by a second signal with {batches} batch(es) in flight; their messages return to the queue after the visibility timeout (nothing is lost)"
    )]
    Interrupted {
        /// Batches abandoned.
        batches: usize,
    },
}

/// The shortest database outage a queue should ride out without moving
/// valid messages to its DLQ (the template's smallest
/// `OutageToleranceMinutes`).
pub const MIN_OUTAGE_TOLERATED_SECONDS: u64 = 30 * 60;

/// What to say at start when the queue's `maxReceiveCount`, with the
/// backoff `schedule`, moves valid messages to the DLQ in a database
/// outage shorter than [`MIN_OUTAGE_TOLERATED_SECONDS`] (a queue made by
/// hand: the template sizes its own). `None` when it rides one out, or
/// when either is unknown.
pub fn outage_warning(
    schedule: Option<Schedule>,
    max_receive_count: Option<u32>,
) -> Option<String> {
    let (schedule, receives) = (schedule?, max_receive_count?);
    let tolerated = schedule.tolerated_seconds(receives);
    if tolerated >= MIN_OUTAGE_TOLERATED_SECONDS {
        return None;
    }
    let enough = (receives..=1_000)
        .find(|&n| schedule.tolerated_seconds(n) >= MIN_OUTAGE_TOLERATED_SECONDS)
        .unwrap_or(1_000);
    Some(format!(
        "the queue's maxReceiveCount {receives}, with the backoff ({} s doubling to {} s), rides out a database outage of {} s at most: a longer one moves valid messages to the dead-letter queue; set the queue's RedrivePolicy maxReceiveCount to {enough} for {} minutes (docs/runbooks/outage.md)",
        schedule.base,
        schedule.max,
        tolerated,
        MIN_OUTAGE_TOLERATED_SECONDS / 60
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_made_queue_that_dead_letters_in_a_short_outage_is_named_with_the_count_that_would_not()
     {
        let s = Schedule { base: 30, max: 900 };
        // The review's queue: maxReceiveCount 5 with the default backoff.
        let said =
            outage_warning(Some(s), Some(5)).expect("5 receives ride out less than 30 minutes");
        let enough = (5..100)
            .find(|&n| s.tolerated_seconds(n) >= MIN_OUTAGE_TOLERATED_SECONDS)
            .unwrap();
        assert!(
            said.contains(&format!("maxReceiveCount to {enough}")),
            "{said}"
        );
        assert!(s.tolerated_seconds(enough - 1) < MIN_OUTAGE_TOLERATED_SECONDS);
        assert_eq!(outage_warning(Some(s), Some(enough)), None);
        assert_eq!(
            outage_warning(None, Some(5)),
            None,
            "no backoff: nothing to size"
        );
        assert_eq!(
            outage_warning(Some(s), None),
            None,
            "no redrive policy: nothing dead-letters"
        );
    }
}
