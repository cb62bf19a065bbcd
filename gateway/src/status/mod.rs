//! Operator status: the retained `gateway/{gw}/status` (online on every start, `degraded` with
//! its `reason` while the store cannot write, draining, offline on a clean stop and as the Last
//! Will; republished on change at most once a second and at least every 30 s) and the JSON of
//! `devices/{id}/status`.
//!
//! Fed by counters the stages keep ([`Metrics`], the scheduler's counts, the store's held count);
//! publishes through the service link.

mod api;
mod assets;
pub mod device;
pub mod http;
pub mod login;
mod prometheus;
pub mod series;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::analytics::scheduler::Scheduler;
use crate::flow::Replies;
use crate::metrics::Metrics;
use crate::store::{now_ms, Store};
use crate::wire::topics;

/// Formats ms since the epoch as RFC 3339 UTC text with milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

/// Publishes the gateway's retained status.
#[derive(Clone)]
pub struct GatewayStatus {
    /// The service link.
    pub replies: Replies,
    /// For the held count.
    pub store: Store,
    /// Queue counts.
    pub scheduler: Arc<Scheduler>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// `[gateway] id`.
    pub gateway_id: String,
    /// When this run started.
    pub started_at_ms: i64,
    /// The front door's login counters as JSON (embedded mode), published as `"logins"`. A
    /// closure, since status sits below the front door.
    pub logins: Option<Arc<dyn Fn() -> serde_json::Value + Send + Sync>>,
}

impl GatewayStatus {
    /// The serving state: `degraded` while the store cannot write, else `online`.
    pub fn serving_state(&self) -> &'static str {
        if self.store.health().is_degraded() {
            "degraded"
        } else {
            "online"
        }
    }

    /// The status document without the time fields, to tell whether anything changed.
    async fn counts(&self, state: &str) -> serde_json::Value {
        let held = self.store.held_total().await.unwrap_or(0);
        let counts = self.scheduler.counts();
        let mut document = json!({
            "state": state,
            "requests": {
                "queued": counts.queued,
                "running": counts.running,
                "held": held,
                "done_total": self.metrics.done_total.load(Relaxed),
                "failed_total": self.metrics.failed_total.load(Relaxed),
                "dead_total": self.metrics.dead_total.load(Relaxed),
            },
            "devices": {
                "known": self.metrics.devices_known.load(Relaxed),
                "awake": self.metrics.devices_awake.load(Relaxed),
            },
        });
        if let Some(logins) = &self.logins {
            document["logins"] = logins();
        }
        if let Some(reason) = self.store.health().reason() {
            document["reason"] = json!(format!("store cannot write: {reason}"));
        }
        document
    }

    fn document(&self, mut counts: serde_json::Value) -> Vec<u8> {
        let now = now_ms();
        counts["version"] = json!(env!("CARGO_PKG_VERSION"));
        counts["started_at"] = json!(rfc3339_ms(self.started_at_ms));
        counts["uptime_s"] = json!((now - self.started_at_ms).max(0) / 1000);
        counts["updated_at"] = json!(rfc3339_ms(now));
        if let Some(view) = self.store.cluster_view() {
            let age_s = |at: Option<i64>| at.map(|at| (now - at).max(0) / 1000);
            let gateways: Vec<_> = view
                .gateways
                .iter()
                .map(
                    |g| json!({ "id": g.id, "alive": g.alive, "last_seen": rfc3339_ms(g.seen_ms) }),
                )
                .collect();
            counts["cluster"] = json!({
                "gateways": gateways,
                "alive": view.alive(),
                "queued": view.totals.queued,
                "held": view.totals.held,
                "oldest_queued_age_s": age_s(view.totals.oldest_queued_ms),
                "oldest_held_age_s": age_s(view.totals.oldest_held_ms),
            });
        }
        serde_json::to_vec(&counts).expect("a JSON value always serialises")
    }

    /// The status document with `state`, as published.
    pub async fn document_for(&self, state: &str) -> Vec<u8> {
        let counts = self.counts(state).await;
        self.document(counts)
    }

    /// Publishes the status now with `state`.
    pub async fn publish(&self, state: &str) {
        let counts = self.counts(state).await;
        let topic = topics::gateway_status(&self.gateway_id);
        self.replies
            .announce(topic, self.document(counts), true)
            .await;
    }

    /// Republishes `online` (or `degraded`) on change (at most once a second) and at least
    /// every 30 s.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last: Option<(serde_json::Value, Instant)> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let counts = self.counts(self.serving_state()).await;
            let stale = last.as_ref().is_none_or(|(prev, at)| {
                *prev != counts || at.elapsed() >= Duration::from_secs(30)
            });
            if stale {
                let topic = topics::gateway_status(&self.gateway_id);
                self.replies
                    .announce(topic.clone(), self.document(counts.clone()), true)
                    .await;
                last = Some((counts, Instant::now()));
            }
        }
    }
}

/// The gateway's Last Will: retained `offline` status.
pub fn offline_will(gateway_id: &str, started_at_ms: i64) -> rumqttc::v5::mqttbytes::v5::LastWill {
    let now = now_ms();
    let document = json!({
        "state": "offline",
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": rfc3339_ms(started_at_ms),
        "uptime_s": 0,
        "updated_at": rfc3339_ms(now),
    });
    let payload = serde_json::to_vec(&document).expect("a JSON value always serialises");
    rumqttc::v5::mqttbytes::v5::LastWill::new(
        topics::gateway_status(gateway_id),
        payload,
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        true,
        None,
    )
}

/// The JSON message for `gateway/{gw}/deadletter`.
pub fn deadletter_json(letter: &crate::store::deadletters::DeadLetter) -> Vec<u8> {
    let document = json!({
        "at": rfc3339_ms(letter.at_ms),
        "device": letter.device,
        "request_id": letter.request_id,
        "corr": letter.corr,
        "op": letter.op,
        "status": letter.status,
        "reason": letter.reason,
    });
    serde_json::to_vec(&document).expect("a JSON value always serialises")
}
