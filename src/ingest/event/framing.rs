//! An SQS batch event read as the bytes Lambda sent: its `Records` array is
//! framed by hand, one message at a time, each parsed by serde_json straight
//! from the payload when the handler first asks for it. Nothing is parsed
//! or copied before the first row can go out (docs/performance.md, "The
//! payload as Lambda sent it").
//!
//! The framing is only the array's punctuation (`[`, `,`, `]`) and the
//! object around it; every value is read by serde_json, which checks its
//! syntax, and each value's bytes are checked as UTF-8 (serde_json checks
//! only the strings it keeps), as a whole-payload parse would. A syntax
//! error or a bad byte becomes the batch's last entry,
//! [`ArrayEntry::Unreadable`], found when the reading reaches it: the handler
//! fails the invocation before anything commits.

use std::sync::Mutex;

use bytes::Bytes;
use serde::de::{DeserializeOwned, IgnoredAny};

use super::{NotAnSqsEvent, SqsRecord};

/// One message of the array, as read.
// Kept inline in the list's buckets: one entry per message, no box.
#[allow(clippy::large_enum_variant)]
pub(super) enum ArrayEntry {
    /// An SQS message.
    Record(SqsRecord),
    /// JSON, but not an SQS message (a field of the wrong type).
    Malformed,
    /// The payload is not JSON from here on: the batch ends at this entry.
    Unreadable,
}

/// The payload and the messages read from it so far.
pub(super) struct Payload {
    bytes: Bytes,
    /// Append-only, so a message read stays where it is while later ones
    /// are read (the handler holds on to the earlier rows); reading an
    /// entry takes no lock (the handler asks for each several times).
    entries: boxcar::Vec<ArrayEntry>,
    cursor: Mutex<Cursor>,
}

/// Where the reading is.
struct Cursor {
    /// The byte after the last thing read.
    at: usize,
    /// The array and the object around it are read to the end.
    done: bool,
    /// The first message's length in bytes (0 before it is read).
    first_bytes: usize,
}

impl Payload {
    /// Reads up to the `[` of `Records` (keys before it are skipped).
    pub(super) fn new(bytes: Bytes) -> Result<Self, NotAnSqsEvent> {
        let b = &bytes[..];
        let mut at = expect(b, skip_ws(b, 0), b'{')?;
        loop {
            let (key, after) = value::<String>(b, skip_ws(b, at)).ok_or(NotAnSqsEvent)?;
            at = skip_ws(b, expect(b, skip_ws(b, after), b':')?);
            if key == "Records" {
                at = expect(b, at, b'[')?;
                break;
            }
            let (_, after) = value::<IgnoredAny>(b, at).ok_or(NotAnSqsEvent)?;
            at = expect(b, skip_ws(b, after), b',')?;
        }
        utf8(&b[..at])?;
        Ok(Self {
            bytes,
            entries: boxcar::Vec::new(),
            cursor: Mutex::new(Cursor {
                at,
                done: false,
                first_bytes: 0,
            }),
        })
    }

    /// The entry at `index`, read now if it was not yet; `None` past the end.
    pub(super) fn get(&self, index: usize) -> Option<&ArrayEntry> {
        if let Some(entry) = self.entries.get(index) {
            return Some(entry);
        }
        // A poisoned lock (a read panicked, which serde_json does not): the
        // batch cannot be read on, and must not look shorter than it is.
        let Ok(mut cursor) = self.cursor.lock() else {
            return Some(&UNREADABLE);
        };
        while self.entries.count() <= index && !cursor.done {
            if let Some(entry) = self.next(&mut cursor) {
                self.entries.push(entry);
            }
        }
        self.entries.get(index)
    }

    /// Reads the next message, or the end of the array (then `None`, or
    /// `Unreadable` when what follows it is not the rest of the object).
    fn next(&self, cursor: &mut Cursor) -> Option<ArrayEntry> {
        let b = &self.bytes[..];
        let mut at = skip_ws(b, cursor.at);
        // Every call before the end adds an entry: none yet, no message read.
        let first = self.entries.count() == 0;
        let end = match (b.get(at), first) {
            (Some(b']'), _) => true,
            (Some(b','), false) => {
                at = skip_ws(b, at + 1);
                false
            }
            (_, true) => false,
            _ => {
                cursor.done = true;
                return Some(ArrayEntry::Unreadable);
            }
        };
        if end {
            cursor.done = true;
            let rest = rest_of_object(b, at + 1).and_then(|()| utf8(&b[at..]));
            return rest.is_err().then_some(ArrayEntry::Unreadable);
        }
        let (entry, after) = match value::<SqsRecord>(b, at) {
            Some((record, after)) => (ArrayEntry::Record(record), after),
            // Not an SQS message; the array goes on if it is JSON.
            None => match value::<IgnoredAny>(b, at) {
                Some((_, after)) => (ArrayEntry::Malformed, after),
                None => {
                    cursor.done = true;
                    return Some(ArrayEntry::Unreadable);
                }
            },
        };
        if utf8(&b[at..after]).is_err() {
            cursor.done = true;
            return Some(ArrayEntry::Unreadable);
        }
        if first {
            cursor.first_bytes = after - at;
        }
        cursor.at = after;
        Some(entry)
    }

    /// About how many messages there are: the payload's size over the
    /// first message's (read now); 0 when the first is not an SQS message
    /// (the batch will fail: no COPY is opened for it).
    pub(super) fn size_hint(&self) -> usize {
        if !matches!(self.get(0), Some(ArrayEntry::Record(_))) {
            return 0;
        }
        let first = self.cursor.lock().map_or(0, |c| c.first_bytes);
        self.bytes.len() / first.max(1)
    }

    /// The payload.
    pub(super) fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// How many messages are read so far.
    #[cfg(test)]
    pub(super) fn read_so_far(&self) -> usize {
        self.entries.count()
    }

    /// Every entry, read now.
    pub(super) fn read_all(&self) -> impl Iterator<Item = &ArrayEntry> {
        (0..).map_while(|i| self.get(i))
    }

    /// The number of messages before the end or the break (all read now).
    pub(super) fn len(&self) -> usize {
        let _ = self.get(usize::MAX);
        let n = self.entries.count();
        match n.checked_sub(1).and_then(|last| self.entries.get(last)) {
            Some(ArrayEntry::Unreadable) => n - 1,
            _ => n,
        }
    }
}

/// What a poisoned cursor reads as.
static UNREADABLE: ArrayEntry = ArrayEntry::Unreadable;

/// The bytes are UTF-8 (what serde_json skips, it does not check).
fn utf8(b: &[u8]) -> Result<(), NotAnSqsEvent> {
    std::str::from_utf8(b).map(drop).map_err(|_| NotAnSqsEvent)
}

/// After the array's `]`: other keys and the closing `}`, then nothing.
fn rest_of_object(b: &[u8], mut at: usize) -> Result<(), NotAnSqsEvent> {
    loop {
        at = skip_ws(b, at);
        match b.get(at) {
            Some(b'}') if skip_ws(b, at + 1) == b.len() => return Ok(()),
            Some(b',') => {
                let (key, after) = value::<String>(b, skip_ws(b, at + 1)).ok_or(NotAnSqsEvent)?;
                if key == "Records" {
                    return Err(NotAnSqsEvent);
                }
                at = skip_ws(b, expect(b, skip_ws(b, after), b':')?);
                at = value::<IgnoredAny>(b, at).ok_or(NotAnSqsEvent)?.1;
            }
            _ => return Err(NotAnSqsEvent),
        }
    }
}

/// One JSON value read at `at` as a `T`, and the byte after it.
fn value<T: DeserializeOwned>(b: &[u8], at: usize) -> Option<(T, usize)> {
    let mut values = serde_json::Deserializer::from_slice(b.get(at..)?).into_iter::<T>();
    let value = values.next()?.ok()?;
    Some((value, at + values.byte_offset()))
}

/// `at` past the byte `want` (after whitespace: callers skip it).
fn expect(b: &[u8], at: usize, want: u8) -> Result<usize, NotAnSqsEvent> {
    (b.get(at) == Some(&want))
        .then_some(at + 1)
        .ok_or(NotAnSqsEvent)
}

/// The first byte at or after `at` that is not JSON whitespace.
fn skip_ws(b: &[u8], at: usize) -> usize {
    at + b
        .get(at..)
        .unwrap_or_default()
        .iter()
        .take_while(|c| matches!(c, b' ' | b'\n' | b'\r' | b'\t'))
        .count()
}
