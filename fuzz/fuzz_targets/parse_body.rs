//! Fuzzes the body parser/validator: it must never panic, and whatever it
//! accepts must fit the table's columns and hold no NUL.
#![no_main]

use libfuzzer_sys::fuzz_target;
use login_etl::contract::parse_body;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else { return };
    if let Ok(e) = parse_body(body) {
        assert!(e.user_id.chars().count() <= 128 && !e.user_id.trim().is_empty());
        assert!(e.device_type.chars().count() <= 32 && !e.device_type.trim().is_empty());
        assert!(e.device_id.chars().count() <= 256 && !e.device_id.trim().is_empty());
        assert!(e.locale.as_ref().is_none_or(|l| l.chars().count() <= 32));
        assert!((0..=999_999_999).contains(&e.app_version));
        assert!(!e.user_id.contains('\0') && !e.device_id.contains('\0') && !e.device_type.contains('\0'));
    }
});
