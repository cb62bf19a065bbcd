//! What a PostgreSQL deployment's roles, names and TLS get. A gateway whose login, database or
//! rights the database refuses exits 2 with a line naming `store.url`, as any config mistake; a
//! role that may only read and write the tables (no `CREATE`: PostgreSQL 15's default for roles
//! other than the owner) serves a database its owner migrated; a server that takes TLS only is
//! reached with libpq's `sslmode` and `sslrootcert`, and a certificate that fails the check
//! asked for ends the start the same way; `sslrootcert=system` checks the server against the
//! system's CAs and its name; a server that logs roles in by client certificate is reached
//! with `sslcert` and `sslkey`. Real PostgreSQL, real gateway processes, certificates
//! made here.

use std::process::{Command, Stdio};

use gateway::wire::Status;
use roost_tests::certs;
use roost_tests::device::{values, TestDevice};
use roost_tests::postgres::PgCluster;
use roost_tests::{Gateway, Launch};

/// The config of a gateway on the database at `url`.
fn config(url: &str) -> String {
    format!(
        "[broker]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"\"\n\
         [store]\nengine = \"postgres\"\nurl = \"{url}\"\n"
    )
}

/// Runs `gateway COMMAND --config` (`run`, or an operator command) on the database at `url`,
/// with `env` set for it, until it exits, bounded at 60 s (`timeout`: exit code 124 past it):
/// its exit code and what it printed on stderr.
fn exit_of(url: &str, command: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gateway.toml");
    let data = dir.path().join("data");
    let text = format!("[gateway]\ndata_dir = {data:?}\n{}", config(url));
    std::fs::write(&path, text).expect("write config");
    let out = Command::new("timeout")
        .arg("60")
        .arg(Gateway::binary())
        .args(command)
        .envs(env.iter().copied())
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .expect("run the gateway");
    let printed = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), printed)
}

/// Asserts a start ended as a refused config does: exit code 2, and a last line (the log lines
/// before it are the gateway's own) naming `store.url` and saying `says`.
fn assert_refused((code, stderr): (Option<i32>, String), says: &str, case: &str) {
    let line = stderr.trim().lines().last().unwrap_or_default();
    assert_eq!(code, Some(2), "{case}: {stderr}");
    assert!(
        line.contains("store.url") && line.contains(says),
        "{case}: {stderr}"
    );
}

/// A device of `gateway` (as `id`) gets `202`, then `200`, for one request.
async fn round_trip(gateway: &Gateway, id: &str) {
    let mut device = TestDevice::connect(gateway.mqtt, id).await;
    device
        .request("stats", &values(&[1.0, 2.0, 3.0]), b"c", None)
        .await;
    assert_eq!(
        device.reply_for(b"c").await.reply.status,
        Status::Accepted,
        "{id}"
    );
    assert_eq!(
        device.reply_for(b"c").await.reply.status,
        Status::Ok,
        "{id}"
    );
    device.disconnect().await;
}

/// Starts a gateway with `config` off the runtime's threads.
async fn gateway_as(config: String, launch: Launch) -> Gateway {
    tokio::task::spawn_blocking(move || Gateway::start_as(&config, launch))
        .await
        .expect("thread")
}

#[test]
fn a_database_that_refuses_the_gateway_exits_2_naming_store_url() {
    let cluster = PgCluster::start();
    cluster.create_database("roost");
    cluster.query("postgres", "CREATE ROLE reader LOGIN");
    for (url, says) in [
        (cluster.url_as("nobody", "roost"), "28000"),
        (cluster.url("absent"), "3D000"),
        // An empty database, which a role without CREATE cannot migrate.
        (
            cluster.url_as("reader", "roost"),
            "migrating needs a role that may create tables",
        ),
    ] {
        assert_refused(exit_of(&url, &["run"], &[]), says, &url);
    }
    // The operator commands say it the same way.
    let nobody = cluster.url_as("nobody", "roost");
    let listed = exit_of(&nobody, &["requests", "list"], &[]);
    assert_refused(listed, "28000", "requests list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_may_only_read_and_write_serves_a_database_its_owner_migrated() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .expect("cluster");
    cluster.create_database("roost");
    // The owner's gateway migrates, then stops.
    let owner = config(&cluster.url("roost"));
    tokio::task::spawn_blocking(move || Gateway::start_with(&owner).terminate())
        .await
        .expect("thread");
    cluster.query(
        "roost",
        "CREATE ROLE app LOGIN; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app; \
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app",
    );
    let app = config(&cluster.url_as("app", "roost"));
    let gateway = gateway_as(app, Launch::default()).await;
    round_trip(&gateway, "least-1").await;
    assert!(
        !gateway.log().contains("42501"),
        "a statement needed more rights than reading and writing the tables:\n{}",
        gateway.log()
    );
}

/// A CA, the server's certificate it signed (for `db.example` only, not the address the
/// gateways connect to) and its key (PEM), a client certificate it signed for role `postgres`,
/// and another CA that signed nothing.
struct Pki {
    dir: tempfile::TempDir,
    ca: String,
    cert: String,
    key: String,
}

impl Pki {
    fn new() -> Pki {
        let (ca, other) = (certs::ca("roost test CA"), certs::ca("another CA"));
        let server = ca.server(&["db.example"]);
        let client = ca.client("postgres");
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, pem) in [
            ("ca.pem", ca.cert.pem()),
            ("other.pem", other.cert.pem()),
            ("client.pem", client.cert.pem()),
            ("client.key", client.key.serialize_pem()),
        ] {
            std::fs::write(dir.path().join(name), pem).expect("write");
        }
        Pki {
            dir,
            ca: ca.cert.pem(),
            cert: server.cert.pem(),
            key: server.key.serialize_pem(),
        }
    }

    /// `sslcert=` and `sslkey=` the client certificate's files.
    fn client(&self) -> String {
        let at = |name: &str| self.dir.path().join(name).display().to_string();
        format!("sslcert={}&sslkey={}", at("client.pem"), at("client.key"))
    }

    /// `sslrootcert=` the CA's file, or the other CA's.
    fn root(&self, which: &str) -> String {
        format!("sslrootcert={}", self.dir.path().join(which).display())
    }
}

/// `url` with `query` (`a=b&c=d`, or nothing).
fn with_query(url: &str, query: &str) -> String {
    match query {
        "" => url.to_owned(),
        query => format!("{url}?{query}"),
    }
}

/// A cluster that takes TLS only, with `pki`'s server certificate: its database `roost`'s URL.
async fn tls_cluster(pki: &Pki) -> (PgCluster, String) {
    let (cert, key) = (pki.cert.clone(), pki.key.clone());
    tokio::task::spawn_blocking(move || {
        let cluster = PgCluster::start();
        let url = cluster.create_database("roost");
        cluster.require_tls(&cert, &key);
        (cluster, url)
    })
    .await
    .expect("cluster")
}

/// Whether every connection of the gateways to `cluster` passes `check` (SQL on `pg_stat_ssl`
/// as `s`), and there is one.
fn every_connection(cluster: &PgCluster, check: &str) -> bool {
    let sql = format!(
        "SELECT COUNT(*) > 0 AND bool_and({check}) FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'roost-gateway'"
    );
    cluster.query("postgres", &sql) == "t"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_reaches_a_database_that_takes_tls_only() {
    let pki = Pki::new();
    let (cluster, url) = tls_cluster(&pki).await;
    // The name the certificate gives, at the server's address (libpq's `hostaddr`).
    let by_name = url.replace("127.0.0.1", "db.example");
    for (n, (url, query)) in [
        // The chain and the name are checked.
        (
            &by_name,
            format!(
                "hostaddr=127.0.0.1&sslmode=verify-full&{}",
                pki.root("ca.pem")
            ),
        ),
        // The chain is checked, not the name (libpq's meaning).
        (&url, format!("sslmode=verify-ca&{}", pki.root("ca.pem"))),
        // Encrypted, the certificate not checked; the default (`prefer`) likewise.
        (&url, "sslmode=require".to_owned()),
        (&url, String::new()),
    ]
    .into_iter()
    .enumerate()
    {
        let app = config(&with_query(url, &query));
        let gateway = gateway_as(app, Launch::default()).await;
        round_trip(&gateway, &format!("tls-{n}")).await;
        assert!(
            every_connection(&cluster, "s.ssl"),
            "{query}: every connection encrypted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_fails_the_tls_check_ends_the_start_with_exit_2() {
    let pki = Pki::new();
    let (_cluster, url) = tls_cluster(&pki).await;
    for (query, says) in [
        // The certificate names db.example, not 127.0.0.1.
        (
            format!("sslmode=verify-full&{}", pki.root("ca.pem")),
            "certificate",
        ),
        (
            format!("sslmode=verify-ca&{}", pki.root("other.pem")),
            "certificate",
        ),
        // The server takes no connection without TLS.
        ("sslmode=disable".to_owned(), "28000"),
        // A config mistake, before any connection.
        ("sslmode=verify-full".to_owned(), "sslrootcert"),
    ] {
        let url = with_query(&url, &query);
        let ended = tokio::task::spawn_blocking(move || exit_of(&url, &["run"], &[]));
        assert_refused(ended.await.expect("thread"), says, &query);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_asks_for_a_client_certificate_is_reached_with_sslcert_and_sslkey() {
    let pki = Pki::new();
    let (cluster, url) = tls_cluster(&pki).await;
    cluster.require_client_certificates(&pki.ca);

    // Without a certificate the server refuses the login: exit 2 naming store.url.
    let without = with_query(&url, "sslmode=require");
    let ended = tokio::task::spawn_blocking(move || exit_of(&without, &["run"], &[]));
    assert_refused(ended.await.expect("thread"), "28000", "no certificate");

    let query = format!("sslmode=verify-ca&{}&{}", pki.root("ca.pem"), pki.client());
    let with = with_query(&url, &query);
    let gateway = gateway_as(config(&with), Launch::default()).await;
    round_trip(&gateway, "client-cert").await;
    assert!(
        every_connection(&cluster, "s.client_dn = '/CN=postgres'"),
        "every connection logged in by the certificate"
    );
    // The operator commands log in the same way.
    let listed = tokio::task::spawn_blocking(move || exit_of(&with, &["requests", "list"], &[]));
    let (code, stderr) = listed.await.expect("thread");
    assert_eq!(code, Some(0), "requests list: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslrootcert_system_checks_the_database_against_the_systems_cas_and_its_name() {
    let pki = Pki::new();
    let (_cluster, url) = tls_cluster(&pki).await;
    let by_address = with_query(&url, "sslrootcert=system");
    // The name the certificate gives, at the server's address (libpq's `hostaddr`).
    let by_name = with_query(
        &url.replace("127.0.0.1", "db.example"),
        "hostaddr=127.0.0.1&sslrootcert=system",
    );
    // The system's store as OpenSSL's variable names it: the CA that signed, or another.
    let store = |which: &str| pki.dir.path().join(which).display().to_string();
    let (signed, other) = (store("ca.pem"), store("other.pem"));

    // A store without the CA: refused; the address, which the certificate does not name
    // (verify-full is sslrootcert=system's default): refused.
    for (url, file, says) in [
        (by_name.clone(), other, "UnknownIssuer"),
        (by_address, signed.clone(), "not valid for name"),
    ] {
        let ended = tokio::task::spawn_blocking(move || {
            exit_of(&url, &["run"], &[("SSL_CERT_FILE", &file)])
        });
        assert_refused(ended.await.expect("thread"), says, says);
    }

    let launch = Launch {
        env: vec![("SSL_CERT_FILE".into(), signed)],
        ..Launch::default()
    };
    let gateway = gateway_as(config(&by_name), launch).await;
    round_trip(&gateway, "system-ca").await;
}
