//! What was wrong with a login that was stored all the same: a code per
//! defect, never a value, kept on the row (`defects`) and counted by code.
//!
//! Under `CONTRACT=strict` each defect is the rejection it names
//! ([`Defect::rejection`]): the first defect of a message is the reason
//! strict gives it.

use std::borrow::Cow;
use std::fmt;

use crate::app_version::{Derivation, VersionError};
use crate::contract::address::AddressPart;
use crate::contract::{ExtraProblem, Rejection};
use crate::contract::{Field, FieldName};

/// One defect of a stored login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Defect {
    /// Absent or null (`device_id` of a web client): stored as NULL.
    Missing(Field),
    /// Not a string: stored as NULL.
    WrongType(Field),
    /// Empty or blank: stored as NULL.
    Empty(Field),
    /// Longer than its column: stored as NULL.
    TooLong(Field),
    /// Holds U+0000, which PostgreSQL text cannot store: stored as NULL.
    Nul(Field),
    /// Appears twice (which to keep is unknown): stored as NULL.
    Duplicate(Field),
    /// `user_id` sent as a JSON integer: stored as its decimal text.
    UserIdInteger,
    /// `device_id` sent as a JSON integer: tokenized as its decimal text.
    DeviceIdInteger,
    /// `ip` with a port, or bracketed: the address is tokenized.
    IpPort,
    /// `ip` with an IPv6 zone: the address is tokenized.
    IpZone,
    /// `ip` holding a comma-separated list (`X-Forwarded-For`): its first
    /// address, the client's, is tokenized.
    IpList,
    /// `ip` holds no address: no token (NULL), its text kept nowhere.
    IpUnparseable,
    /// `app_version` is not a plain version: what `crate::app_version::derive`
    /// set aside (the integer derived) or why it found none (NULL); the text
    /// is kept either way. `strict` is what `CONTRACT=strict` says of it.
    AppVersion(Derivation, VersionError),
    /// A declared extra field (`EXTRA_FIELDS`) the `extra` column cannot
    /// take: left out of it.
    Extra(ExtraProblem, FieldName),
    /// Rebuilt from a dead-letter copy that kept no original (`dlq-redrive
    /// --rebuild`): its tokens are the copy's, a value the copy had
    /// redacted is NULL.
    RebuiltFromCopy,
}

impl Defect {
    /// Stable code, `<field>.<what>`, e.g. `device_id.missing`, `ip.port`,
    /// `app_version.suffix`: what the `defects` column and the metrics hold.
    pub fn code(&self) -> Cow<'static, str> {
        let with = |f: &Field, what: &str| Cow::Owned(format!("{}.{what}", f.name()));
        match self {
            Defect::Missing(f) => with(f, "missing"),
            Defect::WrongType(f) => with(f, "wrong_type"),
            Defect::Empty(f) => with(f, "empty"),
            Defect::TooLong(f) => with(f, "too_long"),
            Defect::Nul(f) => with(f, "nul"),
            Defect::Duplicate(f) => with(f, "duplicate"),
            Defect::UserIdInteger => "user_id.integer".into(),
            Defect::DeviceIdInteger => "device_id.integer".into(),
            Defect::IpPort => "ip.port".into(),
            Defect::IpZone => "ip.zone".into(),
            Defect::IpList => "ip.list".into(),
            Defect::IpUnparseable => "ip.unparseable".into(),
            Defect::AppVersion(d, _) => format!("app_version.{}", d.name()).into(),
            Defect::Extra(problem, name) => format!("{name}.{}", problem.name()).into(),
            Defect::RebuiltFromCopy => "message.rebuilt_from_copy".into(),
        }
    }

    /// The rejection `CONTRACT=strict` gives a message with this defect.
    pub fn rejection(&self) -> Rejection {
        match *self {
            Defect::Missing(f) => Rejection::MissingField(f),
            Defect::WrongType(f) => Rejection::WrongType(f),
            Defect::UserIdInteger => Rejection::WrongType(Field::UserId),
            Defect::DeviceIdInteger => Rejection::WrongType(Field::DeviceId),
            Defect::Empty(f) => Rejection::EmptyField(f),
            Defect::TooLong(f) => Rejection::TooLong(f),
            Defect::Nul(f) => Rejection::NulCharacter(f),
            Defect::Duplicate(f) => Rejection::DuplicateField(f),
            Defect::IpPort | Defect::IpZone | Defect::IpList | Defect::IpUnparseable => {
                Rejection::InvalidIp
            }
            Defect::AppVersion(_, strict) => Rejection::InvalidAppVersion(strict),
            Defect::Extra(problem, name) => Rejection::Extra(problem, name),
            // Never asked: a rebuilt login is read leniently, whatever CONTRACT says.
            Defect::RebuiltFromCopy => Rejection::RebuiltLoginUnverified,
        }
    }

    /// The defect of an `ip` set aside to find its address.
    pub fn of_address(part: AddressPart) -> Self {
        match part {
            AddressPart::Port => Defect::IpPort,
            AddressPart::Zone => Defect::IpZone,
            AddressPart::List => Defect::IpList,
        }
    }
}

impl fmt::Display for Defect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.code())
    }
}
