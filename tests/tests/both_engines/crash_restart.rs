//! Guarantees 1 and 2 across a crash: a burst of requests, SIGKILL of the gateway while many are
//! still queued, a restart on the same data dir: every request that got a `202` gets its final
//! reply with the `request_id` of its `202`, and no op ran twice.

use std::collections::HashMap;

use gateway::wire::{RequestId, Status};
use roost_tests::device::{options, values, TestDevice};
use roost_tests::store_view::{hex, requests_of};
use roost_tests::workload::{slow_infer, slow_model};
use roost_tests::Gateway;

const REQUESTS: usize = 40;
/// Rows of each request's slow inference: work that takes far longer to run than to send and
/// commit, so many requests are still queued at the kill on a fast machine too (`stats` over
/// big series did not: on PostgreSQL, 71 of 80 such requests had finished before the kill here).
const ROWS: usize = 16;

fn corr(i: usize) -> Vec<u8> {
    format!("burst-{i}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_requests_survive_kill_9_and_run_once() {
    // The device never acks, so at the restart every request that finished still holds its final
    // reply, and the device's one wake redelivers at most `max_held_replies_per_device` of them,
    // oldest first. With the default 64, a run that had fewer than 16 requests still queued at
    // the kill left the newest held replies (those the device had not seen yet) for a next wake
    // that never comes. The cap is above REQUESTS, so the wake redelivers every held reply.
    let mut gateway = Gateway::start_with(&format!(
        "[gateway]\nworkers = 1\n[limits]\n\
         max_pending_per_device = 1000\nmax_held_replies_per_device = 1000\n{}",
        slow_model()
    ));
    let mut device = TestDevice::connect(gateway.mqtt, "crash-1").await;
    let args = slow_infer(ROWS);
    for i in 0..REQUESTS {
        device.request("infer", &args, &corr(i), None).await;
    }

    // Collect every 202 (finals may interleave), then kill -9 at once.
    let mut accepted: HashMap<Vec<u8>, RequestId> = HashMap::new();
    let mut finals: HashMap<Vec<u8>, RequestId> = HashMap::new();
    while accepted.len() < REQUESTS {
        let got = device.next().await;
        let key = got.corr.expect("correlated").to_vec();
        let id = got.reply.request_id.expect("request_id");
        match got.reply.status {
            Status::Accepted => assert!(accepted.insert(key, id).is_none(), "one 202 per request"),
            Status::Ok => {
                finals.insert(key, id);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    gateway.kill();
    let finished_before_kill = finals.len();
    assert!(
        finished_before_kill < REQUESTS,
        "all requests finished before the kill; the test needs more work per request"
    );
    drop(device);

    gateway.restart();
    // The device wakes: connects, subscribes, and says so; held replies come, then the rest as
    // the requeued requests finish.
    let mut device =
        TestDevice::connect_with(options("crash-1", gateway.mqtt), "crash-1", true).await;
    device
        .publish_raw(
            "devices/crash-1/presence",
            gateway::wire::envelope::encode_value(&ciborium::Value::Map(vec![(
                ciborium::Value::Text("state".into()),
                ciborium::Value::Text("awake".into()),
            )])),
            None,
        )
        .await;
    let mut after_restart = 0;
    while finals.len() < REQUESTS {
        let got = device.next().await;
        assert_eq!(got.reply.status, Status::Ok, "{:?}", got.reply);
        let key = got.corr.expect("correlated").to_vec();
        let id = got.reply.request_id.expect("request_id");
        assert_eq!(
            accepted.get(&key),
            Some(&id),
            "final reply carries the request_id of its 202"
        );
        if finals.insert(key, id).is_none() {
            after_restart += 1;
        }
    }
    assert!(
        after_restart > 0,
        "some replies came from the restarted gateway"
    );

    let rows = requests_of(&gateway, "crash-1");
    assert_eq!(rows.len(), REQUESTS);
    for row in rows {
        assert_eq!(row.state, "done", "{row:?}");
        assert_eq!(row.executions, 1, "op ran exactly once: {row:?}");
        let key = accepted
            .iter()
            .find(|(k, _)| hex(k) == row.corr)
            .map(|(_, id)| id.to_string());
        assert_eq!(key.as_deref(), Some(row.id.as_str()));
    }
}

/// A device that saw PUBACK for a request may sleep at once: the front door PUBACKs only after
/// intake committed the request, so kill -9 right after the PUBACKs loses none of them. The
/// device is not even subscribed before the crash, so everything it learns comes after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pubacked_request_survives_kill_9() {
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event};

    const SENT: usize = 50;
    let mut gateway =
        Gateway::start_with("[gateway]\nworkers = 1\n[limits]\nmax_pending_per_device = 1000\n");
    let (client, mut eventloop) = AsyncClient::new(options("puback-1", gateway.mqtt), 256);
    let payload = gateway::wire::envelope::encode_value(&values(&[1.0, 2.0, 3.0]));
    for i in 0..SENT {
        let properties = PublishProperties {
            correlation_data: Some(corr(i).into()),
            ..Default::default()
        };
        client
            .publish_with_properties(
                "devices/puback-1/req/stats",
                QoS::AtLeastOnce,
                false,
                payload.clone(),
                properties,
            )
            .await
            .expect("queued");
    }
    let mut pubacks = 0;
    let waited = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while pubacks < SENT {
            match eventloop.poll().await.expect("connected") {
                Event::Incoming(Packet::PubAck(ack)) => {
                    assert_eq!(
                        ack.reason,
                        rumqttc::v5::mqttbytes::v5::PubAckReason::Success
                    );
                    pubacks += 1;
                }
                _ => continue,
            }
        }
    });
    waited.await.expect("every request PUBACKed");
    gateway.kill();
    drop((client, eventloop));

    gateway.restart();
    let rows = requests_of(&gateway, "puback-1");
    assert_eq!(rows.len(), SENT, "every PUBACKed request is in the store");
    let mut device = TestDevice::wake(gateway.mqtt, "puback-1").await;
    let mut finals = HashMap::new();
    while finals.len() < SENT {
        let got = device.next().await;
        assert_eq!(got.reply.status, Status::Ok, "{:?}", got.reply);
        finals.insert(got.corr.expect("correlated").to_vec(), got.reply.request_id);
    }
    for row in requests_of(&gateway, "puback-1") {
        assert_eq!(row.executions, 1, "op ran exactly once: {row:?}");
    }
}
