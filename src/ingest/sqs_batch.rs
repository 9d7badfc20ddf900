//! How SQS's batch calls are cut: `SendMessageBatch`,
//! `DeleteMessageBatch` and `ChangeMessageVisibilityBatch` take at most
//! ten entries, and a send at most 1 MiB in all. Every caller (the DLQ's
//! copies, the backoff, `dlq-redrive`, `poll`) takes its bounds from here.

use std::ops::Range;

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

#[cfg(test)]
mod tests {
    use super::*;

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
