//! Encoding of the client's `app_version` string into the sortable integer
//! column of the upstream schema.
//!
//! `major * 1_000_000 + minor * 1_000 + patch`, missing parts are 0, each part
//! is 1 to 3 ASCII digits (0..=999). Order-preserving and lossless for the
//! shapes seen in traffic (`x.y.z`, `d.dd`, `d.d`), so analysts can compare
//! versions in SQL; the original text is kept in `app_version_text`.

use std::fmt;

/// Why an `app_version` string was not accepted. Carries no part of the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VersionError {
    /// Empty, more than three parts, an empty part, or a non-digit character.
    Shape,
    /// A part has more than three digits (above 999).
    OutOfRange,
}

impl fmt::Display for VersionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VersionError::Shape => {
                "expected 1 to 3 dot-separated numbers such as 2.3.0, 0.96 or 1.1"
            }
            VersionError::OutOfRange => "each dot-separated number must be at most 999",
        })
    }
}

/// Encodes `2.3.0` as `2003000`, `0.96` as `96000`, `1.1` as `1001000`.
pub fn encode(text: &str) -> Result<i32, VersionError> {
    let mut value: i32 = 0;
    let mut parts = 0;
    for part in text.split('.') {
        parts += 1;
        if parts > 3 || part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(VersionError::Shape);
        }
        if part.len() > 3 {
            return Err(VersionError::OutOfRange);
        }
        // At most 3 digits, so the part is at most 999 and the sum fits in i32.
        let n = part
            .bytes()
            .fold(0, |acc, b| acc * 10 + i32::from(b - b'0'));
        value = value * 1_000 + n;
    }
    for _ in parts..3 {
        value *= 1_000;
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_every_shape_seen_in_traffic() {
        assert_eq!(encode("2.3.0"), Ok(2_003_000));
        assert_eq!(encode("0.96"), Ok(96_000));
        assert_eq!(encode("2.00"), Ok(2_000_000));
        assert_eq!(encode("1.1"), Ok(1_001_000));
        assert_eq!(encode("7"), Ok(7_000_000));
        assert_eq!(encode("999.999.999"), Ok(999_999_999));
        assert_eq!(encode("0.0.0"), Ok(0));
    }

    #[test]
    fn encoding_preserves_version_order() {
        let ordered = [
            "0.0.1", "0.1", "0.96", "1.1", "1.1.1", "1.10", "2.00", "2.3.0", "2.10.0", "10.0.0",
        ];
        let codes: Vec<i32> = ordered.iter().map(|v| encode(v).unwrap()).collect();
        assert!(codes.windows(2).all(|w| w[0] < w[1]), "{codes:?}");
    }

    #[test]
    fn rejects_bad_shapes_and_out_of_range_parts() {
        for bad in [
            "", ".", "1.", ".1", "1..2", "1.2.3.4", "v1.2", "1.2-beta", " 1.2", "1,2", "+1.2",
            "-1.2", "١.٢",
        ] {
            assert_eq!(encode(bad), Err(VersionError::Shape), "{bad:?}");
        }
        for big in ["1000", "1.1000", "0.0.1000", "99999999999999999999"] {
            assert_eq!(encode(big), Err(VersionError::OutOfRange), "{big:?}");
        }
    }
}
