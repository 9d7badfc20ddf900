//! What a batch's handling returns: the partial-batch response and its
//! counts, and the deadline it must be answered by.

use std::time::{Instant, SystemTime};

use aws_lambda_events::event::sqs::SqsBatchResponse;
use tracing::warn;

use crate::ingest::summary::BatchSummary;

#[cfg(doc)]
use super::BatchHandler;

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
