//! Dead letters: one record per request or reply the gateway gave up on, with why.

/// A dead letter to record.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    /// When (ms since epoch).
    pub at_ms: i64,
    /// The device, when known.
    pub device: Option<String>,
    /// The request id (text), when the request was stored.
    pub request_id: Option<String>,
    /// The correlation, hex, when known.
    pub corr: Option<String>,
    /// The op, when known.
    pub op: Option<String>,
    /// The status code of the reply that went (or would have gone) out.
    pub status: u16,
    /// Why, for a human.
    pub reason: String,
}

/// A reply the front door could not send to its device (over its MQTT Maximum Packet Size),
/// to dead-letter: a held final reply of that correlation stops being held.
#[derive(Debug, Clone)]
pub struct Undeliverable {
    /// The device.
    pub device: crate::wire::DeviceId,
    /// The reply's Correlation Data, when it had one.
    pub corr: Option<crate::wire::Correlation>,
    /// The reply's status code (a 202 is never a held reply).
    pub status: u16,
    /// Why, for the dead letter.
    pub reason: String,
}

/// A stored dead letter, as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetterRow {
    /// Row id.
    pub id: i64,
    /// The letter.
    #[serde(flatten)]
    pub letter: DeadLetter,
    /// Whether an operator requeued it.
    pub requeued: bool,
}

/// What `requeue` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requeue {
    /// The reply is held again with a fresh TTL (its request id, text).
    Requeued(String),
    /// The letter is for a request refused at intake: nothing was stored to requeue.
    NotStored,
    /// Already requeued once.
    AlreadyRequeued,
    /// The request row is gone (pruned), or its reply is not dead.
    NotDead,
    /// No dead letter with that id.
    NotFound,
}

/// The request id of a letter as the 16 bytes the tables keep, when it has one.
pub(crate) fn request_id_bytes(letter: &DeadLetter) -> Option<Vec<u8>> {
    letter
        .request_id
        .as_deref()
        .and_then(|text| uuid::Uuid::parse_str(text).ok())
        .map(|id| id.as_bytes().to_vec())
}

/// The text form of a stored request id.
pub(crate) fn request_id_text(bytes: &[u8]) -> Option<String> {
    uuid::Uuid::from_slice(bytes).ok().map(|id| id.to_string())
}
