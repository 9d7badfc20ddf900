//! The fields of a login event: their names and the columns they fit.

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

/// Every field of the contract, in the order the parser keeps them.
pub const FIELDS: [Field; 6] = [
    Field::UserId,
    Field::AppVersion,
    Field::DeviceType,
    Field::Ip,
    Field::Locale,
    Field::DeviceId,
];

impl Field {
    /// The field named `name`, if the contract has one.
    pub fn named(name: &str) -> Option<Field> {
        FIELDS.into_iter().find(|f| f.name() == name)
    }

    /// Whether a login must carry it (`locale` may be absent or null).
    pub fn required(self) -> bool {
        self != Field::Locale
    }

    /// What it holds, as the JSON Schema says it (`login-etl schema`).
    pub fn description(self) -> &'static str {
        match self {
            Field::UserId => "The user's id, as the app knows it; stored as it is.",
            Field::AppVersion => {
                "The app's version: 1 to 3 dot-separated numbers, the first 0 to 2146 (2.3.0, 0.96, 1.1, 2025.1.0), the others 0 to 999; stored as it is, and as an integer that sorts like the version. Kept with a defect: a leading v, a pre-release or build suffix (2.3.0-beta1, 2.3.0+45, 2.3.0 (4512)) and a fourth number are set aside to find the integer, and a number past its range counts as the largest (5.2.1203 sorts as 5.2.999)."
            }
            Field::DeviceType => "The device's kind (android, ios, ...); stored as it is.",
            Field::Ip => {
                "The client's IPv4 or IPv6 address (surrounding blanks ignored). PII: stored only as a keyed token. Kept with a defect: an address with a port (10.0.0.1:443, [2001:db8::1]:443) or a zone (fe80::1%eth0) is tokenized as the address. The schema checks the type and length; the function also parses it (ip.unparseable, or invalid_ip under strict), which a schema cannot."
            }
            Field::Locale => "The user's locale, or null; stored as it is.",
            Field::DeviceId => {
                "The device's id (surrounding blanks ignored). PII: stored only as a keyed token. A web client without one sends null: kept with the defect device_id.missing."
            }
        }
    }
}

/// The longest name a [`FieldName`] holds.
pub const MAX_NAME_CHARS: usize = 64;

/// The name of a field outside the contract, as a reason or a metric may
/// show it: letters, digits and `_`, starting with a letter or `_`, at
/// most `MAX_NAME_CHARS` long, with no run of four digits or more; any
/// other name (it could be anything: an address, an email, a phone
/// number, a device id used as a key) shows as `<other>`. Inline, so a
/// [`crate::contract::Rejection`] stays `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldName {
    len: u8,
    bytes: [u8; MAX_NAME_CHARS],
}

/// What a name that may not be shown shows as.
const OTHER: &str = "<other>";

impl FieldName {
    /// The name `name` as it may be shown.
    pub fn of(name: &str) -> Self {
        let shown = if is_identifier(name) { name } else { OTHER };
        let mut bytes = [0; MAX_NAME_CHARS];
        bytes[..shown.len()].copy_from_slice(shown.as_bytes());
        Self {
            len: shown.len() as u8,
            bytes,
        }
    }

    /// The name, or `<other>`.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).expect("ASCII by construction")
    }
}

impl std::fmt::Debug for FieldName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for FieldName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name [`FieldName`] shows as it is (and `EXTRA_FIELDS` accepts).
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    let mut digits = 0;
    name.len() <= MAX_NAME_CHARS
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| {
            digits = if c.is_ascii_digit() { digits + 1 } else { 0 };
            (c.is_ascii_alphanumeric() || c == '_') && digits < 4
        })
}
