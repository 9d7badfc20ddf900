//! A dead-letter copy's masked body read back as a login: what a login
//! rebuilt from a copy that kept no original is stored as
//! (`dlq-redrive --rebuild`, `crate::privacy::dead_letter::rebuilt`).
//!
//! The copy kept each field of the contract that passed its own checks,
//! `ip` and `device_id` as their tokens, and replaced every other value by
//! what it was (`"<redacted string: 11 characters>"`). So the tokens are
//! taken as they are, a redacted value is absent (NULL, its defect
//! recorded), and the rest is parsed as any body, leniently: every
//! problem is a defect, and the row says it was rebuilt.

use serde_json::{Map, Value};

use crate::contract::Contract;
use crate::contract::Defect;
use crate::contract::Field;
use crate::contract::Rejection;
use crate::contract::Token;
use crate::contract::{LoginEvent, parse_body_with};

/// A login read back from a copy: the event (no ip or device id: the copy
/// holds their tokens only) and the tokens.
#[derive(Debug)]
pub struct FromCopy {
    /// The login, its defects including [`Defect::RebuiltFromCopy`].
    pub event: LoginEvent<'static>,
    /// The ip's token, when the copy kept one.
    pub masked_ip: Option<Token>,
    /// The device id's token, when the copy kept one.
    pub masked_device_id: Option<Token>,
}

/// Whether a copy's value is one it redacted (`"<redacted …>"`).
fn redacted(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| s.starts_with("<redacted ") && s.ends_with('>'))
}

/// Reads a copy's masked `body` as a login under `contract`, leniently.
/// Not a login (not a JSON object, no `user_id` the copy kept): the
/// rejection a body would get.
pub fn parse_copy(body: &str, contract: &Contract) -> Result<FromCopy, Rejection> {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(body) else {
        return Err(Rejection::NotAnObject);
    };
    let token = |field: Field| {
        map.get(field.name())
            .and_then(Value::as_str)
            .and_then(Token::parse)
    };
    let (masked_ip, masked_device_id) = (token(Field::Ip), token(Field::DeviceId));
    let kept: Map<String, Value> = map
        .iter()
        .filter(|(name, value)| {
            Field::named(name).is_some_and(|f| !matches!(f, Field::Ip | Field::DeviceId))
                && !redacted(value)
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let text = Value::Object(kept).to_string();
    let mut event = parse_body_with(&text, &contract.lenient())?.into_owned();
    // The tokens stand for the two fields the parse did not see.
    event.defects.retain(|d| match d {
        Defect::Missing(Field::Ip) => masked_ip.is_none(),
        Defect::Missing(Field::DeviceId) => masked_device_id.is_none(),
        _ => true,
    });
    event.defects.push(Defect::RebuiltFromCopy);
    Ok(FromCopy {
        event,
        masked_ip,
        masked_device_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: &str = "a3f1c2d4e5b6978812345678901234567890abcdef1234567890abcdef123456";
    const DEVICE: &str = "0b1c2d3e4f5061728394a5b6c7d8e9f00112233445566778899aabbccddeeff0";

    fn codes(e: &LoginEvent<'_>) -> Vec<String> {
        e.defects.iter().map(|d| d.code().into_owned()).collect()
    }

    #[test]
    fn a_copys_fields_and_tokens_come_back_and_what_it_redacted_is_null() {
        let body = format!(
            r#"{{"user_id":"u-1","app_version":"<redacted string: 11 characters>","device_type":"ios","ip":"{IP}","locale":null,"device_id":"{DEVICE}","<other>":"<redacted string: 3 characters>"}}"#
        );
        let got = parse_copy(&body, &Contract::DEFAULT).unwrap();
        assert_eq!(got.event.user_id, "u-1");
        assert_eq!(got.event.device_type.as_deref(), Some("ios"));
        assert_eq!(
            got.event.app_version_text, None,
            "a redacted value is no value"
        );
        assert_eq!(got.event.ip, None, "no address: its token only");
        assert_eq!(got.masked_ip.unwrap().as_str(), IP);
        assert_eq!(got.masked_device_id.unwrap().as_str(), DEVICE);
        let found = codes(&got.event);
        assert!(
            found.contains(&"app_version.missing".to_owned()),
            "{found:?}"
        );
        assert!(
            found.contains(&"message.rebuilt_from_copy".to_owned()),
            "{found:?}"
        );
        assert!(
            !found
                .iter()
                .any(|c| c.starts_with("ip.") || c.starts_with("device_id.")),
            "{found:?}"
        );
    }

    #[test]
    fn a_value_that_is_no_token_is_no_token_and_a_copy_without_a_user_is_no_login() {
        let got = parse_copy(
            r#"{"user_id":"u-1","ip":"<redacted string: 9 characters>","device_id":"ABC"}"#,
            &Contract::DEFAULT,
        )
        .unwrap();
        assert!(got.masked_ip.is_none() && got.masked_device_id.is_none());
        let found = codes(&got.event);
        assert!(
            found.contains(&"ip.missing".to_owned())
                && found.contains(&"device_id.missing".to_owned()),
            "{found:?}"
        );
        for body in [
            r#"{"user_id":"<redacted string: 40 characters>","ip":"x"}"#,
            "<not JSON: 12 bytes>",
            "[]",
        ] {
            assert!(parse_copy(body, &Contract::DEFAULT).is_err(), "{body}");
        }
    }

    #[test]
    fn strict_or_not_a_rebuilt_login_keeps_its_defects() {
        let strict = Contract::DEFAULT.with_mode(crate::contract::Mode::Strict);
        let got = parse_copy(r#"{"user_id":"u-1"}"#, &strict).unwrap();
        assert!(codes(&got.event).contains(&"ip.missing".to_owned()));
    }
}
