//! Unit tests of `maintain`, kept apart so that its source stays readable.

use super::*;

fn d(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

fn part(lo: Option<&str>, hi: &str) -> Partition {
    Partition {
        name: format!("p{hi}"),
        lo: lo.map(d),
        hi: Some(d(hi)),
        is_default: false,
    }
}

#[test]
fn segments_cover_partitions_gaps_ends_and_null_once_each() {
    let default = Partition {
        name: "user_logins_default".into(),
        lo: None,
        hi: None,
        is_default: true,
    };
    let parts = [
        default,
        part(None, "2026-11-20"),
        part(Some("2026-11-20"), "2026-11-21"),
        part(Some("2026-11-23"), "2026-11-24"),
    ];
    assert_eq!(
        segments(&parts),
        [
            Segment::Range(None, Some(d("2026-11-20"))),
            Segment::Range(Some(d("2026-11-20")), Some(d("2026-11-21"))),
            Segment::Gap(Some(d("2026-11-21")), Some(d("2026-11-23"))),
            Segment::Range(Some(d("2026-11-23")), Some(d("2026-11-24"))),
            Segment::Gap(Some(d("2026-11-24")), None),
            Segment::Null,
        ]
    );
    // No partition at all: everything is in the DEFAULT one.
    assert_eq!(segments(&[]), [Segment::Gap(None, None), Segment::Null]);
    let (sql, values) = Segment::Range(Some(d("2026-11-21")), Some(d("2026-11-23"))).condition(2);
    assert_eq!(sql, "create_date >= $2::date AND create_date < $3::date");
    assert_eq!(values, [d("2026-11-21"), d("2026-11-23")]);
    assert_eq!(
        Segment::Gap(None, None).condition(2).0,
        "create_date IS NOT NULL"
    );
    assert!(Segment::Gap(None, None).in_default() && Segment::Null.in_default());
    assert!(!Segment::Range(None, Some(d("2026-11-20"))).in_default());
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
    assert_eq!(doc["level"], "WARN");
}
