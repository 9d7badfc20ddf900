//! Unit tests of `maintain`, kept apart so that its source stays readable.

use super::*;

fn d(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

#[test]
fn retention_keeps_today_and_the_days_before_it() {
    let today = d("2026-11-23");
    let keep = |days| MaintainOptions {
        retention_days: Some(days),
        ..MaintainOptions::default()
    };
    assert_eq!(keep(1).cutoff(today), Some(today));
    assert_eq!(keep(30).cutoff(today), Some(d("2026-10-25")));
    assert_eq!(MaintainOptions::default().cutoff(today), None);
}

#[test]
fn the_emf_document_names_every_metric_and_carries_its_value() {
    let report = MaintainReport {
        created: vec![Made {
            name: "user_logins_p20261130".into(),
            moved: 3,
        }],
        dropped: vec![("user_logins_p20261001".into(), 1_000)],
        purged_from_default: 2,
        vault_entries_purged: 5,
        default_rows: 0,
        drained_from_default: 7,
        deferred: 0,
        duration: Duration::from_millis(42),
        retention_disagrees: Some("RETENTION_DAYS=5 disagrees".into()),
    };
    let doc = report.emf("LoginEtl", "login-etl", "WARN", 1);
    let names: Vec<&str> = doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Name"].as_str().unwrap())
        .collect();
    for name in &names {
        assert!(doc.get(*name).is_some(), "{name} has no value");
    }
    assert_eq!(doc["PartitionsDropped"], 1);
    assert_eq!(doc["RowsDropped"], 1_000);
    assert_eq!(doc["RowsMovedFromDefault"], 3);
    assert_eq!(doc["RowsDrainedFromDefault"], 7);
    assert_eq!(doc["VaultEntriesPurged"], 5);
    assert_eq!(doc["RetentionDisagrees"], 1);
    assert_eq!(doc["retention"], "RETENTION_DAYS=5 disagrees");
    assert_eq!(doc["level"], "WARN");
}

#[test]
fn the_longer_retention_is_applied_and_a_disagreement_names_both_fixes() {
    use crate::table::retention::{Kept, reconcile};
    assert_eq!(
        reconcile(Kept::Days(30), Kept::Days(30)),
        (Kept::Days(30), None)
    );
    let (applied, said) = reconcile(Kept::Days(5), Kept::Days(30));
    assert_eq!(applied, Kept::Days(30));
    let said = said.unwrap().to_string();
    assert!(
        said.contains("RETENTION_DAYS=5 login-etl migrate"),
        "{said}"
    );
    assert!(said.contains("RetentionDays) to 30"), "{said}");
    let (applied, said) = reconcile(Kept::Days(400), Kept::Everything);
    assert_eq!(applied, Kept::Everything);
    assert!(said.unwrap().fix.contains("RetentionDays=0"));
    assert_eq!(
        reconcile(Kept::Everything, Kept::Days(7)).0,
        Kept::Everything
    );
}
