//! What travels over MQTT, with no I/O: topic names ([`topics`], the only place topic strings are
//! built or parsed), ids ([`ids`]), status codes and states ([`status`]), and the CBOR request and
//! reply payloads ([`envelope`]). The gateway and `device-sim` both speak through this module, so
//! there is one protocol definition. Times on the wire and in the store are milliseconds since
//! the Unix epoch ([`now_ms`]).

pub mod envelope;
pub mod errors;
pub mod ids;
pub mod json;
pub mod packet;
pub mod status;
pub mod topics;

pub use envelope::{Reply, ReplyError, RequestBody, WireError};
pub use errors::ErrorCode;
pub use ids::{Correlation, DeviceId, RequestId};
pub use status::{State, Status};

/// Milliseconds since the Unix epoch now (0 for a clock before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
