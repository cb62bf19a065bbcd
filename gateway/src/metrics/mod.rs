//! Counters and histograms the stages write and the status stage reads (retained status,
//! `/metrics`, `/api/status`). A leaf: it imports nothing of the gateway, so every stage may
//! count here without knowing who reads.

pub mod histogram;

use std::sync::atomic::{AtomicU64, AtomicUsize};

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
    /// Devices seen since start.
    pub devices_known: AtomicUsize,
    /// Devices awake now.
    pub devices_awake: AtomicUsize,
    /// Request received → final reply committed.
    pub request_latency: Histogram,
    /// Final replies by op and status code.
    finished: std::sync::Mutex<std::collections::BTreeMap<(&'static str, u16), u64>>,
}

impl Metrics {
    /// Counts a final reply.
    pub fn finished(&self, op: &'static str, status: u16) {
        let mut finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        *finished.entry((op, status)).or_insert(0) += 1;
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
}
