//! The dashboard's charts: a sample of the gateway's counters every [`INTERVAL`], the last hour
//! of them kept in memory (nothing is written; a restart starts the charts afresh).
//!
//! Fed by the counters the stages keep (intake's outcomes, the final replies, the latency
//! histogram, the scheduler's queue) and the store's backlog (held count, oldest queued and
//! held: indexed reads); feeds `GET /api/series`.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::GatewayStatus;
use crate::metrics::histogram::quantile_between;
use crate::metrics::IntakeStats;
use crate::store::now_ms;

/// Time between two samples.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept: one hour.
const KEPT: usize = 720;

/// One sample: rates over the interval before it, levels at its time.
#[derive(Debug, Clone, Default, PartialEq)]
struct Sample {
    at_ms: i64,
    accepted: f64,
    done: f64,
    failed: f64,
    rejected: f64,
    refused: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    queued: usize,
    running: usize,
    held: usize,
    awake: usize,
    oldest_queued_s: f64,
    oldest_held_s: f64,
}

/// Counter values at one moment, to turn into rates.
#[derive(Debug, Clone, Default)]
struct Counters {
    accepted: u64,
    done: u64,
    failed: u64,
    rejected: u64,
    refused: u64,
    latency: Vec<u64>,
}

/// The last hour of samples.
#[derive(Debug, Default)]
pub struct Series {
    samples: Mutex<VecDeque<Sample>>,
}

impl Series {
    fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The samples as columns (uPlot's data layout): `t` in seconds since the epoch, rates per
    /// second, latencies in ms, ages in seconds.
    pub fn columns(&self) -> serde_json::Value {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let column = |f: &dyn Fn(&Sample) -> serde_json::Value| -> Vec<serde_json::Value> {
            samples.iter().map(f).collect()
        };
        json!({
            "interval_s": INTERVAL.as_secs(),
            "t": column(&|s| json!(s.at_ms as f64 / 1000.0)),
            "accepted": column(&|s| json!(s.accepted)),
            "done": column(&|s| json!(s.done)),
            "failed": column(&|s| json!(s.failed)),
            "rejected": column(&|s| json!(s.rejected)),
            "refused": column(&|s| json!(s.refused)),
            "p50_ms": column(&|s| json!(s.p50_ms)),
            "p99_ms": column(&|s| json!(s.p99_ms)),
            "queued": column(&|s| json!(s.queued)),
            "running": column(&|s| json!(s.running)),
            "held": column(&|s| json!(s.held)),
            "awake": column(&|s| json!(s.awake)),
            "oldest_queued_s": column(&|s| json!(s.oldest_queued_s)),
            "oldest_held_s": column(&|s| json!(s.oldest_held_s)),
        })
    }

    /// Samples every [`INTERVAL`] until `shutdown`; the first right away.
    pub async fn run(
        self: Arc<Self>,
        status: GatewayStatus,
        intake: Arc<IntakeStats>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<(Counters, i64)> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = now_ms();
            let counters = read_counters(&status, &intake);
            let backlog = status.store.backlog().await.unwrap_or_default();
            let age = |at: Option<i64>| at.map_or(0.0, |at| (now - at).max(0) as f64 / 1000.0);
            let counts = status.scheduler.counts();
            let mut sample = Sample {
                at_ms: now,
                queued: counts.queued,
                running: counts.running,
                held: backlog.held as usize,
                awake: status.metrics.devices_awake.load(Relaxed),
                oldest_queued_s: age(backlog.oldest_queued_ms),
                oldest_held_s: age(backlog.oldest_held_ms),
                ..Sample::default()
            };
            if let Some((before, at)) = &last {
                let seconds = ((now - at) as f64 / 1000.0).max(0.001);
                let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / seconds;
                sample.accepted = rate(counters.accepted, before.accepted);
                sample.done = rate(counters.done, before.done);
                sample.failed = rate(counters.failed, before.failed);
                sample.rejected = rate(counters.rejected, before.rejected);
                sample.refused = rate(counters.refused, before.refused);
                let ms =
                    |q| quantile_between(&before.latency, &counters.latency, q).map(|s| s * 1e3);
                sample.p50_ms = ms(0.5);
                sample.p99_ms = ms(0.99);
            }
            self.push(sample);
            last = Some((counters, now));
        }
    }
}

fn read_counters(status: &GatewayStatus, intake: &IntakeStats) -> Counters {
    let metrics = &status.metrics;
    Counters {
        accepted: intake.accepted.load(Relaxed),
        done: metrics.done_total.load(Relaxed),
        failed: metrics.failed_total.load(Relaxed),
        rejected: intake.rejected.load(Relaxed),
        refused: intake.over_quota.load(Relaxed) + intake.unavailable.load(Relaxed),
        latency: metrics.request_latency.snapshot(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_one_hour_as_columns() {
        let series = Series::default();
        for n in 0..(KEPT + 5) {
            series.push(Sample {
                at_ms: n as i64 * 5000,
                queued: n,
                ..Sample::default()
            });
        }
        let columns = series.columns();
        let t = columns["t"].as_array().expect("t");
        assert_eq!(t.len(), KEPT);
        assert_eq!(columns["queued"][0], 5, "the oldest samples went first");
        assert_eq!(columns["p50_ms"][0], serde_json::Value::Null);
    }
}
