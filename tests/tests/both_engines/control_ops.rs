//! The `status` and `cancel` control ops, as the contract describes them.

use ciborium::Value;
use gateway::wire::{Reply, Status};
use roost_tests::device::{values, TestDevice};
use roost_tests::Gateway;

fn of(corr: &[u8]) -> Value {
    Value::Map(vec![(
        Value::Text("of".into()),
        Value::Bytes(corr.to_vec()),
    )])
}

fn result_field<'a>(reply: &'a Reply, key: &str) -> &'a Value {
    let Some(Value::Map(entries)) = &reply.result else {
        panic!("no result map: {reply:?}")
    };
    gateway::wire::envelope::map_get(entries, key).unwrap_or_else(|| panic!("no {key}"))
}

async fn final_for(device: &mut TestDevice, corr: &[u8]) -> Reply {
    loop {
        let got = device.reply_for(corr).await;
        if got.reply.status != Status::Accepted {
            return got.reply;
        }
    }
}

#[tokio::test]
async fn status_reports_state_and_final_reply() {
    let gateway = Gateway::start();
    let mut device = TestDevice::connect(gateway.mqtt, "ctl-1").await;
    device
        .request("stats", &values(&[2.0, 4.0]), b"job", None)
        .await;
    let done = final_for(&mut device, b"job").await;
    assert_eq!(done.status, Status::Ok);

    device.request("status", &of(b"job"), b"q1", None).await;
    let status = device.reply_for(b"q1").await.reply;
    assert_eq!(status.status, Status::Ok);
    assert_eq!(status.request_id, done.request_id);
    assert_eq!(result_field(&status, "state"), &Value::Text("done".into()));
    let Value::Map(reply) = result_field(&status, "reply") else {
        panic!("reply is a map")
    };
    assert_eq!(
        gateway::wire::envelope::map_get(reply, "status"),
        Some(&Value::Integer(200.into()))
    );

    device
        .request("status", &of(b"never-sent"), b"q2", None)
        .await;
    let unknown = device.reply_for(b"q2").await.reply;
    assert_eq!(unknown.status, Status::NotFound);
    assert_eq!(unknown.error.expect("error").code, "unknown_request");

    device.request("status", &values(&[1.0]), b"q3", None).await;
    assert_eq!(
        device.reply_for(b"q3").await.reply.status,
        Status::BadRequest
    );

    // Cancelling a finished request is a conflict; an unknown one is not found.
    device.request("cancel", &of(b"job"), b"c1", None).await;
    let conflict = device.reply_for(b"c1").await.reply;
    assert_eq!(conflict.status, Status::Conflict);
    device.request("cancel", &of(b"nope"), b"c2", None).await;
    assert_eq!(device.reply_for(b"c2").await.reply.status, Status::NotFound);
}

#[tokio::test]
async fn cancel_of_a_queued_request_gives_410_and_it_never_runs() {
    // One worker, kept busy by another device's large requests, so the target stays queued.
    let gateway =
        Gateway::start_with("[gateway]\nworkers = 1\n[limits]\nmax_payload_bytes = 8388608\n");
    let busy = TestDevice::connect(gateway.mqtt, "ctl-busy").await;
    let big: Vec<f64> = (0..400_000u64)
        .map(|i| ((i * 7919) % 100_003) as f64)
        .collect();
    for i in 0..4u8 {
        busy.request("stats", &values(&big), &[b'b', i], None).await;
    }
    let mut device = TestDevice::connect(gateway.mqtt, "ctl-2").await;
    // A long request of its own ahead of the victim: the fair scheduler alternates devices, so
    // the victim waits behind three long ops, not one (one was a race on a loaded machine).
    device.request("stats", &values(&big), b"ahead", None).await;
    device
        .request("stats", &values(&[1.0]), b"victim", None)
        .await;
    device.request("cancel", &of(b"victim"), b"cx", None).await;

    let mut cancelled = None;
    let mut gone = None;
    while cancelled.is_none() || gone.is_none() {
        let got = device.next().await;
        match (got.corr.as_deref(), got.reply.status) {
            (Some(b"victim"), Status::Accepted) | (Some(b"ahead"), _) => {}
            (Some(b"victim"), Status::Gone) => gone = Some(got.reply),
            (Some(b"cx"), _) => cancelled = Some(got.reply),
            other => panic!("unexpected {other:?}"),
        }
    }
    let cancelled = cancelled.expect("cancel answered");
    assert_eq!(cancelled.status, Status::Ok, "{cancelled:?}");
    assert_eq!(
        result_field(&cancelled, "state"),
        &Value::Text("cancelled".into())
    );
    let gone = gone.expect("final 410");
    assert_eq!(gone.state.as_str(), "cancelled");
    assert_eq!(gone.request_id, cancelled.request_id);

    let rows = roost_tests::store_view::requests_of(&gateway, "ctl-2");
    assert_eq!(rows[0].state, "cancelled");
    assert_eq!(rows[0].executions, 0, "a cancelled request never runs");
}
