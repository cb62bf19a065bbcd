//! Requests as the store records them: what intake admits, what a worker's completion records,
//! and the final replies the outbox delivers. Plain values; the engines ([`super::sqlite`],
//! [`super::postgres`]) turn them into rows and back.

use crate::wire::{Correlation, DeviceId, RequestId, State};

/// A request to admit.
#[derive(Debug, Clone)]
pub struct NewRequest {
    /// Its fresh id.
    pub id: RequestId,
    /// The device that sent it.
    pub device: DeviceId,
    /// Its correlation.
    pub corr: Correlation,
    /// The op name.
    pub op: String,
    /// The op's arguments, CBOR.
    pub args: Vec<u8>,
    /// Where replies go.
    pub reply_topic: String,
    /// 3.1.1 envelope form.
    pub envelope: bool,
    /// When it was received.
    pub received_ms: i64,
    /// When it must be finished by.
    pub deadline_ms: i64,
}

/// What admission found.
#[derive(Debug, Clone)]
pub enum Admission {
    /// Stored as new.
    New,
    /// A request with the same (device, correlation) exists.
    Existing(Existing),
    /// Not stored: the device already has `max_pending_per_device` requests pending across the
    /// gateways sharing the store.
    OverQuota,
}

/// The state of an existing request, for answering duplicates and `status`.
#[derive(Debug, Clone)]
pub struct Existing {
    /// Its id.
    pub id: RequestId,
    /// Its op.
    pub op: String,
    /// Its state in the store (`queued` or a final state).
    pub state: State,
    /// The final reply's payload, once there is one.
    pub reply: Option<Vec<u8>>,
    /// The final reply's status code.
    pub status: Option<u16>,
    /// The end of the final reply's TTL.
    pub expires_ms: Option<i64>,
    /// Where its replies go.
    pub reply_topic: String,
}

/// A stored, unfinished request (for recovery after a restart): what was admitted.
pub type StoredRequest = NewRequest;

/// A final reply that is held for its device until acknowledged.
#[derive(Debug, Clone)]
pub struct FinalReply {
    /// The request's id.
    pub id: RequestId,
    /// The device.
    pub device: DeviceId,
    /// The correlation.
    pub corr: Correlation,
    /// Where it goes.
    pub reply_topic: String,
    /// Its status code.
    pub status: u16,
    /// Its payload, byte for byte.
    pub payload: Vec<u8>,
    /// The end of its TTL.
    pub expires_ms: i64,
    /// For an MQTT 3.1.1 device (published without properties).
    pub envelope: bool,
}

/// One line of `gateway requests list`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RequestSummary {
    /// Id (text).
    pub id: String,
    /// Device.
    pub device: String,
    /// Correlation, hex.
    pub corr: String,
    /// Op.
    pub op: String,
    /// State.
    pub state: String,
    /// Final status code.
    pub status: Option<u16>,
    /// Delivery of the final reply.
    pub delivery: Option<String>,
    /// Completed runs of the op.
    pub executions: u32,
    /// Times the final reply was published.
    pub published: u32,
    /// Received at (ms since epoch).
    pub received_ms: i64,
}

/// A finished request's final reply, to record.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The request.
    pub id: RequestId,
    /// Its final state.
    pub state: State,
    /// The final reply's status code.
    pub status: u16,
    /// The final reply's payload.
    pub payload: Vec<u8>,
    /// When it finished.
    pub finished_ms: i64,
    /// The end of the reply TTL.
    pub expires_ms: i64,
    /// Whether the op actually ran (false for a deadline passed in the queue).
    pub executed: bool,
}

/// What a `cancel` found.
#[derive(Debug, Clone)]
pub enum CancelOutcome {
    /// The request was queued and is now cancelled; its final `410` reply is held.
    Cancelled(FinalReply),
    /// The request had already finished, in this state.
    AlreadyFinished(State),
    /// No request with that correlation.
    NotFound,
}

/// Builds the final reply payload a cancel records: from the request's id, whether it uses the
/// 3.1.1 envelope, and its correlation. (The store records it; the caller knows the format.)
pub type CancelReply = fn(RequestId, bool, &Correlation) -> Vec<u8>;
