//! Logins cannot take the gateway down: slow password checks are bounded, failures cost the
//! caller time instead of costing the gateway CPU, and new connections are rate-limited.
//!
//! Fed by identity ([`LoginGuard::check_password`], for every password whose stored hash is slow,
//! i.e. operators, and for user names nobody has) and by the accept loop ([`rate`]); feeds the
//! session a [`Refusal`] or a go-ahead, and the operators counters ([`LoginStats`]) and one `warn`
//! line per source address when its throttling starts.
//!
//! - [`pool`]: argon2 checks on `limits.password_threads` threads with `limits.password_queue`
//!   places in front; no place within `limits.connect_timeout_ms` of the accept is 0x9F.
//! - [`throttle`]: per-source and per-name failure tables (pure), giving delays and refusals.
//! - [`rate`]: `limits.max_connect_rate`, a token bucket at accept (pure).
//!
//! Device secrets (one SHA-256) and certificates never come here: they cost nothing to check,
//! cannot be guessed (256 random bits), and a neighbour's failures behind the same address
//! must not lock a device out.

pub mod pool;
pub mod rate;
pub mod stats;
pub mod throttle;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use self::pool::PasswordPool;
pub use self::stats::LoginStats;
use self::throttle::{LoginThrottle, ThrottleConfig, Verdict};
use crate::wire::packet::outgoing::reason;

/// Why a CONNECT was refused before it was served: a CONNACK reason code and a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The client id breaks the id rule, or does not match the credentials.
    BadClientId,
    /// MQTT 5 enhanced authentication, which is not supported.
    BadAuthMethod,
    /// No credentials where they are required, or a certificate for another id.
    NotAuthorized,
    /// A user name nobody has.
    UnknownUser,
    /// An operator's name with a wrong password, or a user name without a password.
    BadPassword,
    /// A device's name with a wrong secret.
    BadSecret,
    /// The credentials could not be read.
    Unavailable,
    /// Refused by the throttle without checking: too many failures from this source.
    Throttled,
    /// No place in the password pool within `limits.connect_timeout_ms`.
    Busy,
}

impl Refusal {
    /// Every refusal, for the counters.
    pub const ALL: [Refusal; 9] = [
        Refusal::BadClientId,
        Refusal::BadAuthMethod,
        Refusal::NotAuthorized,
        Refusal::UnknownUser,
        Refusal::BadPassword,
        Refusal::BadSecret,
        Refusal::Unavailable,
        Refusal::Throttled,
        Refusal::Busy,
    ];

    /// The MQTT 5 CONNACK reason code (3.1.1 maps it, see `outgoing`).
    pub fn code(self) -> u8 {
        match self {
            Refusal::BadClientId => reason::BAD_CLIENT_ID,
            Refusal::BadAuthMethod => reason::BAD_AUTH_METHOD,
            Refusal::NotAuthorized => reason::NOT_AUTHORIZED,
            Refusal::UnknownUser | Refusal::BadPassword | Refusal::BadSecret => {
                reason::BAD_CREDENTIALS
            }
            Refusal::Unavailable => reason::SERVER_UNAVAILABLE,
            Refusal::Throttled | Refusal::Busy => reason::CONNECTION_RATE_EXCEEDED,
        }
    }

    /// The `reason` label in metrics and the status.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::BadClientId => "bad_client_id",
            Refusal::BadAuthMethod => "bad_auth_method",
            Refusal::NotAuthorized => "not_authorized",
            Refusal::UnknownUser => "unknown_user",
            Refusal::BadPassword => "bad_password",
            Refusal::BadSecret => "bad_secret",
            Refusal::Unavailable => "unavailable",
            Refusal::Throttled => "throttled",
            Refusal::Busy => "busy",
        }
    }
}

/// One CONNECT's context: where it comes from and by when it must be answered.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// The peer's address.
    pub source: IpAddr,
    /// Accept time + `limits.connect_timeout_ms`: the latest a password check may start.
    pub deadline: Instant,
}

/// The pool and the failure tables, shared by every session.
#[derive(Debug)]
pub struct LoginGuard {
    throttle: Mutex<LoginThrottle>,
    pool: PasswordPool,
    stats: Arc<LoginStats>,
}

impl LoginGuard {
    /// Starts the password pool; the tables start empty.
    pub fn start(
        pool: PasswordPool,
        throttle: ThrottleConfig,
        stats: Arc<LoginStats>,
    ) -> LoginGuard {
        LoginGuard {
            throttle: Mutex::new(LoginThrottle::new(throttle)),
            pool,
            stats,
        }
    }

    fn throttle(&self) -> std::sync::MutexGuard<'_, LoginThrottle> {
        self.throttle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks `presented` against `stored`, a slow (argon2) hash of operator `name`, or a name
    /// nobody has (`stored` = `None`): throttled, then on the pool. `Ok` when it matched.
    pub async fn check_password(
        &self,
        attempt: Attempt,
        name: &str,
        stored: Option<String>,
        presented: String,
    ) -> Result<(), Refusal> {
        let operator = stored.is_some().then_some(name);
        let check = self
            .throttle()
            .check(attempt.source, operator, std::time::Instant::now());
        if check.first_throttle {
            tracing::warn!(
                source = %attempt.source,
                user = name,
                "failed logins from this address: its login attempts are now delayed, and \
                 refused past limits.max_auth_failures (one line per address)"
            );
        }
        match check.verdict {
            Verdict::Refuse(hold) => {
                LoginStats::bump(&self.stats.refused);
                tokio::time::sleep(hold).await;
                return Err(Refusal::Throttled);
            }
            Verdict::Go(wait) if !wait.is_zero() => {
                LoginStats::bump(&self.stats.delayed);
                tokio::time::sleep(wait).await;
            }
            Verdict::Go(_) => {}
        }
        let matched = match stored {
            Some(stored) => {
                let checked = self.pool.verify(stored, presented, attempt.deadline).await;
                checked.map_err(|_| {
                    LoginStats::bump(&self.stats.busy);
                    Refusal::Busy
                })?
            }
            None => false,
        };
        let now = std::time::Instant::now();
        let mut throttle = self.throttle();
        if matched {
            throttle.succeeded(attempt.source);
        } else {
            throttle.failed(attempt.source, operator, now);
        }
        self.stats.set_tracked(throttle.len());
        match (matched, operator) {
            (true, _) => Ok(()),
            (false, Some(_)) => Err(Refusal::BadPassword),
            (false, None) => Err(Refusal::UnknownUser),
        }
    }
}
