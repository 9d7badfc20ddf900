//! The PII vault: the original ip and device_id behind each token, kept
//! apart from `user_logins`, encrypted so that the function can write them
//! but never read them back.
//!
//! Envelope encryption: at cold start the function asks KMS for a data key
//! (`GenerateDataKey` on `VAULT_KMS_KEY_ID`). It keeps the plaintext key in
//! memory only and stores the KMS-wrapped copy in
//! `user_logins_vault_keys`. Each distinct (kind, token) gets one row in
//! `user_logins_pii_vault`: the value under AES-256-GCM with a random 96-bit
//! nonce, and associated data that binds the ciphertext to its kind and
//! token, so a ciphertext copied to another row does not decrypt. Reading a
//! value back needs `kms:Decrypt` on the key, which only the operators'
//! `PiiRevealRole` is granted by the key policy (`login-etl reveal`, see [`crate::privacy::reveal`]);
//! CloudTrail records every such call.
//!
//! What is wiped from memory: the plaintext data key KMS returns is held in
//! `Zeroizing` buffers until the cipher is built from it; the cipher's AES-256
//! key schedule (its first two round keys are the key itself) is zeroized
//! when the [`DataKey`] is dropped, on every target, and so is its GHASH key
//! H on the arm64 Lambda build (polyval's portable backend); on x86_64 hosts
//! polyval 0.6's CLMUL-detecting backend does not wipe H (the `zeroize`
//! features of `aes`, `ghash` and `polyval`, see Cargo.toml). Not wiped:
//! copies the CPU or the allocator may have left elsewhere, and the key
//! while the process runs (a warm Lambda keeps it for its lifetime).
//!
//! The tokens stay keyed HMACs: the vault adds a way back for the
//! authorised, not a weaker token.

use std::collections::HashMap;
use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use aws_sdk_kms::Client as Kms;
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::contract::LoginRow;

/// What a vault entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// The canonical ip (as `IpAddr` prints it), behind `masked_ip`.
    Ip,
    /// The trimmed device id, behind `masked_device_id`.
    DeviceId,
}

impl Kind {
    /// Its name in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ip => "ip",
            Kind::DeviceId => "device_id",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Kind> {
        match name {
            "ip" => Some(Kind::Ip),
            "device_id" => Some(Kind::DeviceId),
            _ => None,
        }
    }
}

/// Why a vault operation failed. Names kinds, tokens and key ids, never a
/// value or key material.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// KMS returned a data key that is not 256 bits.
    #[error("KMS returned a {0}-byte data key; AES-256 needs 32")]
    KeyLength(usize),
    /// The ciphertext, its nonce, its row or the key do not match.
    #[error(
        "the vault entry for {kind} token {token} does not decrypt under data key {key_id}: it was altered, moved to another row, or wrapped by another key"
    )]
    Undecryptable {
        /// Its kind.
        kind: &'static str,
        /// Its token.
        token: String,
        /// The data key tried.
        key_id: String,
    },
    /// A KMS call failed.
    #[error("KMS {op} on {key} failed ({code}): {message}{hint}")]
    Kms {
        /// `GenerateDataKey` or `Decrypt`.
        op: &'static str,
        /// The KMS key id or ARN (or the data key id for `Decrypt`).
        key: String,
        /// The AWS error code.
        code: String,
        /// What the SDK said.
        message: String,
        /// What to do (starts with "; ").
        hint: &'static str,
    },
}

/// The KMS encryption context of every data key: `GenerateDataKey` and
/// `Decrypt` pass it, KMS binds the wrapped key to it, and the key policy
/// (template.yaml, `VaultKey`) allows both calls only with it, so a grant of
/// `kms:Decrypt` for other purposes does not open the vault.
pub const ENCRYPTION_CONTEXT: (&str, &str) = ("purpose", "login-etl-pii-vault");

/// A data key: the AES-256-GCM cipher (key schedule and GHASH key zeroized
/// on drop) and its wrapped copy.
pub struct DataKey {
    id: String,
    wrapped: Vec<u8>,
    kms_key_id: String,
    cipher: Aes256Gcm,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .field("kms_key_id", &self.kms_key_id)
            .finish_non_exhaustive()
    }
}

/// One sealed vault entry, ready for `user_logins_pii_vault`.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Its kind.
    pub kind: Kind,
    /// The token (`masked_ip` or `masked_device_id`).
    pub token: String,
    /// The random 96-bit nonce.
    pub nonce: [u8; 12],
    /// AES-256-GCM ciphertext with its tag.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("kind", &self.kind)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// The form of the associated data entries are sealed with now
/// (`user_logins_pii_vault.aad_version`).
pub const AAD_VERSION: i16 = 2;

/// The associated data of form `aad_version`:
/// - 1 (entries from before key versions): the kind and the token, so a
///   ciphertext decrypts only in the row of its token; a re-key, which
///   changes the token without the data key, would break it;
/// - 2: the kind only. The token is what `login-etl rotate-key` changes
///   (with the masking key, never the data key); the entry stays bound to
///   its kind and, through GCM, to its own nonce and ciphertext.
fn associated_data(kind: Kind, token: &str, aad_version: i16) -> Vec<u8> {
    match aad_version {
        1 => format!("login-etl/pii-vault/v1\0{}\0{token}", kind.as_str()).into_bytes(),
        _ => format!("login-etl/pii-vault/v2\0{}", kind.as_str()).into_bytes(),
    }
}

impl DataKey {
    /// A data key from its plaintext (32 bytes) and its wrapped copy.
    pub fn new(plaintext: &[u8], wrapped: Vec<u8>, kms_key_id: &str) -> Result<Self, VaultError> {
        if plaintext.len() != 32 {
            return Err(VaultError::KeyLength(plaintext.len()));
        }
        Ok(Self {
            id: Self::id_of(&wrapped),
            wrapped,
            kms_key_id: kms_key_id.to_owned(),
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(plaintext)),
        })
    }

    /// The id of a data key: the first 16 bytes of SHA-256 of its wrapped
    /// copy, in hex. Derived, so storing the key twice is harmless.
    pub fn id_of(wrapped: &[u8]) -> String {
        hex::encode(&Sha256::digest(wrapped)[..16])
    }

    /// A new data key from KMS (`GenerateDataKey`, AES_256) under `kms_key_id`.
    pub async fn generate(kms: &Kms, kms_key_id: &str) -> Result<Self, VaultError> {
        Self::generate_in(
            kms,
            kms_key_id,
            ENCRYPTION_CONTEXT,
            "; the function's role needs kms:GenerateDataKey on VAULT_KMS_KEY_ID",
        )
        .await
    }

    /// [`generate`](Self::generate) under the encryption context `context`
    /// (the vault's, or the dead-letter copies' of
    /// [`crate::privacy::dead_letter`]); `hint` says what to check when KMS
    /// refuses (starts with "; ").
    pub(crate) async fn generate_in(
        kms: &Kms,
        kms_key_id: &str,
        context: (&str, &str),
        hint: &'static str,
    ) -> Result<Self, VaultError> {
        let out = kms
            .generate_data_key()
            .key_id(kms_key_id)
            .key_spec(DataKeySpec::Aes256)
            .encryption_context(context.0, context.1)
            .send()
            .await
            .map_err(|e| kms_error("GenerateDataKey", kms_key_id, &e, hint))?;
        let plaintext = Zeroizing::new(out.plaintext.map(Blob::into_inner).unwrap_or_default());
        let wrapped = out
            .ciphertext_blob
            .map(Blob::into_inner)
            .unwrap_or_default();
        Self::new(&plaintext, wrapped, kms_key_id)
    }

    /// The data key whose wrapped copy is `wrapped`, unwrapped by KMS
    /// (`Decrypt`: operators only) under the vault's key `kms_key_id` and
    /// no other: a wrapped key an ingest role stored under a key of its
    /// own choosing is refused by KMS, not decrypted.
    pub async fn unwrap(kms: &Kms, wrapped: Vec<u8>, kms_key_id: &str) -> Result<Self, VaultError> {
        Self::unwrap_in(
            kms,
            wrapped,
            kms_key_id,
            ENCRYPTION_CONTEXT,
            "; revealing needs kms:Decrypt on the vault key (run as PiiRevealRole, the only principal VaultKey's policy lets decrypt, with the vault's encryption context)",
        )
        .await
    }

    /// [`unwrap`](Self::unwrap) under the encryption context `context`.
    pub(crate) async fn unwrap_in(
        kms: &Kms,
        wrapped: Vec<u8>,
        kms_key_id: &str,
        context: (&str, &str),
        hint: &'static str,
    ) -> Result<Self, VaultError> {
        let id = Self::id_of(&wrapped);
        let out = kms
            .decrypt()
            .key_id(kms_key_id)
            .ciphertext_blob(Blob::new(wrapped.clone()))
            .encryption_context(context.0, context.1)
            .send()
            .await
            .map_err(|e| kms_error("Decrypt", &id, &e, hint))?;
        let plaintext = Zeroizing::new(out.plaintext.map(Blob::into_inner).unwrap_or_default());
        Self::new(
            &plaintext,
            wrapped,
            out.key_id.as_deref().unwrap_or_default(),
        )
    }

    /// `plain` under AES-256-GCM with a fresh random nonce, bound to `aad`:
    /// the nonce followed by the ciphertext and its tag.
    pub(crate) fn seal_bytes(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let mut out = nonce.to_vec();
        out.extend(
            self.cipher
                .encrypt(&nonce, Payload { msg: plain, aad })
                .expect("AES-GCM encrypts any value shorter than 64 GiB"),
        );
        out
    }

    /// What [`seal_bytes`](Self::seal_bytes) sealed with `aad`; `None` when
    /// it was altered, sealed under another key or bound to other data.
    pub(crate) fn open_bytes(&self, aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < 12 {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(12);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .ok()
            .map(Zeroizing::new)
    }

    /// Its id (column `key_id`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The KMS-wrapped copy (column `wrapped_key`).
    pub fn wrapped(&self) -> &[u8] {
        &self.wrapped
    }

    /// The KMS key that wraps it (column `kms_key_id`).
    pub fn kms_key_id(&self) -> &str {
        &self.kms_key_id
    }

    /// Encrypts `value` for the row (`kind`, `token`) under a fresh random nonce.
    pub fn seal(&self, kind: Kind, token: &str, value: &str) -> Sealed {
        self.seal_with(
            kind,
            token,
            value,
            Aes256Gcm::generate_nonce(&mut OsRng).into(),
        )
    }

    /// Encrypts `value` in the form entries from before key versions have
    /// (associated data 1: bound to the token): what `login-etl
    /// vault-upgrade` finds in an older vault, and re-seals. A test hook: an
    /// older vault's entries, made by the tests.
    #[cfg(any(test, feature = "test-support"))]
    pub fn seal_legacy(&self, kind: Kind, token: &str, value: &str) -> Sealed {
        self.seal_form(
            kind,
            token,
            value,
            Aes256Gcm::generate_nonce(&mut OsRng).into(),
            1,
        )
    }

    /// [`seal`](Self::seal) with a random `nonce` drawn by the caller (a
    /// batch draws all of its nonces from the OS at once).
    fn seal_with(&self, kind: Kind, token: &str, value: &str, nonce: [u8; 12]) -> Sealed {
        self.seal_form(kind, token, value, nonce, AAD_VERSION)
    }

    /// [`seal_with`](Self::seal_with) with associated data of form `aad_version`.
    fn seal_form(
        &self,
        kind: Kind,
        token: &str,
        value: &str,
        nonce: [u8; 12],
        aad_version: i16,
    ) -> Sealed {
        let nonce = Nonce::from(nonce);
        let aad = associated_data(kind, token, aad_version);
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: value.as_bytes(),
                    aad: &aad,
                },
            )
            .expect("AES-GCM encrypts any value shorter than 64 GiB");
        Sealed {
            kind,
            token: token.to_owned(),
            nonce: nonce.into(),
            ciphertext,
        }
    }

    /// Decrypts the entry of (`kind`, `token`), sealed with associated data
    /// of form `aad_version`.
    pub fn open(
        &self,
        kind: Kind,
        token: &str,
        aad_version: i16,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<String, VaultError> {
        let undecryptable = || VaultError::Undecryptable {
            kind: kind.as_str(),
            token: token.to_owned(),
            key_id: self.id.clone(),
        };
        if nonce.len() != 12 {
            return Err(undecryptable());
        }
        let aad = associated_data(kind, token, aad_version);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| undecryptable())?;
        String::from_utf8(plain).map_err(|_| undecryptable())
    }
}

pub(crate) fn kms_error<E, R>(
    op: &'static str,
    key: &str,
    e: &aws_sdk_kms::error::SdkError<E, R>,
    hint: &'static str,
) -> VaultError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
{
    VaultError::Kms {
        op,
        key: key.to_owned(),
        code: e.code().unwrap_or("no code").to_owned(),
        message: DisplayErrorContext(e).to_string(),
        hint,
    }
}

/// What the sink writes to the vault for one batch: the data key and the entries.
#[derive(Debug, Clone, Copy)]
pub struct VaultWrite<'a> {
    /// The data key (its wrapped copy goes to `user_logins_vault_keys`).
    pub key: &'a DataKey,
    /// The batch's entries.
    pub batch: &'a VaultBatch,
}

/// The vault entries of one batch: each distinct (kind, token) sealed once,
/// and for each row the entries it needs.
#[derive(Debug, Default)]
pub struct VaultBatch {
    /// The distinct entries.
    pub sealed: Vec<Sealed>,
    /// For each row (in the order given to [`add`](Self::add)), its ip and
    /// device entries (none for a value the row has no token of).
    pub per_row: Vec<[Option<usize>; 2]>,
    /// For each row, its `create_date`: an entry's `last_seen` is the
    /// latest of its rows' (the vault's retention).
    row_dates: Vec<chrono::NaiveDate>,
    seen: HashMap<(Kind, String), usize>,
    /// The key version of the rows' tokens (all rows of a batch share it).
    pub key_version: u16,
    /// Random bytes from the OS for the next nonces: one system call per
    /// [`NONCES_PER_DRAW`] values instead of one per value.
    nonces: Vec<u8>,
}

/// Nonces drawn from the OS at once.
const NONCES_PER_DRAW: usize = 512;

impl VaultBatch {
    /// Seals what `row` needs, unless the batch already holds it.
    pub fn add(&mut self, key: &DataKey, row: &LoginRow<'_>) {
        self.key_version = row.key_version;
        let ip = row.ip.map(|ip| ip.to_string());
        let entries = [
            (Kind::Ip, row.masked_ip.as_ref(), ip.as_deref()),
            (
                Kind::DeviceId,
                row.masked_device_id.as_ref(),
                row.device_id.as_deref().map(str::trim),
            ),
        ];
        let mut slots = [None; 2];
        for (slot, (kind, token, value)) in slots.iter_mut().zip(entries) {
            let (Some(token), Some(value)) = (token.map(|t| t.as_str()), value) else {
                continue;
            };
            *slot = Some(match self.seen.get(&(kind, token.to_owned())) {
                Some(&i) => i,
                None => {
                    if self.nonces.is_empty() {
                        self.nonces = vec![0; 12 * NONCES_PER_DRAW];
                        aes_gcm::aead::rand_core::RngCore::fill_bytes(&mut OsRng, &mut self.nonces);
                    }
                    let at = self.nonces.len() - 12;
                    let nonce: [u8; 12] = self.nonces[at..].try_into().expect("12 bytes");
                    self.nonces.truncate(at);
                    self.sealed.push(key.seal_with(kind, token, value, nonce));
                    self.seen
                        .insert((kind, token.to_owned()), self.sealed.len() - 1);
                    self.sealed.len() - 1
                }
            });
        }
        self.per_row.push(slots);
        self.row_dates.push(row.create_date);
    }

    /// The distinct entries the rows `range` need, each with the latest
    /// `create_date` of those rows that use it (its `last_seen`), in the
    /// vault's primary-key order (kind, token; byte order, as the `COLLATE
    /// "C"` columns compare).
    ///
    /// Why sorted: the server inserts them into the primary key one after
    /// another, each next to the last, instead of at random places; and two
    /// batches that share entries take their locks in the same order, so
    /// they wait for each other instead of deadlocking.
    pub fn entries_for(&self, range: std::ops::Range<usize>) -> Vec<(&Sealed, chrono::NaiveDate)> {
        let mut used: Vec<(&Sealed, chrono::NaiveDate)> = self.per_row[range.clone()]
            .iter()
            .zip(&self.row_dates[range])
            .flat_map(|(slots, &day)| slots.iter().flatten().map(move |&i| (&self.sealed[i], day)))
            .collect();
        // The latest day first among an entry's, so the dedup keeps it.
        used.sort_unstable_by(|(a, a_day), (b, b_day)| {
            (a.kind.as_str(), a.token.as_str())
                .cmp(&(b.kind.as_str(), b.token.as_str()))
                .then(b_day.cmp(a_day))
        });
        used.dedup_by(|(a, _), (b, _)| a.kind == b.kind && a.token == b.token);
        used
    }
}

#[cfg(test)]
mod tests;
