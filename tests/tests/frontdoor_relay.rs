//! The front door relays MQTT 3.1.1 and 5 on one port to the embedded broker.

use crate::frontdoor_support::*;
use roost_tests::device::TestDevice;
use roost_tests::Gateway;

#[tokio::test]
async fn both_versions_share_one_port() {
    let gateway = Gateway::start();
    // A real rumqttc v5 client: connects and gets its reply subscriptions granted.
    let device = TestDevice::connect(gateway.mqtt, "relay-dev").await;
    // MQTT 3.1.1 on the same port, byte by byte through the checks.
    let mut v4 = Raw::open(gateway.mqtt).await;
    v4.send(&connect4("relay-v4", None)).await;
    assert_eq!(connack_code(&v4.packet().await), 0);
    v4.send(&subscribe4(1, &["devices/relay-v4/reply"])).await;
    assert_eq!(suback_codes(&v4.packet().await, false), vec![1]);
    v4.send(&publish4("devices/relay-v4/req/stats", 2, b"\xa0"))
        .await;
    assert_eq!(&v4.packet().await[..], &[0x40, 2, 0, 2]);
    assert_served(gateway.mqtt).await;
    device.disconnect().await;
}
