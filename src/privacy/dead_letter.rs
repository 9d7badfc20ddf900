//! The original body of a message copied to the dead-letter queue, sealed
//! so that only the DLQ operator can read it again.
//!
//! A copy's body is masked (by the ingest path's DLQ); the body as the
//! producer sent it rides along in two message attributes:
//! [`SEALED_BODY`], AES-256-GCM under a data key, and [`SEALED_KEY`], that
//! data key wrapped by KMS under the dead-letter key (`DLQ_KMS_KEY_ID`, the
//! template's `DlqKey`, made in every profile) with an encryption context
//! of its own ([`ENCRYPTION_CONTEXT`]). The key policy lets the function
//! generate such keys and only `DlqOperatorRole` decrypt them: the
//! function cannot unseal a copy, and the DLQ operator opens nothing else.
//! The associated data binds each sealed body to the message id it was
//! copied from, so a sealed body moved onto another copy does not open.
//!
//! Why a key of the application's own and not a queue encrypted under a
//! customer key (SSE-KMS): sending to such a queue needs `kms:Decrypt`
//! too, so "only the function encrypts, only the operator decrypts" cannot
//! be said on the key; SSE protects the message at rest only (whoever may
//! receive it reads it all, so triage would read the raw body); and a
//! queue the stack does not own (`ExistingDlqArn`) cannot be re-encrypted
//! by it. Copies sealed before 0.2.0 are under the vault's key
//! (`VAULT_KMS_KEY_ID`), which `dlq-redrive` tries second (compatibility:
//! goes in 0.4.0; SQS keeps a copy 14 days at most, so none made before
//! 0.2.0 outlives a deployment's upgrade by longer).
//!
//! The function generates one data key per cold start (one KMS call);
//! `login-etl dlq-redrive` unwraps each distinct one once ([`Unsealer`]).
//! A copy that kept no original can still be rebuilt from its masked body
//! ([`rebuilt`]).

pub mod rebuilt;

use std::collections::HashMap;

use aws_sdk_kms::Client as Kms;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use zeroize::Zeroizing;

use crate::privacy::vault::{DataKey, VaultError};

/// The KMS encryption context of the dead-letter copies' data keys: the
/// key policy allows `GenerateDataKey` (the function) and `Decrypt` (the
/// DLQ operator) only with it, so neither crosses over to the vault's.
pub const ENCRYPTION_CONTEXT: (&str, &str) = ("purpose", "login-etl-dlq");

/// The message attribute with the sealed original body (base64 of the
/// nonce, the ciphertext and its tag).
pub const SEALED_BODY: &str = "sealed_body";

/// The message attribute with the KMS-wrapped data key (base64).
pub const SEALED_KEY: &str = "sealed_key";

/// What a sealed body is bound to: its form and the message id it was
/// copied from.
fn associated_data(source_message_id: &str) -> Vec<u8> {
    format!("login-etl/dlq/v1\0{source_message_id}").into_bytes()
}

/// Seals bodies under one data key from KMS.
#[derive(Debug)]
pub struct Sealer {
    key: DataKey,
    wrapped: String,
}

/// One sealed body, as its two message attributes hold it.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedBody {
    /// [`SEALED_BODY`]'s value.
    pub body: String,
    /// [`SEALED_KEY`]'s value.
    pub key: String,
}

impl std::fmt::Debug for SealedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedBody(<{} bytes>)", self.body.len())
    }
}

impl Sealer {
    /// A sealer with a new data key (`GenerateDataKey` on `kms_key_id`,
    /// the dead-letter key, in the dead-letter context).
    pub async fn generate(kms: &Kms, kms_key_id: &str) -> Result<Self, VaultError> {
        let key = DataKey::generate_in(
            kms,
            kms_key_id,
            ENCRYPTION_CONTEXT,
            "; the function's role needs kms:GenerateDataKey on DLQ_KMS_KEY_ID with the encryption context purpose=login-etl-dlq (DlqKey's policy, statement FunctionSealsDeadLetterCopies)",
        )
        .await?;
        Ok(Self::new(key))
    }

    /// A sealer with the data key `key` (tests: one made without KMS).
    pub fn new(key: DataKey) -> Self {
        let wrapped = BASE64.encode(key.wrapped());
        Self { key, wrapped }
    }

    /// `body` sealed and bound to `source_message_id`.
    pub fn seal(&self, source_message_id: &str, body: &str) -> SealedBody {
        SealedBody {
            body: BASE64.encode(
                self.key
                    .seal_bytes(&associated_data(source_message_id), body.as_bytes()),
            ),
            key: self.wrapped.clone(),
        }
    }

    /// The size of the attributes [`seal`](Self::seal) makes of a body of
    /// `bytes` bytes: what a copy adds to the message.
    pub fn sealed_len(&self, bytes: usize) -> usize {
        (bytes + 12 + 16).div_ceil(3) * 4 + self.wrapped.len()
    }
}

/// Why a sealed body did not open.
#[derive(Debug, thiserror::Error)]
pub enum UnsealError {
    /// KMS refused to unwrap the data key: nothing else will open either.
    #[error(transparent)]
    Kms(#[from] VaultError),
    /// This copy's attributes are not what the function wrote (altered,
    /// moved from another copy, or not base64).
    #[error(
        "the sealed body of the copy of {source_message_id} does not open: its {SEALED_BODY} or {SEALED_KEY} attribute was altered or belongs to another message; left in the dead-letter queue"
    )]
    Altered {
        /// The message id it claims to be copied from.
        source_message_id: String,
    },
}

/// Opens sealed bodies, unwrapping each distinct data key once through KMS
/// (`Decrypt`, naming a key it was given and the dead-letter context).
pub struct Unsealer {
    kms: Kms,
    kms_key_ids: Vec<String>,
    keys: HashMap<Vec<u8>, DataKey>,
}

impl Unsealer {
    /// An unsealer asking `kms` to unwrap under the keys `kms_key_ids`
    /// only, in order (the dead-letter key, then the vault's for copies
    /// sealed before it).
    pub fn new(kms: Kms, kms_key_ids: Vec<String>) -> Self {
        Self {
            kms,
            kms_key_ids,
            keys: HashMap::new(),
        }
    }

    /// The original body of the copy of `source_message_id` whose
    /// attributes are `sealed_body` and `sealed_key`.
    pub async fn open(
        &mut self,
        source_message_id: &str,
        sealed_body: &str,
        sealed_key: &str,
    ) -> Result<Zeroizing<String>, UnsealError> {
        let altered = || UnsealError::Altered {
            source_message_id: source_message_id.to_owned(),
        };
        let wrapped = BASE64.decode(sealed_key).map_err(|_| altered())?;
        let sealed = BASE64.decode(sealed_body).map_err(|_| altered())?;
        if !self.keys.contains_key(&wrapped) {
            let mut unwrapped = Err(VaultError::Kms {
                op: "Decrypt",
                key: String::new(),
                code: "IncorrectKeyException".into(),
                message: "no KMS key given".into(),
                hint: "",
            });
            for kms_key_id in &self.kms_key_ids {
                unwrapped = DataKey::unwrap_in(
                    &self.kms,
                    wrapped.clone(),
                    kms_key_id,
                    ENCRYPTION_CONTEXT,
                    "",
                )
                .await;
                // Wrapped under another key: the next one given may be it.
                if !matches!(&unwrapped, Err(VaultError::Kms { code, .. }) if code == "IncorrectKeyException")
                {
                    break;
                }
            }
            let key = match unwrapped {
                Ok(key) => key,
                // This copy's key is not one KMS made (a message that only
                // claims to be a copy): this message stays, the run goes on.
                Err(VaultError::Kms { code, .. })
                    if matches!(
                        code.as_str(),
                        "InvalidCiphertextException" | "IncorrectKeyException"
                    ) =>
                {
                    return Err(altered());
                }
                Err(VaultError::Kms {
                    op,
                    key,
                    code,
                    message,
                    ..
                }) => {
                    let hint = hint_for(&code);
                    return Err(UnsealError::Kms(VaultError::Kms {
                        op,
                        key,
                        code,
                        message,
                        hint,
                    }));
                }
                Err(e) => return Err(e.into()),
            };
            self.keys.insert(wrapped.clone(), key);
        }
        let plain = self.keys[&wrapped]
            .open_bytes(&associated_data(source_message_id), &sealed)
            .ok_or_else(altered)?;
        String::from_utf8(plain.to_vec())
            .map(Zeroizing::new)
            .map_err(|_| altered())
    }
}

/// What to check when KMS refuses to unwrap a copy's data key, by its
/// error code.
fn hint_for(code: &str) -> &'static str {
    match code {
        "AccessDeniedException" => {
            "; unsealing needs kms:Decrypt on the dead-letter key with the encryption context purpose=login-etl-dlq: run as DlqOperatorRole (the stack's DlqOperatorRoleArn output)"
        }
        "NotFoundException" | "InvalidArnException" => {
            "; DLQ_KMS_KEY_ID (or VAULT_KMS_KEY_ID) names no key here: give the stack's DlqKeyArn output (and its region in AWS_REGION)"
        }
        "DisabledException" | "KMSInvalidStateException" => {
            "; the dead-letter key is disabled or pending deletion: an administrator must enable it (or cancel its deletion) before anything sealed under it opens"
        }
        _ => {
            "; check DLQ_KMS_KEY_ID (the stack's DlqKeyArn output) and that you run as DlqOperatorRole"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(fill: u8) -> Sealer {
        Sealer::new(DataKey::new(&[fill; 32], vec![fill; 40], "test-key").unwrap())
    }

    #[test]
    fn a_sealed_body_opens_only_under_its_key_and_for_its_message() {
        let s = sealer(7);
        let sealed = s.seal("m-1", r#"{"ip":"10.0.0.1"}"#);
        assert!(!sealed.body.contains("10.0.0.1"));
        assert_eq!(s.sealed_len(17), sealed.body.len() + sealed.key.len());
        let raw = BASE64.decode(&sealed.body).unwrap();
        let open = |key: &DataKey, id: &str, bytes: &[u8]| {
            key.open_bytes(&associated_data(id), bytes)
                .map(|p| p.to_vec())
        };
        assert_eq!(
            open(&s.key, "m-1", &raw).as_deref(),
            Some(br#"{"ip":"10.0.0.1"}"#.as_slice())
        );
        assert_eq!(open(&s.key, "m-2", &raw), None, "moved to another copy");
        assert_eq!(open(&sealer(8).key, "m-1", &raw), None, "another key");
        let mut flipped = raw.clone();
        flipped[20] ^= 1;
        assert_eq!(open(&s.key, "m-1", &flipped), None, "altered");
        assert_eq!(open(&s.key, "m-1", &raw[..5]), None, "cut short");
        // Two seals of one body differ (a fresh nonce each).
        assert_ne!(s.seal("m-1", "x").body, s.seal("m-1", "x").body);
    }
}
