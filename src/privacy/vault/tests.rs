//! Unit tests of the vault's sealing and batches.

/// The zeroize features are on: the AES-256 key schedule is
/// `ZeroizeOnDrop` on every target (checked at compile time). GHASH's
/// key H is wiped by polyval's portable backend, the one the arm64
/// Lambda build uses: its state is plain arrays, so it has a `Drop` (the
/// zeroizing one) only with the feature. polyval's x86 backend, which
/// picks CLMUL at run time, keeps H in a union that is never dropped
/// (polyval 0.6): not wiped on x86_64 hosts, as the docs say.
#[test]
fn the_key_schedule_and_the_ghash_key_zeroize_on_drop() {
    fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    wiped_on_drop::<aes::Aes256>();
    #[cfg(not(any(target_arch = "x86_64", target_arch = "x86")))]
    {
        assert!(std::mem::needs_drop::<polyval::Polyval>());
        assert!(std::mem::needs_drop::<ghash::GHash>());
    }
}

use super::*;

fn key(byte: u8) -> DataKey {
    DataKey::new(
        &[byte; 32],
        vec![byte, 1, 2, 3],
        "arn:aws:kms:us-east-1:000000000000:key/test",
    )
    .unwrap()
}

#[test]
fn every_kind_round_trips_and_nonces_differ() {
    let k = key(7);
    for (kind, token, value) in [
        (Kind::Ip, "ab".repeat(32), "2001:db8::1"),
        (Kind::Ip, "cd".repeat(32), "199.172.111.135"),
        (Kind::DeviceId, "ef".repeat(32), "593-47-5928"),
    ] {
        let a = k.seal(kind, &token, value);
        let b = k.seal(kind, &token, value);
        assert_ne!(a.nonce, b.nonce, "a fresh nonce per seal");
        assert_ne!(a.ciphertext, b.ciphertext);
        assert!(
            !a.ciphertext
                .windows(value.len())
                .any(|w| w == value.as_bytes())
        );
        assert_eq!(
            k.open(kind, &token, AAD_VERSION, &a.nonce, &a.ciphertext)
                .unwrap(),
            value
        );
    }
    assert_eq!(Kind::parse("device_id"), Some(Kind::DeviceId));
    assert_eq!(Kind::parse("user_id"), None);
}

#[test]
fn tampering_another_row_or_another_key_is_refused_clearly() {
    let k = key(7);
    let token = "ab".repeat(32);
    let s = k.seal(Kind::Ip, &token, "10.1.2.3");
    let mut flipped = s.ciphertext.clone();
    flipped[0] ^= 1;
    let other_token = "cd".repeat(32);
    let v1 = k.seal_form(Kind::Ip, &token, "10.1.2.3", [9; 12], 1);
    let failures = [
        k.open(Kind::Ip, &token, 2, &s.nonce, &flipped).unwrap_err(),
        k.open(Kind::DeviceId, &token, 2, &s.nonce, &s.ciphertext)
            .unwrap_err(),
        k.open(Kind::Ip, &token, 2, &[0; 12], &s.ciphertext)
            .unwrap_err(),
        key(8)
            .open(Kind::Ip, &token, 2, &s.nonce, &s.ciphertext)
            .unwrap_err(),
        // Form 1 (entries from before key versions) binds the token too.
        k.open(Kind::Ip, &other_token, 1, &v1.nonce, &v1.ciphertext)
            .unwrap_err(),
        // A form-2 entry opened as form 1 fails: the form is not a free choice.
        k.open(Kind::Ip, &token, 1, &s.nonce, &s.ciphertext)
            .unwrap_err(),
    ];
    // Form 2 is bound to the kind, not the token, so a re-keyed token
    // (rotate-key cannot re-seal) still opens; form 1 opens under its own token.
    assert_eq!(
        k.open(Kind::Ip, &other_token, 2, &s.nonce, &s.ciphertext)
            .unwrap(),
        "10.1.2.3"
    );
    assert_eq!(
        k.open(Kind::Ip, &token, 1, &v1.nonce, &v1.ciphertext)
            .unwrap(),
        "10.1.2.3"
    );
    for e in failures {
        let text = e.to_string();
        assert!(
            text.contains("does not decrypt") && !text.contains("10.1.2.3"),
            "{text}"
        );
    }
    assert!(matches!(
        DataKey::new(&[1; 16], vec![], "k"),
        Err(VaultError::KeyLength(16))
    ));
    let debug = format!("{k:?} {s:?}");
    assert!(
        !debug.contains("ciphertext") && !debug.contains("[7, 7"),
        "{debug}"
    );
}

#[test]
fn a_batch_seals_each_distinct_value_once() {
    let k = key(9);
    let masker = crate::privacy::masking::Masker::new(
        &crate::privacy::masking::MaskingKey::from_hex(&"ab".repeat(32), "test").unwrap(),
    );
    let event = crate::synth::event(&crate::synth::Options {
        count: 3,
        ..Default::default()
    });
    let bodies: Vec<&str> = event
        .records
        .iter()
        .map(|m| m.body.as_deref().unwrap())
        .collect();
    let mut rows: Vec<LoginRow<'_>> = [0, 1, 0].iter().map(|&i| row(bodies[i], &masker)).collect();
    // The repeat is dated three days later: its entries' last_seen.
    let later = rows[0].create_date + chrono::TimeDelta::days(3);
    rows[2].create_date = later;
    let mut vb = VaultBatch::default();
    rows.iter().for_each(|r| vb.add(&k, r));
    assert_eq!(vb.sealed.len(), 4, "the third row repeats the first");
    assert_eq!(vb.per_row[0], vb.per_row[2]);
    let all = vb.entries_for(0..3);
    assert_eq!(all.len(), 4);
    let keys: Vec<(&str, &str)> = all
        .iter()
        .map(|(s, _)| (s.kind.as_str(), s.token.as_str()))
        .collect();
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "entries in primary-key order, each once: {keys:?}"
    );
    for (sealed, day) in &all {
        let repeated = vb.per_row[0]
            .iter()
            .flatten()
            .any(|&i| vb.sealed[i].token == sealed.token);
        let expected = if repeated { later } else { rows[1].create_date };
        assert_eq!(
            *day, expected,
            "an entry's last_seen is its latest row's day"
        );
    }
    assert!(
        vb.entries_for(0..1)
            .iter()
            .all(|(_, day)| *day == rows[0].create_date)
    );
    assert_eq!(vb.entries_for(2..3).len(), 2);
    let ip = &vb.sealed[vb.per_row[1][0].expect("an ip entry")];
    assert_eq!(
        k.open(Kind::Ip, &ip.token, AAD_VERSION, &ip.nonce, &ip.ciphertext)
            .unwrap(),
        rows[1].ip.unwrap().to_string()
    );
}

/// The row of a valid `body` (what the ingest path makes of it), without
/// the ingest room.
fn row<'a>(body: &'a str, masker: &crate::privacy::masking::Masker) -> LoginRow<'a> {
    let e = crate::contract::parse_body(body).unwrap();
    let sent_at = chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap();
    let key = crate::contract::RowKeyAndTokens {
        message_id: "m",
        sent_at,
        masked_ip: e.ip.as_ref().map(|ip| masker.ip(ip)),
        masked_device_id: e.device_id.as_deref().map(|d| masker.device_id(d)),
        key_version: masker.version(),
    };
    LoginRow::new(e, key)
}
