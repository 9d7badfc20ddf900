//! The backoff schedule a failed write's records wait by
//! (`BACKOFF_BASE_SECONDS`, `BACKOFF_MAX_SECONDS`): a setting, read here;
//! the visibility changes that apply it are the ingest path's.

/// The longest visibility SQS accepts (12 hours), counted from the call.
pub const SQS_MAX_VISIBILITY_SECONDS: u32 = 43_200;

/// Default `BACKOFF_BASE_SECONDS`: the first wait, at most.
pub const DEFAULT_BASE_SECONDS: u32 = 30;
/// Default `BACKOFF_MAX_SECONDS`: the longest wait, so the worst delay after
/// the database is back.
pub const DEFAULT_MAX_SECONDS: u32 = 900;

/// The backoff schedule (`BACKOFF_BASE_SECONDS`, `BACKOFF_MAX_SECONDS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Ceiling of the first wait, in seconds (at least 1).
    pub base: u32,
    /// Ceiling of every wait, in seconds (at most 43,200).
    pub max: u32,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            base: DEFAULT_BASE_SECONDS,
            max: DEFAULT_MAX_SECONDS,
        }
    }
}

impl Schedule {
    /// The ceiling of the wait after receive `receive_count` (1-based; 0
    /// counts as 1): `min(max, base * 2^(n-1), 43,200)`.
    pub fn ceiling(&self, receive_count: u32) -> u32 {
        let doublings = receive_count.saturating_sub(1).min(31);
        let grown = u64::from(self.base.max(1)) << doublings;
        grown
            .min(u64::from(self.max.max(1)))
            .min(u64::from(SQS_MAX_VISIBILITY_SECONDS)) as u32
    }

    /// The shortest wait after receive `receive_count`: half its ceiling,
    /// rounded up.
    pub fn floor(&self, receive_count: u32) -> u32 {
        let d = self.ceiling(receive_count);
        d - d / 2
    }

    /// The wait after receive `receive_count`, with `jitter` in `[0, 1)`
    /// choosing where in `[floor, ceiling]` it falls.
    pub fn delay(&self, receive_count: u32, jitter: f64) -> u32 {
        let (lo, hi) = (self.floor(receive_count), self.ceiling(receive_count));
        let span = f64::from(hi - lo + 1);
        (lo + (jitter.clamp(0.0, 0.999_999) * span) as u32).min(hi)
    }

    /// Seconds from the first receive until the message's receive
    /// `max_receives + 1` at the earliest, which SQS's redrive would move to
    /// the dead-letter queue: the outage this schedule tolerates with that
    /// `maxReceiveCount` when every wait is backed off.
    pub fn tolerated_seconds(&self, max_receives: u32) -> u64 {
        (1..=max_receives).map(|n| u64::from(self.floor(n))).sum()
    }
}
