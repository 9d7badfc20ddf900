//! Why a message is not a login the table takes: a reason that names a
//! field, never its value, safe to log and to count.

use std::borrow::Cow;
use std::fmt;

use crate::app_version::VersionError;
use crate::contract::policy::MAX_EXTRA_BYTES;
use crate::contract::{Field, FieldName};

/// Longest `message_id` the table stores (`varchar(128)`).
pub const MAX_MESSAGE_ID_CHARS: usize = 128;

/// Why a record was rejected. Names a field, never its value, so it is safe
/// to log and to count by [`Rejection::code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rejection {
    /// The body is absent or blank.
    EmptyBody,
    /// The body is not valid JSON (syntax, bad escape, nesting too deep).
    InvalidJson,
    /// The body is JSON but not an object.
    NotAnObject,
    /// An object with none of the login-event fields (another message type).
    NotALoginEvent,
    /// A required field is absent or null.
    MissingField(Field),
    /// A field appears twice in the object.
    DuplicateField(Field),
    /// A field is not a string.
    WrongType(Field),
    /// A field is empty or only whitespace.
    EmptyField(Field),
    /// A field is longer than its column allows.
    TooLong(Field),
    /// A field contains U+0000, which PostgreSQL text cannot store.
    NulCharacter(Field),
    /// `ip` is not an IPv4 or IPv6 address.
    InvalidIp,
    /// `app_version` does not have the accepted shape.
    InvalidAppVersion(VersionError),
    /// The SQS message id is longer than the `message_id` column.
    MessageIdTooLong,
    /// The message has no usable `SentTimestamp` (epoch milliseconds): its
    /// day, part of the row key, would depend on when it was read, so a
    /// redelivery on another day could write it twice.
    NoSentTimestamp,
    /// The `SentTimestamp` (or a redriven copy's `source_sent_timestamp`)
    /// is epoch milliseconds outside what PostgreSQL's `timestamptz` holds
    /// (4714-11-24 BC to the end of 294276 AD): every attempt to write it
    /// would be refused.
    SentTimestampOutOfRange,
    /// A field outside the contract, with `UNKNOWN_FIELDS=reject`.
    UnknownField(FieldName),
    /// A dead-letter copy the function made (its body masked), come back
    /// as it was instead of its original.
    DeadLetterCopy,
    /// A login that says it was rebuilt from a dead-letter copy
    /// (`rebuilt_seal`) whose seal does not open for its body and row key:
    /// altered, or made by someone other than the DLQ operator.
    RebuiltLoginUnverified,
    /// A message the DLQ operator's role sent (`SenderId`) that is neither
    /// a redriven original with its valid claim nor a sealed rebuilt login:
    /// that role may send to the queue only what `dlq-redrive` sends.
    OperatorMessageUnsigned,
    /// A declared extra field (`EXTRA_FIELDS`) the `extra` column cannot
    /// take as it is.
    Extra(ExtraProblem, FieldName),
}

/// What is wrong with a declared extra field's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExtraProblem {
    /// It appears twice.
    Duplicate,
    /// Its JSON is longer than `MAX_EXTRA_BYTES` (1,024 bytes).
    TooLong,
    /// It holds U+0000, which `jsonb` cannot store.
    NulCharacter,
    /// `jsonb` would refuse it: a lone UTF-16 surrogate, a number out of
    /// range.
    Invalid,
    /// An object or an array: a declared field holds one value (a nested
    /// document could carry anything, PII included).
    NotScalar,
}

impl ExtraProblem {
    /// Its name in codes (`<kind>.<field>` for a rejection, `<field>.<kind>`
    /// for a defect).
    pub fn name(self) -> &'static str {
        match self {
            ExtraProblem::Duplicate => "duplicate_field",
            ExtraProblem::TooLong => "too_long",
            ExtraProblem::NulCharacter => "nul_character",
            ExtraProblem::Invalid => "invalid_value",
            ExtraProblem::NotScalar => "not_scalar",
        }
    }
}

/// The codes of rejections whose message was no producer's (the DLQ
/// operator's own, or a rebuilt login whose seal did not hold): a copy
/// of one carries no claim to a row, and `dlq-redrive` leaves it.
pub const NOT_A_PRODUCERS: [&str; 2] = ["operator_message_unsigned", "rebuilt_login_unverified"];

impl Rejection {
    /// Stable machine-readable code, e.g. `missing_field.user_id`, for counting.
    pub fn code(&self) -> Cow<'static, str> {
        let with = |kind: &str, f: &Field| Cow::Owned(format!("{kind}.{}", f.name()));
        match self {
            Rejection::EmptyBody => "empty_body".into(),
            Rejection::InvalidJson => "invalid_json".into(),
            Rejection::NotAnObject => "not_an_object".into(),
            Rejection::NotALoginEvent => "not_a_login_event".into(),
            Rejection::MissingField(f) => with("missing_field", f),
            Rejection::DuplicateField(f) => with("duplicate_field", f),
            Rejection::WrongType(f) => with("wrong_type", f),
            Rejection::EmptyField(f) => with("empty_field", f),
            Rejection::TooLong(f) => with("too_long", f),
            Rejection::NulCharacter(f) => with("nul_character", f),
            Rejection::InvalidIp => "invalid_ip".into(),
            Rejection::InvalidAppVersion(VersionError::Shape) => "invalid_app_version".into(),
            Rejection::InvalidAppVersion(VersionError::OutOfRange) => {
                "app_version_out_of_range".into()
            }
            Rejection::MessageIdTooLong => "message_id_too_long".into(),
            Rejection::NoSentTimestamp => "no_sent_timestamp".into(),
            Rejection::SentTimestampOutOfRange => "sent_timestamp_out_of_range".into(),
            // Never the name: a producer's name may be anything (an
            // address, an email: `alice_at_example_com`); validate shows it.
            Rejection::UnknownField(_) => "unknown_field".into(),
            Rejection::DeadLetterCopy => "dead_letter_copy".into(),
            Rejection::RebuiltLoginUnverified => "rebuilt_login_unverified".into(),
            Rejection::OperatorMessageUnsigned => "operator_message_unsigned".into(),
            Rejection::Extra(problem, name) => format!("{}.{name}", problem.name()).into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::EmptyBody => f.write_str("the message body is empty"),
            Rejection::InvalidJson => f.write_str("the message body is not valid JSON"),
            Rejection::NotAnObject => f.write_str("the message body is JSON but not an object"),
            Rejection::NotALoginEvent => {
                f.write_str("the message is not a login event (none of its fields are present)")
            }
            Rejection::MissingField(x) => write!(f, "field `{}` is missing or null", x.name()),
            Rejection::DuplicateField(x) => {
                write!(f, "field `{}` appears more than once", x.name())
            }
            Rejection::WrongType(x) => write!(f, "field `{}` must be a string", x.name()),
            Rejection::EmptyField(x) => write!(f, "field `{}` is empty", x.name()),
            Rejection::TooLong(x) => write!(
                f,
                "field `{}` is longer than {} characters",
                x.name(),
                x.max_chars()
            ),
            Rejection::NulCharacter(x) => {
                write!(f, "field `{}` contains a NUL character", x.name())
            }
            Rejection::InvalidIp => f.write_str("field `ip` is not an IPv4 or IPv6 address"),
            Rejection::InvalidAppVersion(e) => write!(f, "field `app_version` is invalid: {e}"),
            Rejection::MessageIdTooLong => write!(
                f,
                "the SQS messageId (or the source_message_id of a redriven copy) is longer than {MAX_MESSAGE_ID_CHARS} characters"
            ),
            Rejection::NoSentTimestamp => f.write_str(
                "the SQS attribute SentTimestamp (or source_sent_timestamp of a redriven copy) is missing or not epoch milliseconds; SQS sets it on every message, so the event was not sent by SQS",
            ),
            Rejection::SentTimestampOutOfRange => f.write_str(
                "the SQS attribute SentTimestamp (or source_sent_timestamp of a redriven copy) is outside the dates PostgreSQL can store (4714 BC to 294276 AD); SQS sets it to the time it accepted the message, so the event was not sent by SQS",
            ),
            Rejection::UnknownField(_) => f.write_str(
                "a field is not part of the contract (UNKNOWN_FIELDS=reject; `login-etl validate --unknown-fields ignore` on the message names it); remove it, or declare it in EXTRA_FIELDS if it holds no PII",
            ),
            Rejection::DeadLetterCopy => f.write_str(
                "the message is a dead-letter copy login-etl made (its ip and device id masked), not a login a producer sent; send the original back with login-etl dlq-redrive (docs/runbooks/dlq-redrive.md), not the copy",
            ),
            Rejection::OperatorMessageUnsigned => f.write_str(
                "the DLQ operator's role sent this message without a redrive claim or a seal that holds for it: that role may send back only what login-etl dlq-redrive sends (docs/runbooks/dlq-redrive.md); a login of its own is refused",
            ),
            Rejection::RebuiltLoginUnverified => f.write_str(
                "the message says it is a login rebuilt from a dead-letter copy, and its seal does not open for its body and row key: only login-etl dlq-redrive --rebuild, as DlqOperatorRole, makes one (docs/runbooks/dlq-redrive.md)",
            ),
            Rejection::Extra(ExtraProblem::Duplicate, name) => {
                write!(f, "field `{name}` appears more than once")
            }
            Rejection::Extra(ExtraProblem::TooLong, name) => write!(
                f,
                "field `{name}` is longer than {MAX_EXTRA_BYTES} bytes of JSON"
            ),
            Rejection::Extra(ExtraProblem::NulCharacter, name) => {
                write!(f, "field `{name}` contains a NUL character")
            }
            Rejection::Extra(ExtraProblem::Invalid, name) => write!(
                f,
                "field `{name}` holds JSON that PostgreSQL's jsonb cannot store (a lone surrogate, a number out of range)"
            ),
            Rejection::Extra(ExtraProblem::NotScalar, name) => write!(
                f,
                "field `{name}` holds an object or an array; a declared field keeps one value (a string, number, boolean or null)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{NOT_A_PRODUCERS, Rejection};

    #[test]
    fn the_codes_of_no_producers_messages_are_those_rejections_codes() {
        let codes = [
            Rejection::OperatorMessageUnsigned,
            Rejection::RebuiltLoginUnverified,
        ]
        .map(|r| r.code().into_owned());
        assert_eq!(codes, NOT_A_PRODUCERS);
    }
}
