//! The audit trail as operators read it (`login-etl audit`), and who the
//! caller is (the ARN every audit record names).
//!
//! The records themselves are written by SQL, in the same transaction as
//! what they record: `reveal`, `forget_begun` and `forget`
//! ([`crate::privacy::reveal`], [`crate::privacy::forget`]),
//! `vault_upgrade` ([`crate::privacy::vault_upgrade`]) and the re-key's
//! ([`crate::privacy::rekey`], migrations/0006).

use serde_json::json;
use tokio_postgres::Client;
use tokio_postgres::types::Type;

use crate::database::statement::Statement;
use crate::privacy::reveal::RevealError;

/// The caller's ARN, from STS `GetCallerIdentity` (never `$USER`): what the
/// audit records name.
pub async fn caller_arn(sts: &aws_sdk_sts::Client) -> Result<String, RevealError> {
    let out = sts
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| RevealError::Identity {
            cause: aws_sdk_sts::error::DisplayErrorContext(&e).to_string(),
        })?;
    out.arn.ok_or_else(|| RevealError::Identity {
        cause: "the answer names no ARN".into(),
    })
}

/// The audit trail since `since` (all of it with `None`), oldest first,
/// one JSON object per record (`login-etl audit`).
pub async fn audit_records(
    client: &Client,
    since: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<Vec<serde_json::Value>, RevealError> {
    const RECORDS: Statement = Statement::new(
        "SELECT id, at, action, caller_arn, kind, token, data_key_id, user_key, rows_deleted, \
         vault_entries_deleted, detail::text FROM user_logins_pii_audit \
         WHERE $1::timestamptz IS NULL OR at >= $1 ORDER BY id",
        &[Type::TIMESTAMPTZ],
        "reading the audit trail",
    );
    let rows = RECORDS.rows(client, &[&since]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let at: chrono::DateTime<chrono::Utc> = r.get(1);
            let mut doc = serde_json::Map::new();
            doc.insert("id".into(), json!(r.get::<_, i64>(0)));
            doc.insert("at".into(), json!(at.to_rfc3339()));
            for (i, name) in [
                (2, "action"),
                (3, "caller_arn"),
                (4, "kind"),
                (5, "token"),
                (6, "data_key_id"),
                (7, "user_key"),
            ] {
                if let Some(v) = r.get::<_, Option<String>>(i) {
                    doc.insert(name.into(), json!(v));
                }
            }
            for (i, name) in [(8, "rows_deleted"), (9, "vault_entries_deleted")] {
                if let Some(v) = r.get::<_, Option<i64>>(i) {
                    doc.insert(name.into(), json!(v));
                }
            }
            // rotate-key's records: the versions and counts (jsonb, ours).
            if let Some(detail) = r.get::<_, Option<&str>>(10)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(detail)
            {
                doc.insert("detail".into(), v);
            }
            serde_json::Value::Object(doc)
        })
        .collect())
}
