//! Unit tests of `event`, kept apart so that its source stays readable.

use super::*;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/events/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn reads_the_four_fields_and_agrees_with_sqs_event() {
    for name in ["sqs-valid.json", "sqs-mixed.json", "sqs-fifo.json"] {
        let text = fixture(name);
        let lean: SqsBatch = serde_json::from_str(&text).unwrap();
        let full: SqsEvent = serde_json::from_str(&text).unwrap();
        let converted = SqsBatch::from(&full);
        assert_eq!(lean.len(), full.records.len());
        for (a, b) in lean.records().zip(converted.records()) {
            assert_eq!(a.message_id, b.message_id);
            assert_eq!(a.body, b.body);
            assert_eq!(a.sent_timestamp(), b.sent_timestamp());
            assert_eq!(a.event_source_arn, b.event_source_arn);
            assert_eq!(a.receipt_handle, b.receipt_handle);
        }
    }
}

#[test]
fn debug_output_shows_no_body() {
    let text = fixture("sqs-mixed.json");
    let batch: SqsBatch = serde_json::from_str(&text).unwrap();
    let shown = format!("{batch:?} {:#?}", batch.record(0));
    assert!(shown.contains("body_bytes") && shown.contains("message_id"));
    for r in batch.records() {
        let body = r.body.as_deref().unwrap_or_default();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
            for field in ["ip", "device_id", "user_id"] {
                if let Some(value) = v
                    .get(field)
                    .and_then(|x| x.as_str())
                    .filter(|x| x.len() > 3)
                {
                    assert!(!shown.contains(value), "{field} in Debug output");
                }
            }
        }
    }
}

#[test]
fn null_or_missing_fields_are_none_and_a_malformed_message_quotes_nothing() {
    let b: SqsBatch = serde_json::from_str(
        r#"{"Records":[{"messageId":"m","body":null,"attributes":null,"x":{"y":[1,2]}},{}]}"#,
    )
    .unwrap();
    assert_eq!(b.record(0).message_id.as_deref(), Some("m"));
    assert_eq!(
        (b.record(0).body.as_deref(), b.record(0).sent_timestamp()),
        (None, None)
    );
    assert!(b.record(1).message_id.is_none());
    assert!(b.get(0).is_some() && b.get(1).is_some());
    // A message of the wrong shape: the batch reads, the message does not.
    let b: SqsBatch = serde_json::from_str(
        r#"{"Records":[{"messageId":"m"},{"messageId":"n","body":{"ip":"10.1.2.3"}}]}"#,
    )
    .unwrap();
    assert!(b.get(0).is_some() && b.get(1).is_none());
    assert!(
        !b.unreadable_at(1),
        "malformed, not unreadable: the array goes on"
    );
    assert!(b.record(1).message_id.is_none());
    let b = payload(r#"{"Records":[7,null,"x",{"messageId":"m"}]}"#);
    assert_eq!(b.len(), 4);
    assert!((0..3).all(|i| b.get(i).is_none() && !b.unreadable_at(i)));
    assert_eq!(b.record(3).message_id.as_deref(), Some("m"));
    let shown = format!("{b:?}");
    assert!(!shown.contains("10.1.2.3"), "{shown}");
    // Not an SQS event at all: a fixed message, nothing of the payload.
    let err = serde_json::from_str::<SqsBatch>(r#"{"Records":{"ip":"10.1.2.3"}}"#)
        .unwrap_err()
        .to_string();
    assert!(
        !err.contains("10.1.2.3") && err.contains("not an SQS batch event"),
        "{err}"
    );
}

/// How many messages of a payload batch are read so far.
fn read_so_far(b: &SqsBatch) -> usize {
    match &b.source {
        Source::Payload(p) => p.read_so_far(),
        Source::Records(r) => r.len(),
    }
}

fn payload(text: &str) -> SqsBatch {
    SqsBatch::from_payload(Bytes::from(text.to_owned())).unwrap()
}

#[test]
fn each_message_is_read_when_first_reached() {
    let text = fixture("sqs-valid.json");
    let b = payload(&text);
    assert_eq!(read_so_far(&b), 0, "nothing is read before it is asked for");
    assert!(b.record(2).message_id.is_some());
    assert_eq!(
        read_so_far(&b),
        3,
        "the messages before it are read on the way"
    );
    let n = b.len();
    assert_eq!(read_so_far(&b), n);
    assert_eq!(b.records().count(), n);
    let copy = b.clone();
    assert_eq!(copy.record(2).message_id, b.record(2).message_id);
    let full: SqsEvent = serde_json::from_str(&text).unwrap();
    assert_eq!(n, full.records.len());
    // The size hint reads one message and is near the count for messages alike.
    let fresh = payload(&text);
    let hint = fresh.size_hint();
    assert_eq!(read_so_far(&fresh), 1);
    assert!(hint >= n && hint <= n + 1, "{hint} for {n}");
}

#[test]
fn frames_the_array_whatever_the_whitespace_and_the_keys_around_it() {
    let m = r#"{"messageId":"a","body":"{\"x\":[1,{\"y\":\"]\"}]}","attributes":{"SentTimestamp":"1"}}"#;
    for text in [
        format!(r#"{{"Records":[{m},{m}]}}"#),
        format!(" \n{{ \"Records\" :\t[ {m} ,\r\n {m} ] }} \n"),
        format!(r#"{{"other":{{"Records":[1]}},"Records":[{m},{m}],"after":[{{}}]}}"#),
    ] {
        let b = payload(&text);
        assert_eq!(b.len(), 2, "{text}");
        assert!(!b.unreadable_at(1), "{text}");
        assert_eq!(b.record(1).message_id.as_deref(), Some("a"));
        assert_eq!(b.record(1).sent_timestamp(), Some("1"));
    }
    assert!(payload(r#"{"Records":[]}"#).is_empty());
    assert_eq!(payload(r#"{"Records":[ ]}"#).size_hint(), 0);
}

#[test]
fn a_payload_that_breaks_off_is_unreadable_where_it_breaks() {
    let m = r#"{"messageId":"a","body":"x"}"#;
    for (text, at) in [
        (format!(r#"{{"Records":[{m},{m}"#), 2),
        (format!(r#"{{"Records":[{m},{{"messageId":"b","body":"#), 1),
        (format!(r#"{{"Records":[{m} {m}]}}"#), 1),
        (format!(r#"{{"Records":[{m},]}}"#), 1),
        (format!(r#"{{"Records":[{m}]}} trailing"#), 1),
        (format!(r#"{{"Records":[{m}]"#), 1),
        (format!(r#"{{"Records":[{m}],"Records":[]}}"#), 1),
        (format!(r#"{{"Records":[{m},{{"messageId":"\u12"}}]}}"#), 1),
    ] {
        let b = payload(&text);
        assert!(b.has(at) && !b.has(at + 1), "{text}");
        assert_eq!(b.len(), at, "the messages before the break, {text}");
        assert!(b.get(0).is_some(), "{text}");
        assert!(b.get(at).is_none() && b.unreadable_at(at), "{text}");
    }
    // A byte that is not UTF-8, in a field the function skips: the
    // payload is not JSON there, as a whole-payload parse would say.
    let m = br#"{"messageId":"a","body":"x","md5OfBody":"#;
    let mut bad = br#"{"Records":["#.to_vec();
    bad.extend_from_slice(m);
    bad.extend_from_slice(b"\"\xff\"}]}");
    let b = SqsBatch::from_payload(Bytes::from(bad)).unwrap();
    assert!(b.unreadable_at(0) && b.get(0).is_none());
    let b =
        SqsBatch::from_payload(Bytes::from(b"{\"Records\":[],\"x\":\"\xff\"}".to_vec())).unwrap();
    assert!(b.unreadable_at(0));
    assert!(
        SqsBatch::from_payload(Bytes::from(b"{\"x\":\"\xff\",\"Records\":[]}".to_vec())).is_err()
    );
    // Not an SQS event at all: refused before any message is read.
    for text in [
        "",
        "[]",
        "null",
        r#"{"Records":{"ip":"10.1.2.3"}}"#,
        r#"{"records":[]}"#,
        r#"{"Records" []}"#,
        r#"{"ip":"10.1.2.3" "Records":[]}"#,
    ] {
        assert!(
            SqsBatch::from_payload(Bytes::from(text.to_owned())).is_err(),
            "{text}"
        );
    }
    let shown = NotAnSqsEvent.to_string();
    assert!(shown.contains("not an SQS batch event") && shown.contains("events/"));
}

#[test]
fn reads_through_serde_path_to_error_as_lambda_runtime_does() {
    // lambda_runtime wraps serde_json's deserializer in serde_path_to_error;
    // the payload's text must come through it whole.
    let text = fixture("sqs-mixed.json");
    let jd = &mut serde_json::Deserializer::from_str(&text);
    let wrapped: SqsBatch = serde_path_to_error::deserialize(jd).unwrap();
    let plain: SqsBatch = serde_json::from_str(&text).unwrap();
    assert_eq!(wrapped.len(), plain.len());
    for (a, b) in wrapped.records().zip(plain.records()) {
        assert_eq!((&a.message_id, &a.body), (&b.message_id, &b.body));
    }
}

/// Whatever a payload's bytes, reading it lazily agrees with one parse
/// of the whole: a payload serde_json refuses never reads to its end
/// (so no batch of it can commit), and one it accepts reads as the
/// same messages. The payloads: the fixture cut short anywhere, or with
/// a byte changed anywhere.
#[test]
fn reads_whatever_the_bytes_as_one_parse_of_the_whole_would() {
    use proptest::prelude::*;
    let text = fixture("sqs-mixed.json").into_bytes();
    let len = text.len();
    let config = ProptestConfig {
        cases: 3000,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(at in 0..len, byte in any::<u8>(), cut in any::<bool>())| {
        let mut bytes = text.clone();
        if cut {
            bytes.truncate(at);
        } else {
            bytes[at] = byte;
        }
        let whole = serde_json::from_slice::<serde_json::Value>(&bytes);
        let records = whole.as_ref().ok().and_then(|v| v.get("Records")?.as_array().cloned());
        let Ok(batch) = SqsBatch::from_payload(Bytes::from(bytes)) else {
            prop_assert!(records.is_none(), "refused, yet its Records parse");
            return Ok(());
        };
        let n = (0..).take_while(|&i| batch.has(i)).count();
        let broken = n > 0 && batch.unreadable_at(n - 1);
        if whole.is_err() {
            prop_assert!(broken, "serde_json refuses it, yet it reads to its end");
            return Ok(());
        }
        prop_assert!(!broken, "serde_json accepts it, yet it breaks off");
        let records = records.expect("a payload read to its end has a Records array");
        prop_assert_eq!(n, records.len());
        for (i, value) in records.iter().enumerate() {
            let id = value.get("messageId").and_then(|v| v.as_str());
            let body = value.get("body").and_then(|v| v.as_str());
            if let Some(record) = batch.get(i) {
                prop_assert_eq!(record.message_id.as_deref(), id);
                prop_assert_eq!(record.body.as_deref(), body);
            }
        }
    });
}
