use super::*;
use chrono::NaiveDate;

/// A valid body (the upstream sample).
const GOOD: &str = r#"{"user_id": "424cdd21-063a-43a7-b91b-7ca1a833afae", "app_version": "2.3.0", "device_type": "android", "ip": "199.172.111.135", "locale": "RU", "device_id": "593-47-5928"}"#;

#[test]
fn sent_timestamp_gives_the_utc_date() {
    let sent_date = |at: Option<&str>| checked_sent_at(at).ok().map(|t| t.date_naive());
    assert_eq!(sent_date(None), None);
    // 2023-11-14T23:59:59.999Z
    assert_eq!(
        sent_date(Some("1700006399999")),
        NaiveDate::from_ymd_opt(2023, 11, 14)
    );
    assert_eq!(
        sent_date(Some("1700006400000")),
        NaiveDate::from_ymd_opt(2023, 11, 15)
    );
    assert_eq!(sent_date(Some("yesterday")), None);
    // Past what PostgreSQL's timestamptz holds: no date, not a wrong one.
    assert_eq!(sent_date(Some("9223372036854775807")), None);
}

#[test]
fn a_sent_timestamp_outside_postgresqls_range_is_its_own_rejection() {
    let at = Some;
    // Chrono's year -4713 (4714 BC), a month before PostgreSQL's first day:
    // accepted once, then refused by the server (22008) on every receive.
    for outside in [
        "-210869395200000",
        "-210866803200001",
        "9224318016000000",
        "9223372036854775807",
    ] {
        assert_eq!(
            checked_sent_at(at(outside)),
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
        assert!(checked_sent_at(at(inside)).is_ok(), "{inside}");
    }
    assert_eq!(checked_sent_at(at("soon")), Err(Rejection::NoSentTimestamp));
}

#[test]
fn a_signed_redriven_copy_keeps_the_originals_key_and_day_and_no_timestamp_is_a_rejection() {
    let key = |b: &str| crate::privacy::masking::MaskingKey::from_hex(&b.repeat(32), "test");
    let masker = Masker::new(&key("ab").unwrap());
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
    // SentTimestamp (a day later), the original's in its attributes,
    // signed by the masking key.
    let signed = |id: &str, ts: &str, signature: String| {
        let mut copy = original.clone();
        copy.attributes.as_mut().unwrap().sent_timestamp = Some("1700092800000".into());
        copy.message_attributes = Some(crate::ingest::event::SourceAttributes {
            source_message_id: Some(id.into()),
            source_sent_timestamp: Some(ts.into()),
            source_signature: Some(signature),
            ..Default::default()
        });
        copy
    };
    let good = masker.redrive_signature("m-original", "1700006399999", body);
    let copy = signed("m-original", "1700006399999", good.clone());
    let again = transform("m-redriven", &copy, &masker).unwrap();
    assert_eq!(
        (again.message_id, again.sent_at, again.create_date),
        (row.message_id, row.sent_at, row.create_date)
    );
    assert_eq!(
        row.create_date,
        NaiveDate::from_ymd_opt(2023, 11, 14).unwrap()
    );
    // A rotation later, the copy signed under version 1 still keys the row.
    let rotated = Masker::versions(
        &crate::privacy::masking::KeyVersions::parse(
            &format!(
                r#"{{"versions": ["{}", "{}"]}}"#,
                "ab".repeat(32),
                "ef".repeat(32)
            ),
            "test",
        )
        .unwrap(),
        None,
    )
    .unwrap();
    assert_eq!(rotated.version(), 2);
    assert_eq!(
        row_key("m-redriven", &copy, &rotated),
        RowKey {
            message_id: "m-original",
            sent_timestamp: Some("1700006399999"),
            redriven: true,
        }
    );
    assert!(
        rotated
            .redrive_signature("m-original", "1700006399999", body)
            .starts_with("v2.")
    );
    let mut unsent = original.clone();
    unsent.attributes = None;
    let e = transform("m", &unsent, &masker).unwrap_err();
    assert_eq!(e, Rejection::NoSentTimestamp);
    assert_eq!(e.code(), "no_sent_timestamp");
}

/// A record keyed by a DLQ copy's attributes only when the masking key
/// signed them: what any sender can write is not enough.
#[test]
fn a_forged_redrive_key_is_ignored_and_the_record_keyed_by_its_own_id_and_day() {
    let key = |b: &str| crate::privacy::masking::MaskingKey::from_hex(&b.repeat(32), "test");
    let masker = Masker::new(&key("ab").unwrap());
    let good = masker.redrive_signature("m-original", "1700006399999", GOOD);
    let signed = |id: &str, ts: &str, signature: String| SqsRecord {
        body: Some(GOOD.into()),
        attributes: Some(crate::ingest::event::RecordAttributes {
            sent_timestamp: Some("1700092800000".into()),
            ..Default::default()
        }),
        message_attributes: Some(crate::ingest::event::SourceAttributes {
            source_message_id: Some(id.into()),
            source_sent_timestamp: Some(ts.into()),
            source_signature: Some(signature),
            ..Default::default()
        }),
        ..SqsRecord::default()
    };
    assert_eq!(
        transform(
            "m-redriven",
            &signed("m-original", "1700006399999", good.clone()),
            &masker
        )
        .unwrap()
        .message_id,
        "m-original",
        "the check below can fail"
    );
    // No signature, a made-up one, one of another version, one under a key
    // this masker does not hold, or the right one with the id or day
    // changed: each is keyed by its own id and day, never dropped as the
    // original's duplicate.
    let stranger = Masker::new(&key("cd").unwrap());
    for forged in [
        signed("m-original", "1700006399999", String::new()),
        signed("m-original", "1700006399999", "v1.00".into()),
        signed("m-original", "1700006399999", "v2.".to_owned() + &good[3..]),
        signed(
            "m-original",
            "1700006399999",
            stranger.redrive_signature("m-original", "1700006399999", GOOD),
        ),
        signed("m-other", "1700006399999", good.clone()),
        signed("m-original", "1600000000000", good.clone()),
        // The right signature on another body (a copy's attributes moved
        // onto a message of someone's choosing).
        SqsRecord {
            body: Some(GOOD.replace("android", "ios")),
            ..signed("m-original", "1700006399999", good.clone())
        },
        // Uppercase hex of the right digest: not the form signatures take.
        signed(
            "m-original",
            "1700006399999",
            good.to_uppercase().replacen('V', "v", 1),
        ),
    ] {
        let own = transform("m-redriven", &forged, &masker).unwrap();
        assert_eq!(
            own.message_id, "m-redriven",
            "{:?}",
            forged.message_attributes
        );
        assert_eq!(
            own.create_date,
            NaiveDate::from_ymd_opt(2023, 11, 16).unwrap()
        );
    }
}

/// A dead-letter copy come back as it was (SQS moved it, or someone sent
/// it on) is not a login: its body is masked (a token where the ip was), so
/// storing it would store a token of a token. Its original sent back with
/// the copy's attributes is one (the signed claim holds for it).
#[test]
fn a_dead_letter_copy_is_never_a_login_but_its_original_with_its_attributes_is() {
    let masker = Masker::new(
        &crate::privacy::masking::MaskingKey::from_hex(&"ab".repeat(32), "test").unwrap(),
    );
    let original = r#"{"user_id":"u","app_version":"1.1","device_type":"ios","ip":"10.0.0.1","locale":null,"device_id":"123-45-6789"}"#;
    let masked = crate::ingest::dlq::masked_body::masked_body(original, &masker);
    let with_copy_attributes = |body: &str| SqsRecord {
        body: Some(body.into()),
        attributes: Some(crate::ingest::event::RecordAttributes {
            sent_timestamp: Some("1700092800000".into()),
            ..Default::default()
        }),
        message_attributes: Some(crate::ingest::event::SourceAttributes {
            source_message_id: Some("m-original".into()),
            source_sent_timestamp: Some("1700006399999".into()),
            source_signature: Some(masker.redrive_signature(
                "m-original",
                "1700006399999",
                original,
            )),
            rejection_code: Some("unknown_field".into()),
            ..Default::default()
        }),
        ..SqsRecord::default()
    };
    assert!(
        crate::contract::parse_body(&masked).is_ok(),
        "a masked copy reads as a login with defects: only its attributes tell"
    );
    assert_eq!(
        transform("m-copy", &with_copy_attributes(&masked), &masker).unwrap_err(),
        Rejection::DeadLetterCopy
    );
    let back = with_copy_attributes(original);
    let row = transform("m-back", &back, &masker).unwrap();
    assert_eq!(row.message_id, "m-original");
}

/// What the DLQ operator's role sends is `dlq-redrive`'s: an original with
/// its signed claim passes, a login of its own (or one with a forged claim)
/// is refused; anyone else's message, and every message when no operator
/// role is configured, is not looked at.
#[test]
fn the_dlq_operators_role_sends_back_only_what_dlq_redrive_signed() {
    let masker = Masker::new(
        &crate::privacy::masking::MaskingKey::from_hex(&"ab".repeat(32), "test").unwrap(),
    );
    let role = "AROAEXAMPLEOPERATOR";
    let sent = |sender: &str, claim: Option<String>| SqsRecord {
        body: Some(GOOD.into()),
        attributes: Some(crate::ingest::event::RecordAttributes {
            sent_timestamp: Some("1700092800000".into()),
            sender_id: Some(sender.into()),
            ..Default::default()
        }),
        message_attributes: claim.map(|signature| crate::ingest::event::SourceAttributes {
            source_message_id: Some("m-original".into()),
            source_sent_timestamp: Some("1700006399999".into()),
            source_signature: Some(signature),
            ..Default::default()
        }),
        ..SqsRecord::default()
    };
    let signed = masker.redrive_signature("m-original", "1700006399999", GOOD);
    let operator = format!("{role}:dlq-redrive-session");
    assert_eq!(
        check_sender("m", &sent(&operator, None), &masker, Some(role)),
        Err(Rejection::OperatorMessageUnsigned)
    );
    assert_eq!(
        check_sender(
            "m",
            &sent(&operator, Some("0".repeat(64))),
            &masker,
            Some(role)
        ),
        Err(Rejection::OperatorMessageUnsigned),
        "a forged claim"
    );
    assert_eq!(
        check_sender("m", &sent(&operator, Some(signed)), &masker, Some(role)),
        Ok(())
    );
    // A producer, a role whose id merely starts the same, no check configured.
    for (sender, configured) in [
        ("AIDAPRODUCER", Some(role)),
        ("AROAEXAMPLEOPERATORX:s", Some(role)),
        (operator.as_str(), None),
    ] {
        assert_eq!(
            check_sender("m", &sent(sender, None), &masker, configured),
            Ok(()),
            "{sender}"
        );
    }
}

/// A rebuilt login's original is dated within what SQS can have kept
/// (its copy 14 days in the dead-letter queue after 14 in the source
/// queue): one older, or dated after now (past the clock skew), is
/// refused however its seal holds.
#[test]
fn a_rebuilt_login_dated_outside_what_sqs_keeps_is_refused() {
    let masker = Masker::new(
        &crate::privacy::masking::MaskingKey::from_hex(&"ab".repeat(32), "test").unwrap(),
    );
    let original = r#"{"user_id":"u","app_version":"1.1","device_type":"ios","ip":"10.0.0.1","locale":null,"device_id":"d"}"#;
    let masked = crate::ingest::dlq::masked_body::masked_body(original, &masker);
    let message = SqsRecord {
        body: Some(masked),
        ..SqsRecord::default()
    };
    let now = DateTime::from_timestamp_millis(1_790_000_000_000).unwrap();
    let at = |offset: chrono::TimeDelta| {
        let sent = (now + offset).timestamp_millis().to_string();
        let claim = RebuiltClaim {
            message_id: "m-original",
            sent_timestamp: &sent,
            key_version: 1,
            rejection_code: "unknown_field",
            source_signature: "checked by the caller",
            copy_signature: "checked by the caller",
        };
        transform_rebuilt(claim, &message, &masker, &Contract::DEFAULT, now).map(|row| row.sent_at)
    };
    let day = chrono::TimeDelta::days(1);
    assert!(at(-REBUILT_MAX_AGE + day).is_ok());
    assert!(at(REBUILT_CLOCK_SKEW - chrono::TimeDelta::seconds(1)).is_ok());
    for too_far in [-REBUILT_MAX_AGE - day, REBUILT_CLOCK_SKEW + day, chrono::TimeDelta::days(-365 * 2000)] {
        assert_eq!(at(too_far), Err(Rejection::SentTimestampOutOfRange), "{too_far}");
    }
}

#[test]
fn a_signature_names_a_newer_key_version_only_in_its_plain_form() {
    let key = |b: &str| crate::privacy::masking::MaskingKey::from_hex(&b.repeat(32), "test");
    let masker = Masker::new(&key("ab").unwrap());
    let with = |source: Option<&str>, copy: Option<&str>| SqsRecord {
        message_attributes: Some(crate::ingest::event::SourceAttributes {
            source_signature: source.map(str::to_owned),
            copy_signature: copy.map(str::to_owned),
            ..Default::default()
        }),
        ..SqsRecord::default()
    };
    let hex = "0".repeat(64);
    let v = |n: &str| format!("v{n}.{hex}");
    assert!(!signed_after(&SqsRecord::default(), &masker), "no attributes");
    assert!(!signed_after(&with(None, None), &masker));
    assert!(!signed_after(&with(Some(&v("1")), None), &masker), "its own version");
    assert!(signed_after(&with(Some(&v("2")), None), &masker));
    assert!(signed_after(&with(None, Some(&v("2"))), &masker), "a copy's signature");
    assert!(signed_after(&with(Some(&v("1")), Some(&v("3"))), &masker));
    // Not the form a signature has: no version read from it.
    for odd in ["v.", "vx.1", "v2", "2.abc", "v65536.0", "v-2.0", ""] {
        assert!(!signed_after(&with(Some(odd), Some(odd)), &masker), "{odd:?}");
    }
}
