//! Key versions for the tests of masking-key rotation: three masking keys and
//! three erasure keys, their secrets' documents, and the masker of the first
//! `n` versions (what a function or rotate-key holds after `n - 1`
//! rotations).

use login_etl::privacy::masking::{KeyVersions, Masker};
use login_etl::privacy::vault::DataKey;

use super::TEST_KEY;

/// Who rotate-key is in the audit trail.
pub const CALLER: &str = "arn:aws:sts::123456789012:assumed-role/key-rotators/test";

/// Masking keys, oldest first.
pub const K: [&str; 3] = [
    TEST_KEY,
    "d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2",
    "a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6",
];

/// Erasure keys, oldest first.
pub const E: [&str; 3] = [
    "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "f9e8d7c6b5a40392817f6e5d4c3b2a1f0e9d8c7b6a5f40392817f6e5d4c3b2a1",
    "5a5b5c5d5e5f60616263646566676869707172737475767778797a7b7c7d7e7f",
];

/// The key document of the first `n` versions of `keys`.
pub fn doc(keys: &[&str], n: usize) -> String {
    serde_json::json!({ "versions": keys[..n] }).to_string()
}

/// Versions 1..=n of the masking and erasure keys.
pub fn masker(n: usize) -> Masker {
    Masker::versions(
        &KeyVersions::parse(&doc(&K, n), "test").unwrap(),
        Some(&KeyVersions::parse(&doc(&E, n), "test").unwrap()),
    )
    .unwrap()
}

/// A local data key for the vault (no KMS).
pub fn data_key() -> DataKey {
    DataKey::new(&[0x42; 32], vec![1, 2, 3], "local").unwrap()
}

/// The masker of [`TEST_KEY`] alone, as the tests' handlers hold it.
pub fn test_masker() -> Masker {
    Masker::new(&login_etl::privacy::masking::MaskingKey::from_hex(TEST_KEY, "test").unwrap())
}
