//! Unit tests of `record`, kept apart so that its source stays readable.

use super::*;
use crate::app_version::VersionError;
use crate::contract::Field;
use crate::contract::policy::{Contract, UnknownFields};
use crate::contract::rejection::ExtraProblem;

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

/// Fields outside the contract: named (never their values), bounded,
/// refused with `UNKNOWN_FIELDS=reject`; declared ones kept as the JSON
/// they were, each bounded.
#[test]
fn unknown_fields_are_named_and_declared_ones_kept_as_json() {
    let body = GOOD.replacen(
        '{',
        r#"{"app_build": {"n": 7, "tag": "b"}, "email": "a@b.example", "203.0.113.7": 1, "email": 2, "#,
        1,
    );
    let ignore = parse_body(&body).unwrap();
    let names: Vec<&str> = ignore.unknown.iter().map(|n| n.as_str()).collect();
    assert_eq!(
        names,
        ["app_build", "email", "<other>"],
        "each once, an address never"
    );
    assert_eq!(ignore.extra, None, "nothing declared, nothing kept");

    let keep = Contract::new(UnknownFields::Ignore, "app_build, os_version").unwrap();
    let e = parse_body_with(&body, &keep).unwrap();
    assert_eq!(
        e.extra.as_deref(),
        Some(r#"{"app_build":{"n": 7, "tag": "b"}}"#)
    );
    let parsed: serde_json::Value = serde_json::from_str(e.extra.as_deref().unwrap()).unwrap();
    assert_eq!(parsed["app_build"]["n"], 7);
    assert!(e.unknown.iter().all(|n| n.as_str() != "app_build"));

    let reject = Contract::new(UnknownFields::Reject, "app_build").unwrap();
    let r = parse_body_with(&body, &reject).unwrap_err();
    assert_eq!(r.code(), "unknown_field.email");
    assert!(!r.to_string().contains("a@b.example"));
    // A problem with a field of the contract comes first.
    let both = body.replace(r#""ip": "199.172.111.135""#, r#""ip": "nowhere""#);
    assert_eq!(
        parse_body_with(&both, &reject).unwrap_err(),
        Rejection::InvalidIp
    );
    assert!(parse_body_with(GOOD, &reject).is_ok());

    for (value, problem) in [
        (format!("\"{}\"", "x".repeat(1100)), ExtraProblem::TooLong),
        (r#""a\u0000b""#.to_owned(), ExtraProblem::NulCharacter),
        (
            r#"{"k": ["a\u0000"]}"#.to_owned(),
            ExtraProblem::NulCharacter,
        ),
        (r#""\ud800""#.to_owned(), ExtraProblem::Invalid),
        ("1e1001".to_owned(), ExtraProblem::Invalid),
    ] {
        let b = GOOD.replacen('{', &format!(r#"{{"app_build": {value}, "#), 1);
        assert_eq!(
            parse_body_with(&b, &keep),
            Err(Rejection::Extra(
                problem,
                crate::contract::FieldName::of("app_build")
            ))
        );
    }
    // An escaped backslash before "u0000" is text, not U+0000.
    let escaped = GOOD.replacen('{', r#"{"app_build": "a\\u0000", "#, 1);
    assert!(parse_body_with(&escaped, &keep).is_ok());
    let twice = GOOD.replacen('{', r#"{"app_build": 1, "app_build": 2, "#, 1);
    assert_eq!(
        parse_body_with(&twice, &keep).unwrap_err().code(),
        "duplicate_field.app_build"
    );
    // Many distinct names: a bounded list.
    let many: String = (0..50).map(|i| format!(r#""f{i}": 0, "#)).collect();
    let b = GOOD.replacen('{', &format!("{{{many}"), 1);
    assert_eq!(
        parse_body(&b).unwrap().unknown.len(),
        super::MAX_UNKNOWN_NAMES
    );
}
