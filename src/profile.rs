//! A deployment's profile: which of login-etl's tables and roles it has.
//! A shared type: the configuration reads it (`LOGIN_ETL_PROFILE`), the schema
//! installs it (`crate::table::schema`), the roles follow it.

/// Which tables and functions a deployment has: chosen by
/// `login-etl migrate --profile`, kept by every later migrate, widened
/// online from masking-only to full and never narrowed (docs/profiles.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "service", derive(clap::ValueEnum))]
pub enum Profile {
    /// Masked rows only: `user_logins`, its partitions, the key state and
    /// the role registry; the migrate, ingest, maintain and reader roles.
    /// The default everywhere (the commands, README's block, the template):
    /// a new database is masking-only unless asked for more.
    #[default]
    Masking,
    /// Also the PII vault, the erasure list, the audit trail and key
    /// rotation's state (`reveal`, `forget`, `audit`, `rotate-key`,
    /// `vault-upgrade`). Every database from before profiles has it.
    Full,
}

impl Profile {
    /// `masking` or `full`, as `--profile` and `LOGIN_ETL_PROFILE` take it.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Masking => "masking",
            Profile::Full => "full",
        }
    }

    /// The profile named `name` (`masking` or `full`).
    pub fn parse(name: &str) -> Option<Profile> {
        match name.trim().to_ascii_lowercase().as_str() {
            "masking" => Some(Profile::Masking),
            "full" => Some(Profile::Full),
            _ => None,
        }
    }
}
