//! One SQS record to one masked row (or a [`Rejection`]): the
//! contract's parse of its body ([`crate::contract`]), its tokens
//! ([`crate::privacy::masking`]), and its row key and day, which come from
//! the SQS message alone.

use chrono::{DateTime, Utc};

use crate::contract::rebuilt_login::parse_copy;
use crate::contract::{
    Contract, LoginRow, MAX_MESSAGE_ID_CHARS, Rejection, RowKeyAndTokens, parse_body_with,
};
use crate::ingest::event::{RebuiltClaim, SqsRecord};
use crate::privacy::masking::{Masker, signature_version};

/// The key a message's row is stored under: its message id and the
/// `SentTimestamp` its day comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowKey<'a> {
    /// The `message_id` column.
    pub message_id: &'a str,
    /// Epoch milliseconds, as text; `None` when the message has none.
    pub sent_timestamp: Option<&'a str>,
    /// Whether it is a redriven original's (its signed claim holds for
    /// this body).
    pub redriven: bool,
}

/// The row key of a message: a redriven copy's original's
/// ([`SqsRecord::claimed_source`]) when `masker` verifies its signature
/// under any key version it holds, so every redriven copy of a message
/// lands on the row of the original; else the message's own id
/// (`message_id`) and `SentTimestamp`. Attributes any sender can set are
/// never enough: unsigned or wrongly signed ones, or a signed key on
/// another body than the original's, are ignored, so a producer cannot
/// choose another message's key or a row's day.
pub fn row_key<'a>(message_id: &'a str, message: &'a SqsRecord, masker: &Masker) -> RowKey<'a> {
    match message.claimed_source() {
        Some(c)
            if masker.verifies_redrive(
                c.message_id,
                c.sent_timestamp,
                message.body.as_deref().unwrap_or_default(),
                c.signature,
            ) =>
        {
            RowKey {
                message_id: c.message_id,
                sent_timestamp: Some(c.sent_timestamp),
                redriven: true,
            }
        }
        _ => RowKey {
            message_id,
            sent_timestamp: message.sent_timestamp(),
            redriven: false,
        },
    }
}

/// Whether a signature the message carries (a redrive claim's or a
/// dead-letter copy's) names a key version newer than `masker`'s: the
/// database moved (`login-etl rotate-key`) since this environment last
/// read it, and the message cannot be judged until it reads it again. The
/// version is only read, not checked: anyone can write one.
pub fn signed_after(message: &SqsRecord, masker: &Masker) -> bool {
    let Some(a) = message.message_attributes.as_ref() else {
        return false;
    };
    [&a.source_signature, &a.copy_signature]
        .into_iter()
        .filter_map(|s| signature_version(s.as_deref()?))
        .any(|v| v > masker.version())
}

/// Refuses a message the DLQ operator's role sent (`operator_role_id`,
/// its `AROA…` id: SQS's `SenderId` for a role session is `<id>:<session>`)
/// unless it is a redriven original whose claim `masker` verifies; a
/// rebuilt login's seal is checked where it is opened. The role may send
/// to the queue so that `dlq-redrive` can, not to add logins of its own.
pub fn check_sender(
    message_id: &str,
    message: &SqsRecord,
    masker: &Masker,
    operator_role_id: Option<&str>,
) -> Result<(), Rejection> {
    let Some(role) = operator_role_id else {
        return Ok(());
    };
    let sender = message
        .attributes
        .as_ref()
        .and_then(|a| a.sender_id.as_deref())
        .unwrap_or_default();
    let by_operator = sender
        .strip_prefix(role)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(':'));
    if by_operator && !message.claims_rebuilt() && !row_key(message_id, message, masker).redriven {
        return Err(Rejection::OperatorMessageUnsigned);
    }
    Ok(())
}

/// Parses and masks one SQS message. `message_id` is the record's id
/// (checked present by the caller). The row's key and day come from the
/// message alone ([`row_key`]): never from when it was read, so every
/// delivery of it, and every redriven copy, lands on the same row. A test
/// hook: the handler calls [`transform_with`] with its contract.
#[cfg(any(test, feature = "test-support"))]
pub fn transform<'a>(
    message_id: &'a str,
    message: &'a SqsRecord,
    masker: &Masker,
) -> Result<LoginRow<'a>, Rejection> {
    transform_with(message_id, message, masker, &Contract::DEFAULT)
}

/// `transform` under `contract` (`UNKNOWN_FIELDS`, `EXTRA_FIELDS`).
pub fn transform_with<'a>(
    message_id: &'a str,
    message: &'a SqsRecord,
    masker: &Masker,
    contract: &Contract,
) -> Result<LoginRow<'a>, Rejection> {
    let key = row_key(message_id, message, masker);
    // A copy's attributes on a body its signature does not hold for: the
    // masked copy itself, not the original sent back.
    if message.is_dead_letter_copy() && !key.redriven {
        return Err(Rejection::DeadLetterCopy);
    }
    let message_id = key.message_id;
    if message_id.len() > MAX_MESSAGE_ID_CHARS && message_id.chars().count() > MAX_MESSAGE_ID_CHARS
    {
        return Err(Rejection::MessageIdTooLong);
    }
    let login = parse_body_with(message.body.as_deref().unwrap_or(""), contract)?;
    let sent_at = checked_sent_at(key.sent_timestamp)?;
    let key = RowKeyAndTokens {
        message_id,
        sent_at,
        masked_ip: login.ip.as_ref().map(|ip| masker.ip(ip)),
        masked_device_id: login.device_id.as_deref().map(|d| masker.device_id(d)),
        key_version: masker.version(),
    };
    Ok(LoginRow::new(login, key))
}

/// The user id a message's body carries, as its row would hold it (the
/// default contract's parse: a JSON integer as its decimal text), whatever
/// else is wrong with the message; `None` when it has none usable. Erasure
/// comes before any rejection: the handler asks this of a record it would
/// reject, and an erased user's is skipped, not dead-lettered.
pub fn user_id_of(message: &SqsRecord) -> Option<std::borrow::Cow<'_, str>> {
    crate::contract::parse_body(message.body.as_deref()?)
        .ok()
        .map(|login| login.user_id)
}

/// How old a rebuilt login's original may be: SQS keeps a message 14 days
/// at most in the source queue, and its copy 14 more in the dead-letter
/// queue. An older one was kept outside them, and is not rebuilt.
pub const REBUILT_MAX_AGE: chrono::TimeDelta = chrono::TimeDelta::days(28);

/// How far ahead of `now` a rebuilt login's original may be dated: SQS's
/// clock and the function's may differ by this much.
pub const REBUILT_CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// The row of a login rebuilt from a dead-letter copy
/// ([`crate::privacy::dead_letter::rebuilt`]), its copy's signature and
/// its seal checked by the caller: keyed and dated by the copy's original
/// (`claim`), the copy's fields read back leniently
/// ([`crate::contract::rebuilt_login`]), its tokens as they are, brought from the
/// version they were made at to `masker`'s. An original dated more than
/// [`REBUILT_MAX_AGE`] before `now`, or after it, is
/// [`Rejection::SentTimestampOutOfRange`].
pub fn transform_rebuilt<'a>(
    claim: RebuiltClaim<'a>,
    message: &'a SqsRecord,
    masker: &Masker,
    contract: &Contract,
    now: DateTime<Utc>,
) -> Result<LoginRow<'a>, Rejection> {
    let message_id = claim.message_id;
    if message_id.chars().count() > MAX_MESSAGE_ID_CHARS {
        return Err(Rejection::MessageIdTooLong);
    }
    // Tokens of a version this environment does not hold cannot be re-keyed.
    if claim.key_version == 0 || claim.key_version > masker.version() {
        return Err(Rejection::RebuiltLoginUnverified);
    }
    let sent_at = checked_sent_at(Some(claim.sent_timestamp))?;
    if sent_at < now - REBUILT_MAX_AGE || sent_at > now + REBUILT_CLOCK_SKEW {
        return Err(Rejection::SentTimestampOutOfRange);
    }
    let copy = parse_copy(message.body.as_deref().unwrap_or(""), contract)?;
    let mut key = RowKeyAndTokens {
        message_id,
        sent_at,
        masked_ip: copy.masked_ip,
        masked_device_id: copy.masked_device_id,
        key_version: claim.key_version,
    };
    masker.catch_up(
        &mut key.key_version,
        &mut key.masked_ip,
        &mut key.masked_device_id,
    );
    Ok(LoginRow::new(copy.event, key))
}

/// The first instant PostgreSQL's `timestamptz` holds (4714-11-24
/// 00:00 BC, UTC), in epoch milliseconds.
pub const SENT_AT_MIN_MS: i64 = -210_866_803_200_000;

/// The first instant past the last one it holds (294277-01-01 00:00 UTC).
pub const SENT_AT_END_MS: i64 = 9_224_318_016_000_000;

/// A row key's `sent_timestamp` (epoch milliseconds, as text) as a time
/// within what PostgreSQL's `timestamptz` (and so `date`) holds:
/// [`Rejection::NoSentTimestamp`] when absent or unreadable,
/// [`Rejection::SentTimestampOutOfRange`] outside it.
pub fn checked_sent_at(sent_timestamp: Option<&str>) -> Result<DateTime<Utc>, Rejection> {
    let millis = sent_timestamp
        .and_then(|t| t.trim().parse::<i64>().ok())
        .ok_or(Rejection::NoSentTimestamp)?;
    if !(SENT_AT_MIN_MS..SENT_AT_END_MS).contains(&millis) {
        return Err(Rejection::SentTimestampOutOfRange);
    }
    DateTime::from_timestamp_millis(millis).ok_or(Rejection::SentTimestampOutOfRange)
}

#[cfg(test)]
mod tests;
