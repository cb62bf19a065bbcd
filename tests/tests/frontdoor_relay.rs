//! The front door relays MQTT 3.1.1 and 5 on one port to the embedded broker.

use roost_tests::device::TestDevice;
use roost_tests::Gateway;

#[tokio::test]
async fn v5_clients_meet_through_the_front_door() {
    let gateway = Gateway::start();
    let mut device = TestDevice::connect(gateway.mqtt, "relay-dev").await;
    let other = TestDevice::connect_with(
        roost_tests::device::options("relay-op", gateway.mqtt),
        "relay-op",
        false,
    )
    .await;
    let reply = gateway::wire::Reply::new(gateway::wire::Status::Ok, gateway::wire::State::Done);
    other
        .publish_raw("devices/relay-dev/reply", reply.encode(), None)
        .await;
    let received = device.next().await;
    assert_eq!(received.topic, "devices/relay-dev/reply");
    assert_eq!(received.reply, reply);
}
