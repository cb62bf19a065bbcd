//! The outbox: final replies → broker → device, held until acknowledged.
//!
//! Fed by the worker pool (final replies, after their commit), by recovery (replies a crash kept
//! from being published), by intake (a cancel's `410`; device events: seen awake, asleep, acks,
//! errors) and by the front door (connections). A final reply is published when it is ready, and
//! again each time its device is next seen awake (the moment it goes from asleep to awake),
//! oldest first and at most `limits.max_held_replies_per_device` per wake, until the device acks
//! it or its TTL passes ([`housekeeping`]). It also keeps `devices/{id}/status`.
//!
//! **Invariant:** a held reply leaves the store only by the device's ack or the reply TTL (then
//! it becomes a dead letter), never silently.

mod housekeeping;
mod presence;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::analytics::scheduler::Scheduler;
use crate::config::Limits;
use crate::mqtt::Publisher;
use crate::status::device::{DeviceStatus, StatusBoard};
use crate::status::Metrics;
use crate::store::requests::{self, FinalReply};
use crate::store::{now_ms, Store};
use crate::wire::{topics, DeviceId, RequestId, Status};

pub use presence::Presence;

/// Most device events, or final replies, handled in one turn of the loop.
const MAX_TURN: usize = 1024;

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
    /// The device was answered with an error (`"code: message"`).
    Rejected(DeviceId, String),
    /// A reply could not be sent to the device (over its MQTT Maximum Packet Size): dead-letter
    /// it, and stop holding it.
    Undeliverable(DeviceId, Undeliverable),
}

/// A reply the front door could not send to its device.
#[derive(Debug, Clone)]
pub struct Undeliverable {
    /// Its Correlation Data.
    pub corr: Option<crate::wire::Correlation>,
    /// Its status code.
    pub status: u16,
    /// Why.
    pub reason: String,
}

impl DeviceEvent {
    /// The device the event is about.
    pub fn device(&self) -> &DeviceId {
        match self {
            DeviceEvent::Seen(d, _)
            | DeviceEvent::Connected(d)
            | DeviceEvent::Disconnected(d)
            | DeviceEvent::Asleep(d)
            | DeviceEvent::Acked(d, _)
            | DeviceEvent::Rejected(d, _)
            | DeviceEvent::Undeliverable(d, _) => d,
        }
    }
}

/// The outbox stage.
pub struct Outbox {
    /// Publishes replies and status.
    pub publisher: Publisher,
    /// Records publishes; reads held replies.
    pub store: Store,
    /// Pending counts for device status.
    pub scheduler: Arc<Scheduler>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// `[gateway] id`, for the dead-letter topic.
    pub gateway_id: String,
    /// Limits (held per wake, dedupe window, telemetry retention).
    pub limits: Limits,
    /// Who is awake.
    pub presence: Presence,
    /// Device status to publish.
    pub board: StatusBoard,
}

impl Outbox {
    /// Publishes final replies as they come and redelivers held ones on wake, until shutdown.
    pub async fn run(
        mut self,
        mut done_rx: mpsc::UnboundedReceiver<FinalReply>,
        mut events_rx: mpsc::UnboundedReceiver<DeviceEvent>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut ticks: u64 = 0;
        let mut events = Vec::with_capacity(MAX_TURN);
        loop {
            tokio::select! {
                // Device events first: intake sends a device's `Seen` before its job can run, so
                // handling events first keeps that order, and a wake never re-sends a final
                // reply that was only just published. Every turn that handles events also
                // publishes the replies waiting by then, so a stream of events (thousands of
                // wakes a second) cannot starve final replies.
                biased;
                received = events_rx.recv_many(&mut events, MAX_TURN) => {
                    if received == 0 {
                        break;
                    }
                    let mut undeliverable = Vec::new();
                    let mut woke = Vec::new();
                    for event in events.drain(..) {
                        if let DeviceEvent::Undeliverable(device, reply) = &event {
                            undeliverable.push((device.clone(), reply.clone()));
                        }
                        woke.extend(self.on_event(event));
                    }
                    self.redeliver(woke).await;
                    self.dead_letter(undeliverable).await;
                    for _ in 0..MAX_TURN {
                        let Ok(reply) = done_rx.try_recv() else { break };
                        self.on_final(reply).await;
                    }
                }
                reply = done_rx.recv() => match reply {
                    Some(reply) => self.on_final(reply).await,
                    None => break,
                },
                _ = tick.tick() => {
                    ticks += 1;
                    self.housekeeping(ticks).await;
                }
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

    /// A final reply just committed: publish it, and its device's status is due.
    async fn on_final(&mut self, reply: FinalReply) {
        self.board.touch(&reply.device);
        self.publish(reply).await;
    }

    /// Applies one event; returns the device if it just woke.
    fn on_event(&mut self, event: DeviceEvent) -> Option<DeviceId> {
        let device = event.device().clone();
        match &event {
            DeviceEvent::Seen(..)
            | DeviceEvent::Connected(..)
            | DeviceEvent::Acked(..)
            | DeviceEvent::Rejected(..) => {
                self.board.last_seen_ms.insert(device.clone(), now_ms());
            }
            _ => {}
        }
        if let DeviceEvent::Rejected(_, error) = &event {
            self.board.last_error.insert(device.clone(), error.clone());
        }
        self.board.touch(&device);
        let woke = self.presence.apply(&event, Instant::now());
        if woke.is_some() {
            self.metrics
                .devices_known
                .store(self.presence.known_count(), Relaxed);
        }
        woke
    }

    /// Replies the front door could not send: dead-lettered (a held one stops being held).
    async fn dead_letter(&self, replies: Vec<(DeviceId, Undeliverable)>) {
        if replies.is_empty() {
            return;
        }
        let now = now_ms();
        let letters = self
            .store
            .call(move |txn| {
                let mut letters = Vec::with_capacity(replies.len());
                for (device, reply) in &replies {
                    letters.push(requests::undeliverable(
                        txn,
                        device,
                        reply.corr.as_ref(),
                        reply.status,
                        &reply.reason,
                        now,
                    )?);
                }
                Ok(letters)
            })
            .await;
        let letters = match letters {
            Ok(letters) => letters,
            Err(error) => {
                tracing::error!(%error, "cannot dead-letter undeliverable replies");
                return;
            }
        };
        let topic = topics::deadletter(&self.gateway_id);
        for letter in letters {
            self.metrics.dead_total.fetch_add(1, Relaxed);
            tracing::info!(device_id = ?letter.device, reason = %letter.reason, "dead_lettered");
            self.publisher
                .json(&topic, crate::status::deadletter_json(&letter), false)
                .await;
        }
    }

    /// These devices just woke: publish their held replies again, oldest first per device, in
    /// one store round trip for all of them.
    async fn redeliver(&self, mut devices: Vec<DeviceId>) {
        devices.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        devices.dedup();
        if devices.is_empty() {
            return;
        }
        let limit = self.limits.max_held_replies_per_device;
        let held = self
            .store
            .call(move |txn| {
                let mut held = Vec::new();
                for device in &devices {
                    held.extend(requests::held_for(txn, device, limit)?);
                }
                Ok(held)
            })
            .await;
        let held = match held {
            Ok(held) => held,
            Err(error) => {
                tracing::error!(%error, "cannot read held replies");
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
                reply.envelope,
            )
            .await;
        tracing::debug!(request_id = %reply.id, device_id = %reply.device, "replied");
        let id = reply.id;
        self.store
            .submit(move |txn| requests::mark_published(txn, id), |_| {});
    }

    /// Publishes `devices/{id}/status` for every device whose status changed and is due (one
    /// store round trip for all their held counts).
    async fn publish_device_status(&mut self) {
        let due = self.board.due();
        if due.is_empty() {
            return;
        }
        let lookup = due.clone();
        let held = self
            .store
            .call(move |txn| {
                lookup
                    .iter()
                    .map(|d| requests::held_counts(txn, Some(d)))
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await
            .unwrap_or_else(|_| vec![0; due.len()]);
        for (device, held) in due.into_iter().zip(held) {
            let status = DeviceStatus {
                awake: self.presence.is_awake(&device),
                last_seen_ms: self.board.last_seen_ms.get(&device).copied().unwrap_or(0),
                pending: self.scheduler.pending_of(&device),
                held,
                last_error: self.board.last_error.get(&device).cloned(),
            };
            self.publisher
                .json(&topics::device_status(&device), status.to_json(), true)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontdoor::router::{Route, Router};
    use crate::wire::Correlation;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    /// Most events the flood sends; the reply must arrive long before.
    const FLOOD: usize = 500_000;
    /// Wakes the flood sends between two yields.
    const WAKES_PER_TURN: usize = 64;

    /// A stream of wakes (each costs the outbox a store round trip) must not hold back a final
    /// reply: it is published while the events keep coming, not after they stop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_wakes_does_not_starve_final_replies() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), false).expect("store opens");
        let router = Arc::new(Router::new(Arc::default()));
        let (deliveries_tx, mut deliveries_rx) = mpsc::channel(16);
        router.register(
            "d",
            Route {
                connection: 1,
                deliveries_tx,
                taken_over: CancellationToken::new(),
                parked: CancellationToken::new(),
            },
        );
        let outbox = Outbox {
            publisher: Publisher::local_only(router.clone()),
            store,
            scheduler: Arc::new(Scheduler::new(10, 10, 1)),
            metrics: Arc::default(),
            gateway_id: "gw-test".into(),
            limits: Limits::default(),
            presence: Presence::default(),
            board: StatusBoard::default(),
        };
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let running = tokio::spawn(outbox.run(done_rx, events_rx, stop.clone()));

        let (sent, done) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (flooding_tx, flooding_rx) = tokio::sync::oneshot::channel();
        let flood = tokio::spawn({
            let (sent, done) = (sent.clone(), done.clone());
            async move {
                let mut flooding_tx = Some(flooding_tx);
                let devices: Vec<DeviceId> = (0..50)
                    .map(|n| DeviceId::parse(&format!("w{n}")).expect("valid"))
                    .collect();
                for n in 0..FLOOD / (2 * WAKES_PER_TURN) {
                    if done.load(Relaxed) {
                        break;
                    }
                    // Many wakes per turn of this task: the outbox, one store round trip per
                    // turn of its own, never sees the queue empty.
                    for k in 0..WAKES_PER_TURN {
                        let device = devices[(n + k) % devices.len()].clone();
                        let _ = events_tx.send(DeviceEvent::Connected(device.clone()));
                        let _ = events_tx.send(DeviceEvent::Disconnected(device));
                    }
                    sent.fetch_add(2 * WAKES_PER_TURN, Relaxed);
                    if n == 4 {
                        if let Some(tx) = flooding_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    tokio::task::yield_now().await;
                }
            }
        });
        flooding_rx.await.expect("the flood is under way");
        let device = DeviceId::parse("d").expect("valid");
        let _ = done_tx.send(FinalReply {
            id: RequestId::new(),
            reply_topic: topics::reply(&device),
            device,
            corr: Correlation(bytes::Bytes::from_static(b"c")),
            status: 200,
            payload: b"final".to_vec(),
            expires_ms: now_ms() + 60_000,
            envelope: false,
        });
        let frame = tokio::time::timeout(Duration::from_secs(20), deliveries_rx.recv())
            .await
            .expect("the reply came in time")
            .expect("a frame");
        done.store(true, Relaxed);
        let sent = sent.load(Relaxed);
        assert_eq!(
            crate::frontdoor::downstream::topic(&frame),
            Some("devices/d/reply")
        );
        assert!(
            sent < FLOOD,
            "the reply came only after the whole flood ({sent} events)"
        );
        flood.await.expect("flood ends");
        stop.cancel();
        running.await.expect("outbox ends");
    }
}
