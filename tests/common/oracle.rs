//! The row each login must become, computed here from the message text
//! and the defects its fixture declares (`expect` = `insert:<code>,…`,
//! written by hand): the tokens with the `hmac`/`sha2` crates
//! ([`super::hmac_hex`]), the canonical ip with std's `IpAddr`,
//! `app_version` by arithmetic on the text, `create_date` from
//! `SentTimestamp` with chrono. Nothing of the crate's parsing, masking or
//! encoding code is used, so it can check them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use aws_lambda_events::event::sqs::SqsMessage;
use chrono::NaiveDate;
use serde_json::Value;
use tokio_postgres::Client;

use super::hmac_hex;

/// What `user_logins` must hold for one stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedRow {
    pub message_id: String,
    pub user_id: String,
    pub device_type: Option<String>,
    pub masked_ip: Option<String>,
    pub masked_device_id: Option<String>,
    pub locale: Option<String>,
    pub app_version: Option<i32>,
    pub app_version_text: Option<String>,
    /// The UTC date of `SentTimestamp`; `None` when the message has none
    /// (the row then carries the invocation's date).
    pub create_date: Option<NaiveDate>,
    /// The defect codes, in order; `None` for a clean login.
    pub defects: Option<Vec<String>>,
}

/// `major * 1_000_000 + minor * 1_000 + patch`, missing parts 0; from the
/// first part past its range (the major's 2146, the others' 999) on, each
/// counts as its largest.
pub fn app_version_number(text: &str) -> i32 {
    let limits = [2146u64, 999, 999];
    let mut past = false;
    let parts: Vec<u64> = text
        .split('.')
        .map(|p| p.parse::<u128>().expect("a numeric version part"))
        .chain([0, 0])
        .take(3)
        .zip(limits)
        .map(|(n, limit)| {
            past |= n > u128::from(limit);
            if past { limit } else { n as u64 }
        })
        .collect();
    (parts[0] * 1_000_000 + parts[1] * 1_000 + parts[2]) as i32
}

/// The defects `message`'s fixture declares (`insert:<code>,…`).
pub fn declared_defects(message: &SqsMessage) -> Vec<String> {
    let expect = message
        .message_attributes
        .get("expect")
        .and_then(|a| a.string_value.as_deref())
        .unwrap_or("insert");
    match expect.strip_prefix("insert:") {
        Some(codes) => codes.split(',').map(str::to_owned).collect(),
        None => Vec::new(),
    }
}

/// The row of `message`, a login its fixture says is stored (with the
/// defects it declares), under the masking key `key_hex`.
pub fn expected_row(key_hex: &str, message: &SqsMessage) -> ExpectedRow {
    let defects = declared_defects(message);
    let body: Value = serde_json::from_str(message.body.as_deref().expect("a body"))
        .expect("a login's body is JSON");
    let has = |code: &str| defects.iter().any(|d| d == code);
    // A field with a defect is NULL, but where the row keeps what it carries.
    let kept = |field: &str, keeps: &[&str]| {
        let own: Vec<&String> = defects
            .iter()
            .filter(|d| d.starts_with(&format!("{field}.")))
            .collect();
        own.iter()
            .all(|d| keeps.iter().any(|k| **d == format!("{field}.{k}")))
    };
    let text = |field: &str| body[field].as_str().map(str::to_owned);
    let user_id = if has("user_id.integer") {
        body["user_id"].to_string()
    } else {
        text("user_id").expect("a stored login's user_id")
    };
    let ip = kept("ip", &["port", "zone", "list"]).then(|| {
        let mut t = text("ip").expect("an ip").trim().to_owned();
        if has("ip.list") {
            t = t.split(',').next().unwrap().trim().to_owned();
        }
        if has("ip.port") {
            t = match t.strip_prefix('[') {
                Some(rest) => rest.split(']').next().unwrap().to_owned(),
                None => t.rsplit_once(':').unwrap().0.to_owned(),
            };
        }
        if has("ip.zone") {
            t = t.split('%').next().unwrap().to_owned();
        }
        // An IPv4 address written as IPv6 (::ffff:a.b.c.d) is that address.
        t.parse::<IpAddr>()
            .expect("the address an ip carries")
            .to_canonical()
    });
    // What is not a version keeps no text either (it may be anything).
    let version_text = kept(
        "app_version",
        &["prefix", "suffix", "fourth_part", "out_of_range"],
    )
    .then(|| text("app_version").expect("a version"));
    // A version whose text is no release's keeps its integer alone.
    let version_found = kept(
        "app_version",
        &[
            "prefix",
            "suffix",
            "fourth_part",
            "out_of_range",
            "text_withheld",
        ],
    )
    .then(|| text("app_version").expect("a version"));
    let version = version_found.as_deref().map(|t| {
        let t = t.trim().trim_start_matches(['v', 'V']);
        let numbers: String = t
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let first_three: Vec<&str> = numbers.split('.').take(3).collect();
        app_version_number(&first_three.join("."))
    });
    ExpectedRow {
        message_id: message.message_id.clone().expect("a message id"),
        user_id,
        device_type: kept("device_type", &[])
            .then(|| text("device_type"))
            .flatten(),
        masked_ip: ip.map(|ip| hmac_hex(key_hex, &ip.to_string())),
        masked_device_id: if has("device_id.integer") {
            Some(hmac_hex(key_hex, &body["device_id"].to_string()))
        } else {
            kept("device_id", &[])
                .then(|| text("device_id").map(|d| hmac_hex(key_hex, d.trim())))
                .flatten()
        },
        locale: kept("locale", &[]).then(|| text("locale")).flatten(),
        app_version: version,
        app_version_text: version_text,
        create_date: message.attributes.get("SentTimestamp").map(|ms| {
            chrono::DateTime::from_timestamp_millis(ms.parse().expect("epoch milliseconds"))
                .expect("a representable time")
                .date_naive()
        }),
        defects: (!defects.is_empty()).then_some(defects),
    }
}

/// Asserts that `user_logins` holds exactly the rows `want` (one per
/// message id), every column equal to the oracle's. The panic names the
/// columns that differ, how many rows each, and one message id: no value.
pub async fn assert_table_matches(client: &Client, want: &[ExpectedRow]) {
    let rows = client
        .query(
            "SELECT message_id, user_id, device_type, masked_ip, masked_device_id, locale, \
             app_version, app_version_text, create_date, defects FROM user_logins",
            &[],
        )
        .await
        .unwrap();
    let mut got: BTreeMap<String, ExpectedRow> = BTreeMap::new();
    for r in &rows {
        let id: String = r.get(0);
        let row = ExpectedRow {
            message_id: id.clone(),
            user_id: r.get(1),
            device_type: r.get(2),
            masked_ip: r.get(3),
            masked_device_id: r.get(4),
            locale: r.get(5),
            app_version: r.get(6),
            app_version_text: r.get(7),
            create_date: Some(r.get(8)),
            defects: r.get(9),
        };
        assert!(got.insert(id, row).is_none(), "one row per message id");
    }
    let want: BTreeMap<&str, &ExpectedRow> =
        want.iter().map(|w| (w.message_id.as_str(), w)).collect();
    let want_ids: BTreeSet<&str> = want.keys().copied().collect();
    let got_ids: BTreeSet<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(
        got_ids, want_ids,
        "the table holds exactly the stored messages"
    );
    let today = chrono::Utc::now().date_naive();
    // Column -> (rows that differ, the first message id).
    let mut differ: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for (id, w) in &want {
        let g = &got[*id];
        let date_ok = match w.create_date {
            Some(d) => g.create_date == Some(d),
            // The invocation's date (a run across midnight may see either).
            None => g
                .create_date
                .is_some_and(|d| (today - d).num_days().abs() <= 1),
        };
        for (column, equal) in [
            ("user_id", g.user_id == w.user_id),
            ("device_type", g.device_type == w.device_type),
            ("masked_ip", g.masked_ip == w.masked_ip),
            ("masked_device_id", g.masked_device_id == w.masked_device_id),
            ("locale", g.locale == w.locale),
            ("app_version", g.app_version == w.app_version),
            ("app_version_text", g.app_version_text == w.app_version_text),
            ("create_date", date_ok),
            ("defects", g.defects == w.defects),
        ] {
            if !equal {
                differ.entry(column).or_insert((0, id)).0 += 1;
            }
        }
    }
    assert!(
        differ.is_empty(),
        "columns that differ from the oracle (of {} rows): {}",
        want.len(),
        differ
            .iter()
            .map(|(c, (n, id))| format!("{c} in {n} rows (e.g. message {id})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
