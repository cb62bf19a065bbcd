//! Reads the gateway's request table through its own operator CLI (`gateway requests list
//! --json`), so tests check what the store recorded without touching SQL.

use crate::{gateway_cmd, Gateway};

/// One request as the CLI lists it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Row {
    /// Request id.
    pub id: String,
    /// Correlation, hex.
    pub corr: String,
    /// The op.
    pub op: String,
    /// State.
    pub state: String,
    /// Final status.
    pub status: Option<u16>,
    /// Delivery state.
    pub delivery: Option<String>,
    /// Completed executions of the op.
    pub executions: u32,
    /// Times the final reply was published.
    pub published: u32,
}

/// All requests of `device`.
pub fn requests_of(gateway: &Gateway, device: &str) -> Vec<Row> {
    let config = gateway.config_path();
    let out = gateway_cmd(&[
        "requests",
        "list",
        "--json",
        "--limit",
        "1000000",
        "--device",
        device,
        "--config",
        config.to_str().expect("utf8 path"),
    ]);
    assert!(
        out.status.success(),
        "requests list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("requests list --json is JSON")
}

/// Hex of correlation bytes, as the CLI prints it.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
