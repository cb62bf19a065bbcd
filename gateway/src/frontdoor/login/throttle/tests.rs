//! The throttle's rules, with made-up clocks: no sockets, no sleeps.

use super::*;

const MS: Duration = Duration::from_millis(1);

fn config() -> ThrottleConfig {
    ThrottleConfig {
        max_failures: 4,
        delay: 100 * MS,
        max_delay: 1000 * MS,
        lockout: Duration::from_secs(60),
        capacity: 8,
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

fn go(after: Duration) -> Verdict {
    Verdict::Go(after)
}

#[test]
fn a_clean_source_goes_at_once() {
    let mut throttle = LoginThrottle::new(config());
    let now = Instant::now();
    let check = throttle.check(ip("10.0.0.1"), Some("admin"), now);
    assert_eq!(check.verdict, go(Duration::ZERO));
    assert!(!check.first_throttle);
    assert!(throttle.is_empty());
}

#[test]
fn failures_grow_the_delay_then_refuse_until_the_lockout_passes() {
    let mut throttle = LoginThrottle::new(config());
    let source = ip("10.0.0.1");
    let mut now = Instant::now();
    let mut waits = Vec::new();
    for _ in 0..4 {
        match throttle.check(source, Some("admin"), now).verdict {
            Verdict::Go(wait) => waits.push(wait),
            Verdict::Refuse(_) => panic!("refused before max_failures"),
        }
        now += waits.last().copied().unwrap_or_default();
        throttle.failed(source, Some("admin"), now);
    }
    // At once, then 100, 200, 400 ms: each wait is the delay of the failures so far.
    assert_eq!(waits, [0, 100, 200, 400].map(|ms| ms * MS));
    // Four failures: refused outright, held max_delay, and still so a minute later but one ms.
    let last_failure = now;
    now += 5000 * MS;
    assert_eq!(
        throttle.check(source, Some("admin"), now).verdict,
        Verdict::Refuse(1000 * MS)
    );
    let just_before = last_failure + Duration::from_secs(60) - MS;
    assert!(matches!(
        throttle.check(source, None, just_before).verdict,
        Verdict::Refuse(_)
    ));
    // The lockout passed: forgotten.
    let after = last_failure + Duration::from_secs(60);
    assert_eq!(
        throttle.check(source, Some("admin"), after).verdict,
        go(Duration::ZERO)
    );
}

#[test]
fn the_delay_is_capped() {
    let config = ThrottleConfig {
        max_failures: 100,
        ..config()
    };
    assert_eq!(delay_for(&config, 1), 100 * MS);
    assert_eq!(delay_for(&config, 4), 800 * MS);
    assert_eq!(delay_for(&config, 5), 1000 * MS);
    assert_eq!(delay_for(&config, 99), 1000 * MS);
}

#[test]
fn parallel_attempts_of_one_source_are_spaced_and_past_max_delay_refused() {
    let mut throttle = LoginThrottle::new(config());
    let source = ip("10.0.0.1");
    let now = Instant::now();
    throttle.failed(source, None, now);
    // Ten connections at the same instant: 100 ms apart, until more than max_delay waits.
    let verdicts: Vec<_> = (0..12)
        .map(|_| throttle.check(source, None, now).verdict)
        .collect();
    let goes: Vec<_> = verdicts
        .iter()
        .filter_map(|v| match v {
            Verdict::Go(wait) => Some(*wait),
            Verdict::Refuse(_) => None,
        })
        .collect();
    assert_eq!(goes, (1..=10).map(|n| n * 100 * MS).collect::<Vec<_>>());
    assert_eq!(verdicts[10], Verdict::Refuse(1000 * MS));
}

#[test]
fn a_name_under_attack_does_not_touch_clean_sources() {
    let mut throttle = LoginThrottle::new(config());
    let now = Instant::now();
    // Four sources fail once each against "admin": the name reaches max_failures.
    for n in 1..=4 {
        throttle.failed(ip(&format!("10.0.0.{n}")), Some("admin"), now);
    }
    // Each of them is now refused for "admin" (it inherits the name's level)...
    assert!(matches!(
        throttle.check(ip("10.0.0.1"), Some("admin"), now).verdict,
        Verdict::Refuse(_)
    ));
    // ...but only delayed for another name, on its own single failure.
    assert_eq!(
        throttle.check(ip("10.0.0.2"), Some("other"), now).verdict,
        go(100 * MS)
    );
    // And the operator at a clean address logs in at once.
    assert_eq!(
        throttle.check(ip("10.0.0.99"), Some("admin"), now).verdict,
        go(Duration::ZERO)
    );
}

#[test]
fn a_success_forgives_the_source_but_not_the_name() {
    let mut throttle = LoginThrottle::new(config());
    let now = Instant::now();
    let source = ip("10.0.0.1");
    for _ in 0..3 {
        throttle.failed(source, Some("admin"), now);
    }
    throttle.succeeded(source);
    assert_eq!(throttle.len(), (0, 1));
    assert_eq!(
        throttle.check(source, Some("admin"), now).verdict,
        go(Duration::ZERO)
    );
}

#[test]
fn throttling_is_reported_once_per_source() {
    let mut throttle = LoginThrottle::new(config());
    let now = Instant::now();
    let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
    throttle.failed(a, None, now);
    throttle.failed(b, None, now);
    let firsts: Vec<bool> = [a, a, b, a, b]
        .iter()
        .map(|source| throttle.check(*source, None, now).first_throttle)
        .collect();
    assert_eq!(firsts, [true, false, true, false, false]);
}

#[test]
fn the_tables_stay_bounded_under_a_flood_of_addresses() {
    let mut throttle = LoginThrottle::new(config());
    let start = Instant::now();
    for n in 0..10_000u32 {
        let source = IpAddr::V4(n.into());
        throttle.failed(source, Some(&format!("name{n}")), start + n * MS);
    }
    assert_eq!(throttle.len(), (8, 8));
    // The most recent failures are the ones kept.
    let recent = IpAddr::V4(9_999u32.into());
    assert!(throttle.sources.records.contains_key(&recent));
    // Expired records make room before live ones are evicted.
    let mut throttle = LoginThrottle::new(config());
    let old = ip("10.0.0.1");
    throttle.failed(old, None, start);
    let later = start + Duration::from_secs(61);
    for n in 0..8u32 {
        throttle.failed(IpAddr::V4((n + 100).into()), None, later);
    }
    assert_eq!(throttle.len(), (8, 0));
    assert!(!throttle.sources.records.contains_key(&old));
}

#[test]
fn ipv6_sources_count_by_their_64() {
    let mut throttle = LoginThrottle::new(config());
    let now = Instant::now();
    for n in 1..=4 {
        throttle.failed(ip(&format!("2001:db8:1:2::{n}")), None, now);
    }
    assert!(matches!(
        throttle
            .check(ip("2001:db8:1:2:ffff::1"), None, now)
            .verdict,
        Verdict::Refuse(_)
    ));
    assert_eq!(
        throttle.check(ip("2001:db8:1:3::1"), None, now).verdict,
        go(Duration::ZERO)
    );
    // IPv4-mapped IPv6 is the IPv4 address.
    throttle.failed(ip("::ffff:10.0.0.7"), None, now);
    assert_eq!(
        throttle.check(ip("10.0.0.7"), None, now).verdict,
        go(100 * MS)
    );
}
