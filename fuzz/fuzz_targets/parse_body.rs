//! Fuzzes the body parser/validator in both contracts: it must never
//! panic, whatever it accepts must fit the table's columns and hold no
//! NUL, and a strict accept is a lenient accept with no defect.
#![no_main]

use libfuzzer_sys::fuzz_target;
use login_etl::contract::{Contract, LoginEvent, Mode, parse_body, parse_body_with};

fn fits(e: &LoginEvent<'_>) {
    let within = |s: &Option<std::borrow::Cow<'_, str>>, max: usize| {
        s.as_ref().is_none_or(|s| s.chars().count() <= max && !s.contains('\0'))
    };
    assert!(e.user_id.chars().count() <= 128 && !e.user_id.trim().is_empty());
    assert!(!e.user_id.contains('\0'));
    assert!(within(&e.device_type, 32));
    assert!(within(&e.device_id, 256));
    assert!(e.device_id.as_ref().is_none_or(|d| !d.trim().is_empty()));
    assert!(within(&e.locale, 32));
    assert!(within(&e.app_version_text, 32));
    assert!(e.app_version.is_none_or(|v| (0..=2_146_999_999).contains(&v)));
}

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else { return };
    let lenient = parse_body(body);
    if let Ok(e) = &lenient {
        fits(e);
    }
    let strict = Contract::default().with_mode(Mode::Strict);
    if let Ok(e) = parse_body_with(body, &strict) {
        fits(&e);
        assert!(e.defects.is_empty(), "a strict accept carries no defect");
        assert!(lenient.is_ok(), "what strict keeps, lenient keeps");
    }
});
