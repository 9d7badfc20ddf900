//! The PII vault against moto's KMS: the function's cold start asks KMS for
//! a data key, batches write vault entries beside their rows, `reveal` gets
//! the originals back through KMS Decrypt with one audit line each, and
//! `forget` erases one user without touching the others; and no data key
//! ever seals two entries under one nonce. The tests set process-wide AWS
//! environment variables ([`common::set_process_env`]: a process each).

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use aws_lambda_events::event::sqs::SqsEvent;
use common::moto::start_moto;
use common::*;
use login_etl::privacy::masking::{Masker, MaskingKey};
use login_etl::privacy::vault::Kind;
use login_etl::privacy::{
    forget::forget,
    reveal::{Target, reveal},
};
use login_etl::synth::{self, Options};
use login_etl::table::privileges::Role;
use login_etl::{Deadline, SqsBatch};
use serde_json::Value;

/// Points the AWS SDK at moto on `port`.
fn set_env(port: u16) {
    let endpoint = format!("http://127.0.0.1:{port}");
    common::set_process_env(&[
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        // A spoofed operator name: the audit must not believe it.
        ("USER", "mallory"),
    ]);
}

/// A KMS key in moto, for the vault.
async fn vault_kms_key() -> (aws_sdk_kms::Client, String) {
    let kms = aws_sdk_kms::Client::new(&login_etl::secrets::sdk_config().await);
    let key_arn = kms
        .create_key()
        .description("login-etl vault test")
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .arn
        .unwrap();
    (kms, key_arn)
}

/// user_id -> (canonical ip, trimmed device id) of every valid record,
/// computed here with std, independently of the crate.
fn originals(event: &SqsEvent) -> BTreeMap<String, BTreeSet<(String, String)>> {
    let mut out: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for (m, (_, expect)) in event.records.iter().zip(expectations(event)) {
        if expect != "insert" {
            continue;
        }
        let body: Value = serde_json::from_str(m.body.as_deref().unwrap()).unwrap();
        let ip: IpAddr = body["ip"].as_str().unwrap().trim().parse().unwrap();
        out.entry(body["user_id"].as_str().unwrap().to_owned())
            .or_default()
            .insert((
                ip.to_string(),
                body["device_id"].as_str().unwrap().trim().to_owned(),
            ));
    }
    out
}

#[tokio::test]
#[ignore = "needs moto_server on PATH or in MOTO_SERVER; run by `make test`"]
async fn the_vault_round_trip_through_kms_reveal_and_forget() {
    let (_moto, port) = start_moto();
    set_env(port);
    let (kms, key_arn) = vault_kms_key().await;

    let db = TestDb::create().await;
    // The cold start path: VAULT_KMS_KEY_ID makes it call GenerateDataKey.
    // Migrated by the admin; the function runs as the ingest role.
    let h = handler_with(&[
        ("DATABASE_URL", &db.ingest_url().await),
        ("MASKING_KEY", TEST_KEY),
        ("VAULT_KMS_KEY_ID", &key_arn),
    ])
    .await;
    let mut event = synth::event(&Options {
        count: 300,
        invalid_every: 11,
        seed: 95,
        ..Options::default()
    });
    // Two users share an ip, so erasing one must keep that entry.
    let bodies: Vec<Value> = event
        .records
        .iter()
        .map(|m| serde_json::from_str(m.body.as_deref().unwrap()).unwrap_or(Value::Null))
        .collect();
    let (a, b) = (0, 1);
    assert!(bodies[a]["ip"].is_string() && bodies[b]["ip"].is_string());
    let mut shared = bodies[b].clone();
    shared["ip"] = bodies[a]["ip"].clone();
    event.records[b].body = Some(shared.to_string());
    let user_a = bodies[a]["user_id"].as_str().unwrap().to_owned();
    let user_b = bodies[b]["user_id"].as_str().unwrap().to_owned();
    assert_ne!(user_a, user_b);

    handle_all_but_invalid(&h, &event).await;
    // reveal runs as the reveal role, forget as the erase role (login-etl grants).
    let mut client = connect(&db.role_url(Role::Reveal).await).await;
    // Who is calling, as STS (moto) says: what every audit record names.
    let caller = login_etl::privacy::audit::caller_arn(&aws_sdk_sts::Client::new(
        &login_etl::secrets::sdk_config().await,
    ))
    .await
    .unwrap();
    let admin_client = db.client().await;
    let want = originals(&event);
    let distinct_ips: BTreeSet<&String> = want.values().flatten().map(|(ip, _)| ip).collect();
    let distinct_devices: BTreeSet<&String> = want.values().flatten().map(|(_, d)| d).collect();
    let entries: i64 = admin_client
        .query_one("SELECT count(*) FROM user_logins_pii_vault", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        entries as usize,
        distinct_ips.len() + distinct_devices.len(),
        "one entry per distinct value"
    );
    let keys: i64 = admin_client
        .query_one("SELECT count(*) FROM user_logins_vault_keys", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(keys, 1, "the data key is stored once");
    // Nothing in the vault tables is readable without KMS.
    let dump: String = admin_client
        .query_one(
            "SELECT string_agg(encode(ciphertext, 'escape') || encode(wrapped_key, 'escape'), '') \
             FROM user_logins_pii_vault JOIN user_logins_vault_keys USING (key_id)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for ip in &distinct_ips {
        assert!(
            !dump.contains(ip.as_str()),
            "a plaintext value in the vault (redacted)"
        );
    }

    // Reveal every row's ip and device through its token.
    let mut audit = Vec::new();
    let rows = admin_client
        .query(
            "SELECT user_id, masked_ip, masked_device_id FROM user_logins",
            &[],
        )
        .await
        .unwrap();
    for row in rows.iter().take(40) {
        let user: String = row.get(0);
        let ip = reveal(
            &mut client,
            &kms,
            &key_arn,
            &Target::IpToken(row.get(1)),
            &caller,
            &mut |l| audit.push(l.to_owned()),
        )
        .await
        .unwrap();
        let device = reveal(
            &mut client,
            &kms,
            &key_arn,
            &Target::DeviceToken(row.get(2)),
            &caller,
            &mut |l| audit.push(l.to_owned()),
        )
        .await
        .unwrap();
        let pair = (
            ip[0].value.clone().unwrap(),
            device[0].value.clone().unwrap(),
        );
        assert!(
            want[&user].contains(&pair),
            "the original values of {user}'s login"
        );
    }
    // A user's logins, by user id.
    let by_user = reveal(
        &mut client,
        &kms,
        &key_arn,
        &Target::UserId(user_a.clone()),
        &caller,
        &mut |l| audit.push(l.to_owned()),
    )
    .await
    .unwrap();
    let ips: BTreeSet<String> = by_user
        .iter()
        .filter(|r| r.kind == Kind::Ip)
        .map(|r| r.value.clone().unwrap())
        .collect();
    assert_eq!(
        ips,
        want[&user_a].iter().map(|(ip, _)| ip.clone()).collect()
    );
    // One audit line per value: the token, never the value.
    assert_eq!(audit.len(), 80 + by_user.len());
    let all_values: Vec<&String> = distinct_ips
        .iter()
        .chain(distinct_devices.iter())
        .copied()
        .collect();
    for line in &audit {
        let doc: Value = serde_json::from_str(line).unwrap();
        assert_eq!(doc["audit"], "pii_revealed");
        assert_eq!(doc["token"].as_str().unwrap().len(), 64);
        assert!(
            all_values.iter().all(|v| !line.contains(v.as_str())),
            "a value in an audit line"
        );
    }
    // The wrapped key is bound to the vault's encryption context: KMS
    // refuses to unwrap it without (the key policy allows Decrypt only with it).
    let wrapped: Vec<u8> = admin_client
        .query_one("SELECT wrapped_key FROM user_logins_vault_keys", &[])
        .await
        .unwrap()
        .get(0);
    let without_context = kms
        .decrypt()
        .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(wrapped))
        .send()
        .await;
    assert!(
        without_context.is_err(),
        "KMS unwraps the data key only with the vault's encryption context"
    );
    // Another key cannot read it: a fresh data key from the same KMS key is
    // a different key.
    let other = login_etl::privacy::vault::DataKey::generate(&kms, &key_arn)
        .await
        .unwrap();
    let row = admin_client
        .query_one(
            "SELECT kind, token, nonce, ciphertext FROM user_logins_pii_vault LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    let kind = Kind::parse(row.get(0)).unwrap();
    let nonce: Vec<u8> = row.get(2);
    let ciphertext: Vec<u8> = row.get(3);
    assert!(
        other
            .open(kind, row.get(1), 2, &nonce, &ciphertext)
            .is_err()
    );

    // Erasure: user A's rows and the entries only A used; B keeps the shared ip.
    let mut eraser = connect(&db.role_url(Role::Erase).await).await;
    let before: i64 = admin_client
        .query_one(
            "SELECT count(*) FROM user_logins WHERE user_id <> $1",
            &[&user_a],
        )
        .await
        .unwrap()
        .get(0);
    let a_rows = want[&user_a].len() as u64;
    let masker = Masker::new(&MaskingKey::from_hex(TEST_KEY, "test").unwrap());
    let done = forget(&mut eraser, &user_a, masker.users(), &caller)
        .await
        .unwrap();
    assert!(done.rows >= a_rows);
    let after: i64 = admin_client
        .query_one("SELECT count(*) FROM user_logins", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(after, before, "only user A's rows are gone");
    let revealed_b = reveal(
        &mut client,
        &kms,
        &key_arn,
        &Target::UserId(user_b.clone()),
        &caller,
        &mut |_| {},
    )
    .await
    .unwrap();
    assert!(
        revealed_b.iter().all(|r| r.value.is_some()),
        "user B's values, the shared ip included, are still in the vault"
    );
    let a_device = &want[&user_a].iter().next().unwrap().1;
    let device_still_used = want
        .iter()
        .any(|(u, v)| u != &user_a && v.iter().any(|(_, d)| d == a_device));
    if !device_still_used {
        assert!(done.vault_entries >= 1, "A's own device entry was erased");
    }
    let gone = reveal(
        &mut client,
        &kms,
        &key_arn,
        &Target::UserId(user_a),
        &caller,
        &mut |_| {},
    )
    .await
    .unwrap();
    assert!(gone.is_empty(), "nothing of user A is left to reveal");
    // A token nothing stored knows reveals nothing; its audit record says
    // so without keeping the token (it may be a retired key's, which the
    // re-key could not find a version for).
    let unknown = "0".repeat(64);
    let nothing = reveal(
        &mut client,
        &kms,
        &key_arn,
        &Target::IpToken(unknown.clone()),
        &caller,
        &mut |_| {},
    )
    .await
    .unwrap();
    assert!(nothing.iter().all(|r| r.value.is_none()), "{nothing:?}");
    let (token, detail): (Option<String>, Option<String>) = admin_client
        .query_one(
            "SELECT token, detail::text FROM user_logins_pii_audit ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(token, None, "the unmatched token is not kept");
    let detail: serde_json::Value = serde_json::from_str(detail.as_deref().unwrap()).unwrap();
    assert_eq!(detail["token_matched"], false);
    assert_eq!(
        detail["db_role"],
        format!("{}_reveal", db.name),
        "the database role the database vouches for"
    );

    // The durable audit: one record per token revealed, naming the caller as
    // STS (moto) knows it; the $USER the test spoofed appears nowhere.
    assert_eq!(caller, "arn:aws:sts::123456789012:user/moto");
    let records = admin_client
        .query(
            "SELECT action, caller_arn, kind, token, data_key_id FROM user_logins_pii_audit ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let reveals: Vec<_> = records
        .iter()
        .filter(|r| r.get::<_, String>(0) == "reveal")
        .collect();
    assert_eq!(
        reveals.len(),
        audit.len() + revealed_b.len() + 1,
        "one record per value revealed (user B's reveal and the unmatched token wrote no line here)"
    );
    assert!(reveals.iter().all(|r| r.get::<_, String>(1) == caller));
    assert!(
        reveals
            .iter()
            .filter(|r| r.get::<_, Option<String>>(3).is_some())
            .all(|r| r.get::<_, Option<String>>(4).is_some()),
        "each of a token found names its data key"
    );
    assert_eq!(
        records
            .iter()
            .filter(|r| r.get::<_, String>(0) == "forget")
            .count(),
        1
    );
    let text = format!("{records:?}");
    assert!(!text.contains("mallory"), "never $USER");

    // A reveal that cannot write its audit record reveals nothing.
    admin_client
        .batch_execute(
            "ALTER TABLE user_logins_pii_audit ADD CONSTRAINT no_reveal CHECK (action <> 'reveal') NOT VALID",
        )
        .await
        .unwrap();
    let token: String = admin_client
        .query_one("SELECT masked_ip FROM user_logins LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    let mut lines = Vec::new();
    let refused = reveal(
        &mut client,
        &kms,
        &key_arn,
        &Target::IpToken(token),
        &caller,
        &mut |l| lines.push(l.to_owned()),
    )
    .await;
    assert!(
        refused.is_err() && lines.is_empty(),
        "no audit record, no value"
    );
}

/// Handles `event`; only the invalid records may be reported.
async fn handle_all_but_invalid(h: &login_etl::BatchHandler, event: &SqsEvent) {
    let resp = h
        .handle(&SqsBatch::from(event), Deadline::NONE)
        .await
        .map(|o| o.response)
        .expect("the batch succeeds");
    assert_eq!(failures(&resp), expected_failures(event));
}

/// A handler's cold start with the vault on: it asks KMS for a data key.
async fn cold_start(url: &str, key_arn: &str) -> login_etl::BatchHandler {
    handler_with(&[
        ("DATABASE_URL", url),
        ("MASKING_KEY", TEST_KEY),
        ("VAULT_KMS_KEY_ID", key_arn),
    ])
    .await
}

/// AES-GCM must never see one (data key, nonce) twice. Through the cold
/// start's data key from KMS: a COPY-sized batch (thousands of entries, so
/// the batch draws its nonces from the OS several times), many small
/// batches of the same warm handler (same data key), and a second cold
/// start (another data key); every row of `user_logins_pii_vault` has its
/// own (key_id, nonce), asserted on the table.
#[tokio::test]
#[ignore = "needs moto_server on PATH or in MOTO_SERVER; run by `make test`"]
async fn no_data_key_seals_two_vault_entries_under_one_nonce() {
    let (_moto, port) = start_moto();
    set_env(port);
    let (_kms, key_arn) = vault_kms_key().await;
    let db = TestDb::create().await;
    let url = db.ingest_url().await;
    let batch = |count, seed| {
        synth::event(&Options {
            count,
            seed,
            ..Options::default()
        })
    };
    let first = cold_start(&url, &key_arn).await;
    handle_all_but_invalid(&first, &batch(2_000, 97)).await;
    for seed in 100..120 {
        handle_all_but_invalid(&first, &batch(25, seed)).await;
    }
    let second = cold_start(&url, &key_arn).await;
    for seed in 200..210 {
        handle_all_but_invalid(&second, &batch(25, seed)).await;
    }
    let row = db
        .client()
        .await
        .query_one(
            "SELECT count(*), count(DISTINCT (key_id, nonce)), count(DISTINCT key_id), \
             count(*) FILTER (WHERE octet_length(nonce) <> 12) FROM user_logins_pii_vault",
            &[],
        )
        .await
        .unwrap();
    let (entries, distinct, keys, malformed): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(keys, 2, "two cold starts, two data keys");
    assert!(entries > 2 * 2_000, "{entries} vault entries");
    assert_eq!(malformed, 0, "every nonce is 96 bits");
    assert_eq!(
        entries - distinct,
        0,
        "vault entries whose (data key, nonce) another entry also has, of {entries}"
    );
}

/// A vault from before key versions (entries bound to their token) is
/// re-sealed by `login-etl vault-upgrade` (the reveal role, KMS Decrypt);
/// `rotate-key` refuses to start before that, and after it the re-keyed
/// entries still reveal every original value through KMS.
#[tokio::test]
#[ignore = "needs moto_server on PATH or in MOTO_SERVER; run by `make test`"]
async fn an_old_vault_is_resealed_then_rotated_and_still_reveals() {
    let (_moto, port) = start_moto();
    set_env(port);
    let (kms, key_arn) = vault_kms_key().await;
    let db = TestDb::create().await;
    let h = cold_start(&db.ingest_url().await, &key_arn).await;
    let event = synth::event(&Options {
        count: 120,
        invalid_every: 0,
        seed: 41,
        ..Options::default()
    });
    handle_all_but_invalid(&h, &event).await;

    // Make the vault what an older version wrote: every entry in form 1.
    let admin = db.client().await;
    let wrapped: Vec<u8> = admin
        .query_one("SELECT wrapped_key FROM user_logins_vault_keys", &[])
        .await
        .unwrap()
        .get(0);
    let key = login_etl::privacy::vault::DataKey::unwrap(&kms, wrapped, &key_arn)
        .await
        .unwrap();
    let entries = admin
        .query(
            "SELECT kind, token, nonce, ciphertext FROM user_logins_pii_vault",
            &[],
        )
        .await
        .unwrap();
    for r in &entries {
        let (kind, token): (String, String) = (r.get(0), r.get(1));
        let kind = Kind::parse(&kind).unwrap();
        let value = key.open(kind, &token, 2, r.get(2), r.get(3)).unwrap();
        let old = key.seal_legacy(kind, &token, &value);
        admin
            .execute(
                "UPDATE user_logins_pii_vault SET nonce = $3, ciphertext = $4, aad_version = 1 \
                 WHERE kind = $1 AND token = $2",
                &[&kind.as_str(), &token, &old.nonce.to_vec(), &old.ciphertext],
            )
            .await
            .unwrap();
    }

    let doc = serde_json::json!({ "versions": [TEST_KEY, "ab".repeat(32)] }).to_string();
    let masker = Masker::versions(
        &login_etl::privacy::masking::KeyVersions::parse(&doc, "test").unwrap(),
        None,
    )
    .unwrap();
    login_etl::privacy::rekey::arm(&admin, &masker)
        .await
        .unwrap();
    let mut rotator = connect(&db.role_url(Role::Rotate).await).await;
    let refused = login_etl::privacy::rekey::rotate(
        &mut rotator,
        &masker,
        "arn:aws:sts::123456789012:assumed-role/rotators/test",
        Default::default(),
        &mut |_| {},
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        refused.contains(&format!("{} vault entries", entries.len()))
            && refused.contains("login-etl vault-upgrade"),
        "{refused}"
    );

    let mut revealer = connect(&db.role_url(Role::Reveal).await).await;
    let mut upgrader = connect(&db.role_url(Role::Upgrade).await).await;
    let caller = login_etl::privacy::audit::caller_arn(&aws_sdk_sts::Client::new(
        &login_etl::secrets::sdk_config().await,
    ))
    .await
    .unwrap();
    let resealed =
        login_etl::privacy::vault_upgrade::upgrade_vault(&mut upgrader, &kms, &key_arn, &caller)
            .await
            .expect("vault-upgrade as the upgrade role");
    assert_eq!(resealed as usize, entries.len());

    let report = login_etl::privacy::rekey::rotate(
        &mut rotator,
        &masker,
        "arn:aws:sts::123456789012:assumed-role/rotators/test",
        Default::default(),
        &mut |_| {},
    )
    .await
    .expect("rotate-key after the upgrade");
    assert_eq!(report.vault_entries as usize, entries.len());

    // Every user's originals, revealed through KMS under the new tokens.
    let want = originals(&event);
    for (user, values) in &want {
        let got = reveal(
            &mut revealer,
            &kms,
            &key_arn,
            &Target::UserId(user.clone()),
            &caller,
            &mut |_| {},
        )
        .await
        .unwrap();
        let ips: BTreeSet<String> = got
            .iter()
            .filter(|r| r.kind == Kind::Ip)
            .map(|r| r.value.clone().expect("in the vault"))
            .collect();
        let devices: BTreeSet<String> = got
            .iter()
            .filter(|r| r.kind == Kind::DeviceId)
            .map(|r| r.value.clone().expect("in the vault"))
            .collect();
        assert_eq!(
            ips,
            values.iter().map(|(ip, _)| ip.clone()).collect(),
            "{user}"
        );
        assert_eq!(
            devices,
            values.iter().map(|(_, d)| d.clone()).collect(),
            "{user}"
        );
    }
    let audit = login_etl::privacy::audit::audit_records(&admin, None)
        .await
        .unwrap();
    let upgrade = audit
        .iter()
        .find(|r| r["action"] == "vault_upgrade")
        .expect("the upgrade is audited");
    assert_eq!(upgrade["detail"]["entries_resealed"], entries.len());
    assert_eq!(upgrade["caller_arn"], caller.as_str());
}

/// The masking-only profile keeps each rejected message's original too,
/// sealed under a key of its own (`DLQ_KMS_KEY_ID`, the template's
/// `DlqKey`), with no vault: the cold start asks KMS for a data key in the
/// dead-letter context, every copy carries its sealed original, the key
/// given opens each one to the producer's body byte for byte, and the
/// vault's key (another key) opens none.
#[tokio::test]
#[ignore = "needs moto_server on PATH or in MOTO_SERVER; run by `make test`"]
async fn without_a_vault_the_dead_letter_originals_are_sealed_under_their_own_key() {
    use login_etl::privacy::dead_letter::{UnsealError, Unsealer};
    let (_moto, port) = start_moto();
    set_env(port);
    let (kms, dlq_key) = vault_kms_key().await;
    let (_, other_key) = vault_kms_key().await;
    let sqs = aws_sdk_sqs::Client::new(&login_etl::secrets::sdk_config().await);
    let dlq_url = sqs
        .create_queue()
        .queue_name("logins-dlq")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let db = TestDb::create().await;
    let h = handler_with(&[
        ("DATABASE_URL", &db.ingest_url().await),
        ("MASKING_KEY", TEST_KEY),
        ("DLQ_URL", &dlq_url),
        ("DLQ_KMS_KEY_ID", &dlq_key),
    ])
    .await;
    let event = synth::event(&Options {
        count: 40,
        invalid_every: 4,
        seed: 96,
        ..Options::default()
    });
    let outcome = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .unwrap();
    assert_eq!(outcome.summary.sent_to_dlq, 10);
    let originals: BTreeMap<String, String> = event
        .records
        .iter()
        .map(|m| (m.message_id.clone().unwrap(), m.body.clone().unwrap()))
        .collect();
    let mut copies = Vec::new();
    while copies.len() < 10 {
        let out = sqs
            .receive_message()
            .queue_url(&dlq_url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap();
        copies.extend(out.messages.unwrap_or_default());
    }
    let attr = |m: &aws_sdk_sqs::types::Message, name: &str| {
        m.message_attributes()
            .and_then(|a| a.get(name))
            .and_then(|v| v.string_value())
            .map(str::to_owned)
    };
    let mut opened = 0;
    let mut own = Unsealer::new(kms.clone(), vec![dlq_key.clone()]);
    let mut vaults = Unsealer::new(kms.clone(), vec![other_key.clone()]);
    for c in &copies {
        let source = attr(c, "source_message_id").unwrap();
        // An empty body is not worth sealing: its copy says so.
        let (Some(body), Some(key)) = (attr(c, "sealed_body"), attr(c, "sealed_key")) else {
            assert!(originals[&source].trim().is_empty(), "{source}");
            continue;
        };
        let open = own.open(&source, &body, &key).await.unwrap();
        assert_eq!(
            *open, originals[&source],
            "the producer's body, byte for byte"
        );
        assert!(
            matches!(
                vaults.open(&source, &body, &key).await,
                Err(UnsealError::Altered { .. } | UnsealError::Kms(_))
            ),
            "another key opens nothing"
        );
        opened += 1;
    }
    assert!(opened >= 8, "{opened} opened");
}
