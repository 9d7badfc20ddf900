//! Encoding of the client's `app_version` string into the sortable integer
//! column of the upstream schema.
//!
//! `major * 1_000_000 + minor * 1_000 + patch`, missing parts are 0; the
//! major is 1 to 4 ASCII digits up to [`MAX_MAJOR`] (calendar versions:
//! `2025.1.0`), the others 1 to 3 (0..=999). Order-preserving and lossless
//! for the shapes seen in traffic (`x.y.z`, `d.dd`, `d.d`, `yyyy.m.d`), so
//! analysts can compare versions in SQL; the original text is kept in
//! `app_version_text`.
//!
//! [`encode`] takes only those shapes (`CONTRACT=strict`); [`derive`] finds
//! the version a release string carries (`v2.3.0`, `2.3.0-beta1`, `2.3.0+45`,
//! `2.3.0 (4512)`, `2.3.0.4512`, `5.2.1203`) and says what it set aside. A
//! derived value ties its plain release (`2.3.0-beta1` and `2.3.0` are both
//! 2003000), and a number past its range counts as the largest, as do those
//! after it (`5.2.1203` is 5002999, as `5.2.999`): order is kept, never
//! invented; `app_version_text` tells them apart.

use std::fmt;

/// The largest major version the `int4` column holds with room for any
/// minor and patch (2146.999.999 is 2,146,999,999).
pub const MAX_MAJOR: u32 = 2146;

/// The largest minor or patch number.
const MAX_PART: u32 = 999;

/// Why an `app_version` string was not accepted. Carries no part of the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VersionError {
    /// Empty, more than three parts, an empty part, or a non-digit character.
    Shape,
    /// The major is above 2146 or has more than 4 digits, or a later part
    /// is above 999.
    OutOfRange,
}

impl fmt::Display for VersionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VersionError::Shape => {
                "expected 1 to 3 dot-separated numbers such as 2.3.0, 0.96, 1.1 or 2025.1.0"
            }
            VersionError::OutOfRange => {
                "the first number must be at most 2146, the others at most 999"
            }
        })
    }
}

/// The largest each part may be: the major's, then the others'.
fn limit(index: usize) -> u32 {
    if index == 0 { MAX_MAJOR } else { MAX_PART }
}

/// A part's number, `None` when it is longer than its position allows (4
/// digits for the major, 3 for the others) or above its limit.
fn part_value(index: usize, part: &str) -> Option<u32> {
    let digits = if index == 0 { 4 } else { 3 };
    if part.len() > digits {
        return None;
    }
    let n = part
        .bytes()
        .fold(0u32, |acc, b| acc * 10 + u32::from(b - b'0'));
    (n <= limit(index)).then_some(n)
}

/// The integer of up to three parts' numbers, missing parts 0.
fn combine(numbers: &[u32]) -> i32 {
    let mut value: i64 = 0;
    for i in 0..3 {
        value = value * 1_000 + i64::from(numbers.get(i).copied().unwrap_or(0));
    }
    // At most 2146 * 10^6 + 999 * 10^3 + 999, below i32::MAX.
    value as i32
}

/// Encodes `2.3.0` as `2003000`, `0.96` as `96000`, `1.1` as `1001000`,
/// `2025.1.0` as `2025001000`.
pub fn encode(text: &str) -> Result<i32, VersionError> {
    let mut numbers = [0u32; 3];
    let mut parts = 0;
    for part in text.split('.') {
        if parts == 3 || part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(VersionError::Shape);
        }
        numbers[parts] = part_value(parts, part).ok_or(VersionError::OutOfRange)?;
        parts += 1;
    }
    Ok(combine(&numbers[..parts]))
}

/// Whether `after` (what follows a version's numbers, trailing blanks
/// off) is a suffix releases carry, and nothing else: at most a
/// pre-release (`-`, `_` or `~` then identifiers of letters and digits
/// joined by `.` or `-`, or such identifiers straight after the numbers;
/// at least one letter, at most 20 characters: `-beta1`, `-rc.1`, `rc1`,
/// `-SNAPSHOT`), then build metadata (`+` and 1 to 16 letters, digits,
/// dots or dashes: `+45`), then a build number in parentheses (`(4512)`,
/// after a blank or not). Kept out: what is not a release's, which may be
/// anything (an email, a phone or social security number: `593-47-5928`
/// has no letter), since the text is stored where analysts read it.
fn release_suffix(after: &str) -> bool {
    let identifiers = |text: &str| {
        text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-'))
            .unwrap_or(text.len())
    };
    let mut rest = after;
    let pre = rest.strip_prefix(['-', '_', '~']).or_else(|| {
        rest.starts_with(|c: char| c.is_ascii_alphabetic())
            .then_some(rest)
    });
    if let Some(pre) = pre {
        let n = identifiers(pre);
        let ids = &pre[..n];
        if ids.is_empty()
            || ids.len() > 20
            || !ids.bytes().any(|b| b.is_ascii_alphabetic())
            || ids.split(['.', '-']).any(str::is_empty)
        {
            return false;
        }
        rest = &pre[n..];
    }
    if let Some(build) = rest.strip_prefix('+') {
        let n = identifiers(build);
        let ids = &build[..n];
        // A build number (`+45`), or identifiers with a letter
        // (`+build.7`): digits joined by dots or dashes may be an address
        // or a phone number.
        let number = ids.bytes().all(|b| b.is_ascii_digit()) && ids.len() <= 8;
        if !(1..=16).contains(&n) || !(number || ids.bytes().any(|b| b.is_ascii_alphabetic())) {
            return false;
        }
        rest = &build[n..];
    }
    let rest = rest.strip_prefix(' ').unwrap_or(rest);
    match rest.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
        // At most 8 digits: a build number, not a phone number.
        Some(number) => {
            (1..=8).contains(&number.len()) && number.bytes().all(|b| b.is_ascii_digit())
        }
        None => rest.is_empty(),
    }
}

/// The pre-release words `app_version_text` keeps, ASCII case-insensitive
/// (`-beta2`, `-RC.1`, `-SNAPSHOT`): words, never a value.
pub const PRE_RELEASE_WORDS: [&str; 13] = [
    "alpha", "beta", "rc", "pre", "preview", "dev", "snapshot", "canary", "nightly", "ea",
    "debug", "internal", "staging",
];

/// The leading ASCII digits of `s`, and what follows them.
fn digits(s: &str) -> (&str, &str) {
    s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()))
}

/// Whether `text`, in which [`derive`] found a version, is one as releases
/// write it, and so may be stored: an optional `v`, 1 to 4 numbers of 1 to
/// 8 digits, then at most a pre-release word of [`PRE_RELEASE_WORDS`]
/// (after `-`, `_`, `~` or nothing) with 1 to 4 digits (after `.`, `-` or
/// nothing), a build number `+` 1 to 8 digits, and one in parentheses
/// (`(4512)`, after a blank or not). No blank around it.
fn release_text(text: &str) -> bool {
    let rest = text.strip_prefix(['v', 'V']).unwrap_or(text);
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    let (numbers, mut rest) = rest.split_at(end);
    if numbers.split('.').any(|p| !(1..=8).contains(&p.len())) {
        return false;
    }
    let pre = rest.strip_prefix(['-', '_', '~']).or_else(|| {
        rest.starts_with(|c: char| c.is_ascii_alphabetic()).then_some(rest)
    });
    if let Some(pre) = pre {
        let (word, after) =
            pre.split_at(pre.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(pre.len()));
        if !PRE_RELEASE_WORDS.iter().any(|w| w.eq_ignore_ascii_case(word)) {
            return false;
        }
        let after = after
            .strip_prefix(['.', '-'])
            .filter(|a| a.starts_with(|c: char| c.is_ascii_digit()))
            .unwrap_or(after);
        let (n, after) = digits(after);
        if n.len() > 4 {
            return false;
        }
        rest = after;
    }
    if let Some(build) = rest.strip_prefix('+') {
        let (n, after) = digits(build);
        if !(1..=8).contains(&n.len()) {
            return false;
        }
        rest = after;
    }
    match rest.strip_prefix(" (").or_else(|| rest.strip_prefix('(')) {
        Some(paren) => match digits(paren) {
            (n, ")") => (1..=8).contains(&n.len()),
            _ => false,
        },
        None => rest.is_empty(),
    }
}

/// 1 to 3 digits, at most 255: with four of them, whatever follows, the
/// text may be an IPv4 address, not a version to keep.
fn is_octet(part: &str) -> bool {
    part.len() <= 3 && part.parse::<u16>().is_ok_and(|n| n <= 255)
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
    /// parts, a suffix no release carries, or an IPv4 address (four
    /// numbers of at most 255). No integer, and the text is not kept.
    Unparsed,
    /// One of the first three numbers is above its range (the major above
    /// 2146, another above 999): it and those after it count as their
    /// largest (`5.2.1203` as `5.2.999`), an integer that ties, never
    /// inverts.
    OutOfRange,
    /// A version found, but its text is not one as releases write it
    /// (`2.3.0-ip199.172.111.135`, `2.3.0+ssn593-47-5928`): the integer is
    /// kept, `app_version_text` is NULL.
    TextWithheld,
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
            Derivation::TextWithheld => "text_withheld",
        }
    }
}

/// The encoded version `text` carries, and what was set aside on the way
/// (empty for the plain shapes [`encode`] takes, where the value is the
/// same). `None` with [`Derivation::Unparsed`] when it carries none.
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
    if numbers.is_empty()
        || parts.len() > 4
        || parts.iter().any(|p| p.is_empty())
        || !release_suffix(after.trim_end())
        || (parts.len() == 4 && parts.iter().all(|p| is_octet(p)))
    {
        return (None, vec![Derivation::Unparsed]);
    }
    if parts.len() == 4 {
        set_aside.push(Derivation::FourthPart);
    }
    if !after.is_empty() {
        set_aside.push(Derivation::Suffix);
    }
    let mut numbers = Vec::with_capacity(3);
    let mut saturated = false;
    for (i, part) in parts.iter().take(3).enumerate() {
        // By value: `1.0001` is 1.1, below 1.5 (encode's strict shape
        // counts digits; a derived one must not invert the order).
        let digits = part.trim_start_matches('0');
        let value = (digits.len() <= 4)
            .then(|| digits.parse::<u32>().unwrap_or(0))
            .filter(|&n| n <= limit(i));
        let n = match value {
            Some(n) if !saturated => n,
            _ => {
                saturated = true;
                limit(i)
            }
        };
        numbers.push(n);
    }
    if saturated {
        // The parts not sent count as their largest too: 20250101 must
        // not sort before 2146.5.
        numbers.extend((numbers.len()..3).map(limit));
    }
    // Here `encode` refused the text: something is always set aside (a
    // zero-padded part too long for its place, `1.0001`, is read by value).
    if saturated || set_aside.is_empty() {
        set_aside.push(Derivation::OutOfRange);
    }
    if !release_text(text) {
        set_aside.push(Derivation::TextWithheld);
    }
    (Some(combine(&numbers)), set_aside)
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
        for big in [
            "2147",
            "10000",
            "1.1000",
            "0.0.1000",
            "99999999999999999999",
        ] {
            assert_eq!(encode(big), Err(VersionError::OutOfRange), "{big:?}");
        }
        assert_eq!(encode("2025.1.0"), Ok(2_025_001_000));
        assert_eq!(encode("2146.999.999"), Ok(2_146_999_999));
        assert_eq!(encode("1000"), Ok(1_000_000_000));
    }

    #[test]
    fn derives_the_version_release_strings_carry() {
        use Derivation::*;
        for (text, value, set_aside) in [
            ("2.3.0", Some(2_003_000), vec![]),
            ("v2.3.0", Some(2_003_000), vec![Prefix]),
            ("V1.1", Some(1_001_000), vec![Prefix]),
            (" 1.2 ", Some(1_002_000), vec![Prefix, Suffix, TextWithheld]),
            ("2.3.0-beta1", Some(2_003_000), vec![Suffix]),
            ("2.3.0+45", Some(2_003_000), vec![Suffix]),
            ("2.3.0 (4512)", Some(2_003_000), vec![Suffix]),
            ("2.3.0rc1", Some(2_003_000), vec![Suffix]),
            ("2.3.0.4512", Some(2_003_000), vec![FourthPart]),
            ("2.3.0.99999", Some(2_003_000), vec![FourthPart]),
            ("2.3.0-rc.1+build.7 (88)", Some(2_003_000), vec![Suffix, TextWithheld]),
            ("2.3.0-beta.2", Some(2_003_000), vec![Suffix]),
            ("1.0.0-SNAPSHOT", Some(1_000_000), vec![Suffix]),
            ("1.0.0-RC1", Some(1_000_000), vec![Suffix]),
            ("2.3.0-nightly.20", Some(2_003_000), vec![Suffix]),
            // A version found, its text a value's (issue 98, finding 4):
            // the integer kept, the text withheld.
            ("2.3.0-ip199.172.111.135", Some(2_003_000), vec![Suffix, TextWithheld]),
            ("2.3.0-d593-47-5928", Some(2_003_000), vec![Suffix, TextWithheld]),
            ("2.3.0+ssn593-47-5928", Some(2_003_000), vec![Suffix, TextWithheld]),
            ("1.0.0-alice.example.com", Some(1_000_000), vec![Suffix, TextWithheld]),
            ("2.3.0-rc.12345", Some(2_003_000), vec![Suffix, TextWithheld]),
            ("2.0.0+build", Some(2_000_000), vec![Suffix, TextWithheld]),
            ("2.3.0_beta", Some(2_003_000), vec![Suffix]),
            // Not a release's: what analysts would read may be anything.
            ("2.3.0.1", None, vec![Unparsed]),
            ("203.0.113.77", None, vec![Unparsed]),
            ("v10.0.0.1", None, vec![Unparsed]),
            ("593-47-5928", None, vec![Unparsed]),
            ("555-123-4567", None, vec![Unparsed]),
            ("2.3.0 alice@example.com", None, vec![Unparsed]),
            ("2.3.0-alice@example.com", None, vec![Unparsed]),
            ("2001:db8:85a3::8a2e:370:7334", None, vec![Unparsed]),
            ("2.3.0 (call me)", None, vec![Unparsed]),
            ("2.3.0+", None, vec![Unparsed]),
            ("203.0.113.77 ", None, vec![Unparsed]),
            ("203.0.113.77 (80)", None, vec![Unparsed]),
            ("203.0.113.77-a", None, vec![Unparsed]),
            ("2.3.0+203.0.113.77", None, vec![Unparsed]),
            ("1+593-47-5928", None, vec![Unparsed]),
            ("1 (5551234567)", None, vec![Unparsed]),
            ("2.3.0+20240101", Some(2_003_000), vec![Suffix]),
            ("1.0001", Some(1_001_000), vec![OutOfRange]),
            (
                "v2.3.0.4512-rc",
                Some(2_003_000),
                vec![Prefix, FourthPart, Suffix],
            ),
            ("10.0.1000", Some(10_000_999), vec![OutOfRange]),
            ("5.2.1203", Some(5_002_999), vec![OutOfRange]),
            ("5.1203.4", Some(5_999_999), vec![OutOfRange]),
            ("20250101.1", Some(2_146_999_999), vec![OutOfRange]),
            ("2025.1.0-beta", Some(2_025_001_000), vec![Suffix]),
            (
                "v5.2.1203.7",
                Some(5_002_999),
                vec![Prefix, FourthPart, OutOfRange],
            ),
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
            "1.0.0.1007",
            "v1.0.1",
            "1.0.1 (88)",
            "1.1-rc1",
            "2.0.0+build",
            "2.0.999",
            "2.0.1203",
            "2.0.1500",
            "2.1.0",
            "2025.1.0",
            "2025.12.31",
            "2146.5",
            "20250101",
        ];
        let codes: Vec<i32> = ordered.iter().map(|v| derive(v).0.unwrap()).collect();
        assert!(codes.windows(2).all(|w| w[0] <= w[1]), "{codes:?}");
        // Zero-padded parts count by value.
        let ordered = ["1.0001-rc", "1.5-rc", "00002.1-rc", "3.0-rc"];
        let codes: Vec<i32> = ordered.iter().map(|v| derive(v).0.unwrap()).collect();
        assert!(codes.windows(2).all(|w| w[0] <= w[1]), "{codes:?}");
    }
}
