//! What one batch may still spend: time until the invocation's deadline,
//! the one reconnect, and the retries of conflicts on a healthy connection.

use std::time::{Duration, Instant};

use crate::error::DbError;

/// Time kept in hand before Lambda's deadline: the last operation ends this
/// long before it, so the error is logged and returned with at least a
/// second to spare and the batch is redelivered with the event-source
/// mapping's backoff instead of timing out.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(1_500);

/// Below this, an operation is not worth starting.
const MIN_OPERATION: Duration = Duration::from_millis(100);

/// Retries of a deadlock, serialization failure, lock or statement timeout
/// on the same connection, per batch.
pub const CONFLICT_RETRIES: u8 = 3;

/// The retry budget of one batch.
#[derive(Debug, Clone)]
pub struct Budget {
    deadline: Option<Instant>,
    reconnects_left: u8,
    conflict_retries_left: u8,
}

impl Budget {
    /// A budget ending at `deadline` (the invocation's; `None`: no limit but
    /// the per-operation bounds), with one reconnect.
    pub fn new(deadline: Option<Instant>) -> Self {
        Self {
            deadline,
            reconnects_left: 1,
            conflict_retries_left: CONFLICT_RETRIES,
        }
    }

    /// How long the next operation may take: `per_operation`, cut to what is
    /// left before the deadline less [`DEADLINE_MARGIN`]. An error when too
    /// little is left to start it.
    pub fn bound(&self, per_operation: Duration, op: &'static str) -> Result<Duration, DbError> {
        let Some(deadline) = self.deadline else {
            return Ok(per_operation);
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let usable = left.saturating_sub(DEADLINE_MARGIN);
        if usable < MIN_OPERATION {
            return Err(DbError::Deadline {
                op,
                left_ms: left.as_millis() as u64,
            });
        }
        Ok(per_operation.min(usable))
    }

    /// Takes the reconnect; false when it was used already.
    pub fn take_reconnect(&mut self) -> bool {
        let had = self.reconnects_left > 0;
        self.reconnects_left = self.reconnects_left.saturating_sub(1);
        had
    }

    /// Takes one conflict retry; false when none is left.
    pub fn take_conflict_retry(&mut self) -> bool {
        let had = self.conflict_retries_left > 0;
        self.conflict_retries_left = self.conflict_retries_left.saturating_sub(1);
        had
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_shrink_to_the_deadline_less_the_margin_and_then_refuse() {
        let b = Budget::new(None);
        assert_eq!(
            b.bound(Duration::from_secs(9), "x").unwrap(),
            Duration::from_secs(9)
        );
        let b = Budget::new(Some(Instant::now() + Duration::from_secs(3)));
        let d = b.bound(Duration::from_secs(9), "x").unwrap();
        assert!(
            d <= Duration::from_millis(1_500) && d > Duration::from_millis(1_400),
            "{d:?}"
        );
        let b = Budget::new(Some(Instant::now() + Duration::from_millis(1_550)));
        let e = b.bound(Duration::from_secs(9), "inserting").unwrap_err();
        assert!(
            e.is_retryable() && e.to_string().contains("inserting"),
            "{e}"
        );
    }

    #[test]
    fn one_reconnect_and_a_few_conflict_retries() {
        let mut b = Budget::new(None);
        assert!(b.take_reconnect());
        assert!(!b.take_reconnect());
        let n = std::iter::from_fn(|| b.take_conflict_retry().then_some(())).count();
        assert_eq!(n, CONFLICT_RETRIES as usize);
    }
}
