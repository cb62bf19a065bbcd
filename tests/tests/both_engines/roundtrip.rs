//! A device's CBOR request comes back as `202` then a correlated final reply with a correct
//! result and the contract's MQTT 5 properties.

use gateway::wire::{State, Status};
use roost_tests::device::{field, values, TestDevice};
use roost_tests::Gateway;

#[tokio::test]
async fn stats_request_gets_202_then_correlated_correct_result() {
    let gateway = Gateway::start();
    let mut device = TestDevice::connect(gateway.mqtt, "rt-1").await;
    let xs = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0];
    device.request("stats", &values(&xs), b"corr-1", None).await;

    let accepted = device.next().await;
    assert_eq!(accepted.topic, "devices/rt-1/reply");
    assert_eq!(accepted.corr.as_deref(), Some(&b"corr-1"[..]));
    assert_eq!(accepted.reply.status, Status::Accepted);
    assert_eq!(accepted.reply.state, State::Accepted);
    assert_eq!(accepted.status_property(), Some("202"));
    let request_id = accepted.reply.request_id.expect("202 carries request_id");
    assert_eq!(request_id.0.get_version_num(), 7);
    assert!(accepted.reply.retry_after_ms.is_some());

    let done = device.next().await;
    assert_eq!(done.corr.as_deref(), Some(&b"corr-1"[..]));
    assert_eq!(done.reply.status, Status::Ok);
    assert_eq!(done.reply.state, State::Done);
    assert_eq!(done.reply.request_id, Some(request_id));
    assert_eq!(done.status_property(), Some("200"));
    let props = done.properties.as_ref().expect("properties");
    assert_eq!(props.content_type.as_deref(), Some("application/cbor"));
    let expiry = props
        .message_expiry_interval
        .expect("Message Expiry Interval");
    assert!(expiry > 604_000 && expiry <= 604_800, "expiry {expiry}");

    // numpy: mean 3.875, std(ddof=1) 2.748376143938259, percentile 50/90/99: 3.5, 6.9, 8.79
    let result = done.reply.result.expect("200 carries result");
    assert_eq!(field(&result, "count"), 8.0);
    assert_eq!(field(&result, "mean"), 3.875);
    assert_eq!(field(&result, "min"), 1.0);
    assert_eq!(field(&result, "max"), 9.0);
    assert!((field(&result, "stddev") - 2.748376143938259).abs() < 1e-12);
    assert!((field(&result, "p50") - 3.5).abs() < 1e-12);
    assert!((field(&result, "p90") - 6.9).abs() < 1e-12);
    assert!((field(&result, "p99") - 8.79).abs() < 1e-12);
}

#[tokio::test]
async fn response_topic_below_the_reply_topic_is_used() {
    let gateway = Gateway::start();
    let mut device = TestDevice::connect(gateway.mqtt, "rt-2").await;
    device
        .request(
            "stats",
            &values(&[1.0, 2.0]),
            b"c",
            Some("devices/rt-2/reply/jobs"),
        )
        .await;
    let accepted = device.next().await;
    assert_eq!(accepted.topic, "devices/rt-2/reply/jobs");
    let done = device.next().await;
    assert_eq!(done.topic, "devices/rt-2/reply/jobs");
    assert_eq!(done.reply.status, Status::Ok);
}
