//! A device answered with an error gets it as `last_error` in its retained `devices/{id}/status`
//! and in the operator API (which the "has errors" filter of the device list reads).

use gateway::wire::Status;
use roost_tests::device::{options, values, TestDevice};
use roost_tests::{http_get, Gateway};
use rumqttc::v5::mqttbytes::QoS;

#[tokio::test]
async fn a_rejected_request_sets_the_devices_last_error() {
    let gateway = Gateway::start();
    let http = gateway.http.expect("the test config enables HTTP");
    let mut device = TestDevice::connect(gateway.mqtt, "err-dev").await;
    let mut fine = TestDevice::connect(gateway.mqtt, "fine-dev").await;
    fine.request("stats", &values(&[1.0]), b"ok", None).await;
    device
        .request("no_such_op", &values(&[1.0]), b"bad", None)
        .await;
    let reply = device.reply_for(b"bad").await;
    assert_eq!(reply.reply.status, Status::NotFound);
    while fine.reply_for(b"ok").await.reply.status != Status::Ok {}

    let mut watcher =
        TestDevice::connect_with(options("watcher", gateway.mqtt), "watcher", false).await;
    watcher
        .client
        .subscribe("devices/err-dev/status", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let status = loop {
        let status = watcher.next_json().await;
        if !status["last_error"].is_null() {
            break status;
        }
    };
    let error = status["last_error"].as_str().expect("text");
    assert!(error.starts_with("unknown_op: "), "{status}");

    let get = |path: String| tokio::task::spawn_blocking(move || http_get(http, &path));
    let (code, body) = get("/api/devices/err-dev".into()).await.expect("join");
    assert_eq!(code, 200, "{body}");
    let one: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(one["device"]["last_error"], error, "{one}");
    let (_, body) = get("/api/devices?errors=1".into()).await.expect("join");
    let page: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(page["total"], 1, "only err-dev has an error: {page}");
    assert_eq!(page["devices"][0]["id"], "err-dev");
}
