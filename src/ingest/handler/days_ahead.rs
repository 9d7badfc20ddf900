//! The partitions made ahead, read every [`PARTITIONS_READ_EVERY`] on a
//! batch's connection after its write; each batch reports the last reading.

use std::time::Instant;

use chrono::Utc;
use tracing::warn;

use super::{BatchHandler, PARTITIONS_READ_EVERY};
use crate::ingest::sink::PgSink;

impl BatchHandler {
    pub(super) fn days_ahead_read(&self) -> Option<(Instant, Option<i64>)> {
        *self.days_ahead.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the partitions made ahead on `sink` when the last reading is
    /// [`PARTITIONS_READ_EVERY`] old (or there is none), within the
    /// batch's `deadline`. A failed read reports nothing until the next
    /// try, one interval later (a stale value could hide partitions running
    /// out): the batch is written, and the database's trouble shows in the
    /// next batch's write.
    pub(super) async fn read_days_ahead(&self, sink: &mut PgSink, deadline: Option<Instant>) {
        let last = self.days_ahead_read();
        if last.is_some_and(|(at, _)| at.elapsed() < PARTITIONS_READ_EVERY) {
            return;
        }
        let days = match sink
            .partition_days_ahead(Utc::now().date_naive(), deadline)
            .await
        {
            Ok(days) => days,
            Err(e) => {
                warn!(error = %e, "could not read the partitions made ahead; trying again in 10 minutes");
                None
            }
        };
        *self.days_ahead.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), days));
    }
}
