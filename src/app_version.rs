//! Encoding of the client's `app_version` string into the sortable integer
//! column of the upstream schema.
//!
//! `major * 1_000_000 + minor * 1_000 + patch`, missing parts are 0, each part
//! is 1 to 3 ASCII digits (0..=999). Order-preserving and lossless for the
//! shapes seen in traffic (`x.y.z`, `d.dd`, `d.d`), so analysts can compare
//! versions in SQL; the original text is kept in `app_version_text`.
//!
//! [`encode`] takes only those shapes (`CONTRACT=strict`); [`derive`] finds
//! the version a release string carries (`v2.3.0`, `2.3.0-beta1`, `2.3.0+45`,
//! `2.3.0 (4512)`, `2.3.0.1`) and says what it set aside. A derived value
//! ties its plain release (`2.3.0-beta1` and `2.3.0` are both 2003000):
//! order is kept, never invented; `app_version_text` tells them apart.

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

/// What [`derive`] set aside, or why it found no version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Derivation {
    /// A leading `v` or blanks before the numbers.
    Prefix,
    /// A fourth dot-separated number (a build number), ignored.
    FourthPart,
    /// A pre-release or build suffix after the numbers (`-beta1`, `+45`,
    /// ` (4512)`, `rc1`), or blanks after them, ignored.
    Suffix,
    /// No version in it: no leading numbers, an empty part, more than four
    /// parts, or an unexpected character after them. No integer.
    Unparsed,
    /// One of the first three numbers is above 999. No integer.
    OutOfRange,
}

impl Derivation {
    /// The name of the defect (`app_version.<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Derivation::Prefix => "prefix",
            Derivation::FourthPart => "fourth_part",
            Derivation::Suffix => "suffix",
            Derivation::Unparsed => "unparsed",
            Derivation::OutOfRange => "out_of_range",
        }
    }
}

/// The encoded version `text` carries, and what was set aside on the way
/// (empty for the plain shapes [`encode`] takes, where the value is the
/// same). `None` with [`Derivation::Unparsed`] or
/// [`Derivation::OutOfRange`] when it carries none.
pub fn derive(text: &str) -> (Option<i32>, Vec<Derivation>) {
    if let Ok(v) = encode(text) {
        return (Some(v), Vec::new());
    }
    let mut set_aside = Vec::new();
    let trimmed = text.trim_start();
    let mut rest = trimmed;
    if trimmed.len() != text.len() {
        set_aside.push(Derivation::Prefix);
    }
    if let Some(after) = rest.strip_prefix(['v', 'V'])
        && after.starts_with(|c: char| c.is_ascii_digit())
    {
        rest = after;
        if !set_aside.contains(&Derivation::Prefix) {
            set_aside.push(Derivation::Prefix);
        }
    }
    let numbers_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (numbers, after) = rest.split_at(numbers_end);
    let parts: Vec<&str> = numbers.split('.').collect();
    let suffix_ok = after.is_empty()
        || after.starts_with(|c: char| {
            matches!(c, '-' | '+' | '(' | '_' | '~') || c.is_ascii_alphabetic() || c.is_whitespace()
        });
    if numbers.is_empty() || parts.len() > 4 || parts.iter().any(|p| p.is_empty()) || !suffix_ok {
        return (None, vec![Derivation::Unparsed]);
    }
    if parts.len() == 4 {
        set_aside.push(Derivation::FourthPart);
    }
    if !after.is_empty() {
        set_aside.push(Derivation::Suffix);
    }
    match encode(&parts[..parts.len().min(3)].join(".")) {
        Ok(v) => (Some(v), set_aside),
        Err(_) => (None, vec![Derivation::OutOfRange]),
    }
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

    #[test]
    fn derives_the_version_release_strings_carry() {
        use Derivation::*;
        for (text, value, set_aside) in [
            ("2.3.0", Some(2_003_000), vec![]),
            ("v2.3.0", Some(2_003_000), vec![Prefix]),
            ("V1.1", Some(1_001_000), vec![Prefix]),
            (" 1.2 ", Some(1_002_000), vec![Prefix, Suffix]),
            ("2.3.0-beta1", Some(2_003_000), vec![Suffix]),
            ("2.3.0+45", Some(2_003_000), vec![Suffix]),
            ("2.3.0 (4512)", Some(2_003_000), vec![Suffix]),
            ("2.3.0rc1", Some(2_003_000), vec![Suffix]),
            ("2.3.0.1", Some(2_003_000), vec![FourthPart]),
            ("2.3.0.99999", Some(2_003_000), vec![FourthPart]),
            (
                "v2.3.0.1-rc",
                Some(2_003_000),
                vec![Prefix, FourthPart, Suffix],
            ),
            ("10.0.1000", None, vec![OutOfRange]),
            ("1000.1-beta", None, vec![OutOfRange]),
            ("beta", None, vec![Unparsed]),
            ("", None, vec![Unparsed]),
            ("1..2", None, vec![Unparsed]),
            ("2.3.", None, vec![Unparsed]),
            ("2.3.0.1.5", None, vec![Unparsed]),
            ("1,2", None, vec![Unparsed]),
            ("v", None, vec![Unparsed]),
            ("١.٢", None, vec![Unparsed]),
        ] {
            assert_eq!(derive(text), (value, set_aside), "{text:?}");
        }
    }

    #[test]
    fn a_derived_version_never_sorts_before_an_older_release() {
        let ordered = [
            "0.9.9",
            "1.0.0-alpha",
            "1.0.0",
            "1.0.0.7",
            "v1.0.1",
            "1.0.1 (88)",
            "1.1-rc1",
            "2.0.0+build",
        ];
        let codes: Vec<i32> = ordered.iter().map(|v| derive(v).0.unwrap()).collect();
        assert!(codes.windows(2).all(|w| w[0] <= w[1]), "{codes:?}");
    }
}
