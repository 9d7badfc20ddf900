//! `login-etl doctor`'s `keys` check: the key secrets an operator gives it
//! (`MASKING_KEY_SECRET_ID`, `ERASURE_KEY_SECRET_ID`) against what the
//! database records of the keys (`login_etl_key_state()`): the version, and
//! the check values the first program to use them recorded. What the
//! function and `forget` would refuse at their next batch, found first.

use crate::privacy::masking::{KeyVersions, Masker, UserKeys};
use crate::table::doctor::Finding;

/// What the database records of the keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedKeys {
    /// The current masking-key version.
    pub version: u16,
    /// The masking key's check value, once recorded.
    pub masking_check: Option<String>,
    /// The erasure key's, once recorded.
    pub erasure_check: Option<String>,
    /// The erasure list's user keys are derived from the masking key.
    pub erasure_derived: bool,
}

/// The key state's query (any login-etl role may run it).
pub const KEY_STATE_SQL: &str = "SELECT version, masking_check::text, erasure_check::text, erasure_derived FROM login_etl_key_state()";

const LEAKED_KEY: &str = "docs/runbooks/leaked-key.md, \"The masking key leaked\"";

/// The findings for the keys given (either may be absent: only what is
/// given is checked).
pub fn findings(
    state: &RecordedKeys,
    masking: Option<&KeyVersions>,
    erasure: Option<&KeyVersions>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut found = |subject: &str, problem: String, fix: String| {
        out.push(Finding {
            check: "keys",
            subject: subject.to_owned(),
            problem,
            fix,
        });
    };
    let v = state.version;
    if let (Some(m), Some(e)) = (masking, erasure)
        && m.latest() != e.latest()
    {
        found(
            "ERASURE_KEY_SECRET_ID",
            format!(
                "holds {} version(s) and the masking secret {}: the function refuses to start with them",
                e.latest(),
                m.latest()
            ),
            format!(
                "a rotation appends one version to both secrets: make them the same length ({LEAKED_KEY})"
            ),
        );
    }
    if let Some(m) = masking {
        if m.latest() < v {
            let (problem, fix) = behind(v, "MASKING_KEY_SECRET_ID", m.latest());
            found("MASKING_KEY_SECRET_ID", problem, fix);
        } else if let Some(recorded) = &state.masking_check {
            let mine = Masker::versions(m, None)
                .ok()
                .and_then(|k| k.at(v))
                .map(|k| k.check().as_str().to_owned());
            if mine.as_deref() != Some(recorded.as_str()) {
                found(
                    "MASKING_KEY_SECRET_ID",
                    format!(
                        "its version {v} is not the key the stored tokens are under (was the secret replaced instead of a version appended?): the function refuses every batch (key_mismatch)"
                    ),
                    format!(
                        "put back the secret's previous value, with any new version appended after it, never in its place ({LEAKED_KEY})"
                    ),
                );
            }
        }
    }
    if let Some(e) = erasure {
        erasure_findings(state, e, masking, &mut found);
    }
    out
}

/// The database ahead of a secret: rotate-key ran with a version this
/// secret lacks, and a version generated now would be another key.
fn behind(v: u16, var: &str, held: u16) -> (String, String) {
    (
        format!(
            "holds versions up to {held}, and the database is at version {v} (a rotation ran): what uses it is refused until it has that version"
        ),
        format!(
            "give {var} the secret rotate-key ran with (the document whose version {v} the database is at), not a newly generated key ({LEAKED_KEY})"
        ),
    )
}

/// The erasure key's findings (see [`findings`]).
fn erasure_findings(
    state: &RecordedKeys,
    e: &KeyVersions,
    masking: Option<&KeyVersions>,
    found: &mut impl FnMut(&str, String, String),
) {
    let v = state.version;
    if state.erasure_derived {
        found(
            "ERASURE_KEY_SECRET_ID",
            "is given, and the erasure list predates erasure keys: its user keys are derived from the masking key, so this key is not used".into(),
            "give forget the masking key (MASKING_KEY_SECRET_ID) instead: the list stays derived, through every rotation (docs/runbooks/erasure.md)".into(),
        );
    } else if e.latest() < v {
        let (problem, fix) = behind(v, "ERASURE_KEY_SECRET_ID", e.latest());
        found("ERASURE_KEY_SECRET_ID", problem, fix);
    } else if let Some(recorded) = &state.erasure_check {
        let mine = UserKeys::new(e)
            .at(v)
            .map(|k| k.check().as_str().to_owned());
        // Keyed first by a program without the erasure key: the masking
        // key's derived user keys (MASKING_KEY_SECRET_ID given too).
        let derived = masking
            .and_then(|m| Masker::versions(m, None).ok())
            .and_then(|k| k.at(v))
            .map(|k| k.users().check().as_str().to_owned());
        if mine.as_deref() == Some(recorded.as_str()) {
            // The key the list is keyed with: nothing to say.
        } else if derived.as_deref() == Some(recorded.as_str()) {
            found(
                "ERASURE_KEY_SECRET_ID",
                "is refused (key_mismatch): the erasure list was keyed first by a program without an erasure key (a function, login-etl poll, forget or rotate-key given only the masking key), with user keys derived from the masking key".into(),
                "give every environment the erasure key's secret, then follow docs/runbooks/erasure.md, \"Keyed first without the erasure key\"".into(),
            );
        } else {
            found(
                "ERASURE_KEY_SECRET_ID",
                format!("its version {v} is not the key the erasure list is keyed with: forget and the function refuse it (key_mismatch)"),
                "give it the erasure key's secret the function uses (the stack's ErasureKeySecretArn); if the secret was replaced, put back its previous value".into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(hex: &[&str]) -> KeyVersions {
        let doc = serde_json::json!({ "versions": hex }).to_string();
        KeyVersions::parse(&doc, "test").unwrap()
    }

    const A: &str = "8f2c7e4a1b9d3f6e0a5c8b2d7f4e1a9c3b6d0f8e2a5c7b9d1f4e6a8c0b2d4f6e";
    const B: &str = "1b9d3f6e0a5c8b2d7f4e1a9c3b6d0f8e2a5c7b9d1f4e6a8c0b2d4f6e8f2c7e4a";
    const C: &str = "0a5c8b2d7f4e1a9c3b6d0f8e2a5c7b9d1f4e6a8c0b2d4f6e8f2c7e4a1b9d3f6e";

    fn state_of(masking: &KeyVersions, erasure: &KeyVersions, version: u16) -> RecordedKeys {
        let m = Masker::versions(masking, Some(erasure))
            .unwrap()
            .at(version)
            .unwrap();
        RecordedKeys {
            version,
            masking_check: Some(m.check().as_str().to_owned()),
            erasure_check: Some(m.users().check().as_str().to_owned()),
            erasure_derived: false,
        }
    }

    #[test]
    fn the_keys_the_database_records_pass_and_each_break_is_named_with_its_secret() {
        let (m, e) = (keys(&[A]), keys(&[B]));
        let state = state_of(&m, &e, 1);
        assert!(findings(&state, Some(&m), Some(&e)).is_empty());
        // A version appended ahead of rotate-key is not a finding.
        assert!(findings(&state, Some(&keys(&[A, C])), Some(&keys(&[B, C]))).is_empty());
        // Replaced instead of appended.
        let f = findings(&state, Some(&keys(&[C])), Some(&keys(&[C])));
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0].subject, "MASKING_KEY_SECRET_ID");
        assert!(f[0].fix.contains("previous value"), "{}", f[0].fix);
        assert_eq!(f[1].subject, "ERASURE_KEY_SECRET_ID");
        // The database rotated past the secret.
        let rotated = state_of(&keys(&[A, C]), &keys(&[B, C]), 2);
        let f = findings(&rotated, Some(&m), Some(&e));
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(
            f[0].problem.contains("database is at version 2")
                && f[0].fix.contains("rotate-key ran with")
        );
        // Nothing recorded yet: nothing to compare.
        let fresh = RecordedKeys {
            version: 1,
            masking_check: None,
            erasure_check: None,
            erasure_derived: false,
        };
        assert!(findings(&fresh, Some(&keys(&[C])), Some(&keys(&[C]))).is_empty());
        // No key given: nothing checked.
        assert!(findings(&state, None, None).is_empty());
        // Secrets of different lengths.
        let f = findings(&state, Some(&keys(&[A, C])), Some(&e));
        assert!(
            f.len() == 1
                && f[0]
                    .problem
                    .contains("1 version(s) and the masking secret 2"),
            "{f:?}"
        );
        // An erasure key where the list's keys are derived is not used.
        let derived = RecordedKeys {
            erasure_derived: true,
            ..state
        };
        let f = findings(&derived, None, Some(&e));
        assert!(
            f.len() == 1 && f[0].fix.contains("MASKING_KEY_SECRET_ID"),
            "{f:?}"
        );
        // Keyed first without the erasure key: named as such, with the runbook.
        let keyed_without = RecordedKeys {
            erasure_check: Some(
                Masker::versions(&m, None)
                    .unwrap()
                    .at(1)
                    .unwrap()
                    .users()
                    .check()
                    .as_str()
                    .to_owned(),
            ),
            ..state_of(&m, &e, 1)
        };
        let f = findings(&keyed_without, Some(&m), Some(&e));
        assert!(
            f.len() == 1 && f[0].problem.contains("keyed first") && f[0].fix.contains("erasure.md"),
            "{f:?}"
        );
        // No key material in any finding.
        for f in findings(&rotated, Some(&keys(&[C])), Some(&keys(&[C]))) {
            for k in [A, B, C] {
                assert!(!f.problem.contains(k) && !f.fix.contains(k));
            }
        }
    }
}
