//! A small pool of PostgreSQL connections (`[store] pool_size`), each with its own cache of
//! prepared statements. A connection that broke is dropped on return; the next `get` connects
//! afresh, so the pool heals after the database restarts.
//!
//! **A database that vanished from the network is noticed.** A server whose host crashed or
//! whose network was cut sends nothing back, neither an answer nor a reset: without a bound, a
//! statement waits for its answer as long as the kernel retransmits (about 15 minutes on Linux)
//! and an idle connection for hours. Every connection therefore has `tcp_user_timeout` (data
//! unacknowledged this long breaks the connection) and TCP keepalives, unless `store.url` sets
//! them itself (`?tcp_user_timeout=S&keepalives_idle=S&keepalives_interval=S&keepalives_retries=N`,
//! in seconds): the failure then surfaces as [`StoreError::Unavailable`] and the gateway
//! degrades, as when the server is stopped.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Level;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, NoTls, Statement};

use crate::logging::log_repeated;
use crate::store::StoreError;

/// How long the TCP connect may take before the attempt counts as failed (the handshake after
/// it is bounded by the callers, with [`answered`]: a frozen server's kernel still accepts).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long sent data may stay unacknowledged by the server's host before the connection
/// counts as broken (unless the URL says `tcp_user_timeout`).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle connection is probed after this long without traffic (unless the URL says
/// `keepalives_idle`)...
const KEEPALIVES_IDLE: Duration = Duration::from_secs(5);
/// ...then every this long (unless the URL says `keepalives_interval`)...
const KEEPALIVES_INTERVAL: Duration = Duration::from_secs(2);
/// ...and counts as broken after this many unanswered probes (unless the URL says
/// `keepalives_retries`): a vanished server is noticed within about 11 s even when idle.
const KEEPALIVES_RETRIES: u32 = 3;
/// tokio-postgres' own `keepalives_idle`: a URL that leaves it at this did not set it.
const DRIVER_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 60 * 60);

/// How long the store waits for PostgreSQL to answer (a statement, a commit, a connection's
/// handshake, a connection from the pool: in the committers, the heartbeat, the work on the pool
/// and the operator CLI) before it counts as unavailable. A server that stopped answering with
/// its host still up (frozen, overloaded past this, a stuck disk) gives no TCP error at all;
/// this bound is what notices it.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// `work`'s result, or [`StoreError::Unavailable`] once [`ANSWER_TIMEOUT`] has passed without
/// one.
pub async fn answered<T>(
    work: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(ANSWER_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(no_answer()))
}

fn no_answer() -> StoreError {
    StoreError::Unavailable(format!(
        "no answer from PostgreSQL within {} s",
        ANSWER_TIMEOUT.as_secs()
    ))
}

/// One connection and its prepared statements.
pub struct Conn {
    /// The client (its connection task runs on the runtime).
    pub client: Client,
    statements: Mutex<HashMap<&'static str, Statement>>,
    /// The connection task, ended by [`Conn::close`].
    task: tokio::task::AbortHandle,
}

impl Conn {
    /// Ends the connection at once, whatever it was waiting for: its socket is closed, so the
    /// server rolls back whatever transaction it had open as soon as it reads on.
    pub fn close(self) {
        self.task.abort();
    }

    /// `sql` prepared on this connection (once; later calls hit the cache).
    pub async fn statement(&self, sql: &'static str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.cache().get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        self.cache().insert(sql, statement.clone());
        Ok(statement)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, Statement>> {
        self.statements.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The pool.
pub struct Pool {
    config: tokio_postgres::Config,
    /// `None`: `sslmode=disable`.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    idle: Mutex<Vec<Conn>>,
    permits: Arc<Semaphore>,
}

impl Pool {
    /// A pool of at most `size` connections to `url` (none opened yet).
    pub fn new(url: &str, size: usize) -> Result<Arc<Pool>, StoreError> {
        let (url, tls) = crate::config::postgres_tls(url)
            .map_err(|why| StoreError::Sql(format!("store.url: {why}")))?;
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| StoreError::Sql(format!("store.url: {e}")))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("roost-gateway");
        }
        dead_peer_bounds(&mut config);
        Ok(Arc::new(Pool {
            config,
            tls: super::tls::connector(&tls)?,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size.max(1))),
        }))
    }

    /// A connection: an idle one, or a new one. Waits while all `size` are in use.
    pub async fn get(self: &Arc<Self>) -> Result<Pooled, StoreError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(conn) if !conn.client.is_closed() => conn,
            _ => self.connect().await?,
        };
        Ok(Pooled {
            conn: Some(conn),
            pool: self.clone(),
            _permit: permit,
        })
    }

    /// `work` on a pooled connection, each wait (for the connection, for `work`) bounded by
    /// [`ANSWER_TIMEOUT`]: a server that stopped answering fails it as unavailable, and its
    /// connection is closed rather than kept, instead of holding the caller and a connection.
    /// For short work: reads, bounded transactions (not the prune's unbounded deletes).
    pub async fn run<T>(
        self: &Arc<Self>,
        work: impl AsyncFnOnce(&Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = answered(self.get()).await?;
        match tokio::time::timeout(ANSWER_TIMEOUT, work(&conn)).await {
            Ok(result) => result,
            Err(_) => {
                conn.discard();
                Err(no_answer())
            }
        }
    }

    /// A new connection outside the pool's accounting (the migrations at open, then the
    /// heartbeat; a lost commit's question). Only its TCP connect is bounded here.
    pub async fn connect(&self) -> Result<Conn, StoreError> {
        let (client, task) = match &self.tls {
            None => {
                let (client, connection) = self.config.connect(NoTls).await?;
                (client, tokio::spawn(run_connection(connection)))
            }
            Some(tls) => {
                let (client, connection) = self
                    .config
                    .connect(tls.clone())
                    .await
                    .map_err(tls_refused)?;
                (client, tokio::spawn(run_connection(connection)))
            }
        };
        Ok(Conn {
            client,
            statements: Mutex::new(HashMap::new()),
            task: task.abort_handle(),
        })
    }
}

/// Drives a connection until it ends.
async fn run_connection<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(error) = connection.await {
        log_repeated!(Level::WARN, %error, "store connection closed");
    }
}

/// A TLS connection's failure: a certificate that fails `sslrootcert`'s check, or a server
/// without TLS where `sslmode` requires it, is the deployment's mistake (`store.url`), not a
/// passing fault to wait out.
fn tls_refused(error: tokio_postgres::Error) -> StoreError {
    let no_tls = std::error::Error::source(&error)
        .map(|source| source.to_string())
        .filter(|source| source == "server does not support TLS");
    match no_tls.or_else(|| super::tls::certificate_refused(&error)) {
        Some(problem) => StoreError::Refused(format!("{error}: {problem}")),
        None => error.into(),
    }
}

/// Bounds how long a connection to a server that vanished from the network goes unnoticed
/// (see the module's doc), keeping whatever the URL set.
fn dead_peer_bounds(config: &mut tokio_postgres::Config) {
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    if !config.get_keepalives() {
        return;
    }
    if config.get_keepalives_idle() == DRIVER_KEEPALIVES_IDLE {
        config.keepalives_idle(KEEPALIVES_IDLE);
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(KEEPALIVES_INTERVAL);
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(KEEPALIVES_RETRIES);
    }
}

/// A connection on loan; back to the pool on drop unless it broke.
pub struct Pooled {
    conn: Option<Conn>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl Pooled {
    /// Ends this connection instead of returning it (it is in an unknown state: a statement or
    /// a commit went unanswered). The next `get` connects afresh.
    pub fn discard(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.close();
        }
    }
}

impl Deref for Pooled {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        self.conn
            .as_ref()
            .expect("present until dropped or discarded")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if !conn.client.is_closed() {
                self.pool
                    .idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(conn);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> tokio_postgres::Config {
        let mut config = url.parse().expect("url");
        dead_peer_bounds(&mut config);
        config
    }

    #[test]
    fn connections_notice_a_vanished_server_unless_the_url_says_otherwise() {
        let default = config("postgres://u@h/db");
        assert_eq!(default.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
        assert!(default.get_keepalives());
        assert_eq!(default.get_keepalives_idle(), KEEPALIVES_IDLE);
        assert_eq!(default.get_keepalives_interval(), Some(KEEPALIVES_INTERVAL));
        assert_eq!(default.get_keepalives_retries(), Some(KEEPALIVES_RETRIES));
        let own = config(
            "postgres://u@h/db?tcp_user_timeout=3&keepalives_idle=60&keepalives_interval=7\
             &keepalives_retries=9",
        );
        assert_eq!(own.get_tcp_user_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(own.get_keepalives_idle(), Duration::from_secs(60));
        assert_eq!(own.get_keepalives_interval(), Some(Duration::from_secs(7)));
        assert_eq!(own.get_keepalives_retries(), Some(9));
        let off = config("postgres://u@h/db?keepalives=0");
        assert!(!off.get_keepalives());
        assert_eq!(off.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
    }
}
