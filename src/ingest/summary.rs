//! What one batch did, counted: the response's companion and the
//! invocation's summary line. Below the handler, which fills it, and the
//! metrics, which write it.

use std::collections::BTreeMap;

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

