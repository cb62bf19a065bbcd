//! What every device session shares: the way in to the gateway service and the way back.
//!
//! Used by every device session ([`super::session`]). A device's publishes (requests, acks,
//! presence, telemetry: the only topics a device may publish to) go straight into the service's
//! inbox ([`crate::flow::inbox`]), and the service's replies come back through [`Router`]. None
//! of it crosses rumqttd: no client other than the device and the service may see those topics
//! (see `wire::topics`), so the broker hop was pure cost: four broker round trips per request
//! (request and ack up, `202` and final down).
//!
//! rumqttd still carries everything else: retained status for devices' side links, operators
//! and viewers, and the service's own status and dead letters.
//!
//! **Invariant:** device publishes waiting for intake hold at most [`INBOX_BYTES`] between them
//! (a session waits for budget before handing one over), so a flood of large publishes from
//! many devices cannot grow memory without bound.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{check, Publish};
use tokio::sync::{mpsc, Semaphore};

use super::router::Router;
use crate::flow::{Ack, Inbound};

/// Bytes of device publishes that may wait for intake at once.
pub const INBOX_BYTES: usize = 64 << 20;
/// The budget's unit.
const BUDGET_UNIT: usize = 1024;

/// The service's inbox and the reply router.
#[derive(Debug)]
pub struct Hub {
    /// Live device sessions by client id; the service's replies go through it.
    pub router: Arc<Router>,
    /// The service's inbox: device publishes, acked once intake has committed them.
    pub service_tx: mpsc::Sender<Inbound>,
    /// [`INBOX_BYTES`] in units of [`BUDGET_UNIT`].
    pub budget: Arc<Semaphore>,
    /// rumqttd's MQTT 5 listener (for sessions' side links).
    pub addr: SocketAddr,
    /// Largest packet taken from the broker.
    pub max_packet: usize,
}

impl Hub {
    /// A whole budget of [`INBOX_BYTES`], for [`Hub::budget`].
    pub fn inbox_budget() -> Arc<Semaphore> {
        Arc::new(Semaphore::new(INBOX_BYTES / BUDGET_UNIT))
    }

    /// Hands a device publish to the service, first waiting for its share of the inbox budget;
    /// `Err` once the service no longer takes publishes (the gateway is stopping).
    pub async fn hand_over(&self, publish: Publish, ack: Ack) -> Result<(), ()> {
        let size = publish.topic.len() + publish.payload.len();
        let units = u32::try_from(size / BUDGET_UNIT + 1).unwrap_or(u32::MAX);
        let budget = self.budget.clone().acquire_many_owned(units).await;
        let incoming = Inbound::new(publish, ack, Some(budget.map_err(|_| ())?));
        self.service_tx.send(incoming).await.map_err(|_| ())
    }
}

/// A checked MQTT 5 PUBLISH frame as the service reads it (payload and properties not copied).
pub fn parse_publish(frame: Bytes) -> Option<Publish> {
    let header = check(frame.iter(), None).ok()?;
    Publish::read(header, frame).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontdoor::devices::link::publish_frame;
    use rumqttc::v5::mqttbytes::QoS;

    #[test]
    fn a_device_frame_parses_for_the_service() {
        let frame = publish_frame("devices/d1/req/stats", 1, false, Bytes::from_static(b"x"))
            .expect("frame");
        let publish = parse_publish(frame).expect("parses");
        assert_eq!(&publish.topic[..], b"devices/d1/req/stats");
        assert_eq!(&publish.payload[..], b"x");
        assert!(parse_publish(Bytes::from_static(&[0x30, 9, 0])).is_none());
    }

    #[tokio::test]
    async fn a_publish_holds_its_share_of_the_budget_until_handled() {
        let (service_tx, mut service_rx) = mpsc::channel(4);
        let hub = Hub {
            router: Arc::new(Router::new(Arc::default())),
            service_tx,
            budget: Arc::new(Semaphore::new(3)),
            addr: "127.0.0.1:1".parse().expect("addr"),
            max_packet: 1 << 20,
        };
        let payload = Bytes::from(vec![0u8; 1500]); // 2 units with its topic
        let publish = Publish::new("devices/d1/req/stats", QoS::AtLeastOnce, payload, None);
        hub.hand_over(publish, Ack::Local(Box::new(|_| {})))
            .await
            .expect("taken");
        assert_eq!(hub.budget.available_permits(), 1);
        let incoming = service_rx.recv().await.expect("in the inbox");
        assert_eq!(hub.budget.available_permits(), 1, "held while waiting");
        drop(incoming);
        assert_eq!(hub.budget.available_permits(), 3, "given back once handled");
    }
}
