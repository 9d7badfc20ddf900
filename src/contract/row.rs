//! The row a login becomes: what `user_logins` stores (its masked values
//! as [`Token`]s), and the raw values the PII vault keeps beside it.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, NaiveDate, Utc};

use crate::contract::Defect;
use crate::contract::FieldName;
use crate::contract::LoginEvent;

/// A masked row of `user_logins`, borrowing from the event where it can. It also carries the raw ip and device id, for the PII vault only
/// (never written to `user_logins`, redacted from `Debug`).
#[derive(Clone, PartialEq, Eq)]
pub struct LoginRow<'a> {
    /// SQS message id (of the original, for a copy redriven from the
    /// DLQ): with `sent_at`, the idempotency key.
    pub message_id: &'a str,
    /// As received.
    pub user_id: Cow<'a, str>,
    /// As received (`None`: a defect).
    pub device_type: Option<Cow<'a, str>>,
    /// HMAC token of the canonical IP (`None`: no address).
    pub masked_ip: Option<Token>,
    /// HMAC token of the trimmed device id (`None`: none sent).
    pub masked_device_id: Option<Token>,
    /// The key version both tokens are under (see `crate::privacy::masking`).
    pub key_version: u16,
    /// The user's tag at `key_version` ([`Token::tag`] of their user key),
    /// where the database keeps an erasure list: the key a forget must
    /// name to delete the row. `None` until the batch's keys tag it.
    pub user_tag: Option<i64>,
    /// `None` for null or absent.
    pub locale: Option<Cow<'a, str>>,
    /// Encoded version, see [`crate::app_version`].
    pub app_version: Option<i32>,
    /// Version as received.
    pub app_version_text: Option<Cow<'a, str>>,
    /// When SQS accepted the message (`SentTimestamp`; the original's for a
    /// redriven copy): the same on every delivery.
    pub sent_at: DateTime<Utc>,
    /// The UTC date of `sent_at`: the partition key, so a function of the
    /// message alone.
    pub create_date: NaiveDate,
    /// The parsed address (PII: for the vault only).
    pub ip: Option<IpAddr>,
    /// The device id as received (PII: for the vault only).
    pub device_id: Option<Cow<'a, str>>,
    /// The declared extra fields present, as a JSON object (`extra`).
    pub extra: Option<String>,
    /// Names of the fields outside the contract it carried (counted, never
    /// stored).
    pub unknown: Vec<FieldName>,
    /// What was wrong with the message (`defects`; empty: clean).
    pub defects: Vec<Defect>,
}

impl fmt::Debug for LoginRow<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginRow")
            .field("message_id", &self.message_id)
            .field("masked_ip", &self.masked_ip)
            .field("masked_device_id", &self.masked_device_id)
            .field("app_version", &self.app_version)
            .field("sent_at", &self.sent_at)
            .field("defects", &self.defects)
            .finish_non_exhaustive()
    }
}

/// What the contract does not know of a row: where it comes from and its
/// tokens (the SQS message, the masking key).
#[derive(Debug, Clone, Copy)]
pub struct RowKeyAndTokens<'a> {
    /// The row's message id.
    pub message_id: &'a str,
    /// When SQS accepted the message.
    pub sent_at: DateTime<Utc>,
    /// The token of the ip, if it had an address.
    pub masked_ip: Option<Token>,
    /// The token of the device id, if it had one.
    pub masked_device_id: Option<Token>,
    /// The key version of both tokens.
    pub key_version: u16,
}

impl<'a> LoginRow<'a> {
    /// The row of a login `event`, under `key` (its day is
    /// `sent_at`'s UTC date).
    pub fn new(event: LoginEvent<'a>, key: RowKeyAndTokens<'a>) -> Self {
        let LoginEvent {
            user_id,
            device_type,
            ip,
            device_id,
            locale,
            app_version,
            app_version_text,
            extra,
            unknown,
            defects,
        } = event;
        LoginRow {
            message_id: key.message_id,
            user_id,
            device_type,
            masked_ip: key.masked_ip,
            masked_device_id: key.masked_device_id,
            key_version: key.key_version,
            user_tag: None,
            locale,
            app_version,
            app_version_text,
            sent_at: key.sent_at,
            create_date: key.sent_at.date_naive(),
            ip,
            device_id,
            extra,
            unknown,
            defects,
        }
    }
}

/// Length of a token in characters (hex of a 32-byte digest).
pub const TOKEN_LEN: usize = 64;

/// A 64-character lowercase hex token, stored inline (no heap allocation).
/// Computed by `crate::privacy::masking`; the contract only carries it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token([u8; TOKEN_LEN]);

impl Token {
    /// The token of a 32-byte digest: its lowercase hex.
    pub fn of_digest(digest: &[u8; 32]) -> Self {
        let mut out = [0u8; TOKEN_LEN];
        hex::encode_to_slice(digest, &mut out).expect("64 bytes hold a 32-byte digest in hex");
        Token(out)
    }

    /// A user key's tag on its user's rows: the first 8 bytes, big-endian,
    /// of the SHA-256 of its text, as `login_etl_forget_rows` computes it
    /// from a listed key. One-way, so that a tag read (by the reader role)
    /// gives no key an erasure could list to match it.
    pub fn tag(&self) -> i64 {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.0);
        i64::from_be_bytes(digest[..8].try_into().expect("a digest has 8 bytes"))
    }

    /// A token written as text (64 lowercase hex characters); `None` for
    /// anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != TOKEN_LEN || !bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        let mut out = [0u8; TOKEN_LEN];
        out.copy_from_slice(bytes);
        Some(Token(out))
    }

    /// The digest the token is the hex of.
    pub fn bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        hex::decode_to_slice(self.0, &mut out).expect("a token is 64 hex characters");
        out
    }

    /// The token as text.
    pub fn as_str(&self) -> &str {
        // Only ever filled by `hex::encode_to_slice`: ASCII.
        std::str::from_utf8(&self.0).expect("hex output is ASCII")
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
