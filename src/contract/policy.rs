//! What the contract holds a message to: whether a login with defects is
//! kept (the default) or refused (`CONTRACT=strict`), and what becomes of
//! fields outside the contract: counted and named by default, refused on
//! request, stored only when declared.
//!
//! A field nobody declared may be PII (an email, a phone number), so it is
//! never written. Declared ones (`EXTRA_FIELDS`) are kept, in `user_logins`'
//! `extra` column, as the JSON they were, each at most
//! [`MAX_EXTRA_BYTES`]; declaring a field says it holds no PII.

use crate::contract::Field;
use crate::contract::field::{MAX_NAME_CHARS, is_identifier};

/// The most fields `EXTRA_FIELDS` may declare.
pub const MAX_EXTRA_FIELDS: usize = 16;

/// The largest value of a declared field, as JSON text.
pub const MAX_EXTRA_BYTES: usize = 1024;

/// `UNKNOWN_FIELDS`: what a message with a field outside the contract (and
/// not declared) gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownFields {
    /// Taken; the field is counted and named, never stored (the default).
    #[default]
    Ignore,
    /// Rejected: `unknown_field`, to the DLQ (the name only in `validate`).
    Reject,
}

/// `CONTRACT`: what a login with a defect gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "service", derive(clap::ValueEnum))]
pub enum Mode {
    /// Stored, its defects recorded on the row and counted (the default):
    /// only a message that is not a login is rejected.
    #[default]
    Lenient,
    /// Rejected for its first defect, to the DLQ.
    Strict,
}

impl Mode {
    /// `lenient` or `strict`.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        match text.trim() {
            "lenient" => Ok(Self::Lenient),
            "strict" => Ok(Self::Strict),
            _ => Err(PolicyError::UnknownMode),
        }
    }
}

/// The contract a message is held to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contract {
    /// What a login with a defect gets.
    pub mode: Mode,
    /// What an undeclared field gets.
    pub unknown: UnknownFields,
    /// The declared extra fields, kept in `extra` (`EXTRA_FIELDS`).
    extra: Vec<String>,
}

/// Why an `EXTRA_FIELDS` list is refused (names the name: it is a field
/// name the operator wrote, not data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A name that is not an identifier.
    #[error(
        "\"{0}\" is not a field name login-etl keeps: letters, digits and '_', starting with a letter or '_', at most {MAX_NAME_CHARS} characters, no run of 4 digits"
    )]
    NotAName(String),
    /// A field of the contract.
    #[error("\"{0}\" is a field of the contract already; list only fields outside it")]
    OfTheContract(String),
    /// Named twice.
    #[error("\"{0}\" is listed twice")]
    Twice(String),
    /// Too many.
    #[error("{0} fields listed; at most {MAX_EXTRA_FIELDS}")]
    TooMany(usize),
    /// `UNKNOWN_FIELDS` is neither value.
    #[error("expected ignore or reject")]
    UnknownPolicy,
    /// `CONTRACT` is neither value.
    #[error("expected lenient (keep a login with defects, the default) or strict (reject it)")]
    UnknownMode,
}

impl UnknownFields {
    /// `ignore` or `reject`.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        match text.trim() {
            "ignore" => Ok(Self::Ignore),
            "reject" => Ok(Self::Reject),
            _ => Err(PolicyError::UnknownPolicy),
        }
    }
}

impl Contract {
    /// The same contract with every defect kept (a login rebuilt from a
    /// dead-letter copy, which kept only what passed its checks).
    pub fn lenient(&self) -> Contract {
        self.clone().with_mode(Mode::Lenient)
    }

    /// Logins kept with their defects, unknown fields ignored (counted),
    /// none declared.
    pub const DEFAULT: Contract = Contract {
        mode: Mode::Lenient,
        unknown: UnknownFields::Ignore,
        extra: Vec::new(),
    };

    /// As [`DEFAULT`](Self::DEFAULT), with every defect a rejection.
    pub const STRICT: Contract = Contract {
        mode: Mode::Strict,
        unknown: UnknownFields::Ignore,
        extra: Vec::new(),
    };

    /// The contract with `unknown` for undeclared fields and `extra`, a
    /// comma-separated list of declared field names (empty: none).
    pub fn new(unknown: UnknownFields, extra: &str) -> Result<Self, PolicyError> {
        let mut names: Vec<String> = Vec::new();
        for name in extra.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !is_identifier(name) {
                return Err(PolicyError::NotAName(name.to_owned()));
            }
            if Field::named(name).is_some() {
                return Err(PolicyError::OfTheContract(name.to_owned()));
            }
            if names.iter().any(|n| n == name) {
                return Err(PolicyError::Twice(name.to_owned()));
            }
            names.push(name.to_owned());
        }
        if names.len() > MAX_EXTRA_FIELDS {
            return Err(PolicyError::TooMany(names.len()));
        }
        Ok(Self {
            mode: Mode::Lenient,
            unknown,
            extra: names,
        })
    }

    /// This contract under `mode`.
    pub fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// The declared extra fields, in the order given.
    pub fn extra(&self) -> &[String] {
        &self.extra
    }

    /// The position of `name` among the declared extra fields.
    pub fn extra_index(&self, name: &str) -> Option<usize> {
        self.extra.iter().position(|n| n == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_fields_are_names_outside_the_contract_each_once() {
        let c = Contract::new(UnknownFields::Reject, " app_build, os_version ,").unwrap();
        assert_eq!(c.extra(), ["app_build", "os_version"]);
        assert_eq!(c.extra_index("os_version"), Some(1));
        for (list, e) in [
            ("a b", PolicyError::NotAName("a b".into())),
            ("1st", PolicyError::NotAName("1st".into())),
            ("os.version", PolicyError::NotAName("os.version".into())),
            (
                "phone_4155550100",
                PolicyError::NotAName("phone_4155550100".into()),
            ),
            ("ip", PolicyError::OfTheContract("ip".into())),
            ("x,x", PolicyError::Twice("x".into())),
        ] {
            assert_eq!(Contract::new(UnknownFields::Ignore, list), Err(e), "{list}");
        }
        let many = (0..17)
            .map(|i| format!("f{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            Contract::new(UnknownFields::Ignore, &many),
            Err(PolicyError::TooMany(17))
        );
        assert_eq!(
            UnknownFields::parse("drop"),
            Err(PolicyError::UnknownPolicy)
        );
    }
}
