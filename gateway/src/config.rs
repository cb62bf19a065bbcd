//! Configuration: `gateway.toml` parsed as written ([`RawConfig`], every key optional with the
//! documented default), then validated into typed [`Config`] that rules out wrong states.
//!
//! Feeds every stage: each gets its own section by value. A mistake is a [`ConfigError`] naming
//! the key, which `main` turns into a one-line message and exit code 2.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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
    /// SQLite `synchronous`: `"full"` (survives power loss) or `"normal"` (survives a process crash).
    pub synchronous: String,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            synchronous: "full".into(),
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
    pub telemetry_retention_s: u64,
    pub max_telemetry_rows_per_device: u64,
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
            telemetry_retention_s: 604_800,
            max_telemetry_rows_per_device: 100_000,
        }
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

/// `[store]`, validated.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// fsync on every commit (`synchronous = FULL`) or only at WAL checkpoints (`NORMAL`).
    pub sync_full: bool,
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
            store: StoreConfig { sync_full },
            limits: validate_limits(&self.limits)?,
            tls,
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_means_defaults() {
        let config = parse("").expect("defaults are valid");
        assert_eq!(config.gateway.id, "gw-1");
        assert!(
            matches!(config.broker, BrokerConfig::Embedded { listen } if listen.port() == 1883)
        );
        assert_eq!(config.limits.max_payload_bytes, 262_144);
        assert_eq!(config.limits.reply_ttl, Duration::from_secs(604_800));
        assert_eq!(config.http, Some("127.0.0.1:8080".parse().expect("addr")));
    }

    #[test]
    fn shipped_examples_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples");
        let external =
            Config::load(&dir.join("external-broker.toml")).expect("external example is valid");
        assert!(
            matches!(external.broker, BrokerConfig::External { ref share_group, .. } if share_group == "roost")
        );
        // The TLS example names files that exist only on a real install: it must fail on exactly that.
        let err = Config::load(&dir.join("auth-tls.toml"))
            .expect_err("certificate files are absent here");
        assert!(err.to_string().contains("broker.tls.cert"), "{err}");
    }

    #[test]
    fn shipped_config_is_valid_and_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.toml");
        let config = Config::load(&path).expect("config/gateway.toml is valid");
        let defaults = parse("").expect("defaults");
        assert_eq!(format!("{config:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("[limits]\nmax_paylod_bytes = 5\n").expect_err("typo");
        assert!(err.to_string().contains("max_paylod_bytes"), "{err}");
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            (
                "[limits]\nmax_payload_bytes = 0",
                "limits.max_payload_bytes",
            ),
            ("[broker]\nlisten = \"nope\"", "broker.listen"),
            ("[broker]\nmode = \"cloud\"", "broker.mode"),
            (
                "[broker]\nmode = \"external\"\nurl = \"http://x\"",
                "broker.url",
            ),
            ("[gateway]\nid = \"a/b\"", "gateway.id"),
            ("[http]\nlisten = \"8080\"", "http.listen"),
            ("[store]\nsynchronous = \"off\"", "store.synchronous"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn http_can_be_disabled_and_external_url_parsed() {
        let config = parse(
            "[http]\nlisten = \"\"\n[broker]\nmode = \"external\"\nurl = \"mqtt://[::1]:1884\"",
        )
        .expect("valid");
        assert!(config.http.is_none());
        assert!(
            matches!(config.broker, BrokerConfig::External { ref host, port: 1884, .. } if host == "::1")
        );
    }

    #[test]
    fn anonymous_is_refused_on_a_non_loopback_listener_unless_remote() {
        let err = parse("[broker]\nlisten = \"0.0.0.0:1883\"").expect_err("anonymous remote");
        assert!(err.to_string().contains("auth.allow_anonymous"), "{err}");
        parse("[broker]\nlisten = \"0.0.0.0:1883\"\n[auth]\nallow_anonymous = false")
            .expect("no anonymous");
        parse("[broker]\nlisten = \"0.0.0.0:1883\"\n[auth]\nallow_anonymous_remote = true")
            .expect("explicitly allowed");
        parse("[broker]\nlisten = \"[::1]:1883\"").expect("loopback v6");
    }

    #[test]
    fn tls_keys_are_checked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, "x").expect("write");
        let err = parse("[broker.tls]\nkey = \"k.pem\"").expect_err("no cert");
        assert!(err.to_string().contains("broker.tls.cert"), "{err}");
        let text = format!("[broker.tls]\ncert = {cert:?}\nkey = \"/nonexistent/k.pem\"");
        let err = parse(&text).expect_err("missing key file");
        assert!(err.to_string().contains("broker.tls.key"), "{err}");
        let text = format!("[broker.tls]\ncert = {cert:?}\nkey = {cert:?}\nclient_ca = {cert:?}");
        let config = parse(&text).expect("files exist");
        assert!(config.tls.is_some_and(|tls| tls.client_ca.is_some()));
        let err = parse("[broker.tls]\nciphers = 1").expect_err("unknown key");
        assert!(err.to_string().contains("ciphers"), "{err}");
    }
}
