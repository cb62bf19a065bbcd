//! One simulated device: its settings, and what every device does whatever its rhythm —
//! subscribe to its reply topics, publish a request, check a reply and acknowledge it.
//!
//! Fed by [`crate::fleet`], which spawns one task per device on the shared runtime; feeds it back
//! one [`DeviceStats`]. Two rhythms: [`connected`] (stays connected, paced open or closed loop) and
//! [`sleepy`] (wakes, listens, sleeps, with a persistent session). All topics come from
//! [`gateway::wire::topics`].

pub mod connected;
pub mod sleepy;

use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway::wire::{topics, DeviceId};
use rand::rngs::StdRng;
use rumqttc::v5::mqttbytes::v5::{Filter, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;

use crate::connection::{Link, LinkEvent};
use crate::metrics::{DeviceStats, Live};
use crate::tracker::{Incoming, Outcome, Tracker};
use crate::workload::{self, Mix};

/// How long a single publish may wait for room in the client's queue.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// How a device paces its requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    /// Keep up to `inflight` requests outstanding; after each final reply wait `think`.
    Closed {
        /// Requests outstanding at once.
        inflight: usize,
        /// Pause after a final reply before the next request.
        think: Duration,
    },
    /// Send one request every `interval` on a fixed schedule, whatever the replies do; latency
    /// counts from the scheduled time, so a stall is not hidden (no coordinated omission).
    Open {
        /// Time between this device's requests.
        interval: Duration,
        /// Safety cap on requests outstanding; a send past it waits and counts as late.
        inflight: usize,
    },
}

impl Pacing {
    /// The in-flight cap.
    pub fn inflight(&self) -> usize {
        match *self {
            Pacing::Closed { inflight, .. } | Pacing::Open { inflight, .. } => inflight.max(1),
        }
    }
}

/// A sleepy device's rhythm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sleepy {
    /// Time from one wake to the next.
    pub wake_every: Duration,
    /// How long it stays connected on each wake.
    pub listen: Duration,
    /// Each sleep varies by ± this fraction.
    pub jitter: f64,
    /// Upload telemetry every this many wakes (0 = never).
    pub telemetry_every: u32,
}

/// Settings shared by every device of a fleet.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Device ids are `{prefix}-{index}`.
    pub id_prefix: String,
    /// This run's nonce, the first half of every correlation.
    pub nonce: u64,
    /// RNG seed; device `i` uses `seed ^ i`.
    pub seed: u64,
    /// The ops to send, weighted.
    pub mix: Mix,
    /// Values per request.
    pub values: usize,
    /// Require a `202` before each final reply.
    pub strict_202: bool,
    /// Request pacing (connected devices).
    pub pacing: Pacing,
    /// Sleepy rhythm; `None` keeps devices connected.
    pub sleepy: Option<Sleepy>,
    /// Requests per device at most.
    pub max_requests: Option<u64>,
    /// Connect + subscribe must finish within this.
    pub connect_timeout: Duration,
}

impl DeviceConfig {
    /// Device `index`'s id. The fleet checked the prefix, so every index gives a valid id.
    pub fn device_id(&self, index: usize) -> Option<DeviceId> {
        DeviceId::parse(&format!("{}-{index}", self.id_prefix))
    }
}

/// When the run starts, stops sending, and gives up waiting for replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Sending starts.
    pub start: Instant,
    /// No new requests from here on.
    pub stop_sending: Instant,
    /// Replies still missing now are lost.
    pub give_up: Instant,
}

/// One device's moving parts, shared by both rhythms.
#[derive(Debug)]
pub struct Device<'a> {
    /// Its id.
    pub id: DeviceId,
    /// Fleet settings.
    pub config: &'a DeviceConfig,
    /// Its requests.
    pub tracker: Tracker,
    /// Its results.
    pub stats: DeviceStats,
    /// Shared live counters.
    pub live: &'a Live,
    /// Its random numbers.
    pub rng: StdRng,
}

impl Device<'_> {
    /// Whether the device may start another request at `now`.
    pub fn may_send(&self, schedule: &Schedule, now: Instant) -> bool {
        now < schedule.stop_sending
            && self
                .config
                .max_requests
                .filter(|&max| self.tracker.started() >= max)
                .is_none()
    }

    /// Subscribes to its reply topics at QoS 1. `devices/{id}/reply/#` also matches
    /// `devices/{id}/reply` itself, so one filter covers both without double delivery.
    pub async fn subscribe(&self, client: &AsyncClient) -> Result<(), String> {
        let filters = vec![Filter::new(
            topics::reply_filter(&self.id),
            QoS::AtLeastOnce,
        )];
        bounded(client.subscribe_many(filters)).await
    }

    /// Publishes a fresh request; `sent_at` is when it counts as sent.
    pub async fn send_request(&mut self, client: &AsyncClient, sent_at: Instant) -> bool {
        let op = self.config.mix.pick(&mut self.rng);
        let request = workload::build(op, self.config.values, &mut self.rng);
        let corr = self.tracker.start(request.expect, sent_at);
        let properties = PublishProperties {
            correlation_data: Some(corr),
            content_type: Some("application/cbor".into()),
            ..PublishProperties::default()
        };
        let topic = topics::request(&self.id, op.name());
        let sent = bounded(client.publish_with_properties(
            topic,
            QoS::AtLeastOnce,
            false,
            request.payload,
            properties,
        ))
        .await;
        Live::bump(&self.live.sent);
        if let Err(error) = &sent {
            tracing::warn!(device = %self.id, %error, "request not queued");
        }
        sent.is_ok()
    }

    /// Publishes a plain CBOR message (presence, telemetry) at QoS 1.
    pub async fn publish(&self, client: &AsyncClient, topic: String, payload: Vec<u8>) {
        if let Err(error) = bounded(client.publish(topic, QoS::AtLeastOnce, false, payload)).await {
            tracing::warn!(device = %self.id, %error, "publish not queued");
        }
    }

    /// Checks a received message, counts it, and acknowledges final replies (duplicates too, so
    /// the gateway stops redelivering). Returns the outcome.
    pub async fn on_message(&mut self, client: &AsyncClient, publish: &Publish) -> Outcome {
        let now = Instant::now();
        let topic = std::str::from_utf8(&publish.topic).unwrap_or("<not utf-8>");
        let props = publish.properties.as_ref();
        let status_property = props.and_then(|p| {
            p.user_properties
                .iter()
                .find(|(key, _)| key == "status")
                .map(|(_, value)| value.as_str())
        });
        let corr = props.and_then(|p| p.correlation_data.clone());
        let msg = Incoming {
            topic,
            corr: corr.as_deref(),
            content_type: props.and_then(|p| p.content_type.as_deref()),
            status_property,
            payload: &publish.payload,
        };
        let outcome = self.tracker.on_reply(msg, now);
        self.stats.record(&outcome, now, self.live);
        match &outcome {
            Outcome::Mismatch { reason, detail, .. } => {
                tracing::warn!(device = %self.id, reason, detail, "reply mismatched");
            }
            Outcome::Duplicate => {
                let (dup, pkid) = (publish.dup, publish.pkid);
                tracing::debug!(device = %self.id, topic, dup, pkid, "duplicate dropped");
            }
            _ => {}
        }
        if let (Some(corr), false) = (corr, status_property == Some("202")) {
            self.ack(client, corr).await;
        }
        outcome
    }

    async fn ack(&mut self, client: &AsyncClient, corr: Bytes) {
        let properties = PublishProperties {
            correlation_data: Some(corr),
            ..PublishProperties::default()
        };
        let topic = topics::ack(&self.id);
        let ack = client.publish_with_properties(
            topic,
            QoS::AtLeastOnce,
            false,
            Bytes::new(),
            properties,
        );
        if bounded(ack).await.is_ok() {
            self.stats.counts.acks += 1;
        }
    }

    /// Handles one link event; returns false when the link has ended for good.
    pub async fn on_event(&mut self, link: &Link, event: Option<LinkEvent>) -> bool {
        match event {
            Some(LinkEvent::Message(publish)) => {
                self.on_message(&link.client, &publish).await;
            }
            Some(LinkEvent::Connected { .. }) => {
                // A clean-start reconnect lost the subscription: take it again.
                if let Err(error) = self.subscribe(&link.client).await {
                    tracing::warn!(device = %self.id, %error, "resubscribe failed");
                }
            }
            Some(LinkEvent::Subscribed { granted: false }) => {
                tracing::warn!(device = %self.id, "reply subscription refused");
            }
            Some(LinkEvent::Subscribed { .. }) => {}
            Some(LinkEvent::Error(error)) => {
                self.stats.counts.connect_errors += 1;
                Live::bump(&self.live.errors);
                tracing::debug!(device = %self.id, %error, "connection error");
            }
            Some(LinkEvent::Closed) | None => return false,
        }
        true
    }

    /// Ends the device: whatever is still pending is lost.
    pub fn finish(mut self) -> DeviceStats {
        let left = self.tracker.give_up();
        let counts = &mut self.stats.counts;
        counts.lost += left.lost;
        let missing_202 = left.ok_without_202 + left.error_without_202;
        if missing_202 > 0 {
            counts.replies_ok -= left.ok_without_202;
            counts.replies_error -= left.error_without_202;
            counts.mismatched += missing_202;
            let reasons = &mut self.stats.mismatch_reasons;
            *reasons.entry("final_without_202").or_default() += missing_202;
        }
        self.stats.counts.requests = self.tracker.started();
        self.stats
    }
}

/// Awaits a client call for at most [`PUBLISH_TIMEOUT`].
async fn bounded<E: std::fmt::Display>(
    call: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), String> {
    match tokio::time::timeout(PUBLISH_TIMEOUT, call).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("client queue full for 5 s".into()),
    }
}

/// The current wall-clock time in ms since the epoch (telemetry timestamps).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
