//! Unit tests of `poll`, kept apart so that its source stays readable.

use super::*;

fn options() -> PollOptions {
    PollOptions {
        queue_url: "https://sqs.us-east-1.amazonaws.com/123456789012/logins".into(),
        concurrency: DEFAULT_CONCURRENCY,
        batch_size: DEFAULT_BATCH_SIZE,
        batch_window: Duration::ZERO,
        visibility_timeout: None,
        batch_timeout: Duration::from_secs(DEFAULT_BATCH_TIMEOUT_SECONDS),
        grace_period: Duration::from_secs(DEFAULT_GRACE_PERIOD_SECONDS),
        health_addr: None,
    }
}

#[test]
fn a_renewal_is_timed_from_the_sending_of_the_call_that_granted_the_lease() {
    let sent = Instant::now();
    let at = |visibility_s: u64| next_beat(sent, Duration::from_secs(visibility_s)) - sent;
    assert_eq!(at(30), Duration::from_secs(10));
    assert_eq!(at(2), Duration::from_secs(2) / 3);
    assert_eq!(at(1), MIN_BEAT);
}

#[test]
fn a_batch_window_must_end_well_within_the_visibility_timeout() {
    check_window(Duration::ZERO, 1).unwrap();
    check_window(Duration::from_secs(15), 30).unwrap();
    let Err(PollError::Usage(m)) = check_window(Duration::from_secs(16), 30) else {
        panic!("a window over half the visibility is refused");
    };
    assert!(
        m.contains("--batch-window (16 s)")
            && m.contains("(30 s)")
            && m.contains("--visibility-timeout"),
        "{m}"
    );
}

#[test]
fn the_defaults_are_valid_and_impossible_settings_are_usage_errors() {
    options().validate().unwrap();
    let bad: Vec<(PollOptions, &str)> = vec![
        (
            PollOptions {
                concurrency: 0,
                ..options()
            },
            "--concurrency",
        ),
        (
            PollOptions {
                batch_size: 10_001,
                ..options()
            },
            "--batch-size",
        ),
        (
            PollOptions {
                batch_size: 100,
                ..options()
            },
            "--batch-window",
        ),
        (
            PollOptions {
                grace_period: Duration::from_secs(20),
                ..options()
            },
            "--grace-period",
        ),
        (
            PollOptions {
                queue_url: "logins".into(),
                ..options()
            },
            "--queue-url",
        ),
        (
            PollOptions {
                visibility_timeout: Some(0),
                ..options()
            },
            "--visibility-timeout",
        ),
    ];
    for (o, names) in bad {
        match o.validate() {
            Err(PollError::Usage(m)) => assert!(m.contains(names), "{m}"),
            other => panic!("{names}: {other:?}"),
        }
    }
    PollOptions {
        batch_size: 100,
        batch_window: Duration::from_secs(1),
        ..options()
    }
    .validate()
    .unwrap();
}
