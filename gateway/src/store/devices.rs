//! Devices as the store knows them: every device with requests or telemetry, for the operator
//! HTTP API and CLI (the retained `devices/+/status` view cannot list a whole fleet).

/// One device's stored state.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceRow {
    /// Device id.
    pub id: String,
    /// Requests queued.
    pub queued: u64,
    /// Final replies held for it.
    pub held: u64,
    /// Requests stored (within the dedupe window).
    pub requests: u64,
    /// Its newest request (ms since epoch), if any.
    pub last_request_ms: Option<i64>,
}
