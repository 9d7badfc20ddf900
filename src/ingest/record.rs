//! One SQS record to one validated, masked row (or a [`Rejection`]).
//!
//! The body is parsed by a hand-rolled serde visitor instead of a derived
//! struct so that (a) a rejection names the field but never echoes the value
//! (serde's derived errors quote it), (b) duplicate keys and wrong types are
//! reported per field, and (c) strings without escapes are borrowed, not copied.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use crate::ingest::event::SqsRecord;
use chrono::{DateTime, NaiveDate, Utc};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::app_version::{self, VersionError};
use crate::privacy::masking::{Masker, Token};

/// Longest `message_id` the table stores (`varchar(128)`).
pub const MAX_MESSAGE_ID_CHARS: usize = 128;

/// A field of the login event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    /// `user_id`
    UserId,
    /// `app_version`
    AppVersion,
    /// `device_type`
    DeviceType,
    /// `ip`
    Ip,
    /// `locale`
    Locale,
    /// `device_id`
    DeviceId,
}

impl Field {
    /// The JSON key.
    pub fn name(self) -> &'static str {
        match self {
            Field::UserId => "user_id",
            Field::AppVersion => "app_version",
            Field::DeviceType => "device_type",
            Field::Ip => "ip",
            Field::Locale => "locale",
            Field::DeviceId => "device_id",
        }
    }

    /// Longest accepted value in characters (the column size it lands in).
    pub fn max_chars(self) -> usize {
        match self {
            Field::UserId => 128,
            Field::AppVersion | Field::DeviceType | Field::Locale => 32,
            Field::DeviceId => 256,
            // Longest textual IPv6 form is 45 characters; anything longer cannot parse.
            Field::Ip => 64,
        }
    }
}

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
}

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
        }
    }
}

/// A validated, masked row of `user_logins`, borrowing from the event where
/// it can. It also carries the raw ip and device id, for the PII vault only
/// (never written to `user_logins`, redacted from `Debug`).
#[derive(Clone, PartialEq, Eq)]
pub struct LoginRow<'a> {
    /// SQS message id (of the original, for a copy redriven from the
    /// DLQ): with `sent_at`, the idempotency key.
    pub message_id: &'a str,
    /// As received.
    pub user_id: Cow<'a, str>,
    /// As received.
    pub device_type: Cow<'a, str>,
    /// HMAC token of the canonical IP.
    pub masked_ip: Token,
    /// HMAC token of the trimmed device id.
    pub masked_device_id: Token,
    /// The key version both tokens are under (see [`crate::privacy::masking`]).
    pub key_version: u16,
    /// `None` for null or absent.
    pub locale: Option<Cow<'a, str>>,
    /// Encoded version, see [`crate::app_version`].
    pub app_version: i32,
    /// Version as received.
    pub app_version_text: Cow<'a, str>,
    /// When SQS accepted the message (`SentTimestamp`; the original's for a
    /// redriven copy): the same on every delivery.
    pub sent_at: DateTime<Utc>,
    /// The UTC date of `sent_at`: the partition key, so a function of the
    /// message alone.
    pub create_date: NaiveDate,
    /// The parsed address (PII: for the vault only).
    pub ip: IpAddr,
    /// The device id as received (PII: for the vault only).
    pub device_id: Cow<'a, str>,
}

impl fmt::Debug for LoginRow<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginRow")
            .field("message_id", &self.message_id)
            .field("masked_ip", &self.masked_ip)
            .field("masked_device_id", &self.masked_device_id)
            .field("app_version", &self.app_version)
            .field("sent_at", &self.sent_at)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for LoginEvent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginEvent")
            .field("app_version", &self.app_version)
            .finish_non_exhaustive()
    }
}

/// The key a message's row is stored under: its message id and the
/// `SentTimestamp` its day comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowKey<'a> {
    /// The `message_id` column.
    pub message_id: &'a str,
    /// Epoch milliseconds, as text; `None` when the message has none.
    pub sent_timestamp: Option<&'a str>,
}

/// The row key of a message: a redriven copy's original's
/// ([`SqsRecord::claimed_source`]) when `masker` verifies its signature
/// under any key version it holds, so every redriven copy of a message
/// lands on the row of the original; else the message's own id
/// (`message_id`) and `SentTimestamp`. Attributes any sender can set are
/// never enough: unsigned or wrongly signed ones are ignored, so a
/// producer cannot choose another message's key or a row's day.
pub fn row_key<'a>(message_id: &'a str, message: &'a SqsRecord, masker: &Masker) -> RowKey<'a> {
    match message.claimed_source() {
        Some(c) if masker.verifies_redrive(c.message_id, c.sent_timestamp, c.signature) => RowKey {
            message_id: c.message_id,
            sent_timestamp: Some(c.sent_timestamp),
        },
        _ => RowKey {
            message_id,
            sent_timestamp: message.sent_timestamp(),
        },
    }
}

/// Validates and masks one SQS message. `message_id` is the record's id
/// (checked present by the caller). The row's key and day come from the
/// message alone ([`row_key`]): never from when it was read, so every
/// delivery of it, and every redriven copy, lands on the same row.
pub fn transform<'a>(
    message_id: &'a str,
    message: &'a SqsRecord,
    masker: &Masker,
) -> Result<LoginRow<'a>, Rejection> {
    let key = row_key(message_id, message, masker);
    let message_id = key.message_id;
    if message_id.len() > MAX_MESSAGE_ID_CHARS && message_id.chars().count() > MAX_MESSAGE_ID_CHARS
    {
        return Err(Rejection::MessageIdTooLong);
    }
    let login = parse_body(message.body.as_deref().unwrap_or(""))?;
    let sent_at = checked_sent_at(key.sent_timestamp)?;
    Ok(LoginRow {
        message_id,
        masked_ip: masker.ip(&login.ip),
        masked_device_id: masker.device_id(&login.device_id),
        key_version: masker.version(),
        user_id: login.user_id,
        device_type: login.device_type,
        locale: login.locale,
        app_version: login.app_version,
        app_version_text: login.app_version_text,
        sent_at,
        create_date: sent_at.date_naive(),
        ip: login.ip,
        device_id: login.device_id,
    })
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

/// The UTC date of a `SentTimestamp` ([`checked_sent_at`]), `None` for
/// either refusal.
pub fn sent_date(sent_timestamp: Option<&str>) -> Option<NaiveDate> {
    checked_sent_at(sent_timestamp).ok().map(|t| t.date_naive())
}

/// A login event that passed validation, before masking. Its `Debug`
/// names the fields but shows no value: it holds the raw ip and device id.
#[derive(Clone, PartialEq, Eq)]
pub struct LoginEvent<'a> {
    /// Non-empty, at most 128 characters.
    pub user_id: Cow<'a, str>,
    /// Non-empty, at most 32 characters.
    pub device_type: Cow<'a, str>,
    /// Parsed address (surrounding whitespace ignored).
    pub ip: IpAddr,
    /// Non-empty after trimming, at most 256 characters.
    pub device_id: Cow<'a, str>,
    /// At most 32 characters, or `None`.
    pub locale: Option<Cow<'a, str>>,
    /// Encoded version.
    pub app_version: i32,
    /// Version as received.
    pub app_version_text: Cow<'a, str>,
}

/// Parses and validates a message body. Checks fields in a fixed order and
/// returns the first problem.
pub fn parse_body(body: &str) -> Result<LoginEvent<'_>, Rejection> {
    if body.trim().is_empty() {
        return Err(Rejection::EmptyBody);
    }
    let raw = match serde_json::from_str::<Body<'_>>(body) {
        Ok(Body::Object(raw)) => raw,
        Ok(Body::Other) => return Err(Rejection::NotAnObject),
        Err(_) => return Err(Rejection::InvalidJson),
    };
    if raw.fields.iter().all(|s| matches!(s, Slot::Missing)) {
        return Err(Rejection::NotALoginEvent);
    }
    if let Some(i) = raw.fields.iter().position(|s| matches!(s, Slot::Duplicate)) {
        return Err(Rejection::DuplicateField(FIELDS[i]));
    }
    let [user_id, app_version, device_type, ip, locale, device_id] = raw.fields;
    let user_id = required_text(Field::UserId, user_id)?;
    let device_type = required_text(Field::DeviceType, device_type)?;
    let ip_text = required_text(Field::Ip, ip)?;
    let ip = ip_text
        .trim()
        .parse::<IpAddr>()
        .map_err(|_| Rejection::InvalidIp)?;
    let device_id = required_text(Field::DeviceId, device_id)?;
    let app_version_text = required_text(Field::AppVersion, app_version)?;
    let app_version =
        app_version::encode(&app_version_text).map_err(Rejection::InvalidAppVersion)?;
    let locale = match locale {
        Slot::Missing | Slot::Null => None,
        other => Some(text(Field::Locale, other)?),
    };
    Ok(LoginEvent {
        user_id,
        device_type,
        ip,
        device_id,
        locale,
        app_version,
        app_version_text,
    })
}

fn required_text(field: Field, slot: Slot<'_>) -> Result<Cow<'_, str>, Rejection> {
    let value = text(field, slot)?;
    if value.trim().is_empty() {
        return Err(Rejection::EmptyField(field));
    }
    Ok(value)
}

fn text(field: Field, slot: Slot<'_>) -> Result<Cow<'_, str>, Rejection> {
    match slot {
        Slot::Missing | Slot::Null => Err(Rejection::MissingField(field)),
        Slot::WrongType => Err(Rejection::WrongType(field)),
        Slot::Duplicate => Err(Rejection::DuplicateField(field)),
        Slot::Text(s) => {
            // Byte length bounds char count from above: skip counting for short values.
            if s.len() > field.max_chars() && s.chars().count() > field.max_chars() {
                Err(Rejection::TooLong(field))
            } else if s.contains('\0') {
                Err(Rejection::NulCharacter(field))
            } else {
                Ok(s)
            }
        }
    }
}

/// Field order of [`RawLogin::fields`].
const FIELDS: [Field; 6] = [
    Field::UserId,
    Field::AppVersion,
    Field::DeviceType,
    Field::Ip,
    Field::Locale,
    Field::DeviceId,
];

/// What the body held for one field, before validation. `Debug` shows the
/// kind of value, never the text (it may be an ip or a device id).
#[derive(Default)]
enum Slot<'a> {
    #[default]
    Missing,
    Null,
    Text(Cow<'a, str>),
    WrongType,
    Duplicate,
}

impl fmt::Debug for Slot<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::Missing => "Missing",
            Slot::Null => "Null",
            Slot::Text(_) => "Text(<redacted>)",
            Slot::WrongType => "WrongType",
            Slot::Duplicate => "Duplicate",
        })
    }
}

struct RawLogin<'a> {
    fields: [Slot<'a>; 6],
}

enum Body<'a> {
    Object(RawLogin<'a>),
    Other,
}

impl<'de> de::Deserialize<'de> for Body<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BodyVisitor)
    }
}

struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Body<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut raw = RawLogin {
            fields: Default::default(),
        };
        while let Some(key) = map.next_key::<Key>()? {
            match key.0 {
                Some(i) => {
                    let value = map.next_value::<Slot<'de>>()?;
                    let slot = &mut raw.fields[i];
                    *slot = if matches!(slot, Slot::Missing) {
                        value
                    } else {
                        Slot::Duplicate
                    };
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Body::Object(raw))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Body::Other)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Body::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Body::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Body::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Body::Other)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Body::Other)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Body::Other)
    }
}

/// A key of the body object: the index of a known field, or `None`.
struct Key(Option<usize>);

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E>(self, key: &str) -> Result<Key, E> {
                Ok(Key(FIELDS.iter().position(|f| f.name() == key)))
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

impl<'de> de::Deserialize<'de> for Slot<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SlotVisitor)
    }
}

struct SlotVisitor;

impl<'de> Visitor<'de> for SlotVisitor {
    type Value = Slot<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Slot::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Slot::Text(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Slot::Text(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Slot::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Slot::Null)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Slot::WrongType)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Slot::WrongType)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Slot::WrongType)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Slot::WrongType)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Slot::WrongType)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Slot::WrongType)
    }
}

#[cfg(test)]
mod tests;
