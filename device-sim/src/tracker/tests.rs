//! Unit tests of [`super::Tracker`]: one per way a reply can be right or wrong.

use super::*;
use crate::verify::stats_value;
use wire::ErrorCode;
use wire::{Reply, State};

const TOPIC: &str = "devices/d1/reply";

fn tracker(strict: bool) -> Tracker {
    Tracker::new(9, TOPIC.into(), strict)
}

fn accepted(id: RequestId) -> Reply {
    let mut reply = Reply::new(Status::Accepted, State::Accepted);
    reply.request_id = Some(id);
    reply.retry_after_ms = Some(5);
    reply
}

fn done(id: RequestId, values: &[f64]) -> Reply {
    let mut reply = Reply::new(Status::Ok, State::Done);
    reply.request_id = Some(id);
    reply.result = stats_value(values);
    reply
}

fn deliver(tracker: &mut Tracker, corr: &[u8], reply: &Reply) -> Outcome {
    let payload = reply.encode();
    let code = reply.status.code().to_string();
    let msg = Incoming {
        topic: TOPIC,
        corr: Some(corr),
        content_type: Some("application/cbor"),
        status_property: Some(&code),
        payload: &payload,
    };
    tracker.on_reply(msg, Instant::now())
}

const VALUES: [f64; 4] = [1.0, 2.0, 3.0, 10.0];

#[test]
fn accepted_then_repeated_then_done_then_duplicates() {
    let mut t = tracker(true);
    let corr = t.start(Expect::Stats(VALUES.to_vec()), Instant::now());
    let id = RequestId::new();
    assert!(matches!(
        deliver(&mut t, &corr, &accepted(id)),
        Outcome::Accepted { .. }
    ));
    assert_eq!(
        deliver(&mut t, &corr, &accepted(id)),
        Outcome::Repeated202,
        "a 202 again (a retry's answer) is not a duplicate final"
    );
    let outcome = deliver(&mut t, &corr, &done(id, &VALUES));
    assert!(
        matches!(
            outcome,
            Outcome::Final {
                status: 200,
                had_202: true,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(t.in_flight(), 0);
    assert_eq!(
        deliver(&mut t, &corr, &done(id, &VALUES)),
        Outcome::Duplicate
    );
    assert_eq!(deliver(&mut t, &corr, &accepted(id)), Outcome::Duplicate);
    assert_eq!(t.give_up(), Leftovers::default());
}

fn reason(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Mismatch { reason, .. } => reason,
        other => panic!("expected a mismatch, got {other:?}"),
    }
}

#[test]
fn a_wrong_result_finishes_the_request_as_mismatched() {
    let mut t = tracker(true);
    let corr = t.start(Expect::Stats(VALUES.to_vec()), Instant::now());
    let id = RequestId::new();
    deliver(&mut t, &corr, &accepted(id));
    assert_eq!(
        reason(deliver(&mut t, &corr, &done(id, &[1.0, 2.0]))),
        "result_value"
    );
    assert_eq!(t.in_flight(), 0);
}

#[test]
fn strictness_about_the_202() {
    let id = RequestId::new();
    // A final that overtakes its 202 is fine once the 202 (same id) turns up...
    let mut strict = tracker(true);
    let corr = strict.start(Expect::Stats(VALUES.to_vec()), Instant::now());
    let outcome = deliver(&mut strict, &corr, &done(id, &VALUES));
    assert!(
        matches!(outcome, Outcome::Final { had_202: false, .. }),
        "{outcome:?}"
    );
    assert_eq!(
        deliver(&mut strict, &corr, &done(id, &VALUES)),
        Outcome::Duplicate
    );
    assert!(matches!(
        deliver(&mut strict, &corr, &accepted(id)),
        Outcome::Late202 { .. }
    ));
    assert_eq!(
        deliver(&mut strict, &corr, &accepted(id)),
        Outcome::Duplicate
    );
    assert_eq!(strict.give_up(), Leftovers::default());
    // ...a 202 with another id is a mismatch, and one that never comes is counted at the end.
    let corr = strict.start(Expect::Stats(VALUES.to_vec()), Instant::now());
    deliver(&mut strict, &corr, &done(id, &VALUES));
    let other = accepted(RequestId::new());
    assert_eq!(
        reason(deliver(&mut strict, &corr, &other)),
        "request_id_changed"
    );
    let corr = strict.start(Expect::Stats(VALUES.to_vec()), Instant::now());
    deliver(&mut strict, &corr, &done(id, &VALUES));
    assert_eq!(strict.unsettled(), 1);
    let left = strict.give_up();
    assert_eq!(
        (left.lost, left.ok_without_202, left.error_without_202),
        (0, 1, 0)
    );

    let mut relaxed = tracker(false);
    let corr = relaxed.start(Expect::Stats(VALUES.to_vec()), Instant::now());
    let outcome = deliver(&mut relaxed, &corr, &done(id, &VALUES));
    assert!(
        matches!(outcome, Outcome::Final { had_202: false, .. }),
        "{outcome:?}"
    );

    let mut t = tracker(true);
    let corr = t.start(Expect::Stats(VALUES.to_vec()), Instant::now());
    deliver(&mut t, &corr, &accepted(id));
    let other = done(RequestId::new(), &VALUES);
    assert_eq!(reason(deliver(&mut t, &corr, &other)), "request_id_changed");
}

#[test]
fn intake_rejections_are_final_errors() {
    let mut t = tracker(true);
    let corr = t.start(Expect::Stats(VALUES.to_vec()), Instant::now());
    let busy = Reply::rejected(ErrorCode::QueueFull, "try later");
    let outcome = deliver(&mut t, &corr, &busy);
    assert!(
        matches!(outcome, Outcome::Final { status: 503, .. }),
        "{outcome:?}"
    );
}

#[test]
fn foreign_unknown_and_lost() {
    let mut t = tracker(true);
    let _ = t.start(Expect::Stats(VALUES.to_vec()), Instant::now());
    let id = RequestId::new();
    assert_eq!(
        deliver(&mut t, &correlation(8, 0), &accepted(id)),
        Outcome::Foreign
    );
    assert_eq!(
        reason(deliver(&mut t, &correlation(9, 5), &accepted(id))),
        "unknown_correlation"
    );
    assert_eq!(
        reason(deliver(&mut t, b"xy", &accepted(id))),
        "unknown_correlation"
    );
    assert_eq!(t.give_up().lost, 1);
    assert_eq!(t.started(), 1);
}

#[test]
fn properties_and_topic_are_checked() {
    let mut t = tracker(true);
    let corr = t.start(Expect::Stats(VALUES.to_vec()), Instant::now());
    let payload = accepted(RequestId::new()).encode();
    let good = Incoming {
        topic: TOPIC,
        corr: Some(&corr),
        content_type: Some("application/cbor"),
        status_property: Some("202"),
        payload: &payload,
    };
    let now = Instant::now();
    let cases = [
        (
            Incoming {
                topic: "devices/d2/reply",
                ..good
            },
            "wrong_topic",
        ),
        (
            Incoming {
                content_type: None,
                ..good
            },
            "content_type",
        ),
        (
            Incoming {
                status_property: Some("200"),
                ..good
            },
            "status_property",
        ),
        (Incoming { corr: None, ..good }, "no_correlation"),
        (
            Incoming {
                payload: b"\x01",
                ..good
            },
            "bad_payload",
        ),
    ];
    for (msg, expected) in cases {
        assert_eq!(reason(t.on_reply(msg, now)), expected);
    }
    // A broken 202 leaves the request pending; a broken payload is taken as final.
    assert_eq!(t.in_flight(), 0);
}
