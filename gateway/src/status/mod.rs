//! Operator status: retained status topics, dead-letter messages, and (later) the HTTP API.

use std::time::{Duration, UNIX_EPOCH};

/// Formats ms since the epoch as RFC 3339 UTC text with milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

use crate::mqtt::Publisher;
use crate::wire::topics;

fn gateway_json(state: &str, started_at_ms: i64) -> Vec<u8> {
    let now = crate::store::now_ms();
    let json = serde_json::json!({
        "state": state,
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": rfc3339_ms(started_at_ms),
        "uptime_s": (now - started_at_ms).max(0) / 1000,
        "updated_at": rfc3339_ms(now),
    });
    serde_json::to_vec(&json).expect("a JSON value always serialises")
}

/// The gateway's Last Will: retained `offline` status.
pub fn offline_will(gateway_id: &str, started_at_ms: i64) -> rumqttc::v5::mqttbytes::v5::LastWill {
    crate::mqtt::retained_will(
        topics::gateway_status(gateway_id),
        gateway_json("offline", started_at_ms),
    )
}

/// Publishes the gateway's retained status.
pub async fn publish_gateway(
    publisher: &Publisher,
    gateway_id: &str,
    state: &str,
    started_at_ms: i64,
) {
    publisher
        .json(
            &topics::gateway_status(gateway_id),
            gateway_json(state, started_at_ms),
            true,
        )
        .await;
}
