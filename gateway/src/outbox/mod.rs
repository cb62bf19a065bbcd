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

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Level;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::analytics::scheduler::Scheduler;
use crate::config::Limits;
use crate::flow::{DeviceEvent, OutboundReply, Replies};
use crate::logging::log_repeated;
use crate::metrics::Metrics;
use crate::status::device::{DeviceStatus, StatusBoard};
use crate::store::deadletters::Undeliverable;
use crate::store::devices::Seen;
use crate::store::requests::FinalReply;
use crate::store::{now_ms, Store};
use crate::wire::{topics, DeviceId, Status};

pub use presence::Presence;

/// Most device events, or final replies, handled in one turn of the loop.
const MAX_TURN: usize = 1024;

/// With other gateways alive on the store, how long a wake waits before its redelivery. The
/// device's ack of a reply it got from its broker session at connect, and its wake (presence
/// or request), may reach different gateways; waiting lets the ack commit first, so the wake
/// does not send that reply again.
const CLUSTER_WAKE_GRACE: Duration = Duration::from_millis(300);

/// With other gateways alive on the store (as the database says when a redelivery is claimed),
/// a held reply handed to the broker within this is not redelivered: the other gateways that
/// saw the same wake (its presence, request and acks each reach one of them) leave it to the one
/// that claimed it, and a reply published while its device was already awake is not sent
/// twice. A device waking again within it gets the reply on a later wake (or from its broker
/// session).
const CLUSTER_QUIET: Duration = Duration::from_secs(2);

/// The outbox stage.
pub struct Outbox {
    /// Publishes replies and status.
    pub replies: Replies,
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
    /// Devices whose last redelivery stopped at `max_held_replies_per_device`: the acks still
    /// to come before the next batch goes (while the device stays awake).
    pub refill: HashMap<DeviceId, usize>,
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
        // A tick missed while a turn waited on the store is not made up in a burst.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut events = Vec::with_capacity(MAX_TURN);
        // Wakes waiting for their grace (shared store only), in order of arrival.
        let mut later: std::collections::VecDeque<(Instant, Vec<DeviceId>)> = Default::default();
        loop {
            // Checked every turn, not only when nothing else is ready: a turn that waited on a
            // silent database (housekeeping, ten seconds) must not starve the stop.
            if shutdown.is_cancelled() {
                // Publish whatever is already committed, then stop.
                while let Ok(reply) = done_rx.try_recv() {
                    self.publish(reply).await;
                }
                break;
            }
            let next_due = later.front().map(|(due, _)| *due);
            tokio::select! {
                // Device events first: intake sends a device's `Seen` before its job can run, so
                // handling events first keeps that order, and a wake never re-sends a final
                // reply that was only just published. Every turn that handles events also
                // publishes the replies that were waiting when it began, so a stream of events
                // (thousands of wakes a second) cannot starve final replies.
                biased;
                received = events_rx.recv_many(&mut events, MAX_TURN) => {
                    if received == 0 {
                        break;
                    }
                    // The finals already waiting were raised before this turn's events were
                    // taken; a final raised while this turn awaits the store may follow an
                    // event not handled yet (its device's first `Seen`), so it waits for the
                    // next turn, which handles that event first.
                    let waiting = done_rx.len();
                    let mut undeliverable = Vec::new();
                    let mut woke = Vec::new();
                    for event in events.drain(..) {
                        if let DeviceEvent::Undeliverable(device, reply) = &event {
                            undeliverable.push(Undeliverable {
                                device: device.clone(),
                                corr: reply.corr.clone(),
                                status: reply.status,
                                reason: reply.reason.clone(),
                            });
                        }
                        woke.extend(self.on_event(event));
                    }
                    if !woke.is_empty() && self.clustered() {
                        later.push_back((Instant::now() + CLUSTER_WAKE_GRACE, woke));
                    } else {
                        self.redeliver(woke).await;
                    }
                    self.dead_letter(undeliverable).await;
                    for _ in 0..waiting.min(MAX_TURN) {
                        let Ok(reply) = done_rx.try_recv() else { break };
                        self.on_final(reply).await;
                    }
                }
                reply = done_rx.recv() => match reply {
                    Some(reply) => self.on_final(reply).await,
                    None => break,
                },
                _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now).into()),
                    if next_due.is_some() => {
                    let now = Instant::now();
                    let mut due = Vec::new();
                    while later.front().is_some_and(|(at, _)| *at <= now) {
                        due.extend(later.pop_front().map(|(_, d)| d).unwrap_or_default());
                    }
                    self.redeliver(due).await;
                }
                _ = tick.tick() => {
                    self.housekeeping().await;
                }
                _ = shutdown.cancelled() => {}
            }
        }
    }

    /// Whether other gateways share the store now (as of the last heartbeat): only then may one
    /// wake reach several gateways, and only then does a wake wait [`CLUSTER_WAKE_GRACE`]
    /// before its redelivery. (Whether the redelivery keeps the quiet period the store decides
    /// from the database itself, when it claims: this view may not yet show a gateway that just
    /// joined.)
    fn clustered(&self) -> bool {
        self.store
            .cluster_view()
            .is_some_and(|view| view.alive() > 1)
    }

    /// A final reply just committed: publish it, and its device's status is due.
    async fn on_final(&mut self, reply: FinalReply) {
        self.board.touch(&reply.device);
        self.publish(reply).await;
    }

    /// Applies one event; returns the device if it just woke.
    fn on_event(&mut self, event: DeviceEvent) -> Option<DeviceId> {
        let device = event.device().clone();
        // What goes to the device's row is stamped when its publish was read, so that what
        // two gateways saw of it keeps its order (`Inbound::received_ms`); this gateway's own
        // view of its wake (which decides publishing or holding) goes by when it got here.
        match &event {
            DeviceEvent::Seen(_, _, at_ms) => self.board.seen(&device, *at_ms),
            DeviceEvent::Connected(..) | DeviceEvent::Acked(..) | DeviceEvent::Rejected(..) => {
                self.board.seen(&device, now_ms())
            }
            _ => {}
        }
        if let DeviceEvent::Asleep(_, at_ms) = &event {
            self.board.asleep_ms.insert(device.clone(), *at_ms);
        } else if !self.board.asleep_ms.is_empty() {
            self.board.asleep_ms.remove(&device);
        }
        if let DeviceEvent::Rejected(_, error) = &event {
            self.board
                .last_error
                .insert(device.clone(), (error.clone(), now_ms()));
        }
        self.board.touch(&device);
        let woke = self.presence.apply(&event, Instant::now());
        if woke.is_some() {
            tracing::debug!(device_id = %device, ?event, "device woke");
            self.metrics
                .devices_known
                .store(self.presence.known_count(), Relaxed);
        }
        woke.or_else(|| self.refilled(&event))
    }

    /// The device, when this ack is the last one its cut-short redelivery waited for and it is
    /// still awake: its next held replies go now, not at its next wake.
    fn refilled(&mut self, event: &DeviceEvent) -> Option<DeviceId> {
        let DeviceEvent::Acked(device) = event else {
            return None;
        };
        let left = self.refill.get_mut(device)?;
        *left = left.saturating_sub(1);
        if *left > 0 {
            return None;
        }
        self.refill.remove(device);
        if !self.presence.is_awake(device) {
            return None;
        }
        tracing::debug!(device_id = %device, "acked its redelivered replies: redelivering more");
        Some(device.clone())
    }

    /// Replies the front door could not send: dead-lettered (a held one stops being held).
    async fn dead_letter(&self, replies: Vec<Undeliverable>) {
        if replies.is_empty() {
            return;
        }
        let letters = match self.store.undeliverable(replies, now_ms()).await {
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
            self.replies
                .announce(
                    topic.clone(),
                    crate::status::deadletter_json(&letter),
                    false,
                )
                .await;
        }
    }

    /// These devices just woke (or acked all of a redelivery cut short at the limit): publish
    /// their held replies again, oldest first per device, at most `max_held_replies_per_device`
    /// each, in one store round trip for all of them.
    async fn redeliver(&mut self, mut devices: Vec<DeviceId>) {
        devices.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        devices.dedup();
        if devices.is_empty() {
            return;
        }
        let limit = self.limits.max_held_replies_per_device;
        // On a store gateways can share, the store applies the quiet period only while another
        // gateway is alive, as the database says when the redelivery is claimed (this
        // gateway's view of the cluster may not show one that just joined).
        let quiet = if self.store.lease().is_some() {
            CLUSTER_QUIET
        } else {
            Duration::ZERO
        };
        let held = self.store.held_for(devices.clone(), limit, quiet).await;
        let held = match held {
            Ok(held) => held,
            Err(error) => {
                log_repeated!(Level::ERROR, %error, "cannot read held replies");
                return;
            }
        };
        // A device given the whole limit may hold more: it gets them as it acks these.
        let mut given: HashMap<&DeviceId, usize> = HashMap::new();
        for reply in &held {
            *given.entry(&reply.device).or_default() += 1;
        }
        for device in &devices {
            match given.get(device) {
                Some(&n) if n >= limit => self.refill.insert(device.clone(), n),
                _ => self.refill.remove(device),
            };
        }
        let now = now_ms();
        for reply in held.into_iter().filter(|r| r.expires_ms > now) {
            tracing::debug!(request_id = %reply.id, device_id = %reply.device, "redelivering on wake");
            self.publish(reply).await;
        }
    }

    /// Publishes one final reply with the time left of its TTL, and counts it.
    pub async fn publish(&self, reply: FinalReply) {
        let left_ms = (reply.expires_ms - now_ms()).max(1000) as u64;
        let status = Status::from_code(u64::from(reply.status)).unwrap_or(Status::Failed);
        self.replies
            .reply(OutboundReply {
                device: reply.device.clone(),
                topic: reply.reply_topic,
                payload: reply.payload,
                corr: Some(reply.corr.clone()),
                status,
                expiry: Duration::from_millis(left_ms),
                envelope: reply.envelope,
            })
            .await;
        tracing::debug!(request_id = %reply.id, device_id = %reply.device, "replied");
        self.store
            .mark_published(reply.id, &reply.device, &reply.corr);
    }

    /// Publishes `devices/{id}/status` for every device whose status changed and is due, and
    /// writes what this gateway saw of each to its row for operators' device list, in one store
    /// round trip that returns the status to publish: on a shared store the cluster's (wake,
    /// last seen and last error as every gateway saw them, held replies and, with
    /// `max_pending_per_device` set, pending requests of every gateway), else this gateway's.
    /// With other gateways alive, a device another gateway published within the last second is
    /// left to that publish and tried again a second later: the cluster publishes a busy
    /// device about once a second, not once a second per gateway.
    async fn publish_device_status(&mut self) {
        let due = self.board.due();
        if due.is_empty() {
            return;
        }
        let (now, now_ms) = (Instant::now(), now_ms());
        let seen: Vec<Seen> = due
            .iter()
            .map(|device| {
                let (mut awake_until_ms, mut asleep_ms) = self.presence.window(device, now, now_ms);
                if let (Some(_), Some(&said)) = (asleep_ms, self.board.asleep_ms.get(device)) {
                    // It said `asleep`: its wake ended when that was read.
                    (awake_until_ms, asleep_ms) = (said, Some(said));
                }
                Seen {
                    id: device.clone(),
                    awake_until_ms,
                    asleep_ms,
                    last_seen_ms: self.board.last_seen_ms.get(device).copied().unwrap_or(0),
                    last_error: self.board.last_error.get(device).cloned(),
                }
            })
            .collect();
        let stored = match self.store.devices_seen(seen.clone()).await {
            Ok(stored) => stored,
            Err(error) => {
                log_repeated!(Level::WARN, %error, "cannot record device rows");
                seen.iter().map(|s| Some(s.alone(now_ms, 0))).collect()
            }
        };
        for (device, stored) in due.into_iter().zip(stored) {
            // Another gateway published it within the last second: this one's sightings are in
            // its row, and its own publish comes a second later (if nobody's came meanwhile).
            let Some(stored) = stored else {
                self.board.touch(&device);
                continue;
            };
            let pending = stored
                .pending
                .filter(|_| self.limits.max_pending_per_device > 0)
                .unwrap_or_else(|| self.scheduler.pending_of(&device));
            let status = DeviceStatus {
                awake: stored.awake,
                last_seen_ms: stored.last_seen_ms,
                pending,
                held: stored.held,
                last_error: stored.last_error,
            };
            self.replies
                .announce(topics::device_status(&device), status.to_json(), true)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{Sent, Sink};
    use crate::frontdoor::devices::router::{Route, Router};
    use crate::store::requests::{Completion, NewRequest};
    use crate::wire::{Correlation, RequestId, State};

    /// Replies to the router, announcements nowhere: the outbox as wired in embedded mode,
    /// without rumqttd.
    struct RouterOnly(Arc<Router>);

    impl Sink for RouterOnly {
        fn reply(&self, reply: OutboundReply) -> Sent<'_> {
            self.0.reply(reply);
            Box::pin(std::future::ready(()))
        }

        fn announce(&self, _: String, _: Vec<u8>, _: bool) -> Sent<'_> {
            Box::pin(std::future::ready(()))
        }
    }

    /// Turns of the outbox's loop the flood fills, at most [`MAX_TURN`] events each.
    const FLOOD_TURNS: usize = 16;

    /// Stores a final reply for `device` that was published once and is held: what a wake of
    /// `device` redelivers.
    async fn held_reply(store: &Store, device: &DeviceId) {
        stored_reply(store, device, true).await;
    }

    /// Stores a done request of `device` with its held final reply, counted published or not;
    /// returns the reply, as a worker hands it to the outbox.
    async fn stored_reply(store: &Store, device: &DeviceId, published: bool) -> FinalReply {
        let id = RequestId::new();
        let now = now_ms();
        let reply = FinalReply {
            id,
            device: device.clone(),
            corr: Correlation(bytes::Bytes::from_static(b"held")),
            reply_topic: topics::reply(device),
            status: 200,
            payload: b"held".to_vec(),
            expires_ms: now + 60_000,
            envelope: false,
        };
        let request = NewRequest {
            id,
            device: device.clone(),
            corr: reply.corr.clone(),
            op: "stats".into(),
            args: Vec::new(),
            reply_topic: reply.reply_topic.clone(),
            envelope: false,
            received_ms: now,
            deadline_ms: now + 60_000,
        };
        let done = Completion {
            id,
            state: State::Done,
            status: reply.status,
            payload: reply.payload.clone(),
            finished_ms: now,
            expires_ms: reply.expires_ms,
            executed: true,
        };
        store.admit(request, 0).await.expect("request stored");
        store.complete(done).await.expect("reply stored");
        if published {
            store.mark_published(id, &reply.device, &reply.corr);
        }
        // SQLite runs store work in queue order: once this commits, so has the count above.
        store.ping().await.expect("publish count stored");
        reply
    }

    /// The outbox as `gateway run` builds it, replying through `sink`.
    fn outbox(sink: impl Sink, store: Store) -> Outbox {
        Outbox {
            replies: Replies::new(sink),
            store,
            scheduler: Arc::new(Scheduler::new(10, 10, 1)),
            metrics: Arc::default(),
            gateway_id: "gw-test".into(),
            limits: Limits::default(),
            presence: Presence::default(),
            board: StatusBoard::default(),
            refill: HashMap::default(),
        }
    }

    /// A stream of wakes (each turn of them costs the outbox a store round trip) must not hold
    /// back a final reply. Deterministic by construction: before the outbox starts, its event
    /// queue already holds [`FLOOD_TURNS`] full turns of wakes and the final reply is waiting.
    /// The flood's last event wakes a device with a held reply, so that redelivery marks the
    /// moment the outbox reached the end of the flood: the final reply must come before it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_wakes_does_not_starve_final_replies() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&Default::default(), dir.path())
            .await
            .expect("store opens");
        let router = Arc::new(Router::new(Arc::default()));
        let (deliveries_tx, mut deliveries_rx) = mpsc::channel(16);
        let (device, last) = (DeviceId::parse("d"), DeviceId::parse("last"));
        let (device, last) = (device.expect("valid"), last.expect("valid"));
        for (connection, client) in [(1, &device), (2, &last)] {
            let route = Route {
                connection,
                deliveries_tx: deliveries_tx.clone(),
                taken_over: CancellationToken::new(),
                parked: CancellationToken::new(),
            };
            router.register(client.as_str(), route);
        }
        held_reply(&store, &last).await;

        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let waking: Vec<DeviceId> = (0..50)
            .map(|n| DeviceId::parse(&format!("w{n}")).expect("valid"))
            .collect();
        for n in 0..FLOOD_TURNS * MAX_TURN / 2 {
            let waker = waking[n % waking.len()].clone();
            let _ = events_tx.send(DeviceEvent::Connected(waker.clone()));
            let _ = events_tx.send(DeviceEvent::Disconnected(waker));
        }
        let _ = events_tx.send(DeviceEvent::Connected(last.clone()));
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

        let outbox = outbox(RouterOnly(router.clone()), store);
        let stop = CancellationToken::new();
        let running = tokio::spawn(outbox.run(done_rx, events_rx, stop.clone()));
        let mut topics_in_order = Vec::new();
        for _ in 0..2 {
            let frame = tokio::time::timeout(Duration::from_secs(20), deliveries_rx.recv())
                .await
                .expect("a reply in time")
                .expect("a frame");
            let topic = crate::frontdoor::devices::downstream::topic(&frame).map(str::to_owned);
            topics_in_order.push(topic.expect("a publish"));
        }
        assert_eq!(
            topics_in_order,
            ["devices/d/reply", "devices/last/reply"],
            "the final reply waited for the whole flood"
        );
        stop.cancel();
        drop((events_tx, done_tx));
        running.await.expect("outbox ends");
    }

    /// Records replies by device; a reply to `gated` waits until the gate opens, and says when
    /// it began waiting: the outbox's turn is then held mid-redelivery.
    struct GatedSink {
        gated: DeviceId,
        began_tx: mpsc::UnboundedSender<()>,
        gate: Arc<tokio::sync::Semaphore>,
        sent_tx: mpsc::UnboundedSender<String>,
    }

    impl Sink for GatedSink {
        fn reply(&self, reply: OutboundReply) -> Sent<'_> {
            let gated = reply.device == self.gated;
            let _ = self.sent_tx.send(reply.device.as_str().to_owned());
            Box::pin(async move {
                if gated {
                    let _ = self.began_tx.send(());
                    let _ = self.gate.acquire().await.map(|permit| permit.forget());
                }
            })
        }

        fn announce(&self, _: String, _: Vec<u8>, _: bool) -> Sent<'_> {
            Box::pin(std::future::ready(()))
        }
    }

    /// A final reply raised while a turn of the outbox is busy with other devices' wakes, just
    /// after its own device's first `Seen`, goes out once: the turn must not publish it ahead of
    /// that `Seen`, which would then wake the device and send the reply again (seen through an
    /// external broker: up to 184 duplicates in a 10 s closed loop).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_final_raised_during_a_turn_waits_for_its_devices_earlier_events() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&Default::default(), dir.path())
            .await
            .expect("store opens");
        let [a, d, e] = ["a", "d", "e"].map(|id| DeviceId::parse(id).expect("valid"));
        held_reply(&store, &a).await;
        held_reply(&store, &e).await;
        // d's request is done and held, not yet published: its final is on its way.
        let final_d = stored_reply(&store, &d, false).await;

        let (began_tx, mut began_rx) = mpsc::unbounded_channel();
        let (sent_tx, mut sent_rx) = mpsc::unbounded_channel();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let sink = GatedSink {
            gated: a.clone(),
            began_tx,
            gate: gate.clone(),
            sent_tx,
        };
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let outbox = outbox(sink, store);
        let stop = CancellationToken::new();
        let running = tokio::spawn(outbox.run(done_rx, events_rx, stop.clone()));
        let window = Duration::from_secs(60);
        let _ = events_tx.send(DeviceEvent::Seen(a.clone(), window, now_ms()));
        // The turn that woke `a` is now redelivering to it, held at the gate.
        began_rx.recv().await.expect("a's redelivery began");
        let _ = events_tx.send(DeviceEvent::Seen(d.clone(), window, now_ms()));
        let _ = done_tx.send(final_d);
        gate.add_permits(1);
        // `e` wakes after all of that: once its redelivery and d's final are out, a duplicate
        // of d's final would have been sent too.
        let _ = events_tx.send(DeviceEvent::Seen(e.clone(), window, now_ms()));
        let mut sent = Vec::new();
        while !(sent.iter().any(|s| s == "e") && sent.iter().any(|s| s == "d")) {
            let device = tokio::time::timeout(Duration::from_secs(20), sent_rx.recv())
                .await
                .expect("replies in time")
                .expect("a reply");
            sent.push(device);
        }
        assert_eq!(
            sent.iter().filter(|s| *s == "d").count(),
            1,
            "d's final went out once: {sent:?}"
        );
        stop.cancel();
        drop((events_tx, done_tx));
        running.await.expect("outbox ends");
    }
}
