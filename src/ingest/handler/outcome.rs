//! What a batch's handling returns: the partial-batch response and its
//! counts, and the deadline it must be answered by.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use aws_lambda_events::event::sqs::SqsBatchResponse;
use tracing::warn;

#[cfg(doc)]
use super::BatchHandler;
#[cfg(doc)]
use crate::contract::Rejection;

/// Counts of one invocation, also written as its summary line (an EMF
/// document, see `crate::ingest::metrics`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchSummary {
    /// Records in the batch.
    pub received: usize,
    /// New rows written.
    pub inserted: u64,
    /// Records already in the table (redelivery).
    pub duplicates: u64,
    /// Records that are not logins (or that the contract refused), by
    /// [`Rejection::code`].
    pub rejected: BTreeMap<String, usize>,
    /// Rows stored with defects (`CONTRACT=lenient`).
    pub with_defects: usize,
    /// Their defects, by [`Defect::code`](crate::contract::Defect::code).
    pub defects: BTreeMap<String, usize>,
    /// Rejected records the function sent to the dead-letter queue itself.
    pub sent_to_dlq: usize,
    /// Records the database refused.
    pub refused: usize,
    /// Records reported in `batchItemFailures` (unsent rejections + refused + FIFO tail).
    pub failed: usize,
    /// Database transactions tried: 1, plus about 2·log2(n) per refused row.
    pub statements: u32,
    /// Whether the rows went in by the COPY fast path.
    pub copied: bool,
    /// Refused rows sent to the DLQ (`refused.<SQLSTATE>`) after
    /// `REFUSED_MAX_RECEIVES` receives.
    pub refused_to_dlq: usize,
    /// Records of users erased by `login-etl forget`: handled, not stored.
    pub erased: usize,
    /// The write of the batch failed as a whole (its class, see
    /// `HandlerError::class`); its records are reported and backed off.
    pub failure: Option<&'static str>,
    /// Failed records whose visibility was extended.
    pub backed_off: usize,
    /// Failed records whose visibility change SQS did not confirm (plain
    /// redelivery after the queue's visibility timeout).
    pub visibility_change_failed: usize,
    /// Valid records that carried fields outside the contract (never
    /// their names: `login-etl validate` names them).
    pub unknown_fields: usize,
}

/// What [`BatchHandler::handle`] made of one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The answer to the event-source mapping (or the consumer): the records
    /// to redeliver.
    pub response: SqsBatchResponse,
    /// The counts, as written in the batch's EMF document.
    pub summary: BatchSummary,
}

impl Outcome {
    /// The response and the summary, as a pair.
    pub fn into_parts(self) -> (SqsBatchResponse, BatchSummary) {
        (self.response, self.summary)
    }
}

/// When a batch must be answered by: the Lambda invocation's deadline, the
/// consumer's batch timeout, or none (tests, benchmarks, library use).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// No deadline: only the per-operation bounds apply.
    pub const NONE: Deadline = Deadline(None);

    /// A deadline at `instant`.
    pub fn at(instant: Instant) -> Self {
        Self(Some(instant))
    }

    /// The deadline of a Lambda invocation (its context's wall-clock
    /// deadline). One already past on arrival is no real one (Lambda would
    /// have ended the invocation): emulators such as `cargo lambda watch`
    /// set it before their first, lazy compile; it is ignored, with a warning.
    pub fn from_wall_clock(deadline: SystemTime) -> Self {
        match deadline.duration_since(SystemTime::now()) {
            Ok(left) => Self::at(Instant::now() + left),
            Err(_) => {
                warn!("the invocation's deadline is already past on arrival; ignoring it");
                Self::NONE
            }
        }
    }

    /// The instant, if any.
    pub fn instant(self) -> Option<Instant> {
        self.0
    }
}
