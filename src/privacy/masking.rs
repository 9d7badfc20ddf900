//! Keyed, deterministic PII tokens, under a chain of key versions.
//!
//! Version 1 of a token is lowercase hex of HMAC-SHA256(k₁, value). Version
//! n is HMAC-SHA256(kₙ, token of version n-1), hex again: a stored token is
//! re-keyed with the new key alone, without the value (`login-etl
//! rotate-key`), and a new value is masked through the whole chain, so equal
//! values give equal tokens before and after a rotation once re-keyed.
//!
//! Deterministic so analysts can still spot repeated IPs and devices; keyed so
//! nobody without the key can brute-force the small input spaces (2^32 IPv4
//! addresses, 10^9 device ids) the way an unkeyed hash would allow. What the
//! chain promises (docs/privacy.md, "Key versions"):
//! - a token of version n ≥ 2 needs kₙ to compute from anything, so with a
//!   retired key alone (k₁..kₙ₋₁, the leaked one) no stored token can be
//!   computed from a true value;
//! - it also needs k₁..kₙ₋₁ to compute from the value, so the current key
//!   alone produces no token of any version from a value either.
//!
//! User keys (the erasure list) follow the same chain under their own keys,
//! the erasure keys, so `login-etl forget` can compute them without holding
//! the masking keys.

use std::fmt::{self, Write as _};
use std::net::IpAddr;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::ConfigError;

type HmacSha256 = Hmac<Sha256>;

/// Minimum key length in bytes; shorter keys make the HMAC guessable.
pub const MIN_KEY_BYTES: usize = 32;

use crate::contract::Token;

/// The secret HMAC key: its bytes are wiped when it is dropped (as are the
/// HMAC states it is absorbed in, `hmac`'s `zeroize` feature), and its
/// `Debug` output never shows them. `Clone` because a [`Masker`] is built
/// from copies; each copy is wiped on its own drop.
#[derive(Clone)]
pub struct MaskingKey(Zeroizing<Vec<u8>>);

impl MaskingKey {
    /// Parses a hex key (e.g. from `openssl rand -hex 32`) of at least
    /// [`MIN_KEY_BYTES`] bytes. `source` names where the key came from, for
    /// the error message; the error never contains the key itself.
    pub fn from_hex(hex_key: &str, source: &str) -> Result<Self, ConfigError> {
        let bytes = Zeroizing::new(hex::decode(hex_key.trim()).map_err(|_| {
            ConfigError::MaskingKeyNotHex {
                origin: source.to_owned(),
            }
        })?);
        if bytes.len() < MIN_KEY_BYTES {
            return Err(ConfigError::MaskingKeyTooShort {
                origin: source.to_owned(),
                bytes: bytes.len(),
            });
        }
        Ok(Self(bytes))
    }
}

impl fmt::Debug for MaskingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MaskingKey(<{} bytes redacted>)", self.0.len())
    }
}

/// Every version of a key, oldest first: version n is `keys()[n - 1]`.
///
/// Its text (a secret's value, or `MASKING_KEY`) is either one hex key
/// (version 1 only) or a JSON document `{"versions": ["<hex 1>", "<hex 2>"]}`
/// with the newest last: a rotation appends a version and never removes one,
/// because new values are masked through the whole chain.
#[derive(Clone, Debug)]
pub struct KeyVersions(Vec<MaskingKey>);

/// The JSON form of [`KeyVersions`].
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyDocument {
    versions: Vec<String>,
}

/// The most versions a document may hold: each costs one HMAC per token.
pub const MAX_KEY_VERSIONS: usize = 32;

impl KeyVersions {
    /// Parses one hex key or a `{"versions": [...]}` document; errors name
    /// `origin` and the version, never a key.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let text = text.trim();
        if !text.starts_with('{') {
            return Ok(Self(vec![MaskingKey::from_hex(text, origin)?]));
        }
        let bad = |reason: String| ConfigError::KeyDocument {
            origin: origin.to_owned(),
            reason,
        };
        // serde_json's message may quote the offending input: keep only its position.
        let doc: KeyDocument = serde_json::from_str(text).map_err(|e| {
            bad(format!(
                "not valid JSON of that shape (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        if doc.versions.is_empty() {
            return Err(bad("\"versions\" is empty".into()));
        }
        if doc.versions.len() > MAX_KEY_VERSIONS {
            return Err(bad(format!(
                "{} versions, at most {MAX_KEY_VERSIONS}",
                doc.versions.len()
            )));
        }
        let keys = doc
            .versions
            .iter()
            .enumerate()
            .map(|(i, hex)| MaskingKey::from_hex(hex, &format!("{origin}, version {}", i + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, a) in keys.iter().enumerate() {
            if keys[..i].iter().any(|b| b.0 == a.0) {
                return Err(bad(format!(
                    "version {} repeats an earlier version's key",
                    i + 1
                )));
            }
        }
        Ok(Self(keys))
    }

    /// The newest version (1 for a single key).
    pub fn latest(&self) -> u16 {
        self.0.len() as u16
    }

    /// The keys, oldest first.
    pub fn keys(&self) -> &[MaskingKey] {
        &self.0
    }
}

/// A chain of keyed HMACs, one per version, with the keys already absorbed
/// (each token costs two SHA-256 compressions per version, not four).
#[derive(Clone)]
struct Chain(Vec<HmacSha256>);

impl Chain {
    fn of(keys: &[MaskingKey]) -> Self {
        Self(keys.iter().map(|k| keyed(&k.0)).collect())
    }

    /// The token of `bytes` at `version` (≥ 1): version 1 is the HMAC of the
    /// bytes, each later version the HMAC of the previous token's hex.
    fn token(&self, bytes: &[u8], version: u16) -> Token {
        let mut mac = self.0[0].clone();
        mac.update(bytes);
        let mut token = finish(mac);
        for v in 2..=version {
            token = self.step(&token, v);
        }
        token
    }

    /// The tokens of `bytes` at versions `from..=to` (1 ≤ from ≤ to), in
    /// one pass along the chain.
    fn tokens(&self, bytes: &[u8], from: u16, to: u16) -> Vec<Token> {
        let mut mac = self.0[0].clone();
        mac.update(bytes);
        let mut token = finish(mac);
        let mut out = Vec::with_capacity(usize::from(to - from) + 1);
        for v in 1..=to {
            if v > 1 {
                token = self.step(&token, v);
            }
            if v >= from {
                out.push(token);
            }
        }
        out
    }

    /// One step of the chain: the token of version `to` from its token of
    /// version `to - 1`; needs only key `to`.
    fn step(&self, token: &Token, to: u16) -> Token {
        self.step_text(token.as_str(), to)
    }

    /// [`step`](Self::step) on a token's stored text.
    fn step_text(&self, stored: &str, to: u16) -> Token {
        let mut mac = self.0[usize::from(to) - 1].clone();
        mac.update(stored.as_bytes());
        finish(mac)
    }
}

fn keyed(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// The label of the erasure key derived from a masking key, for
/// deployments without erasure keys of their own (see [`UserKeys`]).
const USER_KEY_DERIVATION: &[u8] = b"login-etl user key v1";

/// What a key's check value is the token of (see [`Masker::check`]).
const CHECK_LABEL: &[u8] = b"login-etl key check v1";

/// The label of the redrive-signing key derived from each masking key
/// (see [`Masker::redrive_signature`]): HMAC(kₙ, label). No token is ever
/// that HMAC, so no stored or shown token is the signing key: a device id
/// is trimmed before it is hashed (the label starts with a space) and
/// holds no U+0000 (the label does), an ip token hashes an address's
/// canonical text, and later versions hash a token's hex.
const REDRIVE_LABEL: &[u8] = b" login-etl\0redrive v1";

/// The label of the copy-signing key derived from each masking key (see
/// [`Masker::copy_signature`]): a key of its own, so that no copy's
/// signature is ever a redrive key's, and the reverse.
const COPY_LABEL: &[u8] = b" login-etl\0dead-letter copy v1";

/// The key version a signature (`v<n>.` and its hex: a redrive key's or a
/// dead-letter copy's) was made at, when it has that form.
pub fn signature_version(signature: &str) -> Option<u16> {
    let (version, _) = signature.strip_prefix('v')?.split_once('.')?;
    version.bytes().all(|b| b.is_ascii_digit()).then(|| version.parse().ok())?
}

/// Computes user keys: the keyed hash of a user id that the erasure list
/// and the audit of `login-etl forget` store instead of the id. Version 1 is
/// lowercase hex of HMAC-SHA256(e₁, user_id), later versions chain like
/// tokens. The erasure keys eₙ are their own secret (`ERASURE_KEY_SECRET_ID`),
/// so whoever erases cannot compute an ip or device token; without one, eₙ is
/// derived from the masking key of the version: HMAC-SHA256(kₙ, "login-etl
/// user key v1"), so user keys never equal a token either way.
#[derive(Clone)]
pub struct UserKeys {
    chain: Chain,
    version: u16,
    /// Derived from the masking keys (no erasure key of their own).
    derived: bool,
}

impl fmt::Debug for UserKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserKeys(version {}, <keys redacted>)", self.version)
    }
}

impl UserKeys {
    /// User keys under the erasure keys `keys`, at their newest version.
    pub fn new(keys: &KeyVersions) -> Self {
        Self {
            chain: Chain::of(keys.keys()),
            version: keys.latest(),
            derived: false,
        }
    }

    /// User keys derived from the masking keys `keys` (no erasure keys of
    /// their own), at their newest version.
    pub fn derived(keys: &KeyVersions) -> Self {
        Self::derived_from(&Chain::of(keys.keys()), keys.latest())
    }

    fn derived_from(masking: &Chain, version: u16) -> Self {
        let derived = masking
            .0
            .iter()
            .map(|k| {
                let mut mac = k.clone();
                mac.update(USER_KEY_DERIVATION);
                keyed(&mac.finalize().into_bytes())
            })
            .collect();
        Self {
            chain: Chain(derived),
            version,
            derived: true,
        }
    }

    /// Whether these are derived from the masking keys.
    pub fn is_derived(&self) -> bool {
        self.derived
    }

    /// The check value of these keys at this version (recorded in the
    /// database by the first program that uses them, compared by the rest).
    pub fn check(&self) -> Token {
        self.chain.token(CHECK_LABEL, self.version)
    }

    /// The newest version these keys reach.
    pub fn latest(&self) -> u16 {
        self.chain.0.len() as u16
    }

    /// The version user keys are computed at.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// These keys at `version`, if they reach it (1 ≤ version ≤ latest).
    pub fn at(&self, version: u16) -> Option<Self> {
        (1..=self.latest()).contains(&version).then(|| Self {
            chain: self.chain.clone(),
            version,
            derived: self.derived,
        })
    }

    /// The user key of `user_id` at this version.
    pub fn user_key(&self, user_id: &str) -> Token {
        self.chain.token(user_id.as_bytes(), self.version)
    }

    /// The user keys of `user_id` at every version from `from` (at least
    /// version one) to this one, oldest first, for the cost of this version's alone:
    /// what a writer checks while rotate-key moves the erasure list from
    /// one version to the next.
    pub fn user_keys_since(&self, user_id: &str, from: u16) -> Vec<Token> {
        self.chain.tokens(
            user_id.as_bytes(),
            from.clamp(1, self.version),
            self.version,
        )
    }

    /// A user key of version `to - 1` re-keyed to version `to`.
    pub fn rekey(&self, user_key: &Token, to: u16) -> Token {
        self.chain.step(user_key, to)
    }

    /// [`rekey`](Self::rekey) on a stored user key's text.
    pub fn rekey_text(&self, stored: &str, to: u16) -> Token {
        self.chain.step_text(stored, to)
    }
}

/// Computes tokens at one version of the key chain (see the module docs).
#[derive(Clone)]
pub struct Masker {
    chain: Chain,
    version: u16,
    users: UserKeys,
    /// The oldest key version a redrive claim may be signed with
    /// ([`Masker::verifies_redrive`]): the previous version only while the
    /// switch to this one is younger than the DLQ's retention.
    redrive_floor: u16,
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Masker(version {}, <keys redacted>)", self.version)
    }
}

impl Masker {
    /// A masker for one key (version 1), with derived user keys.
    pub fn new(key: &MaskingKey) -> Self {
        Self::versions(&KeyVersions(vec![key.clone()]), None)
            .expect("one masking key and derived user keys always match")
    }

    /// A masker for every version of the masking keys, at the newest, with
    /// user keys under `erasure` (or derived from the masking keys). Both
    /// must reach the same version.
    pub fn versions(
        masking: &KeyVersions,
        erasure: Option<&KeyVersions>,
    ) -> Result<Self, ConfigError> {
        let users = match erasure {
            Some(e) => UserKeys::new(e),
            None => UserKeys::derived(masking),
        };
        if users.latest() != masking.latest() {
            return Err(ConfigError::KeyDocument {
                origin: "the erasure key".into(),
                reason: format!(
                    "it has {} versions and the masking key {}; a rotation adds one version to both",
                    users.latest(),
                    masking.latest()
                ),
            });
        }
        Ok(Self {
            chain: Chain::of(masking.keys()),
            version: masking.latest(),
            users,
            redrive_floor: 1,
        })
    }

    /// The newest version this masker holds keys for.
    pub fn latest(&self) -> u16 {
        self.chain.0.len() as u16
    }

    /// The version it masks at.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// This masker at `version` (the database's, see `login-etl
    /// rotate-key`), if it holds keys that far.
    pub fn at(&self, version: u16) -> Option<Self> {
        Some(Self {
            chain: self.chain.clone(),
            version: (1..=self.latest()).contains(&version).then_some(version)?,
            users: self.users.at(version)?,
            redrive_floor: 1,
        })
    }

    /// This masker accepting redrive claims signed at `floor` and later
    /// versions up to its own ([`crate::privacy::keys`] sets it from when
    /// the database's version last changed).
    pub fn with_redrive_floor(mut self, floor: u16) -> Self {
        self.redrive_floor = floor.clamp(1, self.version);
        self
    }

    /// The keyed hash of a user id at this version (see [`UserKeys`]).
    pub fn user_key(&self, user_id: &str) -> Token {
        self.users.user_key(user_id)
    }

    /// The user keys this masker computes.
    pub fn users(&self) -> &UserKeys {
        &self.users
    }

    /// This masker with user keys derived from its masking keys, as a
    /// deployment whose erasure list predates erasure keys needs.
    pub fn with_derived_users(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            version: self.version,
            users: UserKeys::derived_from(&self.chain, self.version),
            redrive_floor: self.redrive_floor,
        }
    }

    /// The check value of the masking keys at this version (see
    /// [`UserKeys::check`]): a token of a fixed label, so it says nothing
    /// about any value.
    pub fn check(&self) -> Token {
        self.chain.token(CHECK_LABEL, self.version)
    }

    /// A token of version `to - 1` re-keyed to version `to` (≤ latest).
    pub fn rekey(&self, token: &Token, to: u16) -> Token {
        self.chain.step(token, to)
    }

    /// A row's two tokens moved from `version` up to this masker's, one
    /// step of the chain at a time (no original needed); `version` follows.
    pub fn catch_up(
        &self,
        version: &mut u16,
        ip: &mut Option<Token>,
        device_id: &mut Option<Token>,
    ) {
        while *version < self.version {
            *version += 1;
            for token in [&mut *ip, &mut *device_id] {
                *token = token.as_ref().map(|t| self.rekey(t, *version));
            }
        }
    }

    /// [`rekey`](Self::rekey) on a token's stored text, as `rotate-key`
    /// reads it (a value stored before login-etl, not a 64-hex token, is
    /// re-keyed all the same: the HMAC of its bytes).
    pub fn rekey_text(&self, stored: &str, to: u16) -> Token {
        self.chain.step_text(stored, to)
    }

    /// The signature of a redrive key: the original message's id and
    /// `SentTimestamp` that a copy in the dead-letter queue carries
    /// (`source_message_id`, `source_sent_timestamp`), bound to the
    /// original body, so that the original, sent back by `login-etl
    /// dlq-redrive`, lands on its row. `v<n>.` and the hex of
    /// HMAC-SHA256(sₙ, id ‖ 0 ‖ timestamp ‖ 0 ‖ SHA-256(body)), where sₙ =
    /// HMAC-SHA256(kₙ, [`REDRIVE_LABEL`]) at this masker's version n: only a
    /// holder of the masking key makes one, so a producer cannot choose a
    /// row's key or day, and whoever sees a copy's attributes cannot attach
    /// them to another body.
    pub fn redrive_signature(&self, message_id: &str, sent_timestamp: &str, body: &str) -> String {
        let mut mac = self.claim_mac(REDRIVE_LABEL, self.version, message_id, sent_timestamp);
        mac.update(&<Sha256 as sha2::Digest>::digest(body.as_bytes()));
        self.signature(mac)
    }

    /// Whether `signature` is a [`redrive_signature`](Self::redrive_signature)
    /// of (`message_id`, `sent_timestamp`, `body`) under any version this
    /// masker holds: a copy sealed before a rotation keeps its key. Compared
    /// in constant time; only the form it makes is read (`v`, a version in
    /// plain digits, `.`, 64 lowercase hex digits).
    pub fn verifies_redrive(
        &self,
        message_id: &str,
        sent_timestamp: &str,
        body: &str,
        signature: &str,
    ) -> bool {
        self.verifies(signature, |version| {
            let mut mac = self.claim_mac(REDRIVE_LABEL, version, message_id, sent_timestamp);
            mac.update(&<Sha256 as sha2::Digest>::digest(body.as_bytes()));
            mac
        })
    }

    /// The signature of a dead-letter copy, over everything it says: its
    /// original's row key (`source_id`, `source_timestamp`: empty when the
    /// original had none) and `parts`, in order (its rejection code, its
    /// tokens' key version, its masked body, its sealed original). The form
    /// of [`redrive_signature`](Self::redrive_signature), under the copy
    /// key HMAC-SHA256(kₙ, [`COPY_LABEL`]): only the function makes one, so
    /// a copy's claims (above all a rebuilt login's tokens and row key)
    /// are the function's, never a producer's or the DLQ operator's.
    pub fn copy_signature(&self, source_id: &str, source_timestamp: &str, parts: &[&str]) -> String {
        self.signature(self.copy_mac(self.version, source_id, source_timestamp, parts))
    }

    /// Whether `signature` is a [`copy_signature`](Self::copy_signature)
    /// of these under a version this masker holds (as
    /// [`verifies_redrive`](Self::verifies_redrive)).
    pub fn verifies_copy(
        &self,
        source_id: &str,
        source_timestamp: &str,
        parts: &[&str],
        signature: &str,
    ) -> bool {
        self.verifies(signature, |version| {
            self.copy_mac(version, source_id, source_timestamp, parts)
        })
    }

    fn copy_mac(&self, version: u16, id: &str, timestamp: &str, parts: &[&str]) -> HmacSha256 {
        let mut mac = self.claim_mac(COPY_LABEL, version, id, timestamp);
        for part in parts {
            // Each part's length first: no two lists of parts sign alike.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac
    }

    /// `v<n>.` and the hex of the finished `mac`, at this masker's version.
    fn signature(&self, mac: HmacSha256) -> String {
        format!(
            "v{}.{}",
            self.version,
            hex::encode(mac.finalize().into_bytes())
        )
    }

    /// Whether `signature` (`v<n>.` and 64 lowercase hex digits) is the
    /// `mac` of version n's key, for an n this masker still takes.
    fn verifies(&self, signature: &str, mac: impl FnOnce(u16) -> HmacSha256) -> bool {
        let Some((version, digest)) = signature
            .strip_prefix('v')
            .and_then(|rest| rest.split_once('.'))
        else {
            return false;
        };
        let plain = |t: &str, ok: fn(&u8) -> bool| !t.is_empty() && t.as_bytes().iter().all(ok);
        if !plain(version, u8::is_ascii_digit)
            || digest.len() != 64
            || !plain(digest, |b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        {
            return false;
        }
        let (Ok(version), Ok(digest)) = (version.parse::<u16>(), hex::decode(digest)) else {
            return false;
        };
        // Only this version's key, or the previous one's while young: a
        // retired key (leaked, say) signs no claim for long.
        if !(self.redrive_floor.max(1)..=self.version).contains(&version) {
            return false;
        }
        mac(version).verify_slice(&digest).is_ok()
    }

    /// A claim's MAC under HMAC-SHA256(kₙ, `label`), over a message id and
    /// a timestamp: what a redrive key and a copy both begin with.
    fn claim_mac(&self, label: &[u8], version: u16, message_id: &str, timestamp: &str) -> HmacSha256 {
        let mut derive = self.chain.0[usize::from(version) - 1].clone();
        derive.update(label);
        let mut mac = keyed(&derive.finalize().into_bytes());
        mac.update(message_id.as_bytes());
        mac.update(&[0]);
        mac.update(timestamp.as_bytes());
        mac.update(&[0]);
        mac
    }

    /// Token of an IP address in its canonical form (`IpAddr`'s `Display`),
    /// so `::1` and `0:0:0:0:0:0:0:1` give the same token.
    pub fn ip(&self, ip: &IpAddr) -> Token {
        let mut text = IpText::default();
        match ip {
            IpAddr::V4(v4) => text.push_ipv4(v4.octets()),
            IpAddr::V6(_) => write!(text, "{ip}").expect("an IPv6 address fits in 45 bytes"),
        }
        self.chain.token(text.as_bytes(), self.version)
    }

    /// Token of a device id, with surrounding whitespace trimmed. A device
    /// id equal to the label the derived erasure key is the HMAC of would
    /// make its token that key's hex (analysts would read the key that
    /// keys the erasure list): it is hashed with a NUL before it, which no
    /// device id holds.
    pub fn device_id(&self, device_id: &str) -> Token {
        let trimmed = device_id.trim().as_bytes();
        if trimmed == USER_KEY_DERIVATION {
            return self.chain.token(b"\0login-etl user key v1", self.version);
        }
        self.chain.token(trimmed, self.version)
    }
}

fn finish(mac: HmacSha256) -> Token {
    Token::of_digest(&mac.finalize().into_bytes().into())
}

/// An address's text on the stack, fed to the MAC in one update: one `String`
/// or seven small MAC updates per record cost more than the HMAC itself.
struct IpText {
    buf: [u8; 45], // the longest IPv6 text: ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255
    len: usize,
}

impl Default for IpText {
    fn default() -> Self {
        Self {
            buf: [0; 45],
            len: 0,
        }
    }
}

impl IpText {
    /// Dotted decimal without leading zeros: what `Ipv4Addr`'s `Display`
    /// prints, without the formatting machinery (a hot path: one per record).
    fn push_ipv4(&mut self, octets: [u8; 4]) {
        for (i, o) in octets.into_iter().enumerate() {
            if i > 0 {
                self.push(b'.');
            }
            if o >= 100 {
                self.push(b'0' + o / 100);
            }
            if o >= 10 {
                self.push(b'0' + o / 10 % 10);
            }
            self.push(b'0' + o % 10);
        }
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
