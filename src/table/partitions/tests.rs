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
    assert_eq!(sql, "create_date >= $2::date AND create_date < $3::date");
    assert_eq!(values, [d("2026-11-21"), d("2026-11-23")]);
    assert_eq!(
        Segment::Gap(None, None).condition(2).0,
        "create_date IS NOT NULL"
    );
    assert!(Segment::Gap(None, None).in_default() && Segment::Null.in_default());
    assert!(!Segment::Range(None, Some(d("2026-11-20"))).in_default());
}
