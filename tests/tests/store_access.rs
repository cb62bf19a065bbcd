//! What a PostgreSQL deployment's roles and names get. A gateway whose login, database or rights
//! the database refuses exits 2 with a line naming `store.url`, as any config mistake; a role
//! that may only read and write the tables (no `CREATE`: PostgreSQL 15's default for roles other
//! than the owner) serves a database its owner migrated. Real PostgreSQL, real gateway processes.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gateway::wire::Status;
use roost_tests::device::{values, TestDevice};
use roost_tests::postgres::PgCluster;
use roost_tests::Gateway;

/// The config of a gateway on the database at `url`.
fn config(url: &str) -> String {
    format!(
        "[broker]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"\"\n\
         [store]\nengine = \"postgres\"\nurl = \"{url}\"\n"
    )
}

/// Runs a gateway on the database at `url` until it exits (at most 60 s): its exit code and
/// what it printed on stderr.
fn exit_of(url: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gateway.toml");
    let data = dir.path().join("data");
    let text = format!("[gateway]\ndata_dir = {data:?}\n{}", config(url));
    std::fs::write(&path, text).expect("write config");
    let stderr = dir.path().join("stderr");
    let mut child = Command::new(Gateway::binary())
        .args(["run", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("spawn gateway");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the gateway on {url} did not exit:\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let printed = std::fs::read_to_string(&stderr).expect("stderr");
    (status.code(), printed)
}

/// The line a refused start ends with (the log lines before it are the gateway's own).
fn last_line(stderr: &str) -> &str {
    stderr.trim().lines().last().unwrap_or_default()
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
        let (code, stderr) = exit_of(&url);
        let line = last_line(&stderr);
        assert_eq!(code, Some(2), "{url}: {stderr}");
        assert!(
            line.contains("store.url") && line.contains(says),
            "{url}: {stderr}"
        );
    }
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
    let gateway = tokio::task::spawn_blocking(move || Gateway::start_with(&app))
        .await
        .expect("thread");
    let mut device = TestDevice::connect(gateway.mqtt, "least-1").await;
    device
        .request("stats", &values(&[1.0, 2.0, 3.0]), b"c-1", None)
        .await;
    assert_eq!(
        device.reply_for(b"c-1").await.reply.status,
        Status::Accepted
    );
    assert_eq!(device.reply_for(b"c-1").await.reply.status, Status::Ok);
    device.disconnect().await;
    assert!(
        !gateway.log().contains("42501"),
        "a statement needed more rights than reading and writing the tables:\n{}",
        gateway.log()
    );
}
