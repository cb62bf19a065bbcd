//! The outbox: final replies → broker → device, held until acknowledged.
//!
//! Fed by the worker pool (final replies, after their commit), by recovery (replies a crash kept
//! from being published) and by intake (device events: seen awake, asleep, acks). Publishes
//! through the service link and records each publish in the store.
//!
//! **Invariant:** a held reply leaves the store only by the device's ack or the reply TTL (then
//! it becomes a dead letter), never silently.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::mqtt::Publisher;
use crate::store::requests::{self, FinalReply};
use crate::store::{now_ms, Store};
use crate::wire::{DeviceId, RequestId, Status};

/// What intake tells the outbox about devices.
#[derive(Debug, Clone)]
pub enum DeviceEvent {
    /// The device published something: awake for this long.
    Seen(DeviceId, Duration),
    /// The device said it is going to sleep.
    Asleep(DeviceId),
    /// The device acknowledged a reply.
    Acked(DeviceId, RequestId),
}

/// The outbox stage.
pub struct Outbox {
    /// Publishes replies.
    pub publisher: Publisher,
    /// Records publishes.
    pub store: Store,
}

impl Outbox {
    /// Publishes final replies as they come, until shutdown and the channel is drained.
    pub async fn run(
        self,
        mut done_rx: mpsc::UnboundedReceiver<FinalReply>,
        mut events_rx: mpsc::UnboundedReceiver<DeviceEvent>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                biased;
                reply = done_rx.recv() => match reply {
                    Some(reply) => self.publish(reply).await,
                    None => break,
                },
                event = events_rx.recv() => match event {
                    Some(event) => tracing::trace!(?event, "device event"),
                    None => break,
                },
                _ = shutdown.cancelled() => {
                    // Publish whatever is already committed, then stop.
                    while let Ok(reply) = done_rx.try_recv() {
                        self.publish(reply).await;
                    }
                    break;
                }
            }
        }
    }

    /// Publishes one final reply with the time left of its TTL, and counts it.
    pub async fn publish(&self, reply: FinalReply) {
        let left_ms = (reply.expires_ms - now_ms()).max(1000) as u64;
        let status = Status::from_code(u64::from(reply.status)).unwrap_or(Status::Failed);
        self.publisher
            .reply(
                &reply.reply_topic,
                reply.payload,
                Some(&reply.corr),
                status,
                Duration::from_millis(left_ms),
            )
            .await;
        tracing::debug!(request_id = %reply.id, device_id = %reply.device, "replied");
        let id = reply.id;
        self.store
            .submit(move |txn| requests::mark_published(txn, id), |_| {});
    }
}
