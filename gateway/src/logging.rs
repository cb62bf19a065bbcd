//! Logs to stderr: text (colour only when stderr is a terminal, so files and journald get plain
//! lines) or, with `[log] format = "json"`, one JSON object per line for journald/Loki.
//!
//! The default filter is `info`, with rumqttd and rumqttc at `warn`, and rumqttd's per-connection
//! link errors (`rumqttd::server::broker`) off: each connection that ends logs an `ERROR` there
//! (the readiness probe at start, every operator or side link that closes), while what matters
//! about the broker is watched by the front door's watchdog and counted in `/metrics`. Once a
//! clean stop closes the service's own links, [`quiet_broker`] turns rumqttd off altogether: its
//! router logs an `ERROR` for each link it finds gone. `RUST_LOG` replaces the default filter.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

/// The filter when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,rumqttd=warn,rumqttc=warn,rumqttd::server::broker=off";

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the global subscriber.
pub fn init(json: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = if json {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init()
    } else {
        let ansi = std::io::stderr().is_terminal();
        registry
            .with(fmt::layer().with_ansi(ansi).with_writer(std::io::stderr))
            .try_init()
    };
    if installed.is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// A clean stop is closing the gateway's own broker links: what rumqttd says about them now is
/// expected, not an error.
pub fn quiet_broker() {
    if let Some(handle) = FILTER.get() {
        let _ = handle.modify(|filter| {
            let current = std::mem::replace(filter, EnvFilter::new(""));
            *filter = match "rumqttd=off".parse() {
                Ok(directive) => current.add_directive(directive),
                Err(_) => current,
            };
        });
    }
}
