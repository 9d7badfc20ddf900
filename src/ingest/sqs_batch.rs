//! SQS's batch calls, one way for every caller (the DLQ's copies, the
//! backoff, `dlq-redrive`, `poll`): how they are cut (`SendMessageBatch`,
//! `DeleteMessageBatch` and `ChangeMessageVisibilityBatch` take at most
//! ten entries, and a send at most 1 MiB in all), how an entry is named
//! (its position in its call, [`entry_id`]), and how an answer is read
//! ([`confirmed`]: the positions SQS took, each refusal logged).

use std::ops::Range;

use aws_sdk_sqs::operation::change_message_visibility_batch::ChangeMessageVisibilityBatchOutput;
use aws_sdk_sqs::operation::delete_message_batch::DeleteMessageBatchOutput;
use aws_sdk_sqs::operation::send_message_batch::SendMessageBatchOutput;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_sqs::types::BatchResultErrorEntry;
use tracing::warn;

/// Entries per batch call (the SQS limit).
pub const MAX_ENTRIES: usize = 10;

/// Payload per `SendMessageBatch`: SQS takes 1 MiB, and attribute names and
/// entry ids count too, so room is left.
pub const MAX_BATCH_BYTES: usize = 900 * 1024;

/// The calls for entries of `sizes` bytes, as ranges of their positions,
/// in order: at most [`MAX_ENTRIES`] each and within [`MAX_BATCH_BYTES`]
/// (an entry larger than that alone in its call, for SQS to refuse it
/// alone).
pub fn batches(sizes: impl IntoIterator<Item = usize>) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    let mut end = 0;
    for size in sizes {
        if end > start && (end - start == MAX_ENTRIES || bytes + size > MAX_BATCH_BYTES) {
            out.push(start..end);
            (start, bytes) = (end, 0);
        }
        bytes += size;
        end += 1;
    }
    if end > start {
        out.push(start..end);
    }
    out
}

/// The id of the entry at `position` in its call (0 to 9).
pub fn entry_id(position: usize) -> String {
    position.to_string()
}

/// A batch call's answer: the ids it took, and its refusals.
pub trait Answer {
    /// The ids of the entries SQS took.
    fn taken(&self) -> Vec<&str>;
    /// The entries SQS refused.
    fn refused(&self) -> &[BatchResultErrorEntry];
}

// The three outputs have the same two lists under the same names, of
// result types of their own.
macro_rules! answers {
    ($($output:ty),*) => {$(
        impl Answer for $output {
            fn taken(&self) -> Vec<&str> {
                self.successful().iter().map(|s| s.id()).collect()
            }
            fn refused(&self) -> &[BatchResultErrorEntry] {
                self.failed()
            }
        }
    )*};
}
answers!(
    SendMessageBatchOutput,
    DeleteMessageBatchOutput,
    ChangeMessageVisibilityBatchOutput
);

/// The positions (in the call, [`entry_id`]) of the entries SQS took, in
/// order; each refusal is one WARN line, `refused` saying what it means for
/// that entry (never an entry's content: its position and SQS's code).
pub fn confirmed(answer: &impl Answer, entries: usize, refused: &'static str) -> Vec<usize> {
    for failed in answer.refused() {
        warn!(
            entry = failed.id(),
            code = failed.code(),
            sender_fault = failed.sender_fault(),
            "{refused}"
        );
    }
    let mut taken: Vec<usize> = answer
        .taken()
        .into_iter()
        .filter_map(|id| id.parse().ok())
        .filter(|&p| p < entries)
        .collect();
    taken.sort_unstable();
    taken.dedup();
    taken
}

/// The batch positions (`positions`, one an entry, in order) whose entries
/// SQS took: [`confirmed`] of its answer, or none when the call itself
/// failed, with one WARN line saying so (`failed`: what failed and what to
/// check).
pub fn taken_positions<A: Answer, E: ProvideErrorMetadata + std::error::Error>(
    result: Result<A, E>,
    positions: &[usize],
    refused: &'static str,
    failed: &'static str,
) -> Vec<usize> {
    match result {
        Ok(answer) => confirmed(&answer, positions.len(), refused)
            .into_iter()
            .map(|i| positions[i])
            .collect(),
        Err(e) => {
            warn!(
                records = positions.len(),
                code = e.code().unwrap_or("none"),
                error = %DisplayErrorContext(&e),
                "{failed}"
            );
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_gives_the_positions_taken_and_nothing_else() {
        use aws_sdk_sqs::types::{BatchResultErrorEntry, SendMessageBatchResultEntry};
        let ok = |id: &str| {
            SendMessageBatchResultEntry::builder()
                .id(id)
                .message_id("m")
                .md5_of_message_body("d")
                .build()
                .unwrap()
        };
        let answer = SendMessageBatchOutput::builder()
            .successful(ok(&entry_id(2)))
            .successful(ok(&entry_id(0)))
            // Not an id of this call's: never a position.
            .successful(ok("7"))
            .successful(ok("x"))
            .failed(
                BatchResultErrorEntry::builder()
                    .id(entry_id(1))
                    .code("InvalidParameterValue")
                    .sender_fault(true)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        assert_eq!(confirmed(&answer, 3, "refused"), [0, 2]);
    }

    #[test]
    fn ten_entries_a_call_and_never_an_empty_one() {
        let small = |n| batches(std::iter::repeat_n(1, n));
        assert_eq!(small(0), Vec::<Range<usize>>::new());
        assert_eq!(small(10), vec![Range { start: 0, end: 10 }]);
        assert_eq!(small(23), [0..10, 10..20, 20..23]);
    }

    #[test]
    fn a_call_stays_within_the_bytes_and_a_large_entry_goes_alone() {
        let k = 1024;
        assert_eq!(batches([400 * k, 400 * k, 400 * k]), [0..2, 2..3]);
        assert_eq!(batches([950 * k, 10, 10]), [0..1, 1..3]);
        assert_eq!(batches([10, 950 * k, 10]), [0..1, 1..2, 2..3]);
        // Both bounds: bytes, then count.
        let sizes: Vec<usize> = std::iter::repeat_n(100 * k, 12).collect();
        assert_eq!(batches(sizes), [0..9, 9..12]);
        let mut sizes = vec![950 * k];
        sizes.extend(std::iter::repeat_n(1, 11));
        assert_eq!(batches(sizes), [0..1, 1..11, 11..12]);
    }
}
