//! Guarantee 5: bad input is answered, never fatal. Each intake error gets its contract code on
//! the right topic, a dead-letter record and a message on `gateway/{gw}/deadletter`, and the
//! gateway keeps serving.

use bytes::Bytes;
use ciborium::Value;
use gateway::wire::envelope::encode_value;
use gateway::wire::{State, Status};
use roost_tests::device::{options, values, TestDevice};
use roost_tests::Gateway;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;

fn corr_props(corr: &[u8], response_topic: Option<&str>) -> PublishProperties {
    PublishProperties {
        correlation_data: Some(Bytes::copy_from_slice(corr)),
        response_topic: response_topic.map(str::to_owned),
        ..Default::default()
    }
}

/// A client watching dead letters.
async fn deadletter_watcher(gateway: &Gateway) -> TestDeadLetters {
    let (client, mut eventloop) =
        rumqttc::v5::AsyncClient::new(options("dl-watch", gateway.mqtt), 64);
    client
        .subscribe("gateway/gw-test/deadletter", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut ready_tx = Some(ready_tx);
        while let Ok(event) = eventloop.poll().await {
            match event {
                rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::SubAck(_)) => {
                    if let Some(ready) = ready_tx.take() {
                        let _ = ready.send(());
                    }
                }
                rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::Publish(p)) => {
                    let json: serde_json::Value =
                        serde_json::from_slice(&p.payload).expect("deadletter is JSON");
                    if tx.send(json).is_err() {
                        return;
                    }
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(roost_tests::device::WAIT, ready_rx)
        .await
        .expect("subscribed")
        .expect("alive");
    TestDeadLetters {
        rx,
        _client: client,
    }
}

struct TestDeadLetters {
    rx: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    _client: rumqttc::v5::AsyncClient,
}

impl TestDeadLetters {
    async fn next(&mut self) -> serde_json::Value {
        tokio::time::timeout(roost_tests::device::WAIT, self.rx.recv())
            .await
            .expect("a dead letter in time")
            .expect("watcher alive")
    }
}

/// (topic, payload, properties, expected status, expected error code, expected reply topic)
type Case = (
    &'static str,
    Vec<u8>,
    PublishProperties,
    Status,
    &'static str,
    &'static str,
);

#[tokio::test]
async fn every_intake_error_gets_its_code_and_a_dead_letter() {
    let gateway = Gateway::start_with("[limits]\nmax_payload_bytes = 4096\nmax_series_len = 100\n");
    let mut dead = deadletter_watcher(&gateway).await;
    let mut device = TestDevice::connect(gateway.mqtt, "err-1").await;
    let req = "devices/err-1/req/stats";

    // (payload, properties, expected status, expected error code, expected reply topic)
    let huge = vec![0u8; 5000];
    let long_series = values(&vec![1.0; 101]);
    let nan = values(&[1.0, f64::NAN]);
    let not_map = encode_value(&Value::Array(vec![]));
    let cases: Vec<Case> = vec![
        (
            req,
            b"\xff\x00garbage".to_vec(),
            corr_props(b"e1", None),
            Status::BadRequest,
            "bad_request",
            "devices/err-1/reply",
        ),
        (
            req,
            not_map,
            corr_props(b"e2", None),
            Status::BadRequest,
            "bad_request",
            "devices/err-1/reply",
        ),
        (
            req,
            encode_value(&nan),
            corr_props(b"e3", None),
            Status::BadRequest,
            "bad_args",
            "devices/err-1/reply",
        ),
        (
            req,
            encode_value(&Value::Map(vec![])),
            corr_props(b"e4", None),
            Status::BadRequest,
            "bad_args",
            "devices/err-1/reply",
        ),
        (
            "devices/err-1/req/nope",
            encode_value(&values(&[1.0])),
            corr_props(b"e5", None),
            Status::NotFound,
            "unknown_op",
            "devices/err-1/reply",
        ),
        (
            req,
            huge,
            corr_props(b"e6", None),
            Status::TooLarge,
            "too_large",
            "devices/err-1/reply",
        ),
        (
            req,
            encode_value(&long_series),
            corr_props(b"e7", None),
            Status::TooLarge,
            "too_large",
            "devices/err-1/reply",
        ),
        (
            req,
            encode_value(&values(&[1.0])),
            corr_props(b"e8", Some("devices/other/reply")),
            Status::Forbidden,
            "forbidden_reply_topic",
            "devices/err-1/reply",
        ),
        (
            req,
            encode_value(&values(&[1.0])),
            corr_props(b"e9", Some("gateway/gw-test/status")),
            Status::Forbidden,
            "forbidden_reply_topic",
            "devices/err-1/reply",
        ),
    ];
    for (topic, payload, props, status, code, reply_topic) in cases {
        let corr = props.correlation_data.clone().expect("corr");
        device.publish_raw(topic, payload, Some(props)).await;
        let got = device.next().await;
        assert_eq!(got.reply.status, status, "{code}");
        assert_eq!(got.reply.state, State::Rejected);
        assert_eq!(
            got.reply.error.as_ref().map(|e| e.code.as_str()),
            Some(code)
        );
        assert_eq!(got.topic, reply_topic);
        assert_eq!(got.corr, Some(corr.clone()));
        assert!(
            got.reply.request_id.is_none(),
            "intake errors are not stored"
        );
        let letter = dead.next().await;
        assert_eq!(letter["status"], status.code(), "{letter}");
        assert_eq!(letter["device"], "err-1");
        assert_eq!(
            letter["corr"],
            corr.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
    }

    // No correlation at all: 400 on the default topic, without Correlation Data.
    device
        .publish_raw(req, encode_value(&values(&[1.0])), None)
        .await;
    let got = device.next().await;
    assert_eq!(got.reply.status, Status::BadRequest);
    assert_eq!(got.corr, None);
    assert_eq!(dead.next().await["status"], 400);

    // The dead letters are in the store too, listed by the operator CLI.
    let out = roost_tests::gateway_cmd(&[
        "deadletters",
        "list",
        "--json",
        "--config",
        gateway.config_path().to_str().expect("utf8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON list");
    assert_eq!(listed.len(), 10);

    // And the gateway still serves.
    device
        .request("stats", &values(&[2.0, 4.0]), b"ok", None)
        .await;
    assert_eq!(device.reply_for(b"ok").await.reply.status, Status::Accepted);
    assert_eq!(device.reply_for(b"ok").await.reply.status, Status::Ok);
}
