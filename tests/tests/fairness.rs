//! Guarantee 6: fairness under load. One device keeps a backlog of long `spectrum` requests at
//! its quota (topping it up as each finishes) while a quiet device sends one small `stats`
//! request. With one worker and per-device round robin, the quiet request waits for at most the
//! job running when it was queued and one turn of the flooder, never for the flooder's backlog;
//! the flooder gets `429` past its quota.
//!
//! Counted in completions, never in time. The gateway runs in external mode against Mosquitto,
//! where one observer subscribed to `devices/+/reply/#` sees every reply in the order the
//! gateway published it (one connection publishes them all, and a broker keeps one publisher's
//! order towards a subscriber), so "how many of the flooder's jobs finished between the quiet
//! request's `202` and its final reply" is read off one ordered stream. Behind the front door
//! each device's replies arrive on its own connection, which gives no order between devices.
//! The scheduler is the same in both modes.

use gateway::wire::Status;
use roost_tests::device::{options, values, Received, TestDevice};
use roost_tests::{workload, Gateway, Mosquitto};

/// The flooder's quota, `limits.max_pending_per_device`: its backlog, kept full.
const QUOTA: usize = 8;
/// Flooder requests sent in all (a bound on the test, also when fairness is broken).
const FLOOD: usize = 4 * QUOTA;
/// The most flooder jobs that may finish after the quiet request's `202` and before its final
/// reply: the one running when it was queued, one round-robin turn of the flooder (the only
/// other device with work), and one that may finish between the `202` and the queueing (intake
/// sends the `202` first).
const BOUND: usize = 3;

/// Which device a reply on `devices/{id}/reply` is for.
fn device_of(got: &Received) -> &str {
    got.topic.split('/').nth(1).expect("devices/{id}/reply")
}

fn corr_of(got: &Received) -> String {
    String::from_utf8_lossy(got.corr.as_deref().expect("correlated")).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_device_is_served_within_one_turn_of_a_flooders_backlog() {
    let mosquitto = Mosquitto::start();
    let _gateway = Gateway::start_with(&format!(
        "[gateway]\nworkers = 1\n[broker]\nmode = \"external\"\nurl = \"mqtt://{}\"\n\
         [limits]\nmax_pending_per_device = {QUOTA}\nmax_payload_bytes = 1048576\n",
        mosquitto.addr
    ));
    let mut observer = TestDevice::watch(mosquitto.addr, "observer", "devices/+/reply/#").await;
    let mut flooder = TestDevice::connect(mosquitto.addr, "flooder").await;
    let quiet = TestDevice::connect_with(options("quiet", mosquitto.addr), "quiet", false).await;
    workload::store_telemetry(&mut flooder).await;

    // A burst past the quota: QUOTA accepted, the next one refused with 429 and a retry hint.
    let spectrum = workload::windowed_spectrum();
    for i in 0..=QUOTA {
        flooder
            .request("spectrum", &spectrum, format!("f{i}").as_bytes(), None)
            .await;
    }
    let mut sent = QUOTA + 1;
    let (mut accepted, mut refused, mut finished) = (0, 0, 0);
    while accepted + refused < QUOTA + 1 {
        let got = observer.next().await;
        if device_of(&got) != "flooder" || !corr_of(&got).starts_with('f') {
            continue; // the telemetry probes' replies
        }
        match got.reply.status {
            Status::Accepted => accepted += 1,
            Status::TooMany => {
                refused += 1;
                assert!(got.reply.retry_after_ms.is_some_and(|ms| ms > 0));
                assert_eq!(
                    got.reply.error.as_ref().map(|e| e.code.as_str()),
                    Some("too_many_pending")
                );
            }
            Status::Ok => finished += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((accepted, refused), (QUOTA, 1));

    // The quiet request; meanwhile every flooder completion is replaced by a new request, so the
    // flooder's queue stays full (a refill that races its slot's release gets 429: tolerated).
    quiet
        .request("stats", &values(&[1.0, 2.0, 3.0]), b"q", None)
        .await;
    let mut flooder_pending_at_q = None;
    let mut finished_after_q = 0;
    loop {
        let got = observer.next().await;
        match (device_of(&got), got.reply.status) {
            ("quiet", Status::Accepted) => {
                assert_eq!(corr_of(&got), "q");
                flooder_pending_at_q = Some(accepted - finished);
            }
            ("quiet", Status::Ok) => {
                assert!(flooder_pending_at_q.is_some(), "202 before the final reply");
                break;
            }
            ("flooder", Status::Ok) if corr_of(&got).starts_with('f') => {
                finished += 1;
                if flooder_pending_at_q.is_some() {
                    finished_after_q += 1;
                }
                if sent < FLOOD {
                    let corr = format!("f{sent}");
                    flooder
                        .request("spectrum", &spectrum, corr.as_bytes(), None)
                        .await;
                    sent += 1;
                }
            }
            ("flooder", Status::Accepted) => accepted += 1,
            ("flooder", Status::TooMany) => {}
            (device, status) => panic!("unexpected {status:?} for {device}: {:?}", got.reply),
        }
    }
    let pending = flooder_pending_at_q.expect("the quiet request was accepted");
    // Without a backlog longer than the bound, first-come-first-served would pass too.
    assert!(
        pending > BOUND,
        "the flooder had only {pending} pending when the quiet request came"
    );
    assert!(
        finished_after_q <= BOUND,
        "the quiet request waited for {finished_after_q} of the flooder's jobs (its backlog was \
         {pending}; round robin allows {BOUND}): the flooder's backlog went first"
    );
}
