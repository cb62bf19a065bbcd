//! Guarantee 2: one execution per (device, Correlation Data). Duplicates get the current state:
//! `202` with the same request_id while pending, the same final reply byte for byte once done.

use gateway::wire::Status;
use roost_tests::device::{values, TestDevice};
use roost_tests::store_view::{hex, requests_of};
use roost_tests::{until_logged, Gateway};

#[tokio::test]
async fn duplicates_never_run_the_op_again() {
    let gateway = Gateway::start();
    let mut device = TestDevice::connect(gateway.mqtt, "dd-1").await;
    let args = values(&[1.0, 2.0, 3.0, 4.0]);
    // Back to back: the second lands while the first is pending (or just done).
    device.request("stats", &args, b"same", None).await;
    device.request("stats", &args, b"same", None).await;

    let mut request_ids = Vec::new();
    let mut finals = Vec::new();
    while finals.is_empty() || request_ids.len() < 3 {
        let got = device.reply_for(b"same").await;
        request_ids.push(
            got.reply
                .request_id
                .expect("stored requests carry request_id"),
        );
        match got.reply.status {
            Status::Accepted => {}
            Status::Ok => finals.push(got.payload),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        request_ids.iter().all(|id| *id == request_ids[0]),
        "{request_ids:?}"
    );

    // Once done, a duplicate (a device retrying after waking) gets the stored reply verbatim.
    device.request("stats", &args, b"same", None).await;
    let again = device.reply_for(b"same").await;
    assert_eq!(again.reply.status, Status::Ok);
    assert_eq!(again.reply.request_id, Some(request_ids[0]));
    finals.push(again.payload);
    assert!(
        finals.iter().all(|p| *p == finals[0]),
        "final replies differ"
    );

    let rows = requests_of(&gateway, "dd-1");
    assert_eq!(rows.len(), 1, "one stored request: {rows:?}");
    assert_eq!(rows[0].corr, hex(b"same"));
    assert_eq!(rows[0].executions, 1);
    assert_eq!(rows[0].state, "done");

    // The same correlation from another device is another request.
    let mut other = TestDevice::connect(gateway.mqtt, "dd-2").await;
    other.request("stats", &args, b"same", None).await;
    let accepted = other.reply_for(b"same").await;
    assert_ne!(accepted.reply.request_id, Some(request_ids[0]));
}

/// The dedupe window: long enough for a kill and restart inside it on a slow machine (a
/// 2 s window was once outlasted by the restart under load), and waited out after.
const WINDOW: std::time::Duration = std::time::Duration::from_secs(6);

#[tokio::test]
async fn the_dedupe_key_survives_a_restart_and_expires_with_its_window() {
    let mut gateway = Gateway::start_with(&format!(
        "[limits]\ndedupe_window_s = {}\n",
        WINDOW.as_secs()
    ));
    let mut device = TestDevice::connect(gateway.mqtt, "dd-3").await;
    let args = values(&[7.0, 8.0]);
    let sent = std::time::Instant::now();
    device.request("stats", &args, b"k", None).await;
    let accepted = device.reply_for(b"k").await;
    // The gateway received the request between `sent` and now: its window ends after
    // `sent + WINDOW` and by `received_by + WINDOW`.
    let received_by = std::time::Instant::now();
    let first_id = accepted.reply.request_id.expect("request_id");
    let done = loop {
        let got = device.reply_for(b"k").await;
        if got.reply.status == Status::Ok {
            break got;
        }
    };
    device.ack(b"k").await;
    // Another request, acked: nothing but the gateway's retention forgets it.
    device.request("stats", &args, b"p", None).await;
    while device.reply_for(b"p").await.reply.status != Status::Ok {}
    device.ack(b"p").await;
    roost_tests::device::wait_settled(gateway.mqtt, "dd-3").await;
    drop(device);

    gateway.kill();
    gateway.restart();
    let mut device = TestDevice::connect(gateway.mqtt, "dd-3").await;
    device.request("stats", &args, b"k", None).await;
    let again = device.reply_for(b"k").await;
    assert!(
        sent.elapsed() < WINDOW,
        "the restart took longer than the dedupe window ({:?}): the test cannot tell",
        sent.elapsed()
    );
    assert_eq!(
        again.reply.request_id,
        Some(first_id),
        "still a duplicate after a restart"
    );
    assert_eq!(again.payload, done.payload);

    // Let the window pass: the same correlation is then a new request.
    tokio::time::sleep_until((received_by + WINDOW + std::time::Duration::from_millis(100)).into())
        .await;
    device.request("stats", &args, b"k", None).await;
    let fresh = device.reply_for(b"k").await;
    assert_eq!(fresh.reply.status, Status::Accepted);
    assert_ne!(fresh.reply.request_id, Some(first_id));

    // The gateway's retention then forgets the other request (acked, past the window; the
    // original made way for the new one) at its next prune, every 10 s.
    let within = gateway::store::retention::EVERY * 2;
    until_logged(&gateway.log_path(), "pruned requests=1 ", within).await;
}
