//! Masking-key rotation (`login-etl rotate-key`, src/privacy/rekey/) against the
//! real PostgreSQL, each program as the role `login-etl grants` names for
//! it: the function as the ingest role, rotate-key as the rotate role,
//! forget as the erase role with the erasure key only. The PII vault is on
//! (a local data key, so entries are checked by decrypting them).

use crate::common;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsEvent;
use common::keys::*;
use common::*;
use login_etl::BatchHandler;
use login_etl::privacy::masking::{KeyVersions, Masker, UserKeys};
use login_etl::privacy::rekey::{self, RekeyOptions};
use login_etl::privacy::vault::Kind;
use login_etl::synth::{self, Options};
use login_etl::table::privileges::Role;
use login_etl::{Deadline, SqsBatch};
use serde_json::Value;

mod claims;
mod keys;
mod rekeying;
mod switch;

/// The function, as the ingest role, holding key versions 1..=n.
async fn function(url: &str, n: usize) -> BatchHandler {
    handler_with(&[
        ("DATABASE_URL", url),
        ("MASKING_KEY", &doc(&K, n)),
        ("ERASURE_KEY", &doc(&E, n)),
    ])
    .await
    .with_vault(data_key())
}

/// A warm function that holds version 1 only and, asked again, reads a
/// secret that now holds version 2 too (the rollout window).
async fn warm_function_on_the_old_key(url: &str) -> BatchHandler {
    function(url, 1)
        .await
        .with_key_reload(Box::new(|| Box::pin(async { Ok::<_, String>(masker(2)) })))
}

/// `count` synthetic records; with `user`, every third is theirs.
fn event(count: usize, seed: u64, user: Option<&str>) -> SqsEvent {
    let mut event = synth::event(&Options {
        count,
        seed,
        ..Options::default()
    });
    if let Some(user) = user {
        for m in event.records.iter_mut().step_by(3) {
            let mut body: Value = serde_json::from_str(m.body.as_deref().unwrap()).unwrap();
            body["user_id"] = Value::from(user);
            m.body = Some(body.to_string());
        }
    }
    event
}

/// The same logins delivered again as new messages (new ids): duplicates
/// an analyst would want to match across the rotation.
fn again(event: &SqsEvent, tag: &str) -> SqsEvent {
    let mut copy = event.clone();
    for m in &mut copy.records {
        m.message_id = m.message_id.as_ref().map(|id| format!("{id}-{tag}"));
    }
    copy
}

/// message id -> (ip, device_id) as sent.
fn values(events: &[&SqsEvent]) -> HashMap<String, (IpAddr, String)> {
    let mut out = HashMap::new();
    for e in events {
        for m in &e.records {
            let body: Value = serde_json::from_str(m.body.as_deref().unwrap()).unwrap();
            out.insert(
                m.message_id.clone().unwrap(),
                (
                    body["ip"].as_str().unwrap().parse().unwrap(),
                    body["device_id"].as_str().unwrap().to_owned(),
                ),
            );
        }
    }
    out
}

/// The records `h` reports failed; all of them when the invocation failed
/// (retryable only: SQS redelivers the batch, nothing goes to the DLQ).
async fn deliver(h: &BatchHandler, event: &SqsEvent) -> Vec<String> {
    match h.handle(&SqsBatch::from(event), Deadline::NONE).await {
        Ok(outcome) => failures(&outcome.into_parts().0),
        Err(e) => {
            assert!(e.is_retryable(), "{e}");
            event
                .records
                .iter()
                .map(|m| m.message_id.clone().unwrap())
                .collect()
        }
    }
}

async fn rotate(db: &TestDb, n: usize, options: RekeyOptions) -> rekey::RekeyReport {
    // The owner arms the rotation first (rotate-key --arm); a rerun of a
    // rotation done or under way has nothing to arm.
    match rekey::arm(&db.client().await, &masker(n)).await {
        Ok(_) | Err(rekey::RekeyError::NothingToArm { .. }) => {}
        Err(e) => panic!("arming: {e}"),
    }
    let mut client = connect(&db.role_url(Role::Rotate).await).await;
    rekey::rotate(&mut client, &masker(n), CALLER, options, &mut |_| {})
        .await
        .expect("rotate-key as the rotate role")
}

/// Every row's tokens are those of its values at version `n`, computed
/// through the chain from scratch; returns the rows checked.
async fn assert_rows_at(db: &TestDb, n: usize, sent: &HashMap<String, (IpAddr, String)>) -> usize {
    let m = masker(n);
    let rows = db
        .client()
        .await
        .query(
            "SELECT message_id, masked_ip, masked_device_id, key_version FROM user_logins",
            &[],
        )
        .await
        .unwrap();
    for r in &rows {
        let id: String = r.get(0);
        let (ip, device) = &sent[&id];
        assert_eq!(r.get::<_, i16>(3), n as i16, "{id}: key_version");
        assert_eq!(r.get::<_, String>(1), m.ip(ip).as_str(), "{id}: masked_ip");
        assert_eq!(
            r.get::<_, String>(2),
            m.device_id(device).as_str(),
            "{id}: masked_device_id"
        );
    }
    rows.len()
}

/// Every token stored anywhere (rows, vault, held entries, erasure state).
async fn stored_tokens(db: &TestDb) -> BTreeSet<String> {
    let rows = db
        .client()
        .await
        .query(
            "SELECT masked_ip FROM user_logins UNION SELECT masked_device_id FROM user_logins \
             UNION SELECT token FROM user_logins_pii_vault UNION SELECT token FROM user_logins_pii_vault_held \
             UNION SELECT token FROM user_logins_erasure_tokens UNION SELECT user_key FROM user_logins_erased \
             UNION SELECT token FROM user_logins_pii_audit UNION SELECT user_key FROM user_logins_pii_audit",
            &[],
        )
        .await
        .unwrap();
    rows.iter().filter_map(|r| r.get(0)).collect()
}

/// What an attacker holding one key (and a dictionary of the true values)
/// computes: HMAC under that key of every value; none may be stored.
fn assert_dictionary_matches_nothing(
    key_hex: &str,
    sent: &HashMap<String, (IpAddr, String)>,
    stored: &BTreeSet<String>,
) {
    let alone = Masker::new(
        &login_etl::privacy::masking::MaskingKey::from_hex(key_hex, "attacker").unwrap(),
    );
    for (ip, device) in sent.values() {
        assert!(
            !stored.contains(alone.ip(ip).as_str()),
            "an ip token under one key alone"
        );
        assert!(
            !stored.contains(alone.device_id(device).as_str()),
            "a device token under one key alone"
        );
    }
}
