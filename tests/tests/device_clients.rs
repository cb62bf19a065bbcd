//! The client libraries device firmware and device services are written with, each as a real
//! sleepy device through the front door, unchanged and knowing nothing of Roost but its topics:
//! connect with a persistent session, subscribe on the first wake only, request, sleep
//! (disconnect), wake, get the final reply, acknowledge it.
//!
//! Eclipse Paho C (Debian `libpaho-mqtt-dev`, MQTT 5 and 3.1.1, a small C program built here
//! with `cc`), MQTT.js (npm `mqtt`, run with node from `tests/clients/mqttjs`), Eclipse Paho
//! Python (`paho-mqtt`) and rumqttc. `tests/run.sh` installs what is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use roost_tests::Gateway;
use rumqttc::v5::mqttbytes::v5::{ConnectProperties, Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// Runs a device program and checks its JSON summary: no session on the first wake, the
/// session on the second, a `202` before sleeping and the final `200` after waking.
fn check_device(program: &str, args: &[&str], client: &str) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs (tests/run.sh installs it): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{client}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON summary");
    check_summary(&summary, client);
}

fn check_summary(summary: &serde_json::Value, client: &str) {
    assert_eq!(summary["client"], client, "{summary}");
    // Paho C's MQTT 5 API does not report Session Present (see paho_c_device.c); the final
    // reply reaching a device that did not subscribe on its second wake shows the session.
    let expected = if client == "paho-c-5" {
        serde_json::json!([null, null])
    } else {
        serde_json::json!([false, true])
    };
    assert_eq!(summary["present"], expected, "{summary}");
    let statuses: Vec<u64> = summary["statuses"]
        .as_array()
        .expect("statuses")
        .iter()
        .filter_map(|s| s.as_u64())
        .collect();
    assert_eq!(statuses.first(), Some(&202), "{summary}");
    assert_eq!(statuses.last(), Some(&200), "{summary}");
    assert_eq!(summary["acked"], true, "{summary}");
}

/// The device's one request is done and its final reply acknowledged in the store (the ack's
/// PUBACK comes after its commit, and each device waits for it before sleeping).
fn assert_acked(gateway: &Gateway, device: &str) {
    let rows = roost_tests::store_view::requests_of(gateway, device);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].status, Some(200), "{rows:?}");
    assert_eq!(rows[0].delivery.as_deref(), Some("acked"), "{rows:?}");
}

#[test]
fn paho_c_mqtt5_and_311() {
    let gateway = Gateway::start();
    let exe = std::env::temp_dir().join(format!("paho_c_device-{}", std::process::id()));
    let built = Command::new("cc")
        .arg("-O1")
        .arg("-o")
        .arg(&exe)
        .arg(clients_dir().join("paho_c_device.c"))
        .arg("-lpaho-mqtt3c")
        .output()
        .expect("cc runs");
    assert!(
        built.status.success(),
        "building the Paho C device (tests/run.sh installs libpaho-mqtt-dev): {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let addr = gateway.mqtt.to_string();
    for (version, device) in [("5", "paho-c-v5"), ("311", "paho-c-v311")] {
        check_device(
            exe.to_str().expect("utf8"),
            &[&addr, device, version],
            &format!("paho-c-{version}"),
        );
        assert_acked(&gateway, device);
    }
    let _ = std::fs::remove_file(exe);
}

#[test]
fn mqtt_js() {
    let gateway = Gateway::start();
    let dir = clients_dir().join("mqttjs");
    assert!(
        dir.join("node_modules/mqtt").is_dir(),
        "MQTT.js is not installed: run tests/run.sh (npm ci in {})",
        dir.display()
    );
    let script = dir.join("device.js");
    let port = gateway.mqtt.port().to_string();
    check_device(
        "node",
        &[script.to_str().expect("utf8"), &port, "mqttjs-1"],
        "mqttjs",
    );
    assert_acked(&gateway, "mqttjs-1");
}

#[test]
fn paho_python() {
    let gateway = Gateway::start();
    let script = clients_dir().join("paho_python_device.py");
    let port = gateway.mqtt.port().to_string();
    check_device(
        "python3",
        &[script.to_str().expect("utf8"), &port, "paho-py-1"],
        "paho-python",
    );
    assert_acked(&gateway, "paho-py-1");
}

/// One wake of a rumqttc device: connects with a persistent session, returns the client, its
/// event loop and Session Present.
async fn rumqttc_wake(addr: std::net::SocketAddr, id: &str) -> (AsyncClient, EventLoop, bool) {
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_clean_start(false);
    options.set_keep_alive(Duration::from_secs(20));
    let mut properties = ConnectProperties::new();
    properties.session_expiry_interval = Some(3600);
    options.set_connect_properties(properties);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), eventloop.poll())
            .await
            .expect("CONNACK in time")
            .expect("connects");
        if let Event::Incoming(Packet::ConnAck(connack)) = event {
            return (client, eventloop, connack.session_present);
        }
    }
}

/// Polls until a reply with status `want` (the `status` user property) arrives.
async fn rumqttc_await(eventloop: &mut EventLoop, want: &str, statuses: &mut Vec<u64>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let event = tokio::time::timeout_at(deadline, eventloop.poll())
            .await
            .unwrap_or_else(|_| panic!("a {want} reply in time (got {statuses:?})"))
            .expect("connected");
        let Event::Incoming(Packet::Publish(publish)) = event else {
            continue;
        };
        let status = publish.properties.as_ref().and_then(|p| {
            p.user_properties
                .iter()
                .find(|(k, _)| k == "status")
                .map(|(_, v)| v.clone())
        });
        if let Some(status) = status {
            statuses.push(status.parse().expect("numeric status"));
            if status == want {
                return;
            }
        }
    }
}

/// Disconnects and drives the event loop until the DISCONNECT is out.
async fn rumqttc_sleep(client: AsyncClient, mut eventloop: EventLoop) {
    client.disconnect().await.expect("disconnect");
    while let Ok(Ok(event)) = tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await {
        if let Event::Outgoing(rumqttc::Outgoing::Disconnect) = event {
            break;
        }
    }
}

#[tokio::test]
async fn rumqttc_as_a_device() {
    let gateway = Gateway::start();
    let id = "rumqttc-dev-1";
    let corr = bytes::Bytes::from_static(b"rumqttc-1");
    let properties = PublishProperties {
        correlation_data: Some(corr.clone()),
        ..Default::default()
    };
    let args = roost_tests::device::values(&[1.0, 2.0, 3.0]);
    let payload = gateway::wire::envelope::encode_value(&args);
    let mut statuses = Vec::new();

    let (client, mut eventloop, first) = rumqttc_wake(gateway.mqtt, id).await;
    if !first {
        client
            .subscribe(format!("devices/{id}/reply/#"), QoS::AtLeastOnce)
            .await
            .expect("subscribe");
    }
    client
        .publish_with_properties(
            format!("devices/{id}/req/stats"),
            QoS::AtLeastOnce,
            false,
            payload,
            properties.clone(),
        )
        .await
        .expect("request");
    rumqttc_await(&mut eventloop, "202", &mut statuses).await;
    rumqttc_sleep(client, eventloop).await;

    let (client, mut eventloop, second) = rumqttc_wake(gateway.mqtt, id).await;
    rumqttc_await(&mut eventloop, "200", &mut statuses).await;
    client
        .publish_with_properties(
            format!("devices/{id}/ack"),
            QoS::AtLeastOnce,
            false,
            Vec::new(),
            properties,
        )
        .await
        .expect("ack");
    // The ack's PUBACK: it is stored.
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), eventloop.poll())
            .await
            .expect("PUBACK in time")
            .expect("connected");
        if let Event::Incoming(Packet::PubAck(_)) = event {
            break;
        }
    }
    rumqttc_sleep(client, eventloop).await;
    check_summary(
        &serde_json::json!({
            "client": "rumqttc", "present": [first, second], "statuses": statuses, "acked": true,
        }),
        "rumqttc",
    );
    tokio::task::spawn_blocking(move || assert_acked(&gateway, id))
        .await
        .expect("checked");
}
