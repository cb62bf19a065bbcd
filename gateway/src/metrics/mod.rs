//! Counters and histograms the stages write and the status stage reads (retained status,
//! `/metrics`, `/api/status`). A leaf: it imports nothing of the gateway, so every stage may
//! count here without knowing who reads.

pub mod histogram;

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

pub use histogram::Histogram;

/// Counters the stages keep for status and metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests finished with `200` since start.
    pub done_total: AtomicU64,
    /// Requests finished with `500` or `504` since start.
    pub failed_total: AtomicU64,
    /// Replies dead-lettered (TTL passed) since start.
    pub dead_total: AtomicU64,
    /// Finished records evicted to keep the store within `limits.max_store_bytes`.
    pub evicted_total: AtomicU64,
    /// Devices seen since start.
    pub devices_known: AtomicUsize,
    /// Devices awake now.
    pub devices_awake: AtomicUsize,
    /// Request received → final reply committed.
    pub request_latency: Histogram,
    /// Final replies by op and status code.
    finished: std::sync::Mutex<std::collections::BTreeMap<(&'static str, u16), u64>>,
    /// Request received → final reply committed, by op.
    latency_by_op: std::sync::Mutex<std::collections::BTreeMap<&'static str, Arc<Histogram>>>,
}

impl Metrics {
    /// Counts a final reply.
    pub fn finished(&self, op: &'static str, status: u16) {
        let mut finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        *finished.entry((op, status)).or_insert(0) += 1;
    }

    /// Records a request's latency (received → final reply committed), overall and for its op.
    pub fn observe_latency(&self, op: &'static str, elapsed: Duration) {
        self.request_latency.observe(elapsed);
        let by_op = {
            let mut map = self.latency_by_op.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(op).or_default().clone()
        };
        by_op.observe(elapsed);
    }

    /// Latency histograms by op.
    pub fn latency_by_op(&self) -> Vec<(&'static str, Arc<Histogram>)> {
        let map = self.latency_by_op.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(op, h)| (*op, h.clone())).collect()
    }

    /// Final replies by (op, status) so far.
    pub fn finished_by_op(&self) -> Vec<((&'static str, u16), u64)> {
        let finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        finished.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

/// Counters intake keeps for status and metrics.
#[derive(Debug, Default)]
pub struct IntakeStats {
    /// Requests accepted (new, stored).
    pub accepted: AtomicU64,
    /// Duplicates answered from the store.
    pub duplicates: AtomicU64,
    /// Requests refused at intake with 4xx (dead-lettered).
    pub rejected: AtomicU64,
    /// Requests refused with 429.
    pub over_quota: AtomicU64,
    /// Requests refused with 503.
    pub unavailable: AtomicU64,
    /// Telemetry readings stored.
    pub readings_stored: AtomicU64,
    /// Telemetry readings not stored: copies of one already stored (a QoS 1 publish sent
    /// again, or taken again by another gateway of a share group).
    pub reading_copies: AtomicU64,
    /// Dead letters written at intake, by reason code.
    pub dead_letters: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl IntakeStats {
    /// Counts a dead letter written at intake under its reason code (the text before the first
    /// `:` of its reason).
    pub fn dead_lettered(&self, reason: &str) {
        let code = reason.split(':').next().unwrap_or(reason).trim().to_owned();
        let mut counts = self.dead_letters.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry(code).or_insert(0) += 1;
    }
}
