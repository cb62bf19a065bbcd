//! The HTTP API's operator login when it listens off loopback: checked like an MQTT operator
//! login, through the front door's login guard (its failure throttle and its bounded password
//! pool), so password work stays within `limits.password_threads` whatever arrives. Without a
//! front door (external broker mode) the HTTP API gets a guard of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::error::AppError;
use crate::config::{Config, Limits};
use crate::frontdoor::{self, login::LoginGuard, FrontDoor};
use crate::status::login::{Login, PasswordCheck};

/// The login for an HTTP API on `addr`; exit 2 naming `[http] listen` when no operator exists.
pub fn open(
    config: &Config,
    limits: &Limits,
    front: Option<&FrontDoor>,
    addr: SocketAddr,
) -> Result<Arc<Login>, AppError> {
    let guard = match front {
        Some(front) => front.login_guard(),
        None => Arc::new(
            frontdoor::login_guard(limits, Arc::default())
                .map_err(|e| AppError::Fatal(format!("cannot start password threads: {e}")))?,
        ),
    };
    let db_path = config.gateway.data_dir.join(crate::store::DB_FILE);
    let check = password_check(guard, limits.connect_timeout);
    Ok(Arc::new(Login::open(&db_path, addr, check)?))
}

/// Checks through the guard's throttle and pool, starting within `timeout` or refused.
fn password_check(guard: Arc<LoginGuard>, timeout: Duration) -> PasswordCheck {
    Arc::new(move |source, name, stored, presented| {
        let guard = guard.clone();
        Box::pin(async move {
            let attempt = frontdoor::login::Attempt {
                source,
                deadline: tokio::time::Instant::now() + timeout,
            };
            guard
                .check_password(attempt, &name, stored, presented)
                .await
                .is_ok()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontdoor::secrets;
    use std::net::IpAddr;

    /// HTTP logins meet the MQTT logins' throttle: once an address has failed
    /// `limits.max_auth_failures` times, even the right password is refused from it (unhashed),
    /// while another address still logs in at once.
    #[tokio::test]
    async fn http_logins_share_the_front_doors_throttle() {
        let limits = Limits {
            max_auth_failures: 3,
            auth_delay: Duration::from_millis(1),
            auth_max_delay: Duration::from_millis(20),
            ..Limits::default()
        };
        let guard = Arc::new(frontdoor::login_guard(&limits, Arc::default()).expect("guard"));
        let check = password_check(guard, Duration::from_secs(5));
        let hash = secrets::hash_operator_password("right").expect("hash");
        let attempt = |source: [u8; 4], password: &str| {
            check(
                IpAddr::from(source),
                "ops".to_owned(),
                Some(hash.clone()),
                password.to_owned(),
            )
        };
        assert!(attempt([127, 0, 0, 2], "right").await);
        for _ in 0..limits.max_auth_failures {
            assert!(!attempt([127, 0, 0, 3], "wrong").await);
        }
        assert!(
            !attempt([127, 0, 0, 3], "right").await,
            "a throttled address is refused"
        );
        assert!(attempt([127, 0, 0, 2], "right").await, "others are not");
        let unknown = check(
            IpAddr::from([127, 0, 0, 4]),
            "nobody".to_owned(),
            None,
            "x".to_owned(),
        );
        assert!(
            !unknown.await,
            "a name without an operator's hash never logs in"
        );
    }
}
