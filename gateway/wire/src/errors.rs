//! The error codes of `error.code` in a reply, each with the one status it is answered with:
//! PROTOCOL.md's error table as a type, so a code and its status cannot be paired wrongly.

use crate::Status;

/// A stable, machine-readable reason for a 4xx or 5xx reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// `400`: the payload is not CBOR, not a map, or has no correlation.
    BadRequest,
    /// `400`: the op's arguments are wrong.
    BadArgs,
    /// `403`: the Response Topic is outside the device's own reply namespace.
    ForbiddenReplyTopic,
    /// `404`: no op of that name.
    UnknownOp,
    /// `404`: `status`/`cancel` of a request this device never sent.
    UnknownRequest,
    /// `404`: `infer` of a model that is not configured.
    UnknownModel,
    /// `409`: `cancel` of a request that already finished.
    AlreadyFinished,
    /// `410`: the final reply of a request the device cancelled.
    Cancelled,
    /// `413`: payload or series larger than the limits.
    TooLarge,
    /// `413`: a reply larger than the device's MQTT Maximum Packet Size (sent in its place, and
    /// dead-lettered).
    ReplyTooLarge,
    /// `429`: the device has `limits.max_pending_per_device` requests pending.
    TooManyPending,
    /// `500`: the op failed while running.
    OpFailed,
    /// `503`: the gateway's queue is full.
    QueueFull,
    /// `503`: the gateway is draining for shutdown.
    Draining,
    /// `503`: the store cannot write now (disk full, read-only, database unreachable): the
    /// gateway is degraded and takes no new requests until it writes again.
    StoreUnavailable,
    /// `504`: the request's deadline passed before it finished.
    DeadlineExceeded,
}

impl ErrorCode {
    /// Every code, in the table's order.
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::BadRequest,
        ErrorCode::BadArgs,
        ErrorCode::ForbiddenReplyTopic,
        ErrorCode::UnknownOp,
        ErrorCode::UnknownRequest,
        ErrorCode::UnknownModel,
        ErrorCode::AlreadyFinished,
        ErrorCode::Cancelled,
        ErrorCode::TooLarge,
        ErrorCode::ReplyTooLarge,
        ErrorCode::TooManyPending,
        ErrorCode::OpFailed,
        ErrorCode::QueueFull,
        ErrorCode::Draining,
        ErrorCode::StoreUnavailable,
        ErrorCode::DeadlineExceeded,
    ];

    /// The code as it travels in `error.code`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadArgs => "bad_args",
            ErrorCode::ForbiddenReplyTopic => "forbidden_reply_topic",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::UnknownRequest => "unknown_request",
            ErrorCode::UnknownModel => "unknown_model",
            ErrorCode::AlreadyFinished => "already_finished",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::ReplyTooLarge => "reply_too_large",
            ErrorCode::TooManyPending => "too_many_pending",
            ErrorCode::OpFailed => "op_failed",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::Draining => "draining",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
        }
    }

    /// The status a reply with this code carries.
    pub fn status(self) -> Status {
        match self {
            ErrorCode::BadRequest | ErrorCode::BadArgs => Status::BadRequest,
            ErrorCode::ForbiddenReplyTopic => Status::Forbidden,
            ErrorCode::UnknownOp | ErrorCode::UnknownRequest | ErrorCode::UnknownModel => {
                Status::NotFound
            }
            ErrorCode::AlreadyFinished => Status::Conflict,
            ErrorCode::Cancelled => Status::Gone,
            ErrorCode::TooLarge | ErrorCode::ReplyTooLarge => Status::TooLarge,
            ErrorCode::TooManyPending => Status::TooMany,
            ErrorCode::OpFailed => Status::Failed,
            ErrorCode::QueueFull | ErrorCode::Draining | ErrorCode::StoreUnavailable => {
                Status::Unavailable
            }
            ErrorCode::DeadlineExceeded => Status::Timeout,
        }
    }

    /// The code named `text`, if any.
    pub fn parse(text: &str) -> Option<ErrorCode> {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.as_str() == text)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_and_is_an_error_status() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert!(code.status().code() >= 400, "{code}");
        }
    }
}
