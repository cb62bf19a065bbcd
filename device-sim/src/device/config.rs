//! What a fleet's devices share: their pacing ([`Pacing`]) or sleepy rhythm ([`Sleepy`]), the
//! fleet-wide settings ([`DeviceConfig`]) and the run's timeline ([`Schedule`]).

use std::time::{Duration, Instant};

use wire::DeviceId;

use crate::workload::Mix;

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
    /// The model `infer` requests ask for.
    pub infer: crate::workload::InferTarget,
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
