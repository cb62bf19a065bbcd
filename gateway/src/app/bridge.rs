//! Presence from the front door, per connection, turned into the outbox's per-device events.

use tokio::sync::mpsc;

use crate::frontdoor::FrontDoorEvent;
use crate::outbox::DeviceEvent;

/// Turns the front door's per-connection presence into the outbox's per-device events: a
/// device is connected once one of its connections has a granted reply subscription, and
/// disconnected when its last connection ends (a reconnect can overtake the old one's end).
pub(super) async fn bridge_presence(
    mut presence_rx: mpsc::Receiver<FrontDoorEvent>,
    events_tx: mpsc::UnboundedSender<DeviceEvent>,
) {
    let mut live: std::collections::HashMap<crate::wire::DeviceId, Vec<u64>> = Default::default();
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
                crate::outbox::Undeliverable {
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
