//! The outbox: final replies → broker → device, held until acknowledged.
//!
//! Fed by the worker pool (final replies, after their commit), by recovery (replies a crash kept
//! from being published), by intake (a cancel's `410`; device events: seen awake, asleep, acks)
//! and by the front door (connections). A final reply is published when it is ready, and again
//! each time its device is next seen awake (the moment it goes from asleep to awake), oldest
//! first and at most `limits.max_held_replies_per_device` per wake, until the device acks it or
//! its TTL passes ([`expiry`]).
//!
//! **Invariant:** a held reply leaves the store only by the device's ack or the reply TTL (then
//! it becomes a dead letter), never silently.

pub mod expiry;
mod presence;

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::mqtt::Publisher;
use crate::store::requests::{self, FinalReply};
use crate::store::{now_ms, Store};
use crate::wire::{DeviceId, RequestId, Status};

pub use presence::Presence;

/// What the rest of the gateway tells the outbox about devices.
#[derive(Debug, Clone)]
pub enum DeviceEvent {
    /// The device published something: awake for this long.
    Seen(DeviceId, Duration),
    /// The device is connected through the front door and subscribed: awake until it leaves.
    Connected(DeviceId),
    /// The device's connection ended.
    Disconnected(DeviceId),
    /// The device said it is going to sleep.
    Asleep(DeviceId),
    /// The device acknowledged a reply.
    Acked(DeviceId, RequestId),
}

/// The outbox stage.
pub struct Outbox {
    /// Publishes replies.
    pub publisher: Publisher,
    /// Records publishes; reads held replies.
    pub store: Store,
    /// Who is awake.
    pub presence: Presence,
    /// Held replies redelivered per wake.
    pub max_held_per_wake: usize,
}

impl Outbox {
    /// Publishes final replies as they come and redelivers held ones on wake, until shutdown.
    pub async fn run(
        mut self,
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
                    Some(event) => self.on_event(event).await,
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

    async fn on_event(&mut self, event: DeviceEvent) {
        let woke = self.presence.apply(&event);
        if let Some(device) = woke {
            self.redeliver(&device).await;
        }
    }

    /// The device just woke: publish its held replies again, oldest first.
    async fn redeliver(&self, device: &DeviceId) {
        let limit = self.max_held_per_wake;
        let lookup = device.clone();
        let held = match self
            .store
            .call(move |txn| requests::held_for(txn, &lookup, limit))
            .await
        {
            Ok(held) => held,
            Err(error) => {
                tracing::error!(%error, device_id = %device, "cannot read held replies");
                return;
            }
        };
        let now = now_ms();
        for reply in held.into_iter().filter(|r| r.expires_ms > now) {
            self.publish(reply).await;
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
