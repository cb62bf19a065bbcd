//! Configuration: `gateway.toml` parsed as written ([`RawConfig`], every key optional with the
//! documented default), then validated into typed [`Config`] that rules out wrong states.
//!
//! Feeds every stage: each gets its own section by value. A mistake is a [`ConfigError`] naming
//! the key, which `main` turns into a one-line message and exit code 2.

/// Exit code for configuration mistakes (a bad key or value, a port already taken).
pub const EXIT_CONFIG: u8 = 2;

/// The smallest `limits.max_store_bytes` other than 0 (the schema and a working set).
pub const MIN_STORE_BYTES: u64 = 1 << 20;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod models;
pub mod pem;
mod raw;
mod store;

pub use models::{RawDim, RawModel, RawTensor};
pub use raw::{RawConfig, RawLimits, RawStore, RawTls};
pub use store::{postgres_tls, root_certs, PgTls, Roots, SslMode, StoreConfig, StoreEngine};

/// A configuration mistake, naming the key (or file) it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has an unknown key or a value of the wrong type.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, folded onto one line.
        message: String,
    },
    /// A key has a value outside what it accepts.
    #[error("config key {key}: {message}")]
    Invalid {
        /// The dotted key, e.g. `limits.max_payload_bytes`.
        key: &'static str,
        /// What is wrong and what is accepted.
        message: String,
    },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[gateway]`
    pub gateway: GatewayConfig,
    /// `[broker]`
    pub broker: BrokerConfig,
    /// `[auth]`
    pub auth: AuthConfig,
    /// `[http]`: `None` when disabled.
    pub http: Option<SocketAddr>,
    /// `[store]`
    pub store: StoreConfig,
    /// `[limits]`
    pub limits: Limits,
    /// `[broker.tls]`: TLS on the device listener (embedded mode only).
    pub tls: Option<TlsConfig>,
    /// `[models.NAME]` as written; `crate::models::Registry::load` checks and loads them.
    pub models: std::collections::BTreeMap<String, RawModel>,
    /// `[log] format = "json"`: one JSON object per line instead of text.
    pub log_json: bool,
}

/// `[broker.tls]`, validated: the files exist (their contents are checked when loaded).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA for client certificates, whose CN is the device id.
    pub client_ca: Option<PathBuf>,
}

fn validate_tls(raw: RawTls) -> Result<TlsConfig, ConfigError> {
    for (key, path) in [("broker.tls.cert", &raw.cert), ("broker.tls.key", &raw.key)] {
        if path.as_os_str().is_empty() {
            return Err(invalid(key, "is required when [broker.tls] is present"));
        }
    }
    let paths = [
        ("broker.tls.cert", Some(&raw.cert)),
        ("broker.tls.key", Some(&raw.key)),
        ("broker.tls.client_ca", raw.client_ca.as_ref()),
    ];
    for (key, path) in paths {
        if let Some(path) = path {
            if !path.is_file() {
                return Err(invalid(
                    key,
                    format!("{} is not a readable file", path.display()),
                ));
            }
        }
    }
    Ok(TlsConfig {
        cert: raw.cert,
        key: raw.key,
        client_ca: raw.client_ca,
    })
}

/// `[gateway]`, validated.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Gateway id (a valid topic level).
    pub id: String,
    /// Where the database lives.
    pub data_dir: PathBuf,
    /// Analytics worker threads.
    pub workers: NonZeroUsize,
}

/// `[broker]`, validated.
#[derive(Debug, Clone)]
pub enum BrokerConfig {
    /// Front door on `listen`, rumqttd behind it on loopback.
    Embedded {
        /// Device-facing address.
        listen: SocketAddr,
    },
    /// Connect to an external MQTT 5 broker.
    External {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
        /// Shared-subscription group for requests.
        share_group: String,
    },
}

/// `[auth]`, validated.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Anonymous devices on loopback listeners.
    pub allow_anonymous: bool,
    /// Anonymous devices on other listeners too.
    pub allow_anonymous_remote: bool,
}

/// `[limits]`, validated, with units in the types.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_series_len: usize,
    pub max_pending_per_device: usize,
    pub max_held_replies_per_device: usize,
    pub max_connections: usize,
    pub connect_timeout: Duration,
    pub listen_window: Duration,
    pub queue_capacity: usize,
    pub op_timeout: Duration,
    pub reply_ttl: Duration,
    pub dedupe_window: Duration,
    pub telemetry_retention: Duration,
    pub max_telemetry_rows_per_device: usize,
    /// New connections per second across all sources; 0 = no limit.
    pub max_connect_rate: u64,
    /// Password check threads; 0 = a quarter of the cores, at least one.
    pub password_threads: usize,
    /// Password checks that may wait for a thread.
    pub password_queue: usize,
    pub max_auth_failures: u32,
    pub auth_delay: Duration,
    pub auth_max_delay: Duration,
    pub auth_lockout: Duration,
    pub auth_tracked_max: usize,
    /// The longest a device session outlives its connection (front door; 0: never).
    pub max_session_expiry: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        validate_limits(&RawLimits::default()).expect("the built-in limits are valid")
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: fold(&e.to_string()),
        })?;
        raw.validate()
    }
}

/// Folds a multi-line parser message into one line.
fn fold(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "|")
        .collect::<Vec<_>>()
        .join(" ")
}

impl RawConfig {
    /// Checks every value and converts to typed config.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let id = self.gateway.id;
        if id.is_empty()
            || id.len() > 64
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(invalid(
                "gateway.id",
                format!("{id:?} must be 1 to 64 characters of [A-Za-z0-9._-]"),
            ));
        }
        if self.gateway.data_dir.as_os_str().is_empty() {
            return Err(invalid("gateway.data_dir", "must not be empty"));
        }
        let workers = NonZeroUsize::new(self.gateway.workers)
            .or_else(|| std::thread::available_parallelism().ok())
            .unwrap_or(NonZeroUsize::MIN);
        let broker = match self.broker.mode.as_str() {
            "embedded" => BrokerConfig::Embedded {
                listen: parse_addr("broker.listen", &self.broker.listen)?,
            },
            "external" => {
                let (host, port) = parse_url(&self.broker.url)?;
                let group = self.broker.share_group;
                if group.is_empty() || group.contains(['/', '+', '#']) {
                    return Err(invalid(
                        "broker.share_group",
                        "must be a non-empty topic level without / + #",
                    ));
                }
                BrokerConfig::External {
                    host,
                    port,
                    share_group: group,
                }
            }
            other => {
                return Err(invalid(
                    "broker.mode",
                    format!("{other:?} is not \"embedded\" or \"external\""),
                ))
            }
        };
        let tls =
            match (self.broker.tls, &broker) {
                (None, _) => None,
                (Some(raw), BrokerConfig::Embedded { .. }) => Some(validate_tls(raw)?),
                (Some(_), BrokerConfig::External { .. }) => return Err(invalid(
                    "broker.tls",
                    "only applies to mode = \"embedded\" (the external broker does its own TLS)",
                )),
            };
        if let BrokerConfig::Embedded { listen } = &broker {
            if !listen.ip().is_loopback()
                && self.auth.allow_anonymous
                && !self.auth.allow_anonymous_remote
            {
                return Err(invalid(
                    "auth.allow_anonymous",
                    format!(
                        "anonymous devices are refused on the non-loopback listener {listen}: \
                         set auth.allow_anonymous = false, or auth.allow_anonymous_remote = true"
                    ),
                ));
            }
        }
        let http = match self.http.listen.as_str() {
            "" => None,
            addr => Some(parse_addr("http.listen", addr)?),
        };
        let log_json = match self.log.format.as_str() {
            "text" => false,
            "json" => true,
            other => {
                return Err(invalid(
                    "log.format",
                    format!("{other:?} is not \"text\" or \"json\""),
                ))
            }
        };
        let sync_full = match self.store.synchronous.as_str() {
            "full" => true,
            "normal" => false,
            other => {
                return Err(invalid(
                    "store.synchronous",
                    format!("{other:?} is not \"full\" or \"normal\""),
                ))
            }
        };
        let mut store = store::validate(&self.store, sync_full, &id)?;
        store.max_store_bytes = match (self.limits.max_store_bytes, &store.engine) {
            (0, _) => None,
            (_, StoreEngine::Postgres { .. }) => {
                return Err(invalid(
                    "limits.max_store_bytes",
                    "applies to the SQLite store only (PostgreSQL's disk is the database \
                     server's to manage): set it to 0",
                ))
            }
            (bytes, StoreEngine::Sqlite) if bytes < MIN_STORE_BYTES => {
                return Err(invalid(
                    "limits.max_store_bytes",
                    format!("must be 0 (no budget) or at least {MIN_STORE_BYTES}"),
                ))
            }
            (bytes, StoreEngine::Sqlite) => Some(bytes),
        };
        Ok(Config {
            gateway: GatewayConfig {
                id,
                data_dir: self.gateway.data_dir,
                workers,
            },
            broker,
            auth: AuthConfig {
                allow_anonymous: self.auth.allow_anonymous,
                allow_anonymous_remote: self.auth.allow_anonymous_remote,
            },
            http,
            store,
            limits: validate_limits(&self.limits)?,
            tls,
            models: self.models,
            log_json,
        })
    }
}

fn parse_addr(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            key,
            format!("{value:?} is not an address like 127.0.0.1:1883 or [::1]:1883"),
        )
    })
}

fn parse_url(url: &str) -> Result<(String, u16), ConfigError> {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"));
    let bad = || {
        invalid(
            "broker.url",
            format!("{url:?} is not a URL like mqtt://host:1883"),
        )
    };
    let rest = rest.ok_or_else(bad)?;
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => (host, port.parse::<u16>().map_err(|_| bad())?),
        None => (rest, 1883),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

fn validate_limits(raw: &RawLimits) -> Result<Limits, ConfigError> {
    fn positive(key: &'static str, value: u64) -> Result<u64, ConfigError> {
        if value == 0 {
            Err(invalid(key, "must be greater than 0"))
        } else {
            Ok(value)
        }
    }
    fn count(key: &'static str, value: u64) -> Result<usize, ConfigError> {
        let value = positive(key, value)?;
        usize::try_from(value).map_err(|_| invalid(key, "is too large"))
    }
    let max_payload_bytes = count("limits.max_payload_bytes", raw.max_payload_bytes)?;
    if max_payload_bytes > 256 * 1024 * 1024 {
        return Err(invalid(
            "limits.max_payload_bytes",
            "must be at most 268435456 (MQTT's own limit)",
        ));
    }
    Ok(Limits {
        max_payload_bytes,
        max_series_len: count("limits.max_series_len", raw.max_series_len)?,
        max_pending_per_device: count("limits.max_pending_per_device", raw.max_pending_per_device)?,
        max_held_replies_per_device: count(
            "limits.max_held_replies_per_device",
            raw.max_held_replies_per_device,
        )?,
        max_connections: count("limits.max_connections", raw.max_connections)?,
        connect_timeout: Duration::from_millis(positive(
            "limits.connect_timeout_ms",
            raw.connect_timeout_ms,
        )?),
        listen_window: Duration::from_millis(positive(
            "limits.listen_window_ms",
            raw.listen_window_ms,
        )?),
        queue_capacity: count("limits.queue_capacity", raw.queue_capacity)?,
        op_timeout: Duration::from_millis(positive("limits.op_timeout_ms", raw.op_timeout_ms)?),
        reply_ttl: Duration::from_secs(positive("limits.reply_ttl_s", raw.reply_ttl_s)?),
        dedupe_window: Duration::from_secs(positive(
            "limits.dedupe_window_s",
            raw.dedupe_window_s,
        )?),
        telemetry_retention: Duration::from_secs(positive(
            "limits.telemetry_retention_s",
            raw.telemetry_retention_s,
        )?),
        max_telemetry_rows_per_device: count(
            "limits.max_telemetry_rows_per_device",
            raw.max_telemetry_rows_per_device,
        )?,
        max_connect_rate: raw.max_connect_rate,
        password_threads: usize::try_from(raw.password_threads)
            .ok()
            .filter(|n| *n <= 1024)
            .ok_or_else(|| invalid("limits.password_threads", "must be at most 1024"))?,
        password_queue: usize::try_from(raw.password_queue)
            .ok()
            .filter(|n| *n <= 1_000_000)
            .ok_or_else(|| invalid("limits.password_queue", "must be at most 1000000"))?,
        max_auth_failures: u32::try_from(positive(
            "limits.max_auth_failures",
            raw.max_auth_failures,
        )?)
        .map_err(|_| invalid("limits.max_auth_failures", "is too large"))?,
        auth_delay: Duration::from_millis(raw.auth_delay_ms),
        auth_max_delay: Duration::from_millis(raw.auth_max_delay_ms),
        auth_lockout: Duration::from_secs(positive("limits.auth_lockout_s", raw.auth_lockout_s)?),
        auth_tracked_max: count("limits.auth_tracked_max", raw.auth_tracked_max)?,
        max_session_expiry: match u32::try_from(raw.max_session_expiry_s) {
            Ok(seconds) => Duration::from_secs(u64::from(seconds)),
            Err(_) => {
                return Err(invalid(
                    "limits.max_session_expiry_s",
                    "must be at most 4294967295 (MQTT's Session Expiry Interval)",
                ))
            }
        },
    })
}

#[cfg(test)]
mod tests;
