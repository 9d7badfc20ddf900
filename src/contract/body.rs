//! A message body to a validated login event (or a [`Rejection`]).
//!
//! The body is parsed by a hand-rolled serde visitor instead of a derived
//! struct so that (a) a rejection names the field but never echoes the value
//! (serde's derived errors quote it), (b) duplicate keys and wrong types are
//! reported per field, and (c) strings without escapes are borrowed, not copied.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::app_version;
use crate::contract::field::{FIELDS, Field, FieldName};
use crate::contract::policy::{Contract, MAX_EXTRA_BYTES, UnknownFields};
use crate::contract::rejection::{ExtraProblem, Rejection};

/// The most names of fields outside the contract one message records.
pub const MAX_UNKNOWN_NAMES: usize = 8;

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
    /// The declared extra fields present (`EXTRA_FIELDS`), as a JSON
    /// object of their values as sent; `None` when none is.
    pub extra: Option<String>,
    /// The fields outside the contract and not declared, by name (at most
    /// [`MAX_UNKNOWN_NAMES`]; never their values).
    pub unknown: Vec<FieldName>,
}

/// Parses and validates a message body under the default contract
/// (unknown fields counted, none kept).
pub fn parse_body(body: &str) -> Result<LoginEvent<'_>, Rejection> {
    parse_body_with(body, &NO_POLICY)
}

static NO_POLICY: Contract = Contract::DEFAULT;

/// Parses and validates a message body under `contract`. Checks the
/// fields of the contract in a fixed order, then fields outside it, and
/// returns the first problem.
pub fn parse_body_with<'a>(
    body: &'a str,
    contract: &Contract,
) -> Result<LoginEvent<'a>, Rejection> {
    if body.trim().is_empty() {
        return Err(Rejection::EmptyBody);
    }
    let mut de = serde_json::Deserializer::from_str(body);
    let raw = match BodySeed(contract)
        .deserialize(&mut de)
        .and_then(|b| de.end().map(|()| b))
    {
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
    if contract.unknown == UnknownFields::Reject
        && let Some(&name) = raw.unknown.first()
    {
        return Err(Rejection::UnknownField(name));
    }
    let extra = extra_object(contract, &raw.extras)?;
    Ok(LoginEvent {
        user_id,
        device_type,
        ip,
        device_id,
        locale,
        app_version,
        app_version_text,
        extra,
        unknown: raw.unknown,
    })
}

/// Whether any string (or key) of `v` holds U+0000.
fn holds_nul(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(holds_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// The declared fields present, as one JSON object of their values as
/// sent (names are identifiers: nothing to escape).
fn extra_object(contract: &Contract, extras: &[Extra<'_>]) -> Result<Option<String>, Rejection> {
    let mut out: Option<String> = None;
    for (name, value) in contract.extra().iter().zip(extras) {
        let value = match value {
            Extra::Missing => continue,
            Extra::Duplicate => {
                return Err(Rejection::Extra(
                    ExtraProblem::Duplicate,
                    FieldName::of(name),
                ));
            }
            Extra::Value(v) => v.get(),
        };
        if value.len() > MAX_EXTRA_BYTES {
            return Err(Rejection::Extra(ExtraProblem::TooLong, FieldName::of(name)));
        }
        // What jsonb takes: JSON without a lone surrogate or a number out of
        // range (serde_json refuses both, as PostgreSQL would), and no
        // U+0000 in any string.
        match serde_json::from_str::<serde_json::Value>(value) {
            Ok(v) if holds_nul(&v) => {
                return Err(Rejection::Extra(
                    ExtraProblem::NulCharacter,
                    FieldName::of(name),
                ));
            }
            Ok(_) => {}
            Err(_) => return Err(Rejection::Extra(ExtraProblem::Invalid, FieldName::of(name))),
        }
        let object = out.get_or_insert_with(|| String::from("{"));
        if object.len() > 1 {
            object.push(',');
        }
        object.push('"');
        object.push_str(name);
        object.push_str("\":");
        object.push_str(value);
    }
    Ok(out.map(|mut o| {
        o.push('}');
        o
    }))
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
    /// The contract's fields, in [`FIELDS`]' order.
    fields: [Slot<'a>; FIELDS.len()],
    /// The declared extra fields, in the contract's order.
    extras: Vec<Extra<'a>>,
    /// Names of the other fields.
    unknown: Vec<FieldName>,
}

/// What the body held for a declared extra field.
enum Extra<'a> {
    Missing,
    Value(&'a RawValue),
    Duplicate,
}

enum Body<'a> {
    Object(RawLogin<'a>),
    Other,
}

/// Reads a body under a contract.
struct BodySeed<'c>(&'c Contract);

impl<'de> DeserializeSeed<'de> for BodySeed<'_> {
    type Value = Body<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(BodyVisitor(self.0))
    }
}

struct BodyVisitor<'c>(&'c Contract);

impl<'de> Visitor<'de> for BodyVisitor<'_> {
    type Value = Body<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut raw = RawLogin {
            fields: Default::default(),
            extras: self.0.extra().iter().map(|_| Extra::Missing).collect(),
            unknown: Vec::new(),
        };
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match key {
                Key::Known(i) => {
                    let value = map.next_value::<Slot<'de>>()?;
                    let slot = &mut raw.fields[i];
                    *slot = if matches!(slot, Slot::Missing) {
                        value
                    } else {
                        Slot::Duplicate
                    };
                }
                Key::Other(name) => match self.0.extra_index(&name) {
                    Some(j) => {
                        let value = map.next_value::<&'de RawValue>()?;
                        let slot = &mut raw.extras[j];
                        *slot = match slot {
                            Extra::Missing => Extra::Value(value),
                            _ => Extra::Duplicate,
                        };
                    }
                    None => {
                        map.next_value::<IgnoredAny>()?;
                        let name = FieldName::of(&name);
                        if raw.unknown.len() < MAX_UNKNOWN_NAMES && !raw.unknown.contains(&name) {
                            raw.unknown.push(name);
                        }
                    }
                },
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

/// A key of the body object: the index of a field of the contract, or
/// another name.
enum Key<'de> {
    Known(usize),
    Other(Cow<'de, str>),
}

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(match FIELDS.iter().position(|f| f.name() == key) {
                    Some(i) => Key::Known(i),
                    None => Key::Other(Cow::Borrowed(key)),
                })
            }
            fn visit_str<E>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(match FIELDS.iter().position(|f| f.name() == key) {
                    Some(i) => Key::Known(i),
                    None => Key::Other(Cow::Owned(key.to_owned())),
                })
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

impl fmt::Debug for LoginEvent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginEvent")
            .field("app_version", &self.app_version)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
