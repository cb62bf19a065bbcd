//! What travels over MQTT, with no I/O: topic names ([`topics`], the only place topic strings are
//! built or parsed), ids ([`ids`]), status codes and states ([`status`]), and the CBOR request and
//! reply payloads ([`envelope`]). The gateway and `device-sim` both speak through this module, so
//! there is one protocol definition.

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
