//! Hostile input: property tests over arbitrary bodies and batches, and the
//! tricky value classes (huge, deeply nested, NUL, lone surrogates, SQL-looking,
//! bidirectional and combining Unicode, numbers for strings, duplicate keys).

use crate::common;

use std::collections::HashSet;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use common::*;
use login_etl::contract::{Field, Rejection, parse_body};
use login_etl::{Deadline, Outcome, SqsBatch};
use proptest::prelude::*;

/// JSON-ish bodies: objects mixing the real fields with junk values, plus raw noise.
fn value_strategy() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        any::<String>().prop_map(serde_json::Value::String),
        "[a-z0-9 -]{100,300}".prop_map(serde_json::Value::String),
        "[0-9]{1,3}(\\.[0-9]{1,4}){0,3}".prop_map(serde_json::Value::String),
        "(::)?[0-9a-f:.]{1,20}".prop_map(serde_json::Value::String),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        Just(serde_json::json!({"nested": [1, {"x": null}]})),
    ]
}

/// A valid login body with one field (or none) replaced by a hostile value:
/// most of these still parse, so the "accepted values fit" checks run often.
fn mutated_valid_body() -> impl Strategy<Value = String> {
    const FIELDS: [&str; 6] = [
        "user_id",
        "app_version",
        "device_type",
        "ip",
        "locale",
        "device_id",
    ];
    (valid_body(), 0usize..8, value_strategy()).prop_map(|(body, field, value)| {
        let mut map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&body).unwrap();
        if let Some(key) = FIELDS.get(field) {
            map.insert((*key).to_owned(), value);
        }
        serde_json::Value::Object(map).to_string()
    })
}

fn body_strategy() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("user_id".to_owned()),
        Just("app_version".to_owned()),
        Just("device_type".to_owned()),
        Just("ip".to_owned()),
        Just("locale".to_owned()),
        Just("device_id".to_owned()),
        "[a-z_]{1,8}",
    ];
    let value = value_strategy();
    prop_oneof![
        3 => proptest::collection::vec((key, value), 0..9).prop_map(|kv| {
            let fields: Vec<String> = kv.iter().map(|(k, v)| format!("{}: {v}", serde_json::Value::String(k.clone()))).collect();
            format!("{{{}}}", fields.join(", "))
        }),
        1 => any::<String>(),
        1 => "[\\[\\]{}\":,0-9a-z\\\\ ]{0,40}",
    ]
}

fn valid_body() -> impl Strategy<Value = String> {
    (0usize..1_000_000).prop_map(|i| login_etl::synth::login_body_for(7, i))
}

#[test]
fn the_validator_never_panics_and_accepted_values_fit_their_columns() {
    let accepted = std::cell::Cell::new(0usize);
    let cases = 2_000;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &prop_oneof![body_strategy(), mutated_valid_body()],
            |body| {
                if let Ok(e) = parse_body(&body) {
                    accepted.set(accepted.get() + 1);
                    prop_assert!(!e.user_id.trim().is_empty() && e.user_id.chars().count() <= 128);
                    let fits = |t: &Option<std::borrow::Cow<'_, str>>, max: usize| {
                        t.as_ref()
                            .is_none_or(|t| !t.trim().is_empty() && t.chars().count() <= max)
                    };
                    prop_assert!(fits(&e.device_type, 32));
                    prop_assert!(fits(&e.device_id, 256));
                    prop_assert!(e.locale.as_ref().is_none_or(|l| l.chars().count() <= 32));
                    prop_assert!(
                        e.app_version_text
                            .as_ref()
                            .is_none_or(|t| t.chars().count() <= 32)
                    );
                    // Calendar majors (2025.1.0) widen it to 2146.999.999.
                    let largest = login_etl::app_version::MAX_MAJOR as i32 * 1_000_000 + 999_999;
                    prop_assert!(e.app_version.is_none_or(|v| (0..=largest).contains(&v)));
                    for s in [&e.device_type, &e.device_id, &e.app_version_text, &e.locale]
                        .into_iter()
                        .flatten()
                        .chain([&e.user_id])
                    {
                        prop_assert!(!s.contains('\0'));
                    }
                }
                Ok(())
            },
        )
        .unwrap();
    // Without this floor the checks above could silently never run.
    let share = accepted.get() as f64 / cases as f64;
    assert!(
        share >= 0.20,
        "only {:.0}% of the bodies were accepted",
        share * 100.0
    );
}

fn event_of(bodies: &[String]) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut m = SqsMessage::default();
            m.message_id = Some(format!("prop-{}-{i}", uuid_like(b)));
            m.body = Some(b.clone());
            m.attributes
                .insert("SentTimestamp".into(), "1795262400000".into());
            m
        })
        .collect();
    event
}

/// `login-etl validate --event` on `event`: the message ids it finds
/// valid, and its reasons for the rest, counted.
fn validate_event(
    event: &SqsEvent,
) -> (HashSet<String>, std::collections::BTreeMap<String, usize>) {
    let dir = std::env::temp_dir().join(format!("login-etl-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!(
        "{}.json",
        uuid_like(&format!("{:?}", event.records.len()))
    ));
    std::fs::write(&path, serde_json::to_vec(event).unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_login-etl"))
        .args(["validate", "--event"])
        .arg(&path)
        .env_remove("UNKNOWN_FIELDS")
        .env_remove("EXTRA_FIELDS")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let (mut valid, mut reasons) = (HashSet::new(), std::collections::BTreeMap::new());
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = v["messageId"].as_str().unwrap().to_owned();
        if v["valid"] == true {
            valid.insert(id);
        } else {
            *reasons
                .entry(v["reason"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    let expected_exit = if reasons.is_empty() { 0 } else { 1 };
    assert_eq!(
        out.status.code(),
        Some(expected_exit),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (valid, reasons)
}

fn uuid_like(s: &str) -> String {
    hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(s.as_bytes())[..8])
}

#[test]
fn every_record_of_arbitrary_batches_is_inserted_or_reported() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = rt.block_on(TestDb::create());
    let h = rt.block_on(handler(&db));
    let client = rt.block_on(db.client());
    // Each body with whether it is known to be valid (generated as such).
    let batch = proptest::collection::vec(
        prop_oneof![
            body_strategy().prop_map(|b| (b, false)),
            valid_body().prop_map(|b| (b, true)),
        ],
        1..40,
    );
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    });
    runner
        .run(&batch, |bodies| {
            // Unique bodies so message ids (derived from them) are unique within the batch.
            let mut seen = HashSet::new();
            let (bodies, known_valid): (Vec<String>, Vec<bool>) = bodies
                .into_iter()
                .filter(|(b, _)| seen.insert(b.clone()))
                .unzip();
            let event = event_of(&bodies);
            let (resp, summary) = rt
                .block_on(h.handle(&SqsBatch::from(&event), Deadline::NONE))
                .map(Outcome::into_parts)
                .expect("no infrastructure fault here");
            let input: HashSet<String> = event
                .records
                .iter()
                .map(|m| m.message_id.clone().unwrap())
                .collect();
            let reported: HashSet<String> = failures(&resp).into_iter().collect();
            prop_assert!(reported.is_subset(&input));
            let mut in_table = HashSet::new();
            for id in &input {
                let n: i64 = rt
                    .block_on(client.query_one(
                        "SELECT count(*) FROM user_logins WHERE message_id = $1",
                        &[id],
                    ))
                    .unwrap()
                    .get(0);
                prop_assert!(n <= 1);
                if n == 1 {
                    in_table.insert(id.clone());
                }
            }
            // Each record is exactly one of: in the table, or reported.
            prop_assert!(in_table.is_disjoint(&reported));
            prop_assert_eq!(in_table.len() + reported.len(), input.len());
            prop_assert_eq!(summary.received, input.len());
            prop_assert_eq!(
                summary.refused,
                0,
                "nothing here is for the database to refuse"
            );
            for (m, valid) in event.records.iter().zip(&known_valid) {
                if *valid {
                    prop_assert!(
                        in_table.contains(m.message_id.as_ref().unwrap()),
                        "a known-valid record is in the table"
                    );
                }
            }
            // `login-etl validate --event` gives the function's verdict on
            // each message: valid exactly where a row was written, and the
            // same reasons, as many times.
            let (valid_by_validate, reasons) = validate_event(&event);
            prop_assert_eq!(&valid_by_validate, &in_table);
            prop_assert_eq!(&reasons, &summary.rejected);
            Ok(())
        })
        .unwrap();
}

fn login(overrides: &str) -> String {
    let base = r#""user_id": "u-1", "app_version": "1.2.3", "device_type": "ios", "ip": "10.1.1.1", "locale": "RU", "device_id": "123-45-6789""#;
    format!("{{{base}{overrides}}}")
}

/// Each tricky value gets its own reason under `CONTRACT=strict`; by
/// default the same problem is the login's first defect (it is stored),
/// or, about the body or the user id, the same rejection.
#[test]
fn tricky_values_are_rejected_with_the_right_reason() {
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_in_field = login(&format!(
        r#", "extra": {}1{}"#,
        "{\"a\":".repeat(5_000),
        "}".repeat(5_000)
    ));
    let huge_device = login(&format!(
        r#", "device_id": "{}""#,
        "9".repeat(6 * 1024 * 1024)
    ))
    .replacen(r#""device_id": "123-45-6789", "#, "", 1);
    let cases: Vec<(String, Rejection)> = vec![
        (deep, Rejection::NotAnObject),
        (huge_device.replace(r#""device_id": "123-45-6789""#, r#""x": 1"#), Rejection::TooLong(Field::DeviceId)),
        (r#"{"user_id": "u\u0000", "app_version": "1.1", "device_type": "ios", "ip": "10.0.0.1", "device_id": "1"}"#.into(), Rejection::NulCharacter(Field::UserId)),
        (r#"{"user_id": "\udc00", "app_version": "1.1"}"#.into(), Rejection::InvalidJson),
        (r#"{"user_id": "\ud83d\ude00 ok", "app_version": "1.1", "device_type": "ios", "ip": "10.0.0.1", "device_id": "\ud800"}"#.into(), Rejection::InvalidJson),
        (login(r#", "user_id": 42"#), Rejection::DuplicateField(Field::UserId)),
        (r#"{"user_id": 42, "app_version": "1.1", "device_type": "ios", "ip": "10.0.0.1", "device_id": "1"}"#.into(), Rejection::WrongType(Field::UserId)),
        (r#"{"user_id": "u", "app_version": 1.1, "device_type": "ios", "ip": "10.0.0.1", "device_id": "1"}"#.into(), Rejection::WrongType(Field::AppVersion)),
        (r#"{"user_id": "u", "app_version": "1.1", "device_type": "ios", "ip": 167772161, "device_id": "1"}"#.into(), Rejection::WrongType(Field::Ip)),
        (login("").replace("10.1.1.1", "10.1.1.1' OR '1'='1"), Rejection::InvalidIp),
    ];
    // Unknown fields are ignored whatever their shape; serde_json skips them
    // without recursion, so even 6 MB of nesting cannot overflow the stack.
    assert!(parse_body(&deep_in_field).is_ok());
    let abyss = login(&format!(r#", "user_id": {}"#, "[".repeat(6 * 1024 * 1024)));
    assert_eq!(parse_body(&abyss), Err(Rejection::InvalidJson));
    let closed_abyss = login(&format!(
        r#", "extra": {}{}"#,
        "[".repeat(3 * 1024 * 1024),
        "]".repeat(3 * 1024 * 1024)
    ));
    assert!(parse_body(&closed_abyss).is_ok());
    let strict = login_etl::contract::Contract::STRICT;
    for (body, want) in cases {
        let start = &body[..body.len().min(80)];
        let got = login_etl::contract::parse_body_with(&body, &strict);
        assert_eq!(got.as_ref().err(), Some(&want), "body starting {start:?}");
        match parse_body(&body) {
            Err(r) => assert_eq!(r, want, "body starting {start:?}"),
            Ok(e) => assert_eq!(
                e.defects.first().map(|d| d.rejection()),
                Some(want),
                "body starting {start:?}"
            ),
        }
    }
}

#[tokio::test]
async fn sql_looking_and_unusual_unicode_values_are_stored_exactly() {
    let db = TestDb::create().await;
    let h = handler(&db).await;
    let values = [
        "'); DROP TABLE user_logins; --",
        "\u{202E}evil\u{202C}-rtl",
        "e\u{301}\u{302}\u{303} combining",
        "مرحبا-user",
        "😀 emoji",
        "$1::text[]",
        "\\x00 not a nul",
    ];
    let bodies: Vec<String> = values
        .iter()
        .map(|v| {
            login(&format!(
                r#", "user_id": {}, "device_type": "ios""#,
                serde_json::Value::String(v.to_string())
            ))
            .replacen(r#""user_id": "u-1", "#, "", 1)
            .replacen(r#""device_type": "ios", "#, "", 1)
        })
        .collect();
    let event = event_of(&bodies);
    let resp = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(|o| o.response)
        .unwrap();
    assert!(resp.batch_item_failures.is_empty(), "{:?}", failures(&resp));
    let client = db.client().await;
    let mut stored: Vec<String> = client
        .query("SELECT user_id FROM user_logins", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    stored.sort();
    let mut want: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    want.sort();
    assert_eq!(stored, want);
}

#[tokio::test]
async fn a_6_mb_body_is_handled_without_trouble() {
    let db = TestDb::create().await;
    let h = handler(&db).await;
    // A valid login padded with a 6 MB unknown field, and one with a 6 MB
    // over-long device id (stored without it), and a 6 MB user id (not a
    // usable one: rejected).
    let padded = login(&format!(
        r#", "padding": "{}""#,
        "x".repeat(6 * 1024 * 1024)
    ));
    let long_id = login(&format!(
        r#", "device_id": "{}""#,
        "9".repeat(6 * 1024 * 1024)
    ))
    .replacen(r#""device_id": "123-45-6789", "#, "", 1);
    let long_user = login(&format!(
        r#", "user_id": "{}""#,
        "u".repeat(6 * 1024 * 1024)
    ))
    .replacen(r#""user_id": "u-1", "#, "", 1);
    let event = event_of(&[padded, long_id.clone(), long_user]);
    let (resp, summary) = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap();
    assert_eq!(summary.inserted, 2);
    assert_eq!(summary.defects.get("device_id.too_long"), Some(&1));
    assert_eq!(
        failures(&resp),
        vec![event.records[2].message_id.clone().unwrap()]
    );
    assert_eq!(summary.rejected.get("too_long.user_id"), Some(&1));
}
