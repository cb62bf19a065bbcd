//! Presence as the front door sees it: per connection ([`FrontDoorEvent`], sent by each
//! session through its [`Presence`]), turned into per-device `flow::DeviceEvent`s for the
//! outbox by `bridge`: a device is awake while connected (and subscribed to its replies).

use tokio::sync::mpsc;

use crate::flow::{DeviceEvent, Undeliverable};
use crate::frontdoor::Version;
use crate::wire::DeviceId;

/// Presence as the front door sees it. A device is awake while it has a connection that sent
/// `Connected` and not yet `Disconnected`; `connection` tells apart overlapping connections of
/// one id (a reconnect can overtake the old connection's end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontDoorEvent {
    /// Device `device` connected (CONNACK accepted).
    Connected {
        /// The device.
        device: DeviceId,
        /// This connection's number.
        connection: u64,
        /// Its protocol version.
        version: Version,
    },
    /// The broker granted one of the device's reply subscriptions: held replies can go now.
    Subscribed {
        /// The device.
        device: DeviceId,
        /// The connection.
        connection: u64,
    },
    /// The connection ended (cleanly or not).
    Disconnected {
        /// The device.
        device: DeviceId,
        /// The connection.
        connection: u64,
    },
    /// A reply could not be sent to the device (over its Maximum Packet Size): the service
    /// dead-letters it and stops holding it.
    Undeliverable {
        /// The device.
        device: DeviceId,
        /// The reply's Correlation Data.
        corr: Option<bytes::Bytes>,
        /// The reply's status code (0 when unreadable).
        status: u16,
        /// Why, for the dead letter.
        reason: String,
    },
}

/// Where one connection's presence events go.
#[derive(Debug, Clone)]
pub struct Presence {
    pub(super) device: DeviceId,
    pub(super) connection: u64,
    pub(super) events_tx: mpsc::Sender<FrontDoorEvent>,
}

impl Presence {
    async fn send(&self, event: FrontDoorEvent) {
        // No receiver (tests, shutdown): presence is advisory, the connection goes on.
        let _ = self.events_tx.send(event).await;
    }

    /// The device's connection got its CONNACK.
    pub(super) async fn connected(&self, version: Version) {
        let (device, connection) = (self.device.clone(), self.connection);
        self.send(FrontDoorEvent::Connected {
            device,
            connection,
            version,
        })
        .await;
    }

    /// The broker granted one of the device's reply subscriptions.
    pub(super) async fn subscribed(&self) {
        let (device, connection) = (self.device.clone(), self.connection);
        self.send(FrontDoorEvent::Subscribed { device, connection })
            .await;
    }

    /// A reply could not be sent to the device; never waits (the event is sent from a task).
    pub(super) fn undeliverable(&self, corr: Option<bytes::Bytes>, status: u16, reason: String) {
        let event = FrontDoorEvent::Undeliverable {
            device: self.device.clone(),
            corr,
            status,
            reason,
        };
        let events_tx = self.events_tx.clone();
        tokio::spawn(async move {
            let _ = events_tx.send(event).await;
        });
    }

    /// The device's connection ended.
    pub(super) async fn disconnected(&self) {
        let (device, connection) = (self.device.clone(), self.connection);
        self.send(FrontDoorEvent::Disconnected { device, connection })
            .await;
    }
}

/// Turns the front door's per-connection presence into the outbox's per-device events: a
/// device is connected once one of its connections has a granted reply subscription, and
/// disconnected when its last connection ends (a reconnect can overtake the old one's end).
/// A new connection while an older one of the same id is still live is a new wake (the old one
/// is on its way out: DISCONNECT or takeover): the outbox hears `Disconnected` first, so the
/// new connection's subscription redelivers held replies even when its resumed session
/// subscribes at CONNACK, before the old connection's end is reported.
pub(crate) async fn bridge(
    mut presence_rx: mpsc::Receiver<FrontDoorEvent>,
    events_tx: mpsc::UnboundedSender<DeviceEvent>,
) {
    let mut live: std::collections::HashMap<DeviceId, Vec<u64>> = Default::default();
    while let Some(event) = presence_rx.recv().await {
        let forward = match event {
            FrontDoorEvent::Connected {
                device, connection, ..
            } => {
                let connections = live.entry(device.clone()).or_default();
                let overtaking = !connections.is_empty();
                connections.push(connection);
                overtaking.then_some(DeviceEvent::Disconnected(device))
            }
            FrontDoorEvent::Subscribed { device, .. } => Some(DeviceEvent::Connected(device)),
            FrontDoorEvent::Undeliverable {
                device,
                corr,
                status,
                reason,
            } => Some(DeviceEvent::Undeliverable(
                device,
                Undeliverable {
                    corr: corr.map(crate::wire::Correlation),
                    status,
                    reason,
                },
            )),
            FrontDoorEvent::Disconnected { device, connection } => {
                let connections = live.entry(device.clone()).or_default();
                connections.retain(|c| *c != connection);
                if connections.is_empty() {
                    live.remove(&device);
                    Some(DeviceEvent::Disconnected(device))
                } else {
                    None
                }
            }
        };
        if let Some(event) = forward {
            if events_tx.send(event).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(device: &DeviceId, connection: u64, kind: &str) -> FrontDoorEvent {
        let device = device.clone();
        match kind {
            "connected" => FrontDoorEvent::Connected {
                device,
                connection,
                version: Version::V5,
            },
            "subscribed" => FrontDoorEvent::Subscribed { device, connection },
            _ => FrontDoorEvent::Disconnected { device, connection },
        }
    }

    /// A reconnect whose resumed session subscribes before the old connection's end is
    /// reported is still a wake: the outbox sees the device leave, then come back.
    #[tokio::test]
    async fn a_reconnect_that_overtakes_the_old_end_is_a_new_wake() {
        let d = DeviceId::parse("p").expect("valid");
        let (presence_tx, presence_rx) = mpsc::channel(16);
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let bridging = tokio::spawn(bridge(presence_rx, events_tx));
        for (connection, kind) in [
            (1, "connected"),
            (1, "subscribed"),
            (2, "connected"),
            (2, "subscribed"),
            (1, "disconnected"),
            (2, "disconnected"),
        ] {
            presence_tx
                .send(event(&d, connection, kind))
                .await
                .expect("bridge runs");
        }
        drop(presence_tx);
        bridging.await.expect("bridge ends");
        let mut forwarded = Vec::new();
        while let Ok(event) = events_rx.try_recv() {
            forwarded.push(match event {
                DeviceEvent::Connected(_) => "connected",
                DeviceEvent::Disconnected(_) => "disconnected",
                _ => "other",
            });
        }
        assert_eq!(
            forwarded,
            ["connected", "disconnected", "connected", "disconnected"]
        );
    }
}
