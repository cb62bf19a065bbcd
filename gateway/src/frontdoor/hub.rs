//! What every device session shares: the way in to the gateway service and the way back.
//!
//! Used by every device session ([`super::terminated`]). A device's publishes (requests, acks,
//! presence, telemetry: the only topics a device may publish to) go straight into the service's
//! inbox ([`crate::mqtt::inbox`]), and the service's replies come back through [`Router`]. None
//! of it crosses rumqttd: no client other than the device and the service may see those topics
//! (see `wire::topics`), so the broker hop was pure cost: four broker round trips per request
//! (request and ack up, `202` and final down).
//!
//! rumqttd still carries everything else: retained status for devices' side links, operators
//! and viewers, and the service's own status and dead letters.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{check, Publish};
use tokio::sync::mpsc;

use super::router::Router;
use crate::mqtt::Incoming;

/// The service's inbox and the reply router.
#[derive(Debug)]
pub struct Hub {
    /// Live device sessions by client id; the service's replies go through it.
    pub router: Arc<Router>,
    /// The service's inbox: device publishes, acked once intake has committed them.
    pub service_tx: mpsc::Sender<Incoming>,
    /// rumqttd's MQTT 5 listener (for sessions' side links).
    pub addr: SocketAddr,
    /// Largest packet taken from the broker.
    pub max_packet: usize,
}

/// A checked MQTT 5 PUBLISH frame as the service reads it (payload and properties not copied).
pub fn parse_publish(frame: Bytes) -> Option<Publish> {
    let header = check(frame.iter(), None).ok()?;
    Publish::read(header, frame).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontdoor::link::publish_frame;

    #[test]
    fn a_device_frame_parses_for_the_service() {
        let frame = publish_frame("devices/d1/req/stats", 1, false, Bytes::from_static(b"x"))
            .expect("frame");
        let publish = parse_publish(frame).expect("parses");
        assert_eq!(&publish.topic[..], b"devices/d1/req/stats");
        assert_eq!(&publish.payload[..], b"x");
        assert!(parse_publish(Bytes::from_static(&[0x30, 9, 0])).is_none());
    }
}
