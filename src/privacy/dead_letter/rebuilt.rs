//! A login rebuilt from a dead-letter copy that kept no original
//! (`login-etl poll` without `DLQ_KMS_KEY_ID` seals none): the copy's
//! masked body still holds the login's fields and its tokens, and its
//! attributes the row key. `login-etl dlq-redrive --rebuild` sends that
//! body back to the source queue with the row key, the copy's signature
//! and a seal ([`REBUILT_SEAL`]); the function stores it as it is, tokens
//! and all, only when the copy's signature holds (the function made the
//! copy, of a producer's message) and the seal opens (the DLQ operator
//! sent it back).
//!
//! The seal is the SHA-256 of the body and its row key, encrypted by KMS
//! under the dead-letter key (`DlqKey`) in an encryption context of its own
//! ([`ENCRYPTION_CONTEXT`], and the message id): the key policy lets only
//! `DlqOperatorRole` encrypt and only the function decrypt in that context.
//! A producer, who may send anything to the source queue, cannot make one,
//! so it cannot place a row under a token it does not know the value of.
//! Why the dead-letter key and not a KMS HMAC key of its own: the same two
//! roles, one key to keep and pay for, and no parameter to turn it on.

use aws_sdk_kms::Client as Kms;
use aws_sdk_kms::primitives::Blob;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};

use crate::privacy::vault::{VaultError, kms_error};

/// The message attribute with the seal (base64 of KMS's ciphertext).
pub const REBUILT_SEAL: &str = "rebuilt_seal";

/// The KMS encryption context of seals: the key policy allows `Encrypt`
/// (the DLQ operator) and `Decrypt` (the function) only with it.
pub const ENCRYPTION_CONTEXT: (&str, &str) = ("purpose", "login-etl-rebuilt");

/// What a rebuilt login is: the row key of its copy's original, the key
/// version of its tokens, and the copy's masked body.
#[derive(Debug, Clone, Copy)]
pub struct Rebuilt<'a> {
    /// `source_message_id`.
    pub source_message_id: &'a str,
    /// `source_sent_timestamp`.
    pub sent_timestamp: &'a str,
    /// The masking-key version of its tokens.
    pub key_version: u16,
    /// The copy's masked body.
    pub body: &'a str,
}

/// What a seal vouches for: the form and every part of the rebuilt login.
fn digest(r: &Rebuilt<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"login-etl/rebuilt/v1\0");
    h.update(r.source_message_id.as_bytes());
    h.update([0]);
    h.update(r.sent_timestamp.as_bytes());
    h.update([0]);
    h.update(r.key_version.to_string().as_bytes());
    h.update([0]);
    h.update(r.body.as_bytes());
    h.finalize().into()
}

/// The seal of a rebuilt login (the DLQ operator's, `kms:Encrypt` on the
/// dead-letter key in [`ENCRYPTION_CONTEXT`]).
pub async fn seal(kms: &Kms, kms_key_id: &str, r: &Rebuilt<'_>) -> Result<String, VaultError> {
    let out = kms
        .encrypt()
        .key_id(kms_key_id)
        .plaintext(Blob::new(digest(r).to_vec()))
        .encryption_context(ENCRYPTION_CONTEXT.0, ENCRYPTION_CONTEXT.1)
        .encryption_context("source_message_id", r.source_message_id)
        .send()
        .await
        .map_err(|e| {
            kms_error(
                "Encrypt",
                kms_key_id,
                &e,
                "; rebuilding needs kms:Encrypt on the dead-letter key in the context purpose=login-etl-rebuilt: run as DlqOperatorRole, with DLQ_KMS_KEY_ID the stack's DlqKeyArn",
            )
        })?;
    Ok(BASE64.encode(
        out.ciphertext_blob
            .map(Blob::into_inner)
            .unwrap_or_default(),
    ))
}

/// Whether a rebuilt login's seal opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealVerdict {
    /// It does, for this body and row key: store it as it is.
    Sealed,
    /// It does not (altered, moved, or made by someone else): a reject.
    Broken,
}

/// Checks seals (the function's, `kms:Decrypt` on the dead-letter key in
/// [`ENCRYPTION_CONTEXT`]).
#[derive(Clone)]
pub struct RebuiltVerifier {
    kms: Kms,
    kms_key_id: String,
}

impl std::fmt::Debug for RebuiltVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RebuiltVerifier")
            .field("kms_key_id", &self.kms_key_id)
            .finish_non_exhaustive()
    }
}

impl RebuiltVerifier {
    /// A verifier asking `kms` under the dead-letter key `kms_key_id` only.
    pub fn new(kms: Kms, kms_key_id: String) -> Self {
        Self { kms, kms_key_id }
    }

    /// Whether `seal` vouches for `r`. An error is KMS
    /// failing to answer, or refusing the function (a permission, a key
    /// disabled): the record waits and comes back (it is not rejected, so
    /// its tokens are not lost).
    pub async fn verify(&self, r: &Rebuilt<'_>, seal: &str) -> Result<SealVerdict, VaultError> {
        let Ok(ciphertext) = BASE64.decode(seal) else {
            return Ok(SealVerdict::Broken);
        };
        let out = match self
            .kms
            .decrypt()
            .key_id(&self.kms_key_id)
            .ciphertext_blob(Blob::new(ciphertext))
            .encryption_context(ENCRYPTION_CONTEXT.0, ENCRYPTION_CONTEXT.1)
            .encryption_context("source_message_id", r.source_message_id)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                use aws_sdk_kms::error::ProvideErrorMetadata;
                // Not a ciphertext of this key in this context.
                if matches!(
                    e.code(),
                    Some("InvalidCiphertextException" | "IncorrectKeyException")
                ) {
                    return Ok(SealVerdict::Broken);
                }
                return Err(kms_error(
                    "Decrypt",
                    &self.kms_key_id,
                    &e,
                    "; a rebuilt login waits until the function may kms:Decrypt on the dead-letter key (DLQ_KMS_KEY_ID) in the context purpose=login-etl-rebuilt",
                ));
            }
        };
        let opened = out.plaintext.map(Blob::into_inner).unwrap_or_default();
        let expected = digest(r);
        Ok(if opened.as_slice() == expected.as_slice() {
            SealVerdict::Sealed
        } else {
            SealVerdict::Broken
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Rebuilt, digest};

    #[test]
    fn the_digest_binds_every_part() {
        let r = Rebuilt {
            source_message_id: "m-1",
            sent_timestamp: "1700000000000",
            key_version: 1,
            body: "{}",
        };
        let base = digest(&r);
        assert_ne!(
            base,
            digest(&Rebuilt {
                source_message_id: "m-2",
                ..r
            })
        );
        assert_ne!(
            base,
            digest(&Rebuilt {
                sent_timestamp: "1700000000001",
                ..r
            })
        );
        assert_ne!(
            base,
            digest(&Rebuilt {
                key_version: 2,
                ..r
            })
        );
        assert_ne!(base, digest(&Rebuilt { body: "{ }", ..r }));
        // The separators: a part's end cannot move into the next.
        let moved = Rebuilt {
            source_message_id: "m-11",
            sent_timestamp: "700000000000",
            ..r
        };
        assert_ne!(base, digest(&moved));
    }
}
