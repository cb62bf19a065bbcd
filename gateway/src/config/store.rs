//! `[store]`: which engine holds the gateway's state, validated into [`StoreConfig`].

use std::time::Duration;

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
