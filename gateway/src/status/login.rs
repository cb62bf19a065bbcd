//! Operator login for the HTTP API on a non-loopback address: HTTP Basic authentication against
//! the operator accounts (`gateway operator add`, argon2id hashes in the store), so browsers
//! prompt for it and Prometheus scrapes with `basic_auth`. Use it behind TLS (a reverse proxy):
//! Basic sends the password with every request.
//!
//! Passwords are checked by the [`PasswordCheck`] `app` gives: the front door's login guard, so
//! HTTP logins share its failure throttle and its bounded password pool (**password checks use
//! at most `limits.password_threads` cores, whatever arrives, MQTT or HTTP**). A verified
//! (name, password) pair is remembered for [`REMEMBER`] as a SHA-256 digest, so one argon2
//! verification (tens of ms) serves a page's many requests; a removed operator is refused once
//! that passes. `/healthz` stays open for load balancers. Everything the API serves is
//! read-only: there is nothing to forge, so no CSRF token exists.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::store::credentials::{CredentialReader, Kind};

/// Checks a presented password: (source address, name, the name's stored hash if it is an
/// operator's, presented password) → matched. An unknown name or a device's is passed as `None`,
/// so it costs the caller the throttle's time like a wrong password does.
pub type PasswordCheck =
    Arc<dyn Fn(IpAddr, String, Option<String>, String) -> Checked + Send + Sync>;

/// What a [`PasswordCheck`] returns.
pub type Checked = Pin<Box<dyn Future<Output = bool> + Send>>;

/// How long a verified login is remembered.
pub const REMEMBER: Duration = Duration::from_secs(60);

/// Why operator login cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// No operator account exists, so nobody could ever log in.
    #[error(
        "[http] listen = \"{0}\" is not a loopback address, so the HTTP API requires an operator \
         login, and there is no operator account: add one with `gateway operator add NAME`, or \
         listen on 127.0.0.1"
    )]
    NoOperators(std::net::SocketAddr),
    /// The credentials could not be read.
    #[error("[http] listen: cannot read operator accounts: {0}")]
    Store(String),
}

/// Operator logins over the store's credentials.
pub struct Login {
    credentials: CredentialReader,
    check: PasswordCheck,
    remembered: Mutex<HashMap<[u8; 32], Instant>>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").finish_non_exhaustive()
    }
}

impl Login {
    /// Login for an HTTP API on `addr`, checking passwords with `check`; refuses when no
    /// operator account exists.
    pub fn open(
        db_path: &Path,
        addr: SocketAddr,
        check: PasswordCheck,
    ) -> Result<Login, LoginError> {
        if !db_path.exists() {
            return Err(LoginError::NoOperators(addr));
        }
        let credentials =
            CredentialReader::open(db_path).map_err(|e| LoginError::Store(e.to_string()))?;
        let operators = credentials
            .count(Kind::Operator)
            .map_err(|e| LoginError::Store(e.to_string()))?;
        if operators == 0 {
            return Err(LoginError::NoOperators(addr));
        }
        Ok(Login {
            credentials,
            check,
            remembered: Mutex::default(),
        })
    }

    /// Whether `name`/`password` from `source` is an operator's login.
    async fn check(&self, source: IpAddr, name: String, password: String) -> bool {
        let key: [u8; 32] = Sha256::new()
            .chain_update(name.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .finalize()
            .into();
        {
            let mut remembered = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
            remembered.retain(|_, at| at.elapsed() < REMEMBER);
            if remembered.contains_key(&key) {
                return true;
            }
        }
        let credentials = self.credentials.clone();
        let lookup = name.clone();
        let stored = match tokio::task::spawn_blocking(move || credentials.lookup(&lookup)).await {
            Ok(Ok(found)) => {
                found.and_then(|(kind, hash)| (kind == Kind::Operator).then_some(hash))
            }
            _ => return false,
        };
        let verified = (self.check)(source, name, stored, password).await;
        if verified {
            let mut remembered = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
            remembered.insert(key, Instant::now());
        }
        verified
    }
}

/// The middleware: lets a request through only with an operator's Basic credentials.
pub async fn require(
    State(login): State<Arc<Login>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Basic "))
        .and_then(|encoded| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
        })
        .and_then(|decoded| String::from_utf8(decoded).ok())
        .and_then(|text| {
            text.split_once(':')
                .map(|(name, password)| (name.to_owned(), password.to_owned()))
        });
    if let Some((name, password)) = presented {
        if login.check(peer.ip(), name, password).await {
            return next.run(request).await;
        }
    }
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"Roost operators\", charset=\"UTF-8\"",
        )],
        "operator login required\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontdoor::secrets;
    use crate::store::credentials::CredentialWriter;
    use axum::routing::get;
    use std::io::{Read, Write};

    /// The check as `app` wires it, without the front door's pool: argon2 right here.
    fn plain_check() -> PasswordCheck {
        Arc::new(|_, _, stored: Option<String>, presented: String| {
            Box::pin(async move { stored.is_some_and(|s| secrets::verify(&s, &presented)) })
        })
    }

    fn get_with(addr: std::net::SocketAddr, authorization: Option<&str>) -> String {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        let auth = authorization
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        write!(
            stream,
            "GET / HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
        )
        .expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        response
    }

    fn basic(name: &str, password: &str) -> String {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{name}:{password}"));
        format!("Basic {token}")
    }

    #[test]
    fn refuses_without_operators_and_then_requires_an_operators_password() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("roost.db");
        let addr: std::net::SocketAddr = "0.0.0.0:8080".parse().expect("addr");
        let refused = Login::open(&db, addr, plain_check()).expect_err("no database, no operator");
        assert!(refused.to_string().contains("[http] listen"), "{refused}");
        let writer = CredentialWriter::open(&db).expect("db");
        let device_hash = secrets::hash_device_secret("s3cret");
        writer
            .insert("dev-1", Kind::Device, &device_hash, 0)
            .expect("insert");
        assert!(
            matches!(
                Login::open(&db, addr, plain_check()),
                Err(LoginError::NoOperators(_))
            ),
            "a device credential is not an operator"
        );
        let hash = secrets::hash_operator_password("opensesame").expect("hash");
        writer
            .insert("ops", Kind::Operator, &hash, 0)
            .expect("insert");
        let login = Arc::new(Login::open(&db, addr, plain_check()).expect("an operator exists"));

        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let local = listener.local_addr().expect("addr");
        let app = axum::Router::new()
            .route("/", get(|| async { "secret page" }))
            .layer(axum::middleware::from_fn_with_state(login, require));
        runtime.spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });

        let none = get_with(local, None);
        assert!(none.starts_with("HTTP/1.1 401"), "{none}");
        assert!(none.contains("www-authenticate: Basic"), "{none}");
        let wrong = get_with(local, Some(&basic("ops", "wrong")));
        assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
        let device = get_with(local, Some(&basic("dev-1", "s3cret")));
        assert!(
            device.starts_with("HTTP/1.1 401"),
            "devices are not operators: {device}"
        );
        let right = get_with(local, Some(&basic("ops", "opensesame")));
        assert!(right.starts_with("HTTP/1.1 200"), "{right}");
        assert!(right.ends_with("secret page"), "{right}");
        let remembered = get_with(local, Some(&basic("ops", "opensesame")));
        assert!(remembered.starts_with("HTTP/1.1 200"), "{remembered}");
    }
}
