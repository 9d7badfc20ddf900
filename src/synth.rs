//! Synthetic, realistic SQS events: deterministic for a seed, shaped like the
//! traffic docs/contract.md describes, "A message" (UUID user ids, SSN-like device
//! ids, IPv4 including loopback and >= 224, some IPv6, ~30% null locales,
//! three `app_version` shapes), optionally mixed with messages that are not
//! logins (rejected) and with logins as real apps also send them (kept with
//! their defects).
//! Used by the tests, `make demo`, `examples/gen_events.rs` and benchmarks.

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage, SqsMessageAttribute};
use sha2::{Digest, Sha256};

/// Options for [`event`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Records in the batch.
    pub count: usize,
    /// Every n-th record (n >= 1) gets a body that is not a login (a
    /// reject under any contract); 0 for none.
    pub invalid_every: usize,
    /// Every n-th record (n >= 1, where it is not invalid) gets a login
    /// with a defect real apps send ([`defective_case`]): stored with it,
    /// rejected under `CONTRACT=strict`; 0 for none.
    pub defective_every: usize,
    /// Use a `.fifo` queue ARN.
    pub fifo: bool,
    /// Seed: same seed, same event.
    pub seed: u64,
    /// `SentTimestamp` of the first record (epoch ms); later ones add 1 s each.
    pub sent_timestamp_ms: i64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            count: 10,
            invalid_every: 0,
            defective_every: 0,
            fifo: false,
            seed: 1,
            // 2026-11-21T12:00:00Z
            sent_timestamp_ms: 1_795_262_400_000,
        }
    }
}

/// An SQS batch event per `options`.
pub fn event(options: &Options) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = (0..options.count).map(|i| message(options, i)).collect();
    event
}

/// Record `i` of the batch described by `options`.
pub fn message(options: &Options, i: usize) -> SqsMessage {
    let r = Rand::new(options.seed, i as u64);
    // Message-level ids from an independent stream, so they never equal body fields.
    let envelope = Rand::new(!options.seed, i as u64);
    let every = |n: usize| n > 0 && (i + 1).is_multiple_of(n);
    let (body, expect) = if every(options.invalid_every) {
        let (body, code) = invalid_case(i / options.invalid_every);
        (body.to_owned(), format!("reject:{code}"))
    } else if every(options.defective_every) {
        let (body, defects) = defective_case(i / options.defective_every, &r);
        (body, format!("insert:{defects}"))
    } else {
        (login_body(&r), "insert".to_owned())
    };
    let queue = if options.fifo {
        "login-queue.fifo"
    } else {
        "login-queue"
    };
    let sent = options.sent_timestamp_ms + (i as i64) * 1_000;
    let mut m = SqsMessage::default();
    m.message_id = Some(envelope.uuid(0));
    m.receipt_handle = Some(format!("AQEB{}", envelope.hex(16, 16)));
    m.body = Some(body);
    m.event_source = Some("aws:sqs".into());
    m.event_source_arn = Some(format!("arn:aws:sqs:us-east-1:000000000000:{queue}"));
    m.aws_region = Some("us-east-1".into());
    // What the function must do with it under the default contract, as in
    // the events/ fixtures: `insert`, `insert:<defect>,…` or `reject:<code>`.
    let mut attribute = SqsMessageAttribute::default();
    attribute.data_type = Some("String".into());
    attribute.string_value = Some(expect);
    m.message_attributes.insert("expect".into(), attribute);
    for (k, v) in [
        ("ApproximateReceiveCount", "1".to_owned()),
        ("SentTimestamp", sent.to_string()),
        ("SenderId", "AIDAIENQZJOLO23YVJ4VO".to_owned()),
        ("ApproximateFirstReceiveTimestamp", (sent + 25).to_string()),
    ] {
        m.attributes.insert(k.into(), v);
    }
    if options.fifo {
        m.attributes
            .insert("MessageGroupId".into(), "logins".into());
        m.attributes
            .insert("SequenceNumber".into(), format!("{:020}", i + 1));
        m.attributes
            .insert("MessageDeduplicationId".into(), r.hex(8, 16));
    }
    m
}

/// A valid login body, as mobile clients send it.
pub fn login_body_for(seed: u64, i: usize) -> String {
    login_body(&Rand::new(seed, i as u64))
}

fn login_body(r: &Rand) -> String {
    let b = &r.bytes;
    let ip = match b[0] % 20 {
        0 => "127.0.0.1".to_owned(),
        1 => format!("{}.{}.{}.{}", 224 + b[1] % 32, b[2], b[3], b[4]),
        2 | 3 => format!(
            "2001:db8:{:x}:{:x}::{:x}",
            b[1],
            b[2],
            u16::from_be_bytes([b[3], b[4]])
        ),
        _ => format!("{}.{}.{}.{}", 1 + b[1] % 223, b[2], b[3], b[4]),
    };
    let device_id = format!(
        "{:03}-{:02}-{:04}",
        u16::from_be_bytes([b[5], b[6]]) % 1000,
        b[7] % 100,
        u16::from_be_bytes([b[8], b[9]]) % 10_000
    );
    let locale = match b[10] % 10 {
        0..=2 => "null".to_owned(),
        n => format!(
            "\"{}\"",
            ["RU", "US", "DE", "FR", "BR", "IN", "JP"][usize::from(n - 3)]
        ),
    };
    let app_version = match b[11] % 3 {
        0 => format!("{}.{}.{}", b[12] % 5, b[13] % 12, b[14] % 10),
        1 => format!("{}.{:02}", b[12] % 3, b[13] % 100),
        _ => format!("{}.{}", b[12] % 5, b[13] % 10),
    };
    let device_type = if b[15].is_multiple_of(2) {
        "android"
    } else {
        "ios"
    };
    format!(
        r#"{{"user_id": "{}", "app_version": "{app_version}", "device_type": "{device_type}", "ip": "{ip}", "locale": {locale}, "device_id": "{device_id}"}}"#,
        r.uuid(16)
    )
}

/// The k-th body that is not a login: cycles through the kinds of bad
/// input seen upstream.
pub fn invalid_body(k: usize) -> String {
    invalid_case(k).0.to_owned()
}

/// Body `k` that is not a login (or has no usable user id: a reject under
/// any contract) and the rejection code it gets. Those with fields carry
/// an ip and a device id, which no copy, log or metric may show.
pub fn invalid_case(k: usize) -> (&'static str, &'static str) {
    const BAD: [(&str, &str); 8] = [
        (
            r#"{"foo": "oops_wrong_msg_type", "bar": "123"}"#,
            "not_a_login_event",
        ),
        ("", "empty_body"),
        ("{\"user_id\": \"trunc", "invalid_json"),
        (
            r#"{"app_version": "2.3.0", "device_type": "ios", "ip": "10.0.0.1", "locale": null, "device_id": "123-45-6789"}"#,
            "missing_field.user_id",
        ),
        (
            r#"{"user_id": ["0b5f1c1e"], "app_version": "2.3.0", "device_type": "ios", "ip": "10.0.0.1", "locale": "US", "device_id": "123-45-6789"}"#,
            "wrong_type.user_id",
        ),
        (
            r#"{"user_id": "  ", "app_version": "2.3.0", "device_type": "ios", "ip": "10.0.0.1", "locale": "US", "device_id": "123-45-6789"}"#,
            "empty_field.user_id",
        ),
        (
            r#"{"user_id": null, "app_version": "2.3.0-beta", "device_type": "ios", "ip": "10.0.0.1", "locale": null, "device_id": "123-45-6789"}"#,
            "missing_field.user_id",
        ),
        (r#"["not", "an", "object"]"#, "not_an_object"),
    ];
    BAD[k % BAD.len()]
}

/// A login with defect `k`, as real apps send them (a suffixed version, a
/// port on the ip, a web client's null device id, a numeric user id, ...),
/// and the defect codes it is stored with (comma-separated). The other
/// fields are login `r`'s.
pub fn defective_case(k: usize, r: &Rand) -> (String, &'static str) {
    const DEFECTS: [(&str, &str, &str); 10] = [
        ("app_version", r#""2.3.0-beta1""#, "app_version.suffix"),
        ("app_version", r#""2.3.0 (4512)""#, "app_version.suffix"),
        ("app_version", r#""v2.3.0""#, "app_version.prefix"),
        ("app_version", r#""2.3.0.4512""#, "app_version.fourth_part"),
        ("app_version", r#""10.0.1000""#, "app_version.out_of_range"),
        ("device_id", "null", "device_id.missing"),
        ("ip", r#""""#, "ip.empty"),
        ("ip", r#""unknown""#, "ip.unparseable"),
        ("ip", "port", "ip.port"),
        ("user_id", "number", "user_id.integer"),
    ];
    let (field, value, code) = DEFECTS[k % DEFECTS.len()];
    let mut body: serde_json::Value =
        serde_json::from_str(&login_body(r)).expect("a login body is JSON");
    body[field] = match value {
        // The login's own address with a port: the token is the address's.
        "port" => match body["ip"]
            .as_str()
            .expect("an ip")
            .parse::<std::net::IpAddr>()
        {
            Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]:443").into(),
            _ => format!("{}:443", body["ip"].as_str().expect("an ip")).into(),
        },
        "number" => u64::from_be_bytes(r.bytes[16..24].try_into().expect("8 bytes")).into(),
        json => serde_json::from_str(json).expect("a JSON value"),
    };
    (body.to_string(), code)
}

/// Deterministic bytes for record `i` under `seed`.
pub struct Rand {
    bytes: [u8; 32],
}

impl Rand {
    /// The bytes of record `i` under `seed`.
    pub fn new(seed: u64, i: u64) -> Self {
        let mut h = Sha256::new();
        h.update(seed.to_le_bytes());
        h.update(i.to_le_bytes());
        Self {
            bytes: h.finalize().into(),
        }
    }

    fn hex(&self, from: usize, len: usize) -> String {
        hex::encode(&self.bytes[from..from + len])
    }

    /// A UUID-shaped string from 16 bytes starting at `from`.
    fn uuid(&self, from: usize) -> String {
        let h = self.hex(from, 16);
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::parse_body;

    #[test]
    fn deterministic_and_valid_unless_asked() {
        let o = Options {
            count: 500,
            ..Options::default()
        };
        let a = event(&o);
        assert_eq!(a.records.len(), 500);
        assert_eq!(a.records[7].body, event(&o).records[7].body);
        for m in &a.records {
            let body = m.body.as_deref().unwrap();
            assert!(parse_body(body).is_ok(), "{body}");
        }
        let ids: std::collections::HashSet<_> =
            a.records.iter().map(|m| m.message_id.clone()).collect();
        assert_eq!(ids.len(), 500);
        let nulls = a
            .records
            .iter()
            .filter(|m| m.body.as_deref().unwrap().contains("\"locale\": null"))
            .count();
        assert!(
            (100..=200).contains(&nulls),
            "about 30% null locales, got {nulls}"
        );
    }

    #[test]
    fn invalid_every_n_th_record() {
        let o = Options {
            count: 40,
            invalid_every: 4,
            ..Options::default()
        };
        let bad = event(&o)
            .records
            .iter()
            .filter(|m| parse_body(m.body.as_deref().unwrap()).is_err())
            .count();
        assert_eq!(bad, 10);
    }

    #[test]
    fn invalid_cases_get_their_codes_and_expectations() {
        use crate::contract::{Contract, parse_body_with};
        for k in 0..8 {
            let (body, code) = invalid_case(k);
            assert_eq!(parse_body(body).unwrap_err().code(), code, "case {k}");
            let strict = parse_body_with(body, &Contract::STRICT).unwrap_err();
            assert_eq!(
                strict.code(),
                code,
                "a reject under either contract: case {k}"
            );
        }
        for k in 0..10 {
            let (body, codes) = defective_case(k, &Rand::new(3, k as u64));
            let e = parse_body(&body).unwrap_or_else(|r| panic!("case {k}: {r}"));
            let got: Vec<_> = e.defects.iter().map(|d| d.code()).collect();
            assert_eq!(got.join(","), codes, "case {k}");
            assert!(
                parse_body_with(&body, &Contract::STRICT).is_err(),
                "case {k}"
            );
        }
        let o = Options {
            count: 30,
            invalid_every: 2,
            defective_every: 3,
            ..Options::default()
        };
        for m in event(&o).records {
            let expect = m.message_attributes["expect"].string_value.clone().unwrap();
            match parse_body(m.body.as_deref().unwrap()) {
                Ok(e) if e.defects.is_empty() => assert_eq!(expect, "insert"),
                Ok(e) => {
                    let codes: Vec<_> = e.defects.iter().map(|d| d.code()).collect();
                    assert_eq!(expect, format!("insert:{}", codes.join(",")));
                }
                Err(r) => assert_eq!(expect, format!("reject:{}", r.code())),
            }
        }
    }
}
