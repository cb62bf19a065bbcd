//! One simulated device: its settings, and what every device does whatever its rhythm —
//! subscribe to its reply topics, publish a request, check a reply and acknowledge it.
//!
//! Fed by [`crate::fleet`], which spawns one task per device on the shared runtime; feeds it back
//! one [`DeviceStats`]. Two rhythms: [`connected`] (stays connected, paced open or closed loop) and
//! [`sleepy`] (wakes, listens, sleeps, with a persistent session). All topics come from
//! [`wire::topics`].

mod config;
pub mod connected;
pub mod sleepy;

pub use config::{DeviceConfig, Pacing, Schedule, Sleepy};

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rumqttc::v5::mqttbytes::v5::{Filter, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use wire::{topics, DeviceId};

use crate::connection::{Link, LinkEvent};
use crate::metrics::{DeviceStats, Live};
use crate::tracker::{Incoming, Outcome, Tracker};
use crate::workload;

/// How long a single publish may wait for room in the client's queue.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// Requests without a `202` or final reply yet, by correlation: topic and payload, to send
    /// again on a later wake (sleepy devices).
    pub unanswered: HashMap<Bytes, (String, Bytes)>,
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
        let request = workload::build(op, self.config.values, &self.config.infer, &mut self.rng);
        let corr = self.tracker.start(request.expect, sent_at);
        let topic = topics::request(&self.id, op.name());
        let payload = Bytes::from(request.payload);
        self.unanswered
            .insert(corr.clone(), (topic.clone(), payload.clone()));
        let sent = self.publish_request(client, topic, payload, corr).await;
        Live::bump(&self.live.sent);
        if let Err(error) = &sent {
            tracing::warn!(device = %self.id, %error, "request not queued");
        }
        sent.is_ok()
    }

    /// Sends again, with the same correlation, every request that got neither a `202` nor a
    /// final reply: on a wake, what a sleepy device does when the gateway that took a request
    /// may have died before committing it. The gateway's dedupe makes it safe: a request it
    /// stored is answered with its current state, never run twice.
    pub async fn retry_unanswered(&mut self, client: &AsyncClient) {
        let again: Vec<(Bytes, (String, Bytes))> = self
            .unanswered
            .iter()
            .map(|(corr, sent)| (corr.clone(), sent.clone()))
            .collect();
        for (corr, (topic, payload)) in again {
            if self
                .publish_request(client, topic, payload, corr)
                .await
                .is_ok()
            {
                self.stats.counts.retries += 1;
            }
        }
    }

    async fn publish_request(
        &mut self,
        client: &AsyncClient,
        topic: String,
        payload: Bytes,
        corr: Bytes,
    ) -> Result<(), String> {
        let properties = PublishProperties {
            correlation_data: Some(corr),
            content_type: Some("application/cbor".into()),
            ..PublishProperties::default()
        };
        self.publish_counted(client, topic, payload, properties)
            .await
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
        if let Some(corr) = &corr {
            self.unanswered.remove(corr);
        }
        let msg = Incoming {
            topic,
            corr: corr.as_deref(),
            content_type: props.and_then(|p| p.content_type.as_deref()),
            status_property,
            payload: &publish.payload,
        };
        let outcome = self.tracker.on_reply(msg, now);
        self.stats.record(&outcome, now, self.live);
        self.stats.counts.bytes_down += publish.size() as u64;
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
        let acked = self.publish_counted(client, topic, Bytes::new(), properties);
        if acked.await.is_ok() {
            self.stats.counts.acks += 1;
        }
    }

    /// Publishes at QoS 1 and counts the PUBLISH packet's size on the wire.
    async fn publish_counted(
        &mut self,
        client: &AsyncClient,
        topic: String,
        payload: Bytes,
        properties: PublishProperties,
    ) -> Result<(), String> {
        // The packet as rumqttc frames it, plus the 2-byte packet id it assigns when sending.
        let packet = Publish::new(&topic, QoS::AtLeastOnce, payload, Some(properties));
        let size = packet.size() as u64 + 2;
        let Publish {
            payload,
            properties,
            ..
        } = packet;
        let properties = properties.unwrap_or_default();
        let publish =
            client.publish_with_properties(topic, QoS::AtLeastOnce, false, payload, properties);
        let sent = bounded(publish).await;
        if sent.is_ok() {
            self.stats.counts.bytes_up += size;
        }
        sent
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
