//! Unit tests of `partitions`.

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
    assert_eq!(
        sql,
        "sent_at >= $2::date::timestamp AT TIME ZONE 'UTC' AND sent_at < $3::date::timestamp AT TIME ZONE 'UTC'"
    );
    assert_eq!(values, [d("2026-11-21"), d("2026-11-23")]);
    assert_eq!(Segment::Gap(None, None).condition(2).0, "true");
    assert_eq!(Segment::Null.condition(2).0, "false");
    assert!(Segment::Gap(None, None).in_default() && Segment::Null.in_default());
    assert!(!Segment::Range(None, Some(d("2026-11-20"))).in_default());
}

#[test]
fn days_ahead_counts_the_days_covered_after_today_up_to_the_first_gap() {
    let default = Partition {
        name: "user_logins_default".into(),
        lo: None,
        hi: None,
        is_default: true,
    };
    let today = d("2026-11-26");
    let week: Vec<Partition> = (0..8)
        .map(|i| {
            let lo = today + chrono::Days::new(i);
            part(
                Some(&lo.to_string()),
                &(lo + chrono::Days::new(1)).to_string(),
            )
        })
        .collect();
    // maintain made today and 7 days ahead.
    let mut all = vec![default.clone()];
    all.extend(week.iter().cloned());
    assert_eq!(days_ahead(&all, today), Some(7));
    // No partition for 29 November: the 27th and 28th are ready, the
    // 29th's rows would go to DEFAULT (later partitions do not count).
    let gapped: Vec<Partition> = all
        .iter()
        .filter(|p| p.lo != Some(d("2026-11-29")))
        .cloned()
        .collect();
    assert_eq!(days_ahead(&gapped, today), Some(2));
    // Only today's: tomorrow's rows go to DEFAULT.
    assert_eq!(days_ahead(&all[..2], today), Some(0));
    // None for today: today's rows already do.
    assert_eq!(
        days_ahead(
            &[default.clone(), part(Some("2026-11-20"), "2026-11-21")],
            today
        ),
        Some(-1)
    );
    // A converted table's MINVALUE partition and wider partitions count too.
    let converted = [
        part(None, "2026-11-27"),
        part(Some("2026-11-27"), "2026-12-01"),
    ];
    assert_eq!(days_ahead(&converted, today), Some(4));
    // No range partitions: nothing to report.
    assert_eq!(days_ahead(&[default], today), None);
    assert_eq!(days_ahead(&[], today), None);
}

#[test]
fn catalog_bounds_read_as_the_function_lists_them() {
    let day = |s| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok();
    assert_eq!(parse_bound("DEFAULT"), (None, None, true));
    assert_eq!(
        parse_bound("FOR VALUES FROM ('2026-11-26') TO ('2026-11-27')"),
        (day("2026-11-26"), day("2026-11-27"), false)
    );
    assert_eq!(
        parse_bound("FOR VALUES FROM (MINVALUE) TO ('2026-01-01')"),
        (None, day("2026-01-01"), false)
    );
}
