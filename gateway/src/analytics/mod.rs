//! Analytics: the ops as pure functions over slices ([`ops`]), the fair [`scheduler`], and the
//! worker [`pool`] that runs accepted requests and records their final replies.

pub mod cost;
mod finish;
pub mod ops;
pub mod pool;
pub mod scheduler;

use crate::wire::{Correlation, DeviceId, RequestId};

/// An accepted request waiting for a worker.
#[derive(Debug)]
pub struct Job {
    /// Its id.
    pub id: RequestId,
    /// Its device.
    pub device: DeviceId,
    /// Its correlation.
    pub corr: Correlation,
    /// The validated op call.
    pub call: ops::Call,
    /// Where the final reply goes.
    pub reply_topic: String,
    /// 3.1.1 envelope form (the reply carries `corr`).
    pub envelope: bool,
    /// Received at, ms since epoch (telemetry windows end here).
    pub received_ms: i64,
    /// Must be finished by, ms since epoch; after it the answer is `504`.
    pub deadline_ms: i64,
}
