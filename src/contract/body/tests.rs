//! Unit tests of `record`, kept apart so that its source stays readable.

use super::*;
use crate::app_version::VersionError;
use crate::contract::Defect;
use crate::contract::ExtraProblem;
use crate::contract::Field;
use crate::contract::{Contract, UnknownFields};

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
    assert_eq!(e.device_type.as_deref(), Some("android"));
    assert_eq!(e.ip, Some("199.172.111.135".parse::<IpAddr>().unwrap()));
    assert_eq!(e.device_id.as_deref(), Some("593-47-5928"));
    assert_eq!(e.locale.as_deref(), Some("RU"));
    assert_eq!(
        (e.app_version, e.app_version_text.as_deref()),
        (Some(2_003_000), Some("2.3.0"))
    );
    assert!(e.defects.is_empty());
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
        let body = with("ip", ip);
        let e = parse_body_with(&body, &Contract::STRICT).unwrap();
        assert!(e.ip.is_some() && e.defects.is_empty(), "{ip}");
    }
}

/// Under `CONTRACT=strict`, every problem is a rejection with its own
/// reason, as before defects.
#[test]
fn strict_rejects_each_problem_with_its_own_reason() {
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
        assert_eq!(
            parse_body_with(&body, &Contract::STRICT).unwrap_err(),
            want,
            "body: {body}"
        );
    }
}

fn strings(codes: &[&str]) -> Vec<String> {
    codes.iter().map(|c| c.to_string()).collect()
}

/// A login is kept whenever it is one: what real apps send is stored with
/// its defects named; only what is not a login (or has no usable user id)
/// is rejected.
#[test]
fn a_login_is_kept_with_its_defects() {
    fn kept(body: &str) -> LoginEvent<'_> {
        parse_body(body).unwrap_or_else(|r| panic!("{body}: {r}"))
    }
    let codes = |e: &LoginEvent<'_>| {
        e.defects
            .iter()
            .map(|d| d.code().into_owned())
            .collect::<Vec<String>>()
    };
    for (version, value, want) in [
        ("2.3.0-beta1", Some(2_003_000), vec!["app_version.suffix"]),
        ("2.3.0 (4512)", Some(2_003_000), vec!["app_version.suffix"]),
        ("v2.3.0", Some(2_003_000), vec!["app_version.prefix"]),
        (
            "2.3.0.4512",
            Some(2_003_000),
            vec!["app_version.fourth_part"],
        ),
        (
            "10.0.1000",
            Some(10_000_999),
            vec!["app_version.out_of_range"],
        ),
        (
            "5.2.1203",
            Some(5_002_999),
            vec!["app_version.out_of_range"],
        ),
        ("2025.1.0", Some(2_025_001_000), vec![]),
        ("latest", None, vec!["app_version.unparsed"]),
        ("203.0.113.77", None, vec!["app_version.unparsed"]),
        ("alice@example.com", None, vec!["app_version.unparsed"]),
        ("593-47-5928", None, vec!["app_version.unparsed"]),
    ] {
        let b = with("app_version", &format!("\"{version}\""));
        let e = kept(&b);
        assert_eq!(
            (e.app_version, codes(&e)),
            (value, strings(&want)),
            "{version}"
        );
        // The text as sent, where it is a version; none where it is not.
        assert_eq!(
            e.app_version_text.as_deref(),
            value.map(|_| version),
            "{version}"
        );
    }
    let b = with("device_id", "null");
    let e = kept(&b);
    assert_eq!(
        (&e.device_id, codes(&e)),
        (&None, strings(&["device_id.missing"]))
    );
    let b = with("device_id", "<absent>");
    let e = kept(&b);
    assert_eq!(codes(&e), ["device_id.missing"]);
    for (ip, want, code) in [
        ("10.0.0.1:443", Some("10.0.0.1"), "ip.port"),
        ("[2001:db8::1]:443", Some("2001:db8::1"), "ip.port"),
        ("fe80::1%eth0", Some("fe80::1"), "ip.zone"),
        ("203.0.113.7, 10.0.0.1", Some("203.0.113.7"), "ip.list"),
        ("", None, "ip.empty"),
        ("unknown", None, "ip.unparseable"),
    ] {
        let b = with("ip", &format!("\"{ip}\""));
        let e = kept(&b);
        let want = want.map(|w| w.parse::<IpAddr>().unwrap());
        assert_eq!((e.ip, codes(&e)), (want, strings(&[code])), "{ip}");
    }
    let b = with("ip", "<absent>");
    let e = kept(&b);
    assert_eq!((e.ip, codes(&e)), (None, strings(&["ip.missing"])));
    // An IPv4 address written as IPv6 is that address, clean.
    let b = with("ip", "\"::ffff:203.0.113.7\"");
    let e = kept(&b);
    assert_eq!((e.ip, codes(&e)), ("203.0.113.7".parse().ok(), vec![]));
    // A numeric device id: its decimal text, tokenized as any other.
    for (number, text) in [("8412337651", "8412337651"), ("-7", "-7")] {
        let b = with("device_id", number);
        let e = kept(&b);
        assert_eq!(
            (e.device_id.as_deref(), codes(&e)),
            (Some(text), strings(&["device_id.integer"]))
        );
    }
    let b = with("user_id", "12345");
    let e = kept(&b);
    assert_eq!(
        (&*e.user_id, codes(&e)),
        ("12345", strings(&["user_id.integer"]))
    );
    let b = with("device_type", "7");
    let e = kept(&b);
    assert_eq!(
        (&e.device_type, codes(&e)),
        (&None, strings(&["device_type.wrong_type"]))
    );
    let b = with("locale", "{}");
    let e = kept(&b);
    assert_eq!(
        (&e.locale, codes(&e)),
        (&None, strings(&["locale.wrong_type"]))
    );
    let twice = GOOD.replace(
        "\"ip\": \"199.172.111.135\"",
        "\"ip\": \"1.1.1.1\", \"ip\": \"2.2.2.2\"",
    );
    let e = kept(&twice);
    assert_eq!((e.ip, codes(&e)), (None, strings(&["ip.duplicate"])));

    use Rejection::*;
    for (body, want) in [
        ("{not json".to_owned(), InvalidJson),
        (r#"{"foo": 1}"#.to_owned(), NotALoginEvent),
        (with("user_id", "<absent>"), MissingField(Field::UserId)),
        (with("user_id", "null"), MissingField(Field::UserId)),
        (with("user_id", "\"  \""), EmptyField(Field::UserId)),
        (with("user_id", "1.5"), WrongType(Field::UserId)),
        (with("user_id", "[\"u\"]"), WrongType(Field::UserId)),
        (
            GOOD.replace("\"user_id\": ", "\"user_id\": \"a\", \"user_id\": "),
            DuplicateField(Field::UserId),
        ),
    ] {
        assert_eq!(parse_body(&body).unwrap_err(), want, "{body}");
    }
}

/// Strict and lenient agree: lenient rejects only what strict rejects, a
/// clean login is the same under both, and a kept login's first defect is
/// the reason strict gives it.
#[test]
fn strict_is_lenient_with_each_defect_a_rejection() {
    use proptest::prelude::*;
    use proptest::prop_oneof;
    let value = prop_oneof![
        Just("<absent>".to_owned()),
        Just("null".to_owned()),
        Just("12".to_owned()),
        Just("[]".to_owned()),
        Just("\"\"".to_owned()),
        Just("\"  \"".to_owned()),
        Just("\"a\\u0000b\"".to_owned()),
        Just(format!("\"{}\"", "x".repeat(300))),
        "[ -~]{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        prop_oneof![
            Just("1.2.3"),
            Just("v1.2"),
            Just("1.2.3-rc1"),
            Just("1.2.3.4"),
            Just("1000.1"),
            Just("10.0.0.1"),
            Just("10.0.0.1:80"),
            Just("[::1]:80"),
            Just("fe80::1%lo"),
            Just("::1"),
        ]
        .prop_map(|s| format!("\"{s}\"")),
    ];
    proptest!(|(values in proptest::collection::vec(value, 6))| {
        let mut body = serde_json::Map::new();
        for (field, v) in FIELDS.iter().zip(&values) {
            if v != "<absent>" {
                body.insert(field.name().into(), serde_json::from_str(v).unwrap());
            }
        }
        let body = serde_json::Value::Object(body).to_string();
        let lenient = parse_body(&body);
        let strict = parse_body_with(&body, &Contract::STRICT);
        match (&lenient, &strict) {
            (Err(l), Err(s)) => prop_assert_eq!(l, s, "{}", body),
            (Err(l), Ok(_)) => prop_assert!(false, "lenient rejects ({}) what strict takes: {}", l, body),
            (Ok(l), Ok(s)) => prop_assert!(l.defects.is_empty() && l == s, "{}", body),
            (Ok(l), Err(s)) => {
                prop_assert!(!l.defects.is_empty(), "{}", body);
                prop_assert_eq!(&l.defects[0].rejection(), s, "{}", body);
            }
        }
    });
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
        let r = parse_body_with(&body, &Contract::STRICT).unwrap_err();
        assert!(
            !r.to_string().contains("203.0") && !r.code().contains("203.0"),
            "{r}"
        );
        let e = parse_body(&body).unwrap();
        let shown = format!("{e:?} {:?}", e.defects);
        let codes: Vec<_> = e.defects.iter().map(|d| d.code()).collect();
        assert!(
            !shown.contains("203.0") && !codes.concat().contains("203.0"),
            "{shown}"
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
    assert_eq!(e.extra, None, "a nested document is not kept");
    assert_eq!(
        e.defects,
        [Defect::Extra(
            ExtraProblem::NotScalar,
            crate::contract::FieldName::of("app_build")
        )]
    );
    assert!(e.unknown.iter().all(|n| n.as_str() != "app_build"));
    let scalar = body.replace(r#"{"n": 7, "tag": "b"}"#, r#""7.1 (b)""#);
    let e = parse_body_with(&scalar, &keep).unwrap();
    assert_eq!(e.extra.as_deref(), Some(r#"{"app_build":"7.1 (b)"}"#));
    let parsed: serde_json::Value = serde_json::from_str(e.extra.as_deref().unwrap()).unwrap();
    assert_eq!(parsed["app_build"], "7.1 (b)");
    let keep = keep.with_mode(crate::contract::Mode::Strict);

    let reject = Contract::new(UnknownFields::Reject, "app_build").unwrap();
    let r = parse_body_with(&body, &reject).unwrap_err();
    assert_eq!(r.code(), "unknown_field");
    assert!(!r.to_string().contains("a@b.example"));
    // Under strict, a problem with a field of the contract comes first;
    // kept, it is a defect, and the unknown field is the reason.
    let both = body.replace(r#""ip": "199.172.111.135""#, r#""ip": "nowhere""#);
    assert_eq!(
        parse_body_with(
            &both,
            &reject.clone().with_mode(crate::contract::Mode::Strict)
        )
        .unwrap_err(),
        Rejection::InvalidIp
    );
    assert_eq!(
        parse_body_with(&both, &reject).unwrap_err().code(),
        "unknown_field"
    );
    assert!(parse_body_with(GOOD, &reject).is_ok());

    for (value, problem) in [
        (format!("\"{}\"", "x".repeat(1100)), ExtraProblem::TooLong),
        (r#""a\u0000b""#.to_owned(), ExtraProblem::NulCharacter),
        (r#"{"k": ["a"]}"#.to_owned(), ExtraProblem::NotScalar),
        ("[1]".to_owned(), ExtraProblem::NotScalar),
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
