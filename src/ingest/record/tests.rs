//! Unit tests of `record`, kept apart so that its source stays readable.

use super::*;

#[test]
fn debug_output_of_a_parsed_event_shows_no_value() {
    let login = parse_body(
        r#"{"user_id":"u-1234","app_version":"2.3.0","device_type":"android","ip":"199.172.111.135","locale":"RU","device_id":"593-47-5928"}"#,
    )
    .unwrap();
    let shown = format!("{login:?} {:?}", Slot::Text("593-47-5928".into()));
    for value in ["199.172.111.135", "593-47-5928", "u-1234"] {
        assert!(!shown.contains(value), "{shown}");
    }
}

const GOOD: &str = r#"{"user_id": "424cdd21-063a-43a7-b91b-7ca1a833afae", "app_version": "2.3.0", "device_type": "android", "ip": "199.172.111.135", "locale": "RU", "device_id": "593-47-5928"}"#;

fn with(field: &str, value: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
    let obj = v.as_object_mut().unwrap();
    if value == "<absent>" {
        obj.remove(field);
    } else {
        obj.insert(field.into(), serde_json::from_str(value).unwrap());
    }
    v.to_string()
}

#[test]
fn accepts_the_upstream_sample() {
    let e = parse_body(GOOD).unwrap();
    assert_eq!(e.user_id, "424cdd21-063a-43a7-b91b-7ca1a833afae");
    assert_eq!(e.device_type, "android");
    assert_eq!(e.ip, "199.172.111.135".parse::<IpAddr>().unwrap());
    assert_eq!(e.device_id, "593-47-5928");
    assert_eq!(e.locale.as_deref(), Some("RU"));
    assert_eq!((e.app_version, &*e.app_version_text), (2_003_000, "2.3.0"));
    assert!(
        matches!(e.user_id, Cow::Borrowed(_)),
        "unescaped strings are borrowed"
    );
}

#[test]
fn null_or_absent_locale_is_none_and_unknown_fields_are_ignored() {
    assert_eq!(parse_body(&with("locale", "null")).unwrap().locale, None);
    assert_eq!(
        parse_body(&with("locale", "<absent>")).unwrap().locale,
        None
    );
    assert!(parse_body(&with("extra", r#"{"nested": [1, 2, {"x": null}]}"#)).is_ok());
}

#[test]
fn accepts_ipv6_loopback_and_high_first_octets() {
    for ip in [
        r#""::1""#,
        r#""2001:db8::ff00:42:8329""#,
        r#""127.0.0.1""#,
        r#""240.1.2.3""#,
        r#"" 10.0.0.1 ""#,
    ] {
        assert!(parse_body(&with("ip", ip)).is_ok(), "{ip}");
    }
}

#[test]
fn rejects_each_problem_with_its_own_reason() {
    use Rejection::*;
    let cases: Vec<(String, Rejection)> = vec![
        (String::new(), EmptyBody),
        ("  \n".into(), EmptyBody),
        ("{not json".into(), InvalidJson),
        (r#"{"ip": "\ud800"}"#.into(), InvalidJson),
        ("[1,2]".into(), NotAnObject),
        ("\"a string\"".into(), NotAnObject),
        ("null".into(), NotAnObject),
        (
            r#"{"foo": "oops_wrong_msg_type", "bar": "123"}"#.into(),
            NotALoginEvent,
        ),
        (with("user_id", "<absent>"), MissingField(Field::UserId)),
        (with("device_id", "null"), MissingField(Field::DeviceId)),
        (with("ip", "12"), WrongType(Field::Ip)),
        (with("app_version", "2.3"), WrongType(Field::AppVersion)),
        (
            with("device_type", "[\"ios\"]"),
            WrongType(Field::DeviceType),
        ),
        (with("locale", "{}"), WrongType(Field::Locale)),
        (with("user_id", "\"   \""), EmptyField(Field::UserId)),
        (with("device_id", "\"\""), EmptyField(Field::DeviceId)),
        (
            with("user_id", &format!("\"{}\"", "u".repeat(129))),
            TooLong(Field::UserId),
        ),
        (
            with("locale", &format!("\"{}\"", "é".repeat(33))),
            TooLong(Field::Locale),
        ),
        (
            with("device_id", "\"593-47\\u00005928\""),
            NulCharacter(Field::DeviceId),
        ),
        (with("ip", "\"999.1.1.1\""), InvalidIp),
        (with("ip", "\"fe80::1%eth0\""), InvalidIp),
        (
            with("app_version", "\"2.3.x\""),
            InvalidAppVersion(VersionError::Shape),
        ),
        (
            with("app_version", "\"2.1000\""),
            InvalidAppVersion(VersionError::OutOfRange),
        ),
        (
            GOOD.replace(
                "\"ip\": \"199.172.111.135\"",
                "\"ip\": \"1.1.1.1\", \"ip\": \"2.2.2.2\"",
            ),
            DuplicateField(Field::Ip),
        ),
    ];
    for (body, want) in cases {
        assert_eq!(parse_body(&body).unwrap_err(), want, "body: {body}");
    }
}

#[test]
fn length_limits_count_characters_not_bytes() {
    let id = "é".repeat(128); // 256 bytes, 128 characters
    assert!(parse_body(&with("user_id", &format!("\"{id}\""))).is_ok());
}

#[test]
fn reasons_never_contain_the_value() {
    let ip = "203.0.113.77";
    let bodies = [
        with("ip", &format!("\"{ip}x\"")),
        with("device_id", &format!("[\"{ip}\"]")),
        with("app_version", &format!("\"{ip}\"")),
    ];
    for body in bodies {
        let r = parse_body(&body).unwrap_err();
        assert!(
            !r.to_string().contains("203.0") && !r.code().contains("203.0"),
            "{r}"
        );
    }
}

#[test]
fn sent_timestamp_gives_the_utc_date() {
    let at = |t: Option<&str>| SqsRecord {
        attributes: Some(crate::ingest::event::RecordAttributes {
            sent_timestamp: t.map(str::to_owned),
            ..Default::default()
        }),
        ..SqsRecord::default()
    };
    assert_eq!(sent_date(&SqsRecord::default()), None);
    assert_eq!(sent_date(&at(None)), None);
    // 2023-11-14T23:59:59.999Z
    assert_eq!(
        sent_date(&at(Some("1700006399999"))),
        NaiveDate::from_ymd_opt(2023, 11, 14)
    );
    assert_eq!(
        sent_date(&at(Some("1700006400000"))),
        NaiveDate::from_ymd_opt(2023, 11, 15)
    );
    assert_eq!(sent_date(&at(Some("yesterday"))), None);
    // Past what PostgreSQL's timestamptz holds: no date, not a wrong one.
    assert_eq!(sent_date(&at(Some("9223372036854775807"))), None);
}

#[test]
fn a_sent_timestamp_outside_postgresqls_range_is_its_own_rejection() {
    let at = |t: &str| SqsRecord {
        attributes: Some(crate::ingest::event::RecordAttributes {
            sent_timestamp: Some(t.to_owned()),
            ..Default::default()
        }),
        ..SqsRecord::default()
    };
    // Chrono's year -4713 (4714 BC), a month before PostgreSQL's first day:
    // accepted once, then refused by the server (22008) on every receive.
    for outside in [
        "-210869395200000",
        "-210866803200001",
        "9224318016000000",
        "9223372036854775807",
    ] {
        assert_eq!(
            checked_sent_at(&at(outside)),
            Err(Rejection::SentTimestampOutOfRange),
            "{outside}"
        );
    }
    assert_eq!(
        Rejection::SentTimestampOutOfRange.code(),
        "sent_timestamp_out_of_range"
    );
    // (chrono's dates end in 262143 AD, before PostgreSQL's: what it cannot
    // hold is out of range too.)
    for inside in ["-210866803200000", "253402300799999", "0"] {
        assert!(checked_sent_at(&at(inside)).is_ok(), "{inside}");
    }
    assert_eq!(
        checked_sent_at(&at("soon")),
        Err(Rejection::NoSentTimestamp)
    );
}

#[test]
fn a_redriven_copy_keeps_the_originals_key_and_day_and_no_timestamp_is_a_rejection() {
    let masker = Masker::new(
        &crate::privacy::masking::MaskingKey::from_hex(&"ab".repeat(32), "test").unwrap(),
    );
    let body = r#"{"user_id":"u","app_version":"1.1","device_type":"ios","ip":"10.0.0.1","locale":null,"device_id":"123-45-6789"}"#;
    let original = SqsRecord {
        body: Some(body.into()),
        attributes: Some(crate::ingest::event::RecordAttributes {
            sent_timestamp: Some("1700006399999".into()),
            ..Default::default()
        }),
        ..SqsRecord::default()
    };
    let row = transform("m-original", &original, &masker).unwrap();
    // The copy the function sent to the DLQ, redriven: a new id, a new
    // SentTimestamp (a day later), the original's in its attributes.
    let mut copy = original.clone();
    copy.attributes.as_mut().unwrap().sent_timestamp = Some("1700092800000".into());
    copy.message_attributes = Some(crate::ingest::event::SourceAttributes {
        source_message_id: Some("m-original".into()),
        source_sent_timestamp: Some("1700006399999".into()),
    });
    let again = transform("m-redriven", &copy, &masker).unwrap();
    assert_eq!(
        (again.message_id, again.sent_at, again.create_date),
        (row.message_id, row.sent_at, row.create_date)
    );
    assert_eq!(
        row.create_date,
        NaiveDate::from_ymd_opt(2023, 11, 14).unwrap()
    );
    // A copy from before source_sent_timestamp existed: its own time.
    copy.message_attributes
        .as_mut()
        .unwrap()
        .source_sent_timestamp = None;
    let legacy = transform("m-redriven", &copy, &masker).unwrap();
    assert_eq!(legacy.message_id, "m-original");
    assert_eq!(
        legacy.create_date,
        NaiveDate::from_ymd_opt(2023, 11, 16).unwrap()
    );
    let mut unsent = original.clone();
    unsent.attributes = None;
    let e = transform("m", &unsent, &masker).unwrap_err();
    assert_eq!(e, Rejection::NoSentTimestamp);
    assert_eq!(e.code(), "no_sent_timestamp");
}
