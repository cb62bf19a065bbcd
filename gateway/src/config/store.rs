//! `[store]`: which engine holds the gateway's state, validated into [`StoreConfig`].

use std::path::PathBuf;
use std::time::Duration;

use tokio_rustls::rustls::pki_types::CertificateDer;

use super::pem::{read_certs, read_key, system_certs};
use super::{invalid, ConfigError, RawStore};

/// `[store]`, validated.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Which engine holds the state.
    pub engine: StoreEngine,
    /// SQLite: fsync on every commit (`synchronous = FULL`) or only at WAL checkpoints (`NORMAL`).
    pub sync_full: bool,
    /// PostgreSQL: how long a claim on queued or running work lasts unless renewed.
    pub lease: Duration,
    /// `[gateway] id`: whose claims these are (PostgreSQL), whose heartbeat.
    pub gateway_id: String,
    /// `limits.max_store_bytes` (SQLite): past it the oldest finished records are evicted;
    /// `None`: no budget.
    pub max_store_bytes: Option<u64>,
}

impl Default for StoreConfig {
    /// SQLite, `synchronous = NORMAL` (what unit tests use), 10 s leases.
    fn default() -> Self {
        StoreConfig {
            engine: StoreEngine::Sqlite,
            sync_full: false,
            lease: Duration::from_secs(10),
            gateway_id: "gw-1".into(),
            max_store_bytes: None,
        }
    }
}

/// `[store] engine`, with what each engine needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEngine {
    /// `data_dir/roost.db`, one gateway.
    Sqlite,
    /// One PostgreSQL database that several gateways share.
    Postgres {
        /// `[store] url`, checked to parse.
        url: String,
        /// `[store] pool_size`: connections per gateway.
        pool_size: usize,
    },
}

pub(super) fn validate(
    raw: &RawStore,
    sync_full: bool,
    gateway_id: &str,
) -> Result<StoreConfig, ConfigError> {
    if !(1_000..=3_600_000).contains(&raw.lease_ms) {
        return Err(invalid(
            "store.lease_ms",
            format!("{} is not between 1000 and 3600000", raw.lease_ms),
        ));
    }
    let engine = match raw.engine.as_str() {
        "sqlite" => StoreEngine::Sqlite,
        "postgres" => {
            if raw.url.is_empty() {
                return Err(invalid(
                    "store.url",
                    "engine = \"postgres\" needs url = \"postgres://user@host:port/db\"",
                ));
            }
            if !raw.url.starts_with("postgres://") && !raw.url.starts_with("postgresql://") {
                return Err(invalid(
                    "store.url",
                    format!("{:?} is not a postgres://user@host:port/db URL", raw.url),
                ));
            }
            check_url(&raw.url)?;
            postgres_tls(&raw.url).map_err(|why| invalid("store.url", why))?;
            if !(1..=64).contains(&raw.pool_size) {
                return Err(invalid(
                    "store.pool_size",
                    format!("{} is not between 1 and 64", raw.pool_size),
                ));
            }
            StoreEngine::Postgres {
                url: raw.url.clone(),
                pool_size: raw.pool_size as usize,
            }
        }
        other => {
            return Err(invalid(
                "store.engine",
                format!("{other:?} is not \"sqlite\" or \"postgres\""),
            ))
        }
    };
    Ok(StoreConfig {
        engine,
        sync_full,
        lease: Duration::from_millis(raw.lease_ms),
        gateway_id: gateway_id.to_owned(),
        max_store_bytes: None,
    })
}

/// `postgres://[user[:password]@]host[:port]/db`: the shape checked here (the store's driver
/// parses it fully when it connects).
fn check_url(url: &str) -> Result<(), ConfigError> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.split_once('?').map_or(rest, |(rest, _)| rest);
    let (authority, db) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let bad = |why: &str| invalid("store.url", format!("{url:?}: {why}"));
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if let Some((_, port)) = host.rsplit_once(':').filter(|_| !host.ends_with(']')) {
        if port.parse::<u16>().is_err() {
            return Err(bad("the port is not a number"));
        }
    }
    if db.is_empty() {
        return Err(bad("no database name"));
    }
    Ok(())
}

/// How the store's connections use TLS: `store.url`'s `sslmode`, `sslrootcert`, `sslcert` and
/// `sslkey`, with libpq's names and meanings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTls {
    /// `sslmode`.
    pub mode: SslMode,
    /// `sslrootcert`: the CA certificates the server's certificate must chain to.
    pub root: Option<Roots>,
    /// `sslcert` and `sslkey`: the certificate (PEM, the chain to present) and its private key
    /// the gateway logs in with, for a server whose `pg_hba.conf` asks for one (`cert`, or
    /// `clientcert=verify-ca|verify-full`).
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Where `sslrootcert`'s CA certificates are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// A PEM file.
    File(PathBuf),
    /// `sslrootcert=system`: the system's trust store (`SSL_CERT_FILE` and `SSL_CERT_DIR` when
    /// set, else the distribution's, e.g. `/etc/ssl/certs`).
    System,
}

/// `sslmode`: whether TLS is used, and what of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it (the default).
    Prefer,
    /// TLS or no connection.
    Require,
    /// TLS, and the certificate chains to `sslrootcert`.
    VerifyCa,
    /// As `VerifyCa`, and the certificate names the host connected to.
    VerifyFull,
}

impl SslMode {
    /// Whether the server's certificate is checked against `sslrootcert`.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// Why `sslrootcert=system` takes no `sslmode` but `verify-full` (libpq's rule).
const SYSTEM_NEEDS_FULL: &str = "sslrootcert=system needs sslmode=verify-full (its default): \
    the system's CAs sign certificates for other people's hosts, so the name is checked too";

/// Splits `url` into what the driver parses (its `sslmode` one of `disable`, `prefer`,
/// `require`; no `sslrootcert`, `sslcert` or `sslkey`) and the TLS it asks for. As with libpq,
/// `prefer` and `require` encrypt without checking the certificate, unless `sslrootcert` is
/// given: then they check it chains to those CAs, as `verify-ca` does. `verify-ca` and
/// `verify-full` need `sslrootcert` (a readable PEM file with at least one certificate, or
/// `system`). As with libpq, `sslrootcert=system` makes `verify-full` the default and refuses a
/// weaker `sslmode`: any public CA signs certificates for other people's hosts.
/// `sslcert` and `sslkey` go together (a certificate file, and a file with its private key),
/// and need TLS: with `sslmode=disable` they are a mistake, not ignored as libpq does.
pub fn postgres_tls(url: &str) -> Result<(String, PgTls), String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let (mut mode, mut root) = (None, None);
    let (mut cert, mut key) = (None, None);
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", value)) => {
                mode = Some(match value {
                    "disable" => SslMode::Disable,
                    "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(format!(
                            "sslmode={other} is not disable, prefer, require, verify-ca or \
                             verify-full"
                        ))
                    }
                })
            }
            Some(("sslrootcert", path)) => root = Some(percent_decoded(path)),
            Some(("sslcert", path)) => cert = Some(PathBuf::from(percent_decoded(path))),
            Some(("sslkey", path)) => key = Some(PathBuf::from(percent_decoded(path))),
            _ => kept.push(pair),
        }
    }
    let root = root.map(|root| match root.as_str() {
        "system" => Roots::System,
        _ => Roots::File(PathBuf::from(root)),
    });
    let mut mode = match (mode, &root) {
        (None | Some(SslMode::VerifyFull), Some(Roots::System)) => SslMode::VerifyFull,
        (Some(_), Some(Roots::System)) => return Err(SYSTEM_NEEDS_FULL.into()),
        (mode, _) => mode.unwrap_or(SslMode::Prefer),
    };
    if mode.verifies() && root.is_none() {
        return Err(format!(
            "sslmode={} needs sslrootcert=FILE (the CA certificates, PEM)",
            if mode == SslMode::VerifyCa {
                "verify-ca"
            } else {
                "verify-full"
            }
        ));
    }
    if let Some(root) = &root {
        root_certs(root)?;
        if matches!(mode, SslMode::Prefer | SslMode::Require) {
            mode = SslMode::VerifyCa;
        }
    }
    let client = match (cert, key) {
        (None, None) => None,
        (Some(_), None) => return Err("sslcert needs sslkey=FILE (its private key, PEM)".into()),
        (None, Some(_)) => return Err("sslkey needs sslcert=FILE (its certificate, PEM)".into()),
        (Some(_), Some(_)) if mode == SslMode::Disable => {
            return Err("sslcert and sslkey need TLS, and sslmode=disable turns it off".into())
        }
        (Some(cert), Some(key)) => {
            read_certs(&cert).map_err(|why| format!("sslcert: {why}"))?;
            read_key(&key).map_err(|why| format!("sslkey: {why}"))?;
            Some((cert, key))
        }
    };
    kept.push(match mode {
        SslMode::Disable => "sslmode=disable",
        SslMode::Prefer => "sslmode=prefer",
        _ => "sslmode=require",
    });
    let tls = PgTls { mode, root, client };
    Ok((format!("{base}?{}", kept.join("&")), tls))
}

/// The CA certificates `root` names: at least one, or an error naming `sslrootcert`.
pub fn root_certs(root: &Roots) -> Result<Vec<CertificateDer<'static>>, String> {
    match root {
        Roots::File(path) => read_certs(path),
        Roots::System => system_certs(),
    }
    .map_err(|why| format!("sslrootcert: {why}"))
}

/// `%XX` escapes decoded (a path in a URL may carry them), the rest as it is.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
