//! The body of a dead-letter copy: what an operator reading the queue sees
//! of a rejected message, without its ip or device id.
//!
//! A JSON object keeps the contract's top-level field names; any other
//! name shows as `<undeclared N>` (a name may be anything: an address, an
//! email, `alice_at_example_com`; the sealed original keeps it); `ip` and
//! `device_id` become their tokens (the table's, so a copy can be matched
//! with rows and with other copies) when they are valid, the other fields
//! of the contract keep their values when they pass their own checks,
//! `null` and booleans stay; every other value is replaced by what it was
//! (`"<redacted string: 12 characters>"`), since it may hold anything. A
//! body that is not a JSON object is replaced by what it was (`<not JSON:
//! 120 bytes>`). The original, byte for byte, is sealed beside it
//! ([`crate::privacy::dead_letter`]).

use serde_json::{Map, Value};

use crate::contract::Field;
use crate::privacy::masking::Masker;

/// Top-level fields shown; the rest are counted.
const MAX_FIELDS: usize = 64;

/// The masked body of a copy of `body` (see the module documentation).
pub fn masked_body(body: &str, masker: &Masker) -> String {
    if body.trim().is_empty() {
        return format!("<empty body: {} bytes>", body.len());
    }
    let map = match serde_json::from_str::<Value>(body) {
        Ok(Value::Object(map)) => map,
        Ok(other) => {
            return format!(
                "<JSON {}, not an object: {} bytes>",
                kind(&other),
                body.len()
            );
        }
        Err(_) => return format!("<not JSON: {} bytes>", body.len()),
    };
    let total = map.len();
    let mut out = Map::new();
    let mut undeclared = 0;
    for (name, value) in map.into_iter().take(MAX_FIELDS) {
        let value = masked_value(&name, value, masker);
        // A name outside the contract may be anything (an address, an
        // email): numbered, never shown; the sealed original keeps it.
        let shown = match Field::named(&name) {
            Some(f) => f.name().to_owned(),
            None => {
                undeclared += 1;
                format!("<undeclared {undeclared}>")
            }
        };
        out.entry(shown).or_insert(value);
    }
    if total > MAX_FIELDS {
        out.insert(
            "<more fields>".into(),
            Value::String(format!("{} not shown", total - MAX_FIELDS)),
        );
    }
    Value::Object(out).to_string()
}

fn masked_value(name: &str, value: Value, masker: &Masker) -> Value {
    let Value::String(s) = value else {
        return match value {
            v @ (Value::Null | Value::Bool(_)) => v,
            // A device id sent as a JSON integer: the row's token, of its
            // decimal text.
            Value::Number(n) if name == Field::DeviceId.name() && (n.is_i64() || n.is_u64()) => {
                Value::String(masker.device_id(&n.to_string()).to_string())
            }
            other => redacted(&other),
        };
    };
    let Some(field) = Field::named(name) else {
        return redacted(&Value::String(s));
    };
    // A value shown (or tokenized) only when it passes its own checks:
    // one that failed may be anything (an address sent as a user id).
    let fits = !s.contains('\0') && s.chars().count() <= field.max_chars();
    let blank = s.trim().is_empty();
    match field {
        // The address's token, as the row's (a port or zone set aside).
        Field::Ip => match crate::contract::address::parse(&s) {
            Some((ip, _)) if fits => Value::String(masker.ip(&ip).to_string()),
            _ => redacted(&Value::String(s)),
        },
        Field::DeviceId if fits && !blank => Value::String(masker.device_id(&s).to_string()),
        Field::AppVersion if crate::app_version::encode(&s).is_err() => redacted(&Value::String(s)),
        Field::Locale if fits => Value::String(s),
        Field::UserId | Field::DeviceType | Field::AppVersion if fits && !blank => Value::String(s),
        _ => redacted(&Value::String(s)),
    }
}

fn redacted(value: &Value) -> Value {
    Value::String(match value {
        Value::String(s) => format!("<redacted string: {} characters>", s.chars().count()),
        Value::Array(a) => format!("<redacted array: {} items>", a.len()),
        Value::Object(o) => format!("<redacted object: {} fields>", o.len()),
        other => format!("<redacted {}>", kind(other)),
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privacy::masking::MaskingKey;

    fn masker() -> Masker {
        Masker::new(&MaskingKey::from_hex(&"ab".repeat(32), "test").unwrap())
    }

    #[test]
    fn the_ip_and_device_id_become_tokens_and_unknown_values_what_they_were() {
        let m = masker();
        let body = r#"{"user_id":"u-1","app_version":"2.3.0","device_type":"ios","ip":" 10.0.0.1","locale":null,"device_id":"593-47-5928","email":"a@b.example","phone":4155550100,"nested":{"ip":"10.9.9.9"},"ok":true,"10.8.8.8":1}"#;
        let out = masked_body(body, &m);
        for secret in [
            "10.0.0.1",
            "593-47-5928",
            "a@b.example",
            "4155550100",
            "10.9.9.9",
        ] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["ip"], m.ip(&"10.0.0.1".parse().unwrap()).to_string());
        assert_eq!(v["device_id"], m.device_id("593-47-5928").to_string());
        assert_eq!(v["user_id"], "u-1");
        assert_eq!(v["app_version"], "2.3.0");
        assert_eq!(v["locale"], Value::Null);
        // The names outside the contract are numbered, never shown.
        let mut undeclared: Vec<String> = v
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with("<undeclared "))
            .map(|(_, v)| v.to_string())
            .collect();
        undeclared.sort();
        assert_eq!(
            undeclared,
            [
                "\"<redacted number>\"",
                "\"<redacted number>\"",
                "\"<redacted object: 1 fields>\"",
                "\"<redacted string: 11 characters>\"",
                "true",
            ]
        );
        for name in ["email", "phone", "nested", "10.8.8.8"] {
            assert!(!out.contains(name), "{name} in {out}");
        }
        // A field of the contract that fails its own check is not shown.
        let out = masked_body(
            r#"{"app_version":"203.0.113.7","device_id":"a\u0000b"}"#,
            &m,
        );
        assert!(
            !out.contains("203.0.113.7") && !out.contains(&m.device_id("a\0b").to_string()),
            "{out}"
        );
    }

    #[test]
    fn what_is_not_a_login_shape_says_what_it_was_and_nothing_of_it() {
        let m = masker();
        // An ip that does not parse, or of another type; a user id too long
        // for its column (it could be anything).
        let out = masked_body(
            &format!(
                r#"{{"ip":"10.0.0.1/24","device_id":7.5,"user_id":"{}"}}"#,
                "x".repeat(129)
            ),
            &m,
        );
        assert!(!out.contains("10.0.0") && !out.contains("xxx"), "{out}");
        assert!(out.contains("<redacted string: 11 characters>"), "{out}");
        assert!(out.contains("<redacted number>"), "{out}");
        // A forwarded-for list and an integer device id: the row's tokens
        // (the first address's; the decimal text's).
        let out = masked_body(r#"{"ip":"10.0.0.1, 10.0.0.2","device_id":7}"#, &m);
        let ip = m.ip(&"10.0.0.1".parse().unwrap()).to_string();
        assert!(
            out.contains(&ip) && out.contains(&m.device_id("7").to_string()),
            "{out}"
        );
        assert!(!out.contains("10.0.0"), "{out}");
        assert_eq!(masked_body("", &m), "<empty body: 0 bytes>");
        assert_eq!(masked_body("10.0.0.1 not json", &m), "<not JSON: 17 bytes>");
        assert_eq!(
            masked_body(r#"["10.0.0.1"]"#, &m),
            "<JSON array, not an object: 12 bytes>"
        );
        // Many fields, a long name: bounded.
        let many: Map<String, Value> = (0..200)
            .map(|i| (format!("f{i}"), Value::String("10.0.0.1".into())))
            .chain([("0".repeat(300), Value::Null)])
            .collect();
        let out = masked_body(&Value::Object(many).to_string(), &m);
        assert!(out.len() < 4096 && !out.contains("10.0.0.1"), "{out}");
        assert!(out.contains("\"<more fields>\":\"137 not shown\""), "{out}");
        assert!(!out.contains(&"0".repeat(300)), "{out}");
    }
}
