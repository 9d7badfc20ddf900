//! A message body to a login event and its defects (or a [`Rejection`]
//! when it is not a login).
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
use crate::contract::Defect;
use crate::contract::address;
use crate::contract::policy::MAX_EXTRA_BYTES;
use crate::contract::{Contract, Mode, UnknownFields};
use crate::contract::{ExtraProblem, Rejection};
use crate::contract::{FIELDS, Field, FieldName};

/// The most names of fields outside the contract one message records.
pub const MAX_UNKNOWN_NAMES: usize = 8;

/// A login event as stored, before masking: every value the body held
/// that its column can take, and what was wrong with the rest
/// ([`Defect`]s). Its `Debug` names the fields but shows no value: it
/// holds the raw ip and device id.
#[derive(Clone, PartialEq, Eq)]
pub struct LoginEvent<'a> {
    /// Non-empty, at most 128 characters (a JSON integer's decimal text).
    pub user_id: Cow<'a, str>,
    /// At most 32 characters.
    pub device_type: Option<Cow<'a, str>>,
    /// The address (a port or zone set aside), `None` without one.
    pub ip: Option<IpAddr>,
    /// Non-empty after trimming, at most 256 characters.
    pub device_id: Option<Cow<'a, str>>,
    /// At most 32 characters, or `None`.
    pub locale: Option<Cow<'a, str>>,
    /// Encoded version (`app_version::derive`), `None` when the text
    /// carries none.
    pub app_version: Option<i32>,
    /// Version as received, at most 32 characters; `None` when it holds no
    /// version as releases write them (`app_version.unparsed`).
    pub app_version_text: Option<Cow<'a, str>>,
    /// The declared extra fields present (`EXTRA_FIELDS`), as a JSON
    /// object of their values as sent; `None` when none is.
    pub extra: Option<String>,
    /// The fields outside the contract and not declared, by name (at most
    /// `MAX_UNKNOWN_NAMES`; never their values).
    pub unknown: Vec<FieldName>,
    /// What was wrong with it, in the order strict checks (empty: clean).
    pub defects: Vec<Defect>,
}

impl LoginEvent<'_> {
    /// The same event owning its text (one parsed from a text that does
    /// not outlive it).
    pub fn into_owned(self) -> LoginEvent<'static> {
        let own = |c: Option<Cow<'_, str>>| c.map(|c| Cow::Owned(c.into_owned()));
        LoginEvent {
            user_id: Cow::Owned(self.user_id.into_owned()),
            device_type: own(self.device_type),
            ip: self.ip,
            device_id: own(self.device_id),
            locale: own(self.locale),
            app_version: self.app_version,
            app_version_text: own(self.app_version_text),
            extra: self.extra,
            unknown: self.unknown,
            defects: self.defects,
        }
    }
}

/// Parses a message body under the default contract (a login is kept
/// with its defects; unknown fields counted, none kept).
pub fn parse_body(body: &str) -> Result<LoginEvent<'_>, Rejection> {
    parse_body_with(body, &NO_POLICY)
}

static NO_POLICY: Contract = Contract::DEFAULT;

/// Parses a message body under `contract`. Checks the fields in a fixed
/// order, then fields outside the contract. A body that is not a login
/// (not JSON, not an object, none of the fields, no usable `user_id`) is
/// rejected, and so is one `UNKNOWN_FIELDS=reject` refuses; any other
/// problem is a [`Defect`] of the login, or under `CONTRACT=strict` its
/// rejection (the first one found).
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
    let mut found = Defects {
        strict: contract.mode == Mode::Strict,
        list: Vec::new(),
    };
    for (field, slot) in FIELDS.into_iter().zip(&raw.fields) {
        if matches!(slot, Slot::Duplicate) {
            if field == Field::UserId {
                return Err(Rejection::DuplicateField(field));
            }
            found.add(Defect::Duplicate(field))?;
        }
    }
    let [user_id, app_version, device_type, ip, locale, device_id] = raw.fields;
    let user_id = match user_id {
        Slot::Int(n) => {
            found.add(Defect::UserIdInteger)?;
            Cow::Owned(n.to_string())
        }
        Slot::Uint(n) => {
            found.add(Defect::UserIdInteger)?;
            Cow::Owned(n.to_string())
        }
        slot => checked(Field::UserId, slot)
            .map_err(|d| d.rejection())?
            .expect("a required field is present or a defect"),
    };
    let device_type = found.kept(checked(Field::DeviceType, device_type))?;
    let ip = match found.kept(checked(Field::Ip, ip))? {
        None => None,
        Some(text) => match address::parse(&text) {
            Some((ip, set_aside)) => {
                for part in set_aside {
                    found.add(Defect::of_address(part))?;
                }
                Some(ip)
            }
            None => {
                found.add(Defect::IpUnparseable)?;
                None
            }
        },
    };
    let device_id = match device_id {
        Slot::Int(n) => {
            found.add(Defect::DeviceIdInteger)?;
            Some(Cow::Owned(n.to_string()))
        }
        Slot::Uint(n) => {
            found.add(Defect::DeviceIdInteger)?;
            Some(Cow::Owned(n.to_string()))
        }
        slot => found.kept(checked(Field::DeviceId, slot))?,
    };
    let mut app_version_text = found.kept(checked(Field::AppVersion, app_version))?;
    let (app_version, unparsed) = match &app_version_text {
        None => (None, false),
        Some(text) => {
            let (value, set_aside) = app_version::derive(text);
            let unparsed = set_aside.iter().any(|d| {
                matches!(
                    d,
                    app_version::Derivation::Unparsed | app_version::Derivation::TextWithheld
                )
            });
            if !set_aside.is_empty() {
                let strict =
                    app_version::encode(text).expect_err("a plain version sets nothing aside");
                for d in set_aside {
                    found.add(Defect::AppVersion(d, strict))?;
                }
            }
            (value, unparsed)
        }
    };
    // Not a version, or not one as releases write it: its text may be
    // anything (an address, an email), and the column is one analysts read.
    if unparsed {
        app_version_text = None;
    }
    let locale = found.kept(checked(Field::Locale, locale))?;
    if contract.unknown == UnknownFields::Reject
        && let Some(&name) = raw.unknown.first()
    {
        return Err(Rejection::UnknownField(name));
    }
    let extra = extra_object(contract, &raw.extras, &mut found)?;
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
        defects: found.list,
    })
}

/// The defects found so far; under strict, the first is the rejection.
struct Defects {
    strict: bool,
    list: Vec<Defect>,
}

impl Defects {
    fn add(&mut self, defect: Defect) -> Result<(), Rejection> {
        if self.strict {
            return Err(defect.rejection());
        }
        self.list.push(defect);
        Ok(())
    }

    /// A field's value, or its defect recorded (and `None` kept).
    fn kept<'a>(
        &mut self,
        checked: Result<Option<Cow<'a, str>>, Defect>,
    ) -> Result<Option<Cow<'a, str>>, Rejection> {
        match checked {
            Ok(value) => Ok(value),
            Err(defect) => self.add(defect).map(|()| None),
        }
    }
}

/// The declared fields present, as one JSON object of their values as
/// sent (names are identifiers: nothing to escape); a value the `extra`
/// column cannot take is left out, a defect.
fn extra_object(
    contract: &Contract,
    extras: &[Extra<'_>],
    found: &mut Defects,
) -> Result<Option<String>, Rejection> {
    let mut out: Option<String> = None;
    for (name, value) in contract.extra().iter().zip(extras) {
        let value = match value {
            Extra::Missing => continue,
            Extra::Duplicate => Err(ExtraProblem::Duplicate),
            Extra::Value(v) => extra_value(v.get()),
        };
        let value = match value {
            Ok(value) => value,
            Err(problem) => {
                found.add(Defect::Extra(problem, FieldName::of(name)))?;
                continue;
            }
        };
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

/// A declared field's value as `extra` keeps it: one scalar, at most
/// [`MAX_EXTRA_BYTES`] of JSON, that `jsonb` takes (no lone surrogate, no
/// number out of range, as serde_json refuses them too; no U+0000).
fn extra_value(value: &str) -> Result<&str, ExtraProblem> {
    if value.len() > MAX_EXTRA_BYTES {
        return Err(ExtraProblem::TooLong);
    }
    match serde_json::from_str::<serde_json::Value>(value) {
        Ok(serde_json::Value::Object(_) | serde_json::Value::Array(_)) => {
            Err(ExtraProblem::NotScalar)
        }
        Ok(serde_json::Value::String(s)) if s.contains('\0') => Err(ExtraProblem::NulCharacter),
        Ok(_) => Ok(value),
        Err(_) => Err(ExtraProblem::Invalid),
    }
}

/// A text field's value (`None`: absent where it may be, or a duplicate,
/// recorded already), or its defect: absent or null where required, not a
/// string, longer than its column, holding U+0000, or blank where required.
fn checked(field: Field, slot: Slot<'_>) -> Result<Option<Cow<'_, str>>, Defect> {
    match slot {
        Slot::Missing | Slot::Null if field.required() => Err(Defect::Missing(field)),
        Slot::Missing | Slot::Null | Slot::Duplicate => Ok(None),
        Slot::WrongType | Slot::Int(_) | Slot::Uint(_) => Err(Defect::WrongType(field)),
        Slot::Text(s) => {
            // Byte length bounds char count from above: skip counting for short values.
            if s.len() > field.max_chars() && s.chars().count() > field.max_chars() {
                Err(Defect::TooLong(field))
            } else if s.contains('\0') {
                Err(Defect::Nul(field))
            } else if field.required() && s.trim().is_empty() {
                Err(Defect::Empty(field))
            } else {
                Ok(Some(s))
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
    /// A JSON integer (a `user_id` some apps send as a number): negative
    /// ones as `i64`, the rest as `u64` (serde_json's own split).
    Int(i64),
    Uint(u64),
    WrongType,
    Duplicate,
}

impl fmt::Debug for Slot<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::Missing => "Missing",
            Slot::Null => "Null",
            Slot::Text(_) => "Text(<redacted>)",
            Slot::Int(_) | Slot::Uint(_) => "Integer(<redacted>)",
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

// One per record, on the stack for the length of a parse: boxing the
// login would cost an allocation per record on the hot path. A field more
// (docs/development.md, "Adding a field") takes it past clippy's size.
#[allow(clippy::large_enum_variant)]
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
    fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
        Ok(Slot::Int(n))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Slot::Uint(n))
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
            .field("defects", &self.defects)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
