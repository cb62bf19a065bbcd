//! The configuration file as written: every section and key optional, each with the default
//! `config/gateway.toml` documents; unknown keys are errors. [`super`] validates it into typed
//! config.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// The file as written. Every section and key may be missing; unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// `[gateway]`
    pub gateway: RawGateway,
    /// `[broker]`
    pub broker: RawBroker,
    /// `[auth]`
    pub auth: RawAuth,
    /// `[http]`
    pub http: RawHttp,
    /// `[store]`
    pub store: RawStore,
    /// `[limits]`
    pub limits: RawLimits,
    /// `[models.NAME]`, one table per ONNX model (checked and loaded by `crate::models`).
    pub models: BTreeMap<String, super::models::RawModel>,
    /// `[log]`
    pub log: RawLog,
}

/// `[log]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// `"text"` (colour only when stderr is a terminal) or `"json"` (one object per line).
    pub format: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: "text".into(),
        }
    }
}

/// `[gateway]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawGateway {
    /// Gateway id, used in `gateway/{id}/...` topics.
    pub id: String,
    /// Directory of the SQLite database; created if missing. Relative to the working directory.
    pub data_dir: PathBuf,
    /// Analytics worker threads; 0 means one per CPU core.
    pub workers: usize,
}

impl Default for RawGateway {
    fn default() -> Self {
        RawGateway {
            id: "gw-1".into(),
            data_dir: "data".into(),
            workers: 0,
        }
    }
}

/// `[broker]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBroker {
    /// `"embedded"` or `"external"`.
    pub mode: String,
    /// Embedded: the device-facing address.
    pub listen: String,
    /// External: the broker URL, `mqtt://host:port`.
    pub url: String,
    /// External: the shared-subscription group gateways share requests through.
    pub share_group: String,
    /// Embedded: `[broker.tls]`, TLS on the device listener.
    pub tls: Option<RawTls>,
}

/// `[broker.tls]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTls {
    /// PEM certificate chain of the listener.
    pub cert: PathBuf,
    /// PEM private key of the listener.
    pub key: PathBuf,
    /// PEM CA certificates that sign device client certificates (CN = device id); optional.
    pub client_ca: Option<PathBuf>,
}

impl Default for RawBroker {
    fn default() -> Self {
        RawBroker {
            mode: "embedded".into(),
            listen: "127.0.0.1:1883".into(),
            url: "mqtt://127.0.0.1:1883".into(),
            share_group: "roost".into(),
            tls: None,
        }
    }
}

/// `[auth]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    /// Allow devices with no credentials (client id = device id) on loopback listeners.
    pub allow_anonymous: bool,
    /// Also allow them on non-loopback listeners.
    pub allow_anonymous_remote: bool,
}

impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            allow_anonymous: true,
            allow_anonymous_remote: false,
        }
    }
}

/// `[http]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHttp {
    /// Operator HTTP address; `""` disables.
    pub listen: String,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            listen: "127.0.0.1:8080".into(),
        }
    }
}

/// `[store]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    /// `"sqlite"` (in `data_dir`) or `"postgres"` (several gateways share it).
    pub engine: String,
    /// SQLite `synchronous`: `"full"` (survives power loss) or `"normal"` (survives a process crash).
    pub synchronous: String,
    /// PostgreSQL: `postgres://user@host:port/db`.
    pub url: String,
    /// PostgreSQL: connections per gateway. The default, 2, is one per committer; 4 did no
    /// better on a small box (docs/BENCHMARKS.md, session 10).
    pub pool_size: u64,
    /// PostgreSQL: a dead gateway's claimed work moves on after this.
    pub lease_ms: u64,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            engine: "sqlite".into(),
            synchronous: "full".into(),
            url: String::new(),
            pool_size: 2,
            lease_ms: 10_000,
        }
    }
}

/// `[limits]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct RawLimits {
    pub max_payload_bytes: u64,
    pub max_series_len: u64,
    pub max_pending_per_device: u64,
    pub max_held_replies_per_device: u64,
    pub max_connections: u64,
    pub connect_timeout_ms: u64,
    pub listen_window_ms: u64,
    pub queue_capacity: u64,
    pub op_timeout_ms: u64,
    pub reply_ttl_s: u64,
    pub dedupe_window_s: u64,
    pub max_store_bytes: u64,
    pub telemetry_retention_s: u64,
    pub max_telemetry_rows_per_device: u64,
    pub max_connect_rate: u64,
    pub password_threads: u64,
    pub password_queue: u64,
    pub max_auth_failures: u64,
    pub auth_delay_ms: u64,
    pub auth_max_delay_ms: u64,
    pub auth_lockout_s: u64,
    pub auth_tracked_max: u64,
    pub max_session_expiry_s: u64,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_payload_bytes: 262_144,
            max_series_len: 1_000_000,
            max_pending_per_device: 16,
            max_held_replies_per_device: 64,
            max_connections: 10_000,
            connect_timeout_ms: 10_000,
            listen_window_ms: 5_000,
            queue_capacity: 100_000,
            op_timeout_ms: 30_000,
            reply_ttl_s: 604_800,
            dedupe_window_s: 86_400,
            max_store_bytes: 0,
            telemetry_retention_s: 604_800,
            max_telemetry_rows_per_device: 100_000,
            max_connect_rate: 20_000,
            password_threads: 0,
            password_queue: 4,
            max_auth_failures: 10,
            auth_delay_ms: 250,
            auth_max_delay_ms: 4_000,
            auth_lockout_s: 300,
            auth_tracked_max: 10_000,
            max_session_expiry_s: 604_800,
        }
    }
}
