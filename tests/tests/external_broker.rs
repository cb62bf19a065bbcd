//! Scaling out: gateways in `[broker] mode = "external"` share one MQTT 5 broker (Mosquitto, a
//! broker nobody here wrote) through a shared subscription. Devices talk to Mosquitto directly;
//! each request is taken and answered by exactly one gateway, and replies held by a gateway reach
//! a device when it is next seen awake on the broker.

use std::collections::HashSet;

use gateway::wire::Status;
use roost_tests::device::{values, TestDevice};
use roost_tests::{Gateway, Mosquitto};

fn external(mosquitto: &Mosquitto, id: &str) -> Gateway {
    Gateway::start_with(&format!(
        "[gateway]\nid = \"{id}\"\n[broker]\nmode = \"external\"\nurl = \"mqtt://{}\"\nshare_group = \"roost\"\n\
         [limits]\nmax_pending_per_device = 100\n",
        mosquitto.addr
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_requests_through_mosquitto() {
    let mosquitto = Mosquitto::start();
    let a = external(&mosquitto, "gw-a");
    let b = external(&mosquitto, "gw-b");
    let mut device = TestDevice::connect(mosquitto.addr, "ext-1").await;
    const N: usize = 40;
    for i in 0..N {
        device
            .request(
                "stats",
                &values(&[i as f64, 1.0]),
                format!("c{i}").as_bytes(),
                None,
            )
            .await;
    }
    let mut accepted = HashSet::new();
    let mut done = HashSet::new();
    while done.len() < N {
        let got = device.next().await;
        let corr = got.corr.clone().expect("correlated");
        match got.reply.status {
            Status::Accepted => assert!(accepted.insert(corr), "one 202 per request"),
            Status::Ok => assert!(
                done.insert(corr.clone()),
                "one final reply per request while awake: {corr:?} {:?} {:?}",
                got.reply.request_id,
                got.topic
            ),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(accepted.len(), N);
    // Both gateways took a share (Mosquitto round-robins shared subscriptions).
    let a_rows = roost_tests::store_view::requests_of(&a, "ext-1").len();
    let b_rows = roost_tests::store_view::requests_of(&b, "ext-1").len();
    assert_eq!(
        a_rows + b_rows,
        N,
        "each request stored by exactly one gateway"
    );
    assert!(a_rows > 0 && b_rows > 0, "shared: {a_rows} + {b_rows}");
}

#[tokio::test]
async fn a_held_reply_reaches_the_device_when_it_is_next_seen_on_the_broker() {
    let mosquitto = Mosquitto::start();
    let gateway = external(&mosquitto, "gw-x");
    // Sent without subscribing: the device is "asleep" as far as replies go.
    let silent = TestDevice::connect_with(
        roost_tests::device::options("ext-2", mosquitto.addr),
        "ext-2",
        false,
    )
    .await;
    silent
        .request("stats", &values(&[3.0, 5.0]), b"held", None)
        .await;
    silent
        .publish_raw(
            "devices/ext-2/presence",
            roost_tests::device::presence(false),
            None,
        )
        .await;
    silent.disconnect().await;
    // The request is stored and done once the gateway has taken it; look, a bounded number of
    // times (each look is one run of the operator CLI).
    let mut rows = Vec::new();
    for _ in 0..1000 {
        rows = roost_tests::store_view::requests_of(&gateway, "ext-2");
        if rows.first().is_some_and(|r| r.state == "done") {
            break;
        }
    }
    assert!(rows.first().is_some_and(|r| r.state == "done"), "{rows:?}");
    assert_eq!(rows.len(), 1);
    // It wakes: subscribes and says so; the held reply comes.
    let mut device = TestDevice::wake(mosquitto.addr, "ext-2").await;
    let got = device.reply_for(b"held").await;
    assert_eq!(got.reply.status, Status::Ok);
    assert_eq!(
        got.reply.request_id.map(|r| r.to_string()),
        Some(rows[0].id.clone())
    );
    let _ = gateway;
}

/// Waits for the retained gateway status to say `state` (earlier states may come first).
async fn wait_state(watcher: &mut TestDevice, state: &str) {
    loop {
        let status = watcher.next_json().await;
        if status["state"] == state {
            return;
        }
    }
}

#[tokio::test]
async fn the_last_will_marks_a_killed_gateway_offline_and_a_restart_online() {
    let mosquitto = Mosquitto::start();
    let mut gateway = external(&mosquitto, "gw-w");
    let options = roost_tests::device::options("status-ops", mosquitto.addr);
    let mut watcher = TestDevice::connect_with(options, "status-ops", false).await;
    watcher
        .client
        .subscribe(
            "gateway/gw-w/status",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        )
        .await
        .expect("subscribe");
    wait_state(&mut watcher, "online").await;

    gateway.kill(); // no drain: only the broker's Will can say so
    wait_state(&mut watcher, "offline").await;

    gateway.restart();
    wait_state(&mut watcher, "online").await;

    let status = gateway.terminate();
    assert_eq!(status.code(), Some(0));
    wait_state(&mut watcher, "draining").await;
    wait_state(&mut watcher, "offline").await;
}
