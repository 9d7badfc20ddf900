//! One batch at work: its records in batch order, each with the one state
//! the batch's path has given it so far (read, judged, sent to the DLQ,
//! written or refused). Everything the handler reports is one pass over
//! them: the rows to write, the copies for the DLQ, `batchItemFailures`,
//! each message's span outcome and the counts.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::contract::LoginRow;
use crate::error::DbError;
use crate::ingest::dlq::Rejected;
use crate::ingest::event::SqsBatch;
use crate::ingest::sink::InsertReport;
use crate::ingest::trace::MessageOutcome;
use crate::privacy::keys::BatchKeys;
use crate::privacy::masking::Masker;
use crate::privacy::vault::{DataKey, VaultBatch};

/// What became of one record of the batch.
pub(super) enum RecordState<'b> {
    /// Not read: a FIFO batch stopped at a record before it that could not
    /// be finished (later records wait for it).
    Unread,
    /// A login: its row, to write (written once the write succeeded).
    Row(LoginRow<'b>),
    /// Not a login, with its code; `sent` once the DLQ took its copy.
    Rejected { code: String, sent: bool },
    /// A record of an erased user: handled, neither stored nor
    /// dead-lettered (its copy would keep what was erased).
    Erased,
    /// Not judged now: a rebuilt login whose seal could not be checked
    /// (KMS did not answer, or refused the function), or a record signed
    /// at a key version no key state read could judge. It comes back.
    Held,
    /// A FIFO row behind a reject the DLQ did not take: not written, it
    /// comes back after it, in order.
    Behind,
    /// The database refused its row (`code`: `refused.<SQLSTATE>`); `sent`
    /// once the DLQ took its copy (on its last receive).
    Refused {
        row: LoginRow<'b>,
        code: String,
        sent: bool,
    },
}

/// One record: its `messageId` and its state.
pub(super) struct Record<'b> {
    pub id: &'b str,
    pub state: RecordState<'b>,
}

impl RecordState<'_> {
    /// Done with, whether or not the write succeeds: in the DLQ, or erased.
    fn finished(&self) -> bool {
        matches!(
            self,
            RecordState::Erased | RecordState::Rejected { sent: true, .. } | RecordState::Refused { sent: true, .. }
        )
    }

    /// Must come back (in `batchItemFailures`): not finished, and not a row
    /// of a write that succeeded.
    fn failed(&self, write_failed: bool) -> bool {
        match self {
            RecordState::Row(_) => write_failed,
            RecordState::Rejected { sent, .. } | RecordState::Refused { sent, .. } => !sent,
            RecordState::Erased => false,
            RecordState::Unread | RecordState::Held | RecordState::Behind => true,
        }
    }

    /// The row the write took (`Row`, `Refused`): what its counts read.
    fn written_row(&self) -> Option<&LoginRow<'_>> {
        match self {
            RecordState::Row(row) | RecordState::Refused { row, .. } => Some(row),
            _ => None,
        }
    }
}

/// One batch at work: how it is handled (its queue's order, its deadline)
/// and its records.
#[derive(Default)]
pub(super) struct BatchWork<'b> {
    /// A FIFO queue's batch: later records wait for a failed one.
    pub fifo: bool,
    /// When the batch must be answered.
    pub deadline: Option<Instant>,
    /// Every record read so far, in batch order (all of them once the
    /// batch could be handled).
    pub records: Vec<Record<'b>>,
    /// The rows' vault entries, in the order of [`rows`](Self::rows)
    /// (empty without a vault).
    pub vault: VaultBatch,
    /// The masker the batch was validated with: what its DLQ copies are
    /// masked and signed with.
    pub masker: Option<Masker>,
}

impl<'b> BatchWork<'b> {
    pub fn new(fifo: bool, deadline: Option<Instant>) -> Self {
        Self {
            fifo,
            deadline,
            ..Self::default()
        }
    }

    pub fn push(&mut self, id: &'b str, state: RecordState<'b>) {
        self.records.push(Record { id, state });
    }

    /// The rows to write, in batch order.
    pub fn rows(&self) -> Vec<&LoginRow<'b>> {
        self.records
            .iter()
            .filter_map(|r| match &r.state {
                RecordState::Row(row) => Some(row),
                _ => None,
            })
            .collect()
    }

    /// The rejected records the DLQ has not taken.
    pub fn unsent_rejects<'a>(&'a self, batch: &'a SqsBatch) -> Vec<Rejected<'a>> {
        self.for_the_dlq(batch, |_, state| match state {
            RecordState::Rejected { code, sent: false } => Some(code),
            _ => None,
        })
    }

    /// The refused rows to dead-letter: those `due` says (their receive).
    pub fn refused_due<'a>(
        &'a self,
        batch: &'a SqsBatch,
        due: impl Fn(usize) -> bool,
    ) -> Vec<Rejected<'a>> {
        self.for_the_dlq(batch, |pos, state| match state {
            RecordState::Refused {
                code, sent: false, ..
            } if due(pos) => Some(code),
            _ => None,
        })
    }

    /// The records `code_of` gives a code, as copies for the DLQ.
    fn for_the_dlq<'a>(
        &'a self,
        batch: &'a SqsBatch,
        code_of: impl Fn(usize, &'a RecordState<'b>) -> Option<&'a String>,
    ) -> Vec<Rejected<'a>> {
        self.records
            .iter()
            .enumerate()
            .filter_map(|(pos, r)| {
                code_of(pos, &r.state).map(|code| Rejected {
                    position: pos,
                    message: batch.record(pos),
                    message_id: r.id,
                    code,
                })
            })
            .collect()
    }

    /// How many rows are to be written.
    pub fn row_count(&self) -> usize {
        self.records
            .iter()
            .filter(|r| matches!(r.state, RecordState::Row(_)))
            .count()
    }

    /// The DLQ took the copies of the records at `positions`.
    pub fn sent(&mut self, positions: &[usize]) {
        for &pos in positions {
            if let RecordState::Rejected { sent, .. } | RecordState::Refused { sent, .. } =
                &mut self.records[pos].state
            {
                *sent = true;
            }
        }
    }

    /// FIFO: the rows after the first reject the DLQ did not take wait
    /// behind it (they come back after it, in order).
    pub fn hold_back_behind_unsent_reject(&mut self) {
        let Some(first) = self
            .records
            .iter()
            .position(|r| matches!(r.state, RecordState::Rejected { sent: false, .. }))
        else {
            return;
        };
        for record in &mut self.records[first..] {
            if matches!(record.state, RecordState::Row(_)) {
                record.state = RecordState::Behind;
            }
        }
    }

    /// The write's report: each row it refused (`report.refused`, indices
    /// into [`rows`](Self::rows) as written, ascending) takes its code. On
    /// FIFO the write stops at the first refused row: the rows after it
    /// were not written, and wait behind it (whether or not the DLQ takes
    /// it).
    pub fn refused_by(&mut self, report: &InsertReport) {
        debug_assert!(report.refused.is_sorted(), "{:?}", report.refused);
        let mut refused = report.refused.iter().zip(&report.refused_codes).peekable();
        let fifo = self.fifo;
        let mut stopped = false;
        let rows = self
            .records
            .iter_mut()
            .filter(|r| matches!(r.state, RecordState::Row(_)));
        for (index, record) in rows.enumerate() {
            if stopped {
                record.state = RecordState::Behind;
                continue;
            }
            let Some((_, state)) = refused.next_if(|(i, _)| **i == index) else {
                continue;
            };
            let RecordState::Row(row) = std::mem::replace(&mut record.state, RecordState::Unread) else {
                unreachable!("filtered above")
            };
            record.state = RecordState::Refused {
                row,
                code: format!("refused.{state}"),
                sent: false,
            };
            stopped = fifo;
        }
        debug_assert!(refused.next().is_none(), "a refused index past the rows");
    }

    /// The keys changed while the batch was written: re-keys the rows to
    /// `keys`' version, erases the rows of users erased since (handled:
    /// not stored, not failed, not dead-lettered), and fills the vault
    /// entries again for the rows left.
    pub fn rekey(&mut self, keys: &BatchKeys, vault: Option<&DataKey>) -> Result<(), DbError> {
        // Every row re-keyed before any is dropped: a failed re-key leaves
        // the batch as it was.
        for record in &mut self.records {
            if let RecordState::Row(row) = &mut record.state {
                keys.rekey(row)?;
            }
        }
        for record in &mut self.records {
            if matches!(&record.state, RecordState::Row(row) if keys.is_erased(&row.user_id)) {
                record.state = RecordState::Erased;
            }
        }
        if let Some(key) = vault {
            let mut entries = VaultBatch::default();
            for row in self.rows() {
                entries.add(key, row);
            }
            self.vault = entries;
        }
        Ok(())
    }

    /// The positions to report in `batchItemFailures`, ascending: every
    /// record that must come back ([`RecordState::failed`]), every row too when
    /// the write failed. On FIFO, everything from the first of them on
    /// (order must hold), except records already finished (in the DLQ, as
    /// after a redrive, or erased).
    pub fn failed_positions(&self, write_failed: bool) -> Vec<usize> {
        let states = self.records.iter().map(|r| &r.state);
        if self.fifo {
            let Some(first) = states.clone().position(|s| s.failed(write_failed)) else {
                return Vec::new();
            };
            return (first..self.records.len())
                .filter(|&pos| !self.records[pos].state.finished())
                .collect();
        }
        states
            .enumerate()
            .filter(|(_, s)| s.failed(write_failed))
            .map(|(pos, _)| pos)
            .collect()
    }

    /// What became of each message, for its span: erased, rejected (with
    /// its code) or refused, whether or not it comes back; else backed off
    /// (`held`: its visibility extended after a failed write) or
    /// redelivered when it failed; else stored. `Duplicate` only when every
    /// row was there already: the write counts duplicates per batch.
    pub fn outcomes<'a>(
        &'a self,
        report: &InsertReport,
        failed: &[usize],
        held: &[usize],
    ) -> Vec<(usize, &'a str, MessageOutcome<'a>)> {
        let stored = if report.inserted == 0 && report.duplicates > 0 {
            MessageOutcome::Duplicate
        } else {
            MessageOutcome::Stored
        };
        self.records
            .iter()
            .enumerate()
            .map(|(pos, r)| {
                let outcome = match &r.state {
                    RecordState::Erased => MessageOutcome::Erased,
                    RecordState::Rejected { code, sent } => MessageOutcome::Rejected {
                        code,
                        dead_lettered: *sent,
                    },
                    RecordState::Refused { sent, .. } => MessageOutcome::Refused {
                        dead_lettered: *sent,
                    },
                    _ if held.binary_search(&pos).is_ok() => MessageOutcome::BackedOff,
                    _ if failed.binary_search(&pos).is_ok() => MessageOutcome::Redelivered,
                    RecordState::Row(_) => stored,
                    _ => MessageOutcome::Redelivered,
                };
                (pos, r.id, outcome)
            })
            .collect()
    }

    /// The counts the summary reports, one pass over the records.
    pub fn tally(&self) -> BatchCounts {
        let mut t = BatchCounts::default();
        for record in &self.records {
            match &record.state {
                RecordState::Rejected { code, sent } => {
                    *t.rejected.entry(code.clone()).or_default() += 1;
                    t.sent_to_dlq += usize::from(*sent);
                }
                RecordState::Refused { sent, .. } => {
                    t.refused_to_dlq += usize::from(*sent);
                }
                RecordState::Erased => t.erased += 1,
                _ => {}
            }
            if let Some(row) = record.state.written_row() {
                t.rows += 1;
                if !row.defects.is_empty() {
                    t.with_defects += 1;
                }
                for defect in &row.defects {
                    *t.defects.entry(defect.code().into_owned()).or_default() += 1;
                }
                t.unknown_fields += usize::from(!row.unknown.is_empty());
            }
        }
        t
    }
}

/// The counts of a batch's records ([`BatchWork::tally`]).
#[derive(Default)]
pub(super) struct BatchCounts {
    /// Rows the write took (refused ones too).
    pub rows: usize,
    pub rejected: BTreeMap<String, usize>,
    pub sent_to_dlq: usize,
    pub refused_to_dlq: usize,
    pub erased: usize,
    pub with_defects: usize,
    pub defects: BTreeMap<String, usize>,
    pub unknown_fields: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Eight messages: rows at 0, 1, 2 (2 refused), 6; 3 rejected and in
    /// the DLQ, 4 rejected and not; 5 erased; 7 held (a rebuilt login).
    fn work(fifo: bool) -> BatchWork<'static> {
        let event: &'static _ = Box::leak(Box::new(crate::synth::event(&crate::synth::Options {
            count: 4,
            ..Default::default()
        })));
        let mut bodies = event.records.iter().map(|m| m.body.as_deref().unwrap());
        let mut row = |_: &str| {
            let e = crate::contract::parse_body(bodies.next().unwrap()).unwrap();
            let key = crate::contract::RowKeyAndTokens {
                message_id: "m",
                sent_at: chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
                masked_ip: None,
                masked_device_id: None,
                key_version: 1,
            };
            LoginRow::new(e, key)
        };
        let mut work = BatchWork::new(fifo, None);
        work.push("m0", RecordState::Row(row("m0")));
        work.push("m1", RecordState::Row(row("m1")));
        work.push("m2", RecordState::Row(row("m2")));
        work.push("m3", RecordState::Rejected { code: "invalid_json".into(), sent: false });
        work.push("m4", RecordState::Rejected { code: "missing_field.user_id".into(), sent: false });
        work.push("m5", RecordState::Erased);
        work.push("m6", RecordState::Row(row("m6")));
        work.push("m7", RecordState::Held);
        work.sent(&[3]);
        work
    }

    fn refusing_2() -> InsertReport {
        InsertReport {
            inserted: 3,
            refused: vec![2],
            refused_codes: vec!["23514".into()],
            ..InsertReport::default()
        }
    }

    fn outcomes_of(work: &BatchWork<'_>, report: &InsertReport, failed: &[usize], held: &[usize]) -> Vec<String> {
        work.outcomes(report, failed, held)
            .into_iter()
            .enumerate()
            .map(|(i, (pos, id, outcome))| {
                assert_eq!((pos, id), (i, work.records[i].id));
                format!("{outcome:?}")
            })
            .collect()
    }

    #[test]
    fn each_message_says_what_became_of_it() {
        let mut work = work(false);
        let report = refusing_2();
        work.refused_by(&report);
        let failed = work.failed_positions(false);
        // Failed: the refused row, the unsent reject, the held login.
        assert_eq!(failed, [2, 4, 7]);
        assert_eq!(
            outcomes_of(&work, &report, &failed, &[]),
            [
                "Stored",
                "Stored",
                "Refused { dead_lettered: false }",
                "Rejected { code: \"invalid_json\", dead_lettered: true }",
                "Rejected { code: \"missing_field.user_id\", dead_lettered: false }",
                "Erased",
                "Stored",
                "Redelivered",
            ]
        );
        let tally = work.tally();
        assert_eq!((tally.rows, tally.sent_to_dlq, tally.erased), (4, 1, 1));
        assert_eq!(tally.rejected.len(), 2);
    }

    #[test]
    fn a_refused_row_in_the_dlq_is_finished() {
        let mut work = work(false);
        work.refused_by(&refusing_2());
        work.sent(&[2]);
        assert_eq!(work.failed_positions(false), [4, 7]);
        let outcomes = work.outcomes(&refusing_2(), &[4, 7], &[]);
        assert_eq!(outcomes[2].2, MessageOutcome::Refused { dead_lettered: true });
        assert_eq!(work.tally().refused_to_dlq, 1);
    }

    #[test]
    fn a_failed_write_backs_off_what_sqs_held_and_redelivers_the_rest() {
        let work = work(false);
        // Every record not otherwise finished failed; SQS held two of them.
        let failed = work.failed_positions(true);
        assert_eq!(failed, [0, 1, 2, 4, 6, 7]);
        let outcomes = outcomes_of(&work, &InsertReport::default(), &failed, &[0, 6]);
        assert_eq!(outcomes[0], "BackedOff");
        assert_eq!(outcomes[1], "Redelivered");
        assert_eq!(outcomes[6], "BackedOff");
        assert!(outcomes[4].starts_with("Rejected"), "{outcomes:?}");
        assert_eq!(outcomes[5], "Erased");
    }

    #[test]
    fn a_redelivered_batch_is_duplicates() {
        let work = work(false);
        let report = InsertReport {
            duplicates: 4,
            ..InsertReport::default()
        };
        let outcomes = outcomes_of(&work, &report, &[4, 7], &[]);
        assert_eq!(outcomes[0], "Duplicate");
        assert_eq!(outcomes[6], "Duplicate");
        // Some new and some duplicates: stored, the batch span counts them.
        let mixed = InsertReport {
            inserted: 1,
            duplicates: 3,
            ..InsertReport::default()
        };
        assert_eq!(outcomes_of(&work, &mixed, &[4, 7], &[])[0], "Stored");
    }

    #[test]
    fn fifo_rows_after_a_refused_row_come_back_even_when_the_dlq_took_it() {
        let mut work = work(true);
        work.sent(&[4]);
        // The write stopped at the third row (position 2): rows 3 and 6
        // were never written. The DLQ took the refused row's copy.
        work.refused_by(&refusing_2());
        work.sent(&[2]);
        assert!(matches!(work.records[6].state, RecordState::Behind));
        assert_eq!(work.failed_positions(false), [6, 7]);
    }

    #[test]
    fn fifo_holds_every_row_behind_an_unsent_reject_and_fails_from_it_on() {
        let mut work = work(true);
        work.hold_back_behind_unsent_reject();
        // The reject at 4 was not sent: the row at 6 waits behind it.
        assert_eq!(work.rows().len(), 3);
        assert!(matches!(work.records[6].state, RecordState::Behind));
        // From 4 on, all but the erased record (finished) come back.
        assert_eq!(work.failed_positions(false), [4, 6, 7]);
    }
}
