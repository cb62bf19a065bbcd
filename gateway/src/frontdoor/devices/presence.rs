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
                live.entry(device).or_default().push(connection);
                None
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
