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
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

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

/// How often a line that a lasting fault repeats is logged again ([`Repeats`]).
pub const REPEAT_EVERY: Duration = Duration::from_secs(10);

/// A log line that a lasting fault repeats, such as each failed commit or read while the
/// database is down (the store's health says when that starts and ends): the first is logged,
/// then one at most every [`REPEAT_EVERY`], saying how many were left out meanwhile. One per
/// call site, in a `static`.
pub struct Repeats {
    /// When one was last logged, and how many were left out since.
    last: Mutex<Option<(Instant, u64)>>,
}

impl Repeats {
    /// None logged yet.
    pub const fn new() -> Repeats {
        Repeats {
            last: Mutex::new(None),
        }
    }

    /// `Some(left_out)` when this occurrence is to be logged (`left_out` were not since the
    /// last one that was); `None` when it is left out.
    pub fn due(&self) -> Option<u64> {
        self.due_at(Instant::now())
    }

    fn due_at(&self, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *last {
            Some((at, left_out)) if now.saturating_duration_since(*at) < REPEAT_EVERY => {
                *left_out += 1;
                None
            }
            previous => {
                let left_out = previous.map_or(0, |(_, left_out)| left_out);
                *previous = Some((now, 0));
                Some(left_out)
            }
        }
    }
}

/// Logs an event at `$level` (a `tracing::Level`) as `tracing::event!` does, through a
/// [`Repeats`] of this call site's own: the first time, then at most every [`REPEAT_EVERY`],
/// with a `left_out` field counting the ones left out since.
/// `log_repeated!(Level::ERROR, %error, "store commit failed")`.
macro_rules! log_repeated {
    ($level:expr, $($fields:tt)+) => {{
        static REPEATS: $crate::logging::Repeats = $crate::logging::Repeats::new();
        if let Some(left_out) = REPEATS.due() {
            ::tracing::event!($level, left_out, $($fields)+);
        }
    }};
}
pub(crate) use log_repeated;

impl Default for Repeats {
    fn default() -> Self {
        Repeats::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_line_is_logged_first_then_once_per_period_with_what_was_left_out() {
        let repeats = Repeats::new();
        let start = Instant::now();
        assert_eq!(repeats.due_at(start), Some(0));
        for ms in [1, 500, 9_999] {
            assert_eq!(repeats.due_at(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(repeats.due_at(start + REPEAT_EVERY), Some(3));
        assert_eq!(
            repeats.due_at(start + REPEAT_EVERY + Duration::from_secs(1)),
            None
        );
        assert_eq!(repeats.due_at(start + REPEAT_EVERY * 3), Some(1));
    }
}
