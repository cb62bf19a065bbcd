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
    /// Finished at (ms since epoch), once final.
    pub finished_ms: Option<i64>,
    /// Where it is on its way ([`lifecycle`]): queued, done (final, not yet published), held,
    /// acked or dead (the HTTP API also says running, which only the gateway process knows).
    pub lifecycle: &'static str,
}

/// Where a request is: `queued` → (`running`, known only in the gateway process) → `done` (final
/// reply committed, not yet handed to the broker) → `held` (published, waiting for the ack) →
/// `acked` or `dead` (TTL passed).
pub fn lifecycle(state: &str, delivery: Option<&str>, published: u32) -> &'static str {
    match (state, delivery) {
        ("queued", _) => "queued",
        (_, Some("held")) if published == 0 => "done",
        (_, Some("held")) => "held",
        (_, Some("acked")) => "acked",
        (_, Some("dead")) => "dead",
        _ => "done",
    }
}

/// One request in full, for `gateway requests show`, `/api/requests/{id}` and the device page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RequestDetail {
    /// What a listing shows.
    #[serde(flatten)]
    pub summary: RequestSummary,
    /// The op's arguments as JSON.
    pub args: Option<serde_json::Value>,
    /// The final reply as JSON, once there is one.
    pub reply: Option<serde_json::Value>,
    /// Where replies go.
    pub reply_topic: String,
    /// When it must be finished by (ms since epoch).
    pub deadline_ms: i64,
    /// When its reply TTL ends (ms since epoch), once final.
    pub expires_ms: Option<i64>,
}

/// The store-wide backlog: the stall gauges and the counts `gateway status` shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Backlog {
    /// Requests queued (or running).
    pub queued: u64,
    /// Final replies held.
    pub held: u64,
    /// When the oldest queued request was received (ms since epoch).
    pub oldest_queued_ms: Option<i64>,
    /// When the oldest held reply was finished (ms since epoch).
    pub oldest_held_ms: Option<i64>,
}

/// What an operator's cancel by request id did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorCancel {
    /// Cancelled: its `410` is held (counted published once, so the running gateway's outbox
    /// redelivers it on the device's next wake).
    Cancelled,
    /// Already finished, in this state.
    AlreadyFinished(State),
    /// No request with that id.
    NotFound,
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
