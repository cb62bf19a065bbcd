//! Degrade, never die: a store that cannot write (a full disk, a database file made read-only
//! underneath the gateway, PostgreSQL stopped) puts the gateway in the `degraded` state instead
//! of ending it. New requests get `503` with `retry_after_ms` and no success PUBACK, held
//! replies are still delivered, the retained status and `/healthz` say degraded, a restart
//! while the disk is full starts degraded, and once the store writes again the gateway serves by
//! itself: every accepted request gets its one final reply, none runs twice, nothing refused was
//! stored. The failures are real: a tmpfs filled to `ENOSPC`, `chattr +i`, `pg_ctl stop`,
//! PostgreSQL's link cut (its server in a network namespace of the test's own) and PostgreSQL
//! frozen (SIGSTOP).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gateway::wire::Status;
use roost_tests::device::{values, Received, TestDevice, WAIT};
use roost_tests::postgres::PgCluster;
use roost_tests::store_view::{hex, requests_of};
use roost_tests::tinyfs::TinyFs;
use roost_tests::{http_get, until_logged, Gateway};

const STATUS_TOPIC: &str = "gateway/gw-test/status";

/// Every reply a test received, by correlation.
#[derive(Default)]
struct Ledger {
    seen: HashMap<Vec<u8>, Vec<Received>>,
}

impl Ledger {
    fn record(&mut self, received: Received) {
        if let Some(corr) = received.corr.clone() {
            self.seen.entry(corr.to_vec()).or_default().push(received);
        }
    }

    fn count(&self, corr: &[u8]) -> usize {
        self.seen.get(corr).map_or(0, Vec::len)
    }

    /// The first reply to `corr`, waiting for it (recording whatever else arrives).
    async fn first(&mut self, device: &mut TestDevice, corr: &[u8]) -> Received {
        while self.count(corr) == 0 {
            let received = device.next().await;
            self.record(received);
        }
        self.seen[corr][0].clone()
    }

    /// A reply to `corr` beyond the `before` already seen.
    async fn another(&mut self, device: &mut TestDevice, corr: &[u8], before: usize) {
        while self.count(corr) <= before {
            let received = device.next().await;
            self.record(received);
        }
    }

    fn finals(&self, corr: &[u8]) -> Vec<&Received> {
        self.seen.get(corr).map_or_else(Vec::new, |all| {
            all.iter()
                .filter(|r| r.reply.status != Status::Accepted)
                .collect()
        })
    }

    /// Waits until every one of `corrs` has a final reply.
    async fn until_finished(&mut self, device: &mut TestDevice, corrs: &[Vec<u8>]) {
        while let Some(missing) = corrs.iter().find(|c| self.finals(c).is_empty()) {
            let missing = String::from_utf8_lossy(missing).into_owned();
            let received = tokio::time::timeout(WAIT, device.next())
                .await
                .unwrap_or_else(|_| panic!("no final reply for {missing}"));
            self.record(received);
        }
    }
}

/// What one device connection published, to check its PUBACKs against.
#[derive(Default)]
struct Sent {
    published: usize,
    refused: Vec<Vec<u8>>,
    accepted: Vec<Vec<u8>>,
}

impl Sent {
    /// Sends a `stats` request and waits for its first reply: `202` or `503`.
    async fn request(
        &mut self,
        device: &mut TestDevice,
        ledger: &mut Ledger,
        corr: &[u8],
        series: &[f64],
    ) -> Received {
        device.request("stats", &values(series), corr, None).await;
        self.published += 1;
        let first = ledger.first(device, corr).await;
        match first.reply.status {
            Status::Accepted => self.accepted.push(corr.to_vec()),
            Status::Unavailable => {
                let error = first.reply.error.as_ref().expect("a 503 has an error");
                assert_eq!(error.code, "store_unavailable", "{:?}", first.reply);
                assert!(
                    first.reply.retry_after_ms.is_some_and(|ms| ms > 0),
                    "a 503 says when to retry: {:?}",
                    first.reply
                );
                assert!(first.reply.request_id.is_none(), "a 503 stores nothing");
                self.refused.push(corr.to_vec());
            }
            other => panic!("unexpected first reply {other:?}: {:?}", first.reply),
        }
        first
    }

    /// Every publish of this connection was answered by a PUBACK: success exactly for those
    /// the gateway committed, a refusal for each `503`.
    async fn check_pubacks(&self, device: &TestDevice) {
        let deadline = Instant::now() + WAIT;
        let pubacks = loop {
            let pubacks = device.pubacks.lock().expect("puback log").clone();
            if pubacks.len() >= self.published || Instant::now() > deadline {
                break pubacks;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let success = pubacks.iter().filter(|ok| **ok).count();
        assert_eq!(pubacks.len(), self.published, "one PUBACK per publish");
        assert_eq!(
            success,
            self.published - self.refused.len(),
            "a success PUBACK only for what was committed ({} refused)",
            self.refused.len()
        );
    }
}

async fn healthz(http: SocketAddr) -> (u16, serde_json::Value) {
    let (code, body) = tokio::task::spawn_blocking(move || http_get(http, "/healthz"))
        .await
        .expect("join");
    (code, serde_json::from_str(&body).expect("healthz is JSON"))
}

/// Connects `client` with a session that outlives its connection by `expiry_s` and
/// disconnects; returns when the session, stored in `data_dir`, expires (ms since the epoch).
async fn park_a_session(
    gateway: &Gateway,
    data_dir: &std::path::Path,
    client: &str,
    expiry_s: u32,
) -> i64 {
    let mut options = roost_tests::device::options(client, gateway.mqtt);
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(expiry_s));
    TestDevice::connect_with(options, client, true)
        .await
        .disconnect()
        .await;
    let table = gateway::store::sessions::SessionTable::open(
        &data_dir.join(gateway::store::sessions::DB_FILE),
    )
    .expect("the sessions file");
    let started = Instant::now();
    loop {
        // At 0 nothing has expired: loading deletes nothing.
        let stored = table.load(0).expect("sessions");
        if let Some(expires_ms) = stored
            .iter()
            .find(|s| s.client_id == client)
            .and_then(|s| s.expires_ms)
        {
            return expires_ms;
        }
        assert!(started.elapsed() < WAIT, "{client}'s session never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (at most [`WAIT`]) until the store has `device` awake (the outbox writes it soon
/// after the device connects).
async fn until_stored_awake(http: SocketAddr, device: &str) {
    let path = format!("/api/devices/{device}");
    let started = Instant::now();
    loop {
        let path = path.clone();
        let (_, body) = tokio::task::spawn_blocking(move || http_get(http, &path))
            .await
            .expect("join");
        if serde_json::from_str::<serde_json::Value>(&body)
            .is_ok_and(|shown| shown["device"]["awake"] == true)
        {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "{device} never stored awake: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn metrics(http: SocketAddr) -> String {
    tokio::task::spawn_blocking(move || http_get(http, "/metrics").1)
        .await
        .expect("join")
}

/// Waits for the retained gateway status to reach `state`; returns that document.
async fn wait_state(watcher: &mut TestDevice, state: &str) -> serde_json::Value {
    let mut seen = Vec::new();
    loop {
        let status = watcher
            .next_json_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("no {state:?} status in time; saw {seen:?}"));
        if status["state"] == state {
            return status;
        }
        seen.push(status["state"].clone());
    }
}

async fn watch_status(gateway: &Gateway, id: &str) -> TestDevice {
    TestDevice::watch(gateway.mqtt, id, STATUS_TOPIC).await
}

/// The degraded state as operators see it: retained status, `/healthz`, `/metrics`.
async fn assert_degraded(watcher: &mut TestDevice, http: SocketAddr) {
    let status = wait_state(watcher, "degraded").await;
    let reason = status["reason"].as_str().expect("degraded has a reason");
    assert!(reason.contains("store"), "{status}");
    let (code, health) = healthz(http).await;
    assert_eq!(code, 503, "{health}");
    assert_eq!(health["store"], "degraded", "{health}");
    assert!(health["reason"].as_str().is_some(), "{health}");
    assert!(
        metrics(http).await.contains("roost_store_degraded 1"),
        "the degraded gauge is set"
    );
}

fn series(len: usize) -> Vec<f64> {
    (0..len).map(|i| i as f64).collect()
}

/// Checks the store after recovery: every accepted request done once, nothing refused stored.
fn assert_store(gateway: &Gateway, device: &str, accepted: &[Vec<u8>], refused: &[Vec<u8>]) {
    let rows = requests_of(gateway, device);
    let by_corr: HashMap<&str, _> = rows.iter().map(|row| (row.corr.as_str(), row)).collect();
    for row in &rows {
        assert!(row.executions <= 1, "run twice: {row:?}");
    }
    for corr in accepted {
        let row = by_corr
            .get(hex(corr).as_str())
            .unwrap_or_else(|| panic!("accepted {} lost", String::from_utf8_lossy(corr)));
        assert_eq!(row.state, "done", "{row:?}");
        assert_eq!(row.executions, 1, "{row:?}");
    }
    for corr in refused {
        assert!(
            !by_corr.contains_key(hex(corr).as_str()),
            "refused {} was stored",
            String::from_utf8_lossy(corr)
        );
    }
}

/// Every final reply of one request is the same bytes (duplicates are redeliveries, not runs).
fn assert_one_result(ledger: &Ledger, corrs: &[Vec<u8>]) {
    for corr in corrs {
        let finals = ledger.finals(corr);
        assert!(!finals.is_empty());
        assert!(
            finals.iter().all(|r| r.payload == finals[0].payload),
            "{} answered with different results",
            String::from_utf8_lossy(corr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_degrades_the_gateway_which_recovers_by_itself_losing_nothing() {
    const DEVICE: &str = "full-1";
    // Room for the database and the gateway's 8 MiB disk reserve.
    let fs = TinyFs::mount(24 << 20);
    let data = fs.path().join("data");
    let mut gateway = Gateway::start_with(&format!(
        "[gateway]\ndata_dir = {data:?}\n[limits]\nmax_pending_per_device = 1000"
    ));
    let http = gateway.http.expect("HTTP enabled");
    let mut watcher = watch_status(&gateway, "ops-full-1").await;
    wait_state(&mut watcher, "online").await;

    let mut ledger = Ledger::default();
    let mut device = TestDevice::connect(gateway.mqtt, DEVICE).await;
    let mut first = Sent::default();
    // A final reply held (never acked) from before the disk fills.
    first
        .request(&mut device, &mut ledger, b"held", &[1.0, 2.0, 3.0])
        .await;
    ledger
        .until_finished(&mut device, &[b"held".to_vec()])
        .await;

    // The disk fills under load: requests of 2,000 values each keep coming until one is
    // refused.
    let filler = fs.fill_leaving(512 << 10);
    let big = series(2000);
    for i in 0..2000 {
        let corr = format!("load-{i}").into_bytes();
        let reply = first.request(&mut device, &mut ledger, &corr, &big).await;
        if reply.reply.status == Status::Unavailable {
            break;
        }
    }
    assert!(!first.refused.is_empty(), "the disk never filled");
    assert_degraded(&mut watcher, http).await;
    // Still refused while degraded, and the process is up.
    for i in 0..3 {
        let corr = format!("while-{i}").into_bytes();
        let reply = first.request(&mut device, &mut ledger, &corr, &big).await;
        assert_eq!(reply.reply.status, Status::Unavailable);
    }
    // Accepted work still finishes on the full disk, in the released reserve: every accepted
    // request gets its final reply, and an ack of one is committed (success PUBACK).
    ledger.until_finished(&mut device, &first.accepted).await;
    let acked = first
        .accepted
        .iter()
        .find(|corr| corr.starts_with(b"load-"))
        .expect("a request was accepted before the disk filled")
        .clone();
    device.ack(&acked).await;
    first.published += 1;
    first.check_pubacks(&device).await;
    let (code, health) = healthz(http).await;
    assert_eq!(code, 503, "still degraded while the disk is full: {health}");
    device.sleep().await;

    // A held reply is still delivered when its device wakes.
    let before = ledger.count(b"held");
    let mut device = TestDevice::connect(gateway.mqtt, DEVICE).await;
    ledger.another(&mut device, b"held", before).await;
    device.disconnect().await;

    // A restart while the disk is still full starts, degraded.
    gateway.kill();
    gateway.restart();
    let http = gateway.http.expect("HTTP enabled");
    let mut watcher = watch_status(&gateway, "ops-full-2").await;
    assert_degraded(&mut watcher, http).await;
    let mut device = TestDevice::connect(gateway.mqtt, DEVICE).await;
    let mut second = Sent::default();
    let reply = second
        .request(&mut device, &mut ledger, b"after-restart", &big)
        .await;
    assert_eq!(reply.reply.status, Status::Unavailable);

    // Space returns: the gateway serves again by itself.
    std::fs::remove_file(&filler).expect("remove the filler");
    wait_state(&mut watcher, "online").await;
    let (code, health) = healthz(http).await;
    assert_eq!(code, 200, "{health}");
    let reply = second
        .request(&mut device, &mut ledger, b"recovered", &[4.0, 5.0])
        .await;
    assert_eq!(reply.reply.status, Status::Accepted);
    let mut accepted = first.accepted.clone();
    accepted.extend(second.accepted.clone());
    ledger.until_finished(&mut device, &accepted).await;
    second.check_pubacks(&device).await;
    device.disconnect().await;

    assert_one_result(&ledger, &accepted);
    let mut refused = first.refused.clone();
    refused.extend(second.refused.clone());
    assert_store(&gateway, DEVICE, &accepted, &refused);
    let rows = requests_of(&gateway, DEVICE);
    let acked_row = rows
        .iter()
        .find(|row| row.corr == hex(&acked))
        .expect("acked request");
    assert_eq!(
        acked_row.delivery.as_deref(),
        Some("acked"),
        "{acked_row:?}"
    );
    let metrics = metrics(http).await;
    assert!(metrics.contains("roost_store_degraded 0"), "{metrics}");
    gateway.kill();
}

/// Thaws files on drop.
struct Thaw(Vec<std::path::PathBuf>);

impl Thaw {
    fn disarm(&mut self) {
        self.0.clear();
    }
}

impl Drop for Thaw {
    fn drop(&mut self) {
        for file in &self.0 {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(file)
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_file_made_read_only_degrades_the_gateway_until_it_is_writable() {
    const DEVICE: &str = "ro-1";
    // On the temp dir's own filesystem: tmpfs ignores the immutable flag.
    let mut gateway = Gateway::start_with("[limits]\nmax_pending_per_device = 1000\n");
    let data = gateway.db_path().parent().expect("data dir").to_path_buf();
    let http = gateway.http.expect("HTTP enabled");
    let mut watcher = watch_status(&gateway, "ops-ro").await;
    wait_state(&mut watcher, "online").await;

    let mut ledger = Ledger::default();
    let mut device = TestDevice::connect(gateway.mqtt, DEVICE).await;
    let mut sent = Sent::default();
    sent.request(&mut device, &mut ledger, b"held", &[1.0, 2.0])
        .await;
    ledger
        .until_finished(&mut device, &[b"held".to_vec()])
        .await;

    // A burst of accepted requests, so some are still queued or running when the file turns
    // read-only: their final replies cannot commit then, and must arrive after it is writable
    // again, without a restart.
    let burst = series(20_000);
    let corrs: Vec<Vec<u8>> = (0..60).map(|i| format!("burst-{i}").into_bytes()).collect();
    for corr in &corrs {
        device.request("stats", &values(&burst), corr, None).await;
        sent.published += 1;
    }
    for corr in &corrs {
        let first = ledger.first(&mut device, corr).await;
        assert_eq!(first.reply.status, Status::Accepted, "{:?}", first.reply);
        sent.accepted.push(corr.clone());
    }
    let files = [data.join("roost.db"), data.join("roost.db-wal")];
    // Thawed again even if an assertion fails (the temp dir could not be removed otherwise).
    let mut thawed = Thaw(files.to_vec());
    for file in &files {
        TinyFs::freeze(file);
    }
    let reply = sent
        .request(&mut device, &mut ledger, b"frozen-1", &[1.0])
        .await;
    assert_eq!(reply.reply.status, Status::Unavailable);
    assert_degraded(&mut watcher, http).await;
    let reply = sent
        .request(&mut device, &mut ledger, b"frozen-2", &[1.0])
        .await;
    assert_eq!(reply.reply.status, Status::Unavailable);
    // Held replies are read, not written: still delivered on the next wake.
    sent.check_pubacks(&device).await;
    device.sleep().await;
    let before = ledger.count(b"held");
    let mut device = TestDevice::connect(gateway.mqtt, DEVICE).await;
    ledger.another(&mut device, b"held", before).await;

    for file in &files {
        TinyFs::thaw(file);
    }
    thawed.disarm();
    wait_state(&mut watcher, "online").await;
    let mut after = Sent::default();
    let reply = after
        .request(&mut device, &mut ledger, b"thawed", &[3.0])
        .await;
    assert_eq!(reply.reply.status, Status::Accepted);
    let mut accepted = sent.accepted.clone();
    accepted.extend(after.accepted.clone());
    ledger.until_finished(&mut device, &accepted).await;
    after.check_pubacks(&device).await;
    device.disconnect().await;
    assert_one_result(&ledger, &accepted);
    assert_store(&gateway, DEVICE, &accepted, &sent.refused);
    gateway.kill();
}

/// PostgreSQL stopped (`pg_ctl stop -m immediate`, like a crash) and started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_outage_degrades_the_gateway_which_reconnects_by_itself() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .expect("join");
    silent_database(
        cluster,
        "pg-out-1",
        PgCluster::stop,
        PgCluster::start_server,
    )
    .await;
}

/// A lasting outage is logged when it starts and then at most every 10 s, not at every
/// operation it fails: each wake of a device while PostgreSQL is down fails to read its held
/// replies, and the log says so once (the store's `degraded` line tells the rest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_logged_once_not_at_every_read_it_fails() {
    const WAKES: usize = 8;
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .expect("join");
    let url = cluster.create_database("roost");
    let gateway = Gateway::start_with(&format!(
        "[store]\nengine = \"postgres\"\nurl = \"{url}\"\n"
    ));
    let mut watcher = watch_status(&gateway, "ops-log-1").await;
    wait_state(&mut watcher, "online").await;
    cluster.stop();
    // One wake at a time, each seen by the outbox before the next: a read of its own each.
    for i in 0..WAKES {
        let id = format!("log-{i}");
        let device = TestDevice::wake(gateway.mqtt, &id).await;
        let woke = format!("device_id={id} event=");
        until_logged(&gateway.log_path(), &woke, Duration::from_secs(30)).await;
        device.sleep().await;
    }
    until_logged(
        &gateway.log_path(),
        "cannot read held replies",
        Duration::from_secs(30),
    )
    .await;
    cluster.start_server();
    wait_state(&mut watcher, "online").await;
    let log = gateway.log();
    assert_eq!(
        log.matches("device woke").count(),
        WAKES,
        "each wake read on its own:\n{log}"
    );
    assert_eq!(log.matches("cannot read held replies").count(), 1, "{log}");
}

/// The database itself fails over: its primary dies mid-load and its synchronous standby is
/// promoted. A gateway whose `store.url` lists both servers with
/// `target_session_attrs=read-write` (libpq's way, which the driver follows) degrades for the
/// moment it takes, then serves on the new primary: nothing lost, no reply twice, no request run
/// twice (a commit whose answer the dying primary never sent is settled on the new one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_the_databases_standby_loses_nothing() {
    let (primary, standby) = tokio::task::spawn_blocking(|| {
        let primary = PgCluster::start();
        primary.create_database("roost");
        let standby = primary.start_standby();
        (primary, standby)
    })
    .await
    .expect("join");
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/roost?target_session_attrs=read-write",
        primary.port, standby.port
    );
    let gateway = Gateway::start_with(&format!(
        "[store]\nengine = \"postgres\"\nurl = \"{url}\"\n"
    ));
    let report = gateway.dir().join("fleet.json");
    let mut fleet = std::process::Command::new(roost_tests::sibling_binary("roost-device-sim"))
        .arg("run")
        .args(["--broker", &gateway.mqtt.to_string(), "--quiet", "--json"])
        .arg(&report)
        .args(["--devices", "10", "--inflight", "2", "--interval", "10ms"])
        .args(["--duration", "8s", "--grace", "30s", "--seed", "7"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("device-sim runs");
    let admitted = |cluster: &PgCluster| -> usize {
        cluster
            .query("roost", "SELECT COUNT(*) FROM requests")
            .parse()
            .expect("count")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while admitted(&primary) < 200 {
        assert!(Instant::now() < deadline, "the load never got going");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    primary.stop();
    standby.promote();
    let promoted_ms = gateway::store::now_ms();
    let fleet = tokio::task::spawn_blocking(move || fleet.wait().expect("device-sim ends"))
        .await
        .expect("join");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("JSON");
    assert!(fleet.success(), "device-sim failed: {json}");
    assert_eq!(json["lost"], 0, "{json}");
    assert_eq!(json["mismatched"], 0, "{json}");
    assert_eq!(json["duplicates"], 0, "{json}");
    let after = standby.query(
        "roost",
        &format!("SELECT COUNT(*) FROM requests WHERE received_ms > {promoted_ms}"),
    );
    assert!(
        after.parse::<usize>().expect("count") >= 100,
        "served on the new primary: {after} requests after the failover"
    );
    assert_eq!(
        standby.query(
            "roost",
            "SELECT COUNT(*) FROM requests WHERE executions > 1"
        ),
        "0"
    );
    assert_eq!(
        standby.query(
            "roost",
            "SELECT COUNT(*) FROM requests WHERE state = 'queued'"
        ),
        "0"
    );
}

/// The database's host vanishes from the network (its link cut: no answer, no reset, no ICMP
/// error), as when it crashes or a cable is pulled. Without bounds on the connections a commit
/// waits for its answer as long as the kernel retransmits (about 15 minutes); with them the
/// gateway notices within `tcp_user_timeout` (10 s by default), answers `503` and degrades, and
/// serves again by itself once the link is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_cut_off_the_network_degrades_the_gateway_which_reconnects_by_itself() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start_behind_link)
        .await
        .expect("join");
    silent_database(cluster, "pg-cut-1", PgCluster::cut, PgCluster::mend).await;
}

/// The database server freezes (SIGSTOP): its host's kernel still acknowledges every byte, so
/// no TCP timeout fires. The committers' and the heartbeat's own bound on an answer (10 s)
/// notices it: `503`, degraded, and service again by itself once the server goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_database_degrades_the_gateway_which_serves_again_when_it_thaws() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .expect("join");
    silent_database(cluster, "pg-frozen-1", PgCluster::freeze, PgCluster::thaw).await;
}

/// A database that stops answering between `silence` and `speak`: the request sent meanwhile
/// gets `503` within the device's wait (20 s), the gateway says degraded, the operator CLI fails
/// with the reason, and once the database answers again the gateway serves by itself (its
/// heartbeat's failure said once); every accepted request done once, nothing refused stored.
async fn silent_database(
    cluster: PgCluster,
    device_id: &str,
    silence: fn(&PgCluster),
    speak: fn(&PgCluster),
) {
    let url = cluster.create_database("roost");
    let mut gateway = Gateway::start_with(&format!(
        "[store]\nengine = \"postgres\"\nurl = \"{url}\"\n"
    ));
    let http = gateway.http.expect("HTTP enabled");
    let mut watcher = watch_status(&gateway, &format!("ops-{device_id}")).await;
    wait_state(&mut watcher, "online").await;

    let mut ledger = Ledger::default();
    let mut device = TestDevice::connect(gateway.mqtt, device_id).await;
    let mut sent = Sent::default();
    sent.request(&mut device, &mut ledger, b"before", &[1.0, 2.0])
        .await;
    ledger
        .until_finished(&mut device, &[b"before".to_vec()])
        .await;

    silence(&cluster);
    let reply = sent
        .request(&mut device, &mut ledger, b"silent-1", &[1.0])
        .await;
    assert_eq!(reply.reply.status, Status::Unavailable);
    assert_degraded(&mut watcher, http).await;
    let reply = sent
        .request(&mut device, &mut ledger, b"silent-2", &[1.0])
        .await;
    assert_eq!(reply.reply.status, Status::Unavailable);
    // The operator CLI fails with the reason instead of hanging.
    let config = gateway.config_path();
    let listed = tokio::task::spawn_blocking(move || {
        std::process::Command::new("timeout")
            .arg("60")
            .arg(Gateway::binary())
            .args(["requests", "list", "--config"])
            .arg(config)
            .output()
            .expect("run gateway")
    })
    .await
    .expect("join");
    let said = String::from_utf8_lossy(&listed.stderr);
    assert_ne!(listed.status.code(), Some(124), "the CLI hung");
    assert!(!listed.status.success(), "{said}");
    assert!(said.contains("store"), "{said}");

    speak(&cluster);
    wait_state(&mut watcher, "online").await;
    // The outage is said once, not at every beat it lasted (beats are 500 ms apart).
    let renewed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let log = gateway.log();
            if log.contains("heartbeat renewed") {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the heartbeat is renewed after the outage");
    assert!(renewed.contains("failed_beats"), "{renewed}");
    assert_eq!(renewed.matches("heartbeat failed").count(), 1, "{renewed}");
    let reply = sent
        .request(&mut device, &mut ledger, b"back", &[3.0])
        .await;
    assert_eq!(reply.reply.status, Status::Accepted);
    let accepted = sent.accepted.clone();
    ledger.until_finished(&mut device, &accepted).await;
    sent.check_pubacks(&device).await;
    device.disconnect().await;
    assert_one_result(&ledger, &accepted);
    assert_store(&gateway, device_id, &accepted, &sent.refused);
    assert_eq!(
        cluster.query(
            "roost",
            "SELECT count(*) FROM requests WHERE executions > 1"
        ),
        "0"
    );
    gateway.kill();
}

/// A throwaway PostgreSQL cluster with database `roost`, and a gateway on it whose requests'
/// deadline (5 min) outlasts a frozen database, a stop and a restart (30 s by default: they
/// would end as `504`).
async fn patient_gateway_on_postgres() -> (PgCluster, Gateway) {
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .expect("join");
    let url = cluster.create_database("roost");
    let gateway = Gateway::start_with(&format!(
        "[store]\nengine = \"postgres\"\nurl = \"{url}\"\n\
         [limits]\nop_timeout_ms = 300000\n"
    ));
    (cluster, gateway)
}

/// Sends `device`'s request `corr` with commits of new requests made to sleep 2 s in database
/// `roost`, and freezes the server (SIGSTOP) once that request's `COMMIT` sleeps: its answer
/// will not come until [`PgCluster::thaw`].
async fn freeze_mid_commit(cluster: &PgCluster, device: &TestDevice, corr: &[u8]) {
    cluster.slow_commits("roost", 2);
    device
        .request("stats", &values(&[1.0, 2.0]), corr, None)
        .await;
    cluster.until_a_commit_sleeps("roost").await;
    cluster.freeze();
}

/// A stop (SIGTERM) while a request's `COMMIT` is unanswered because the database froze in the
/// middle of it. Its writers wait until the database says whether it committed, but the stop
/// does not wait for them: the gateway exits 0 within the harness's bound, leaving its lease to
/// run out. Once the database goes on, the commit lands, and the next start runs the request:
/// nothing lost, nothing run twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_the_database_froze_mid_commit_still_exits_and_loses_nothing() {
    const DEVICE: &str = "pg-stop-1";
    let (cluster, mut gateway) = patient_gateway_on_postgres().await;
    let device = TestDevice::connect(gateway.mqtt, DEVICE).await;
    freeze_mid_commit(&cluster, &device, b"mid-commit").await;
    // The commit's answer is given up on after 10 s; asking whether it landed then fails too.
    until_logged(&gateway.log_path(), "a commit's answer was lost", 2 * WAIT).await;
    let status = tokio::task::spawn_blocking(move || {
        let status = gateway.terminate();
        (gateway, status)
    });
    let (mut gateway, status) = status.await.expect("join");
    assert!(status.success(), "{status:?}\n{}", gateway.log());
    cluster.thaw();
    device.disconnect().await;

    gateway.restart();
    let rows = tokio::time::timeout(WAIT, async {
        loop {
            let rows = requests_of(&gateway, DEVICE);
            if rows.iter().any(|row| row.state == "done") {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the committed request runs after the restart");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].executions, 1, "{rows:?}");
    gateway.kill();
}

/// The database freezes while intake's `COMMIT` is in flight, so its answer is lost. That
/// request may or may not be stored: it is neither acknowledged nor answered `503` until the
/// database says. But the requests behind it are not held with it: another device's request
/// sent meanwhile is answered `503` while the database is silent. Once it thaws, the first
/// request is answered as its commit ended (`202` and run once if it committed, `503` and no
/// row if not), and its PUBACK was a refusal either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_intake_commit_does_not_hold_the_requests_behind_it() {
    const FIRST: &str = "pg-lost-1";
    let (cluster, mut gateway) = patient_gateway_on_postgres().await;
    let mut ledger = Ledger::default();
    let mut first = TestDevice::connect(gateway.mqtt, FIRST).await;
    let mut behind = TestDevice::connect(gateway.mqtt, "pg-lost-2").await;
    freeze_mid_commit(&cluster, &first, b"lost").await;
    behind
        .request("stats", &values(&[3.0]), b"behind", None)
        .await;
    // The lost answer is given up on after 10 s, and this request's own batch may wait 10 s
    // more for the silent database.
    let reply = behind.next_within(3 * WAIT).await.unwrap_or_else(|| {
        panic!(
            "the request behind the lost commit was held\n{}",
            gateway.log()
        )
    });
    assert_eq!(reply.corr.as_deref(), Some(&b"behind"[..]));
    assert_eq!(reply.reply.status, Status::Unavailable, "{:?}", reply.reply);
    assert!(
        ledger.count(b"lost") == 0 && first.next_within(Duration::ZERO).await.is_none(),
        "the request whose commit is unsettled is not answered yet"
    );
    cluster.thaw();

    let answer = ledger.first(&mut first, b"lost").await;
    let rows = requests_of(&gateway, FIRST);
    match answer.reply.status {
        Status::Accepted => {
            ledger.until_finished(&mut first, &[b"lost".to_vec()]).await;
            let rows = requests_of(&gateway, FIRST);
            assert_eq!(rows.len(), 1, "{rows:?}");
            assert_eq!(rows[0].executions, 1, "{rows:?}");
        }
        Status::Unavailable => assert!(rows.is_empty(), "a 503 stored nothing: {rows:?}"),
        other => panic!("unexpected answer {other:?}: {:?}", answer.reply),
    }
    assert_eq!(
        *first.pubacks.lock().expect("puback log"),
        vec![false],
        "the unsettled publish was refused"
    );
    assert_eq!(*behind.pubacks.lock().expect("puback log"), vec![false]);
    first.disconnect().await;
    behind.disconnect().await;
    gateway.kill();
}

/// A lost `COMMIT` answer whose transaction did not commit (the server stopped while the commit
/// was still under way) is settled as not committed: `503`, nothing stored. Saying it committed
/// would `202` a request that is not stored: a loss. (It is settled by the transaction's mark,
/// which a transaction that never committed does not leave.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_commit_that_did_not_land_is_answered_503_and_stores_nothing() {
    const DEVICE: &str = "pg-aborted-1";
    let (cluster, gateway) = patient_gateway_on_postgres().await;
    let mut ledger = Ledger::default();
    let mut device = TestDevice::connect(gateway.mqtt, DEVICE).await;
    cluster.slow_commits("roost", 2);
    device
        .request("stats", &values(&[1.0, 2.0]), b"aborted", None)
        .await;
    cluster.until_a_commit_sleeps("roost").await;
    // The commit sleeps in its trigger, before its commit record: stopped now, it never lands.
    cluster.stop();
    cluster.start_server();
    let answer = ledger.first(&mut device, b"aborted").await;
    assert_eq!(
        answer.reply.status,
        Status::Unavailable,
        "{:?}\n{}",
        answer.reply,
        gateway.log()
    );
    let rows = requests_of(&gateway, DEVICE);
    assert!(rows.is_empty(), "a 503 stored nothing: {rows:?}");
    device.disconnect().await;
}

/// A stop (SIGTERM) while intake's batch is refused and waits for the database to say whether
/// its lost `COMMIT` landed: the stop gives it a moment, so once the database answers, the
/// device gets its `202` (the row exists) or `503` (it does not) before the gateway exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_answers_the_requests_whose_commit_the_database_settles_meanwhile() {
    const DEVICE: &str = "pg-stop-2";
    let (cluster, mut gateway) = patient_gateway_on_postgres().await;
    let mut ledger = Ledger::default();
    let mut device = TestDevice::connect(gateway.mqtt, DEVICE).await;
    freeze_mid_commit(&cluster, &device, b"settled").await;
    let log = gateway.log_path();
    // The commit's answer is given up on after 10 s: the batch is refused, unsettled.
    until_logged(&log, "a commit's answer was lost", 2 * WAIT).await;
    let stopped = tokio::task::spawn_blocking(move || {
        let status = gateway.terminate();
        (gateway, status)
    });
    until_logged(&log, "draining: waiting for the database", WAIT).await;
    cluster.thaw();
    while ledger.count(b"settled") == 0 {
        let Some(received) = device.next_within(WAIT).await else {
            panic!(
                "the refused request was not answered before the gateway exited:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        };
        ledger.record(received);
    }
    let answer = ledger.seen[&b"settled"[..]][0].clone();
    let (gateway, status) = stopped.await.expect("join");
    assert!(status.success(), "{status:?}\n{}", gateway.log());
    let rows = requests_of(&gateway, DEVICE);
    match answer.reply.status {
        Status::Accepted => assert_eq!(rows.len(), 1, "a 202 stored the request: {rows:?}"),
        Status::Unavailable => assert!(rows.is_empty(), "a 503 stored nothing: {rows:?}"),
        other => panic!("unexpected answer {other:?}: {:?}", answer.reply),
    }
    assert_eq!(*device.pubacks.lock().expect("puback log"), vec![false]);
    device.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_a_full_disk_starts_degraded_and_serves_once_space_returns() {
    const DEVICE: &str = "full-2";
    let fs = TinyFs::mount(24 << 20);
    let data = fs.path().join("data");
    let mut gateway = Gateway::start_with(&format!("[gateway]\ndata_dir = {data:?}\n"));
    let mut ledger = Ledger::default();
    let mut device = TestDevice::connect(gateway.mqtt, DEVICE).await;
    let mut sent = Sent::default();
    sent.request(&mut device, &mut ledger, b"first", &[1.0])
        .await;
    ledger
        .until_finished(&mut device, &[b"first".to_vec()])
        .await;
    device.ack(b"first").await;
    // The start's own writes, which the full disk refuses: it clears the awake flags the last
    // run left (this device stays connected through the kill, stored awake), and it deletes
    // device sessions that expired meanwhile (another device's, of 1 s).
    until_stored_awake(gateway.http.expect("HTTP enabled"), DEVICE).await;
    let expires_ms = park_a_session(&gateway, &data, "full-s", 1).await;

    // Full, with nothing queued or held: nothing but the start itself can notice.
    let filler = fs.fill();
    gateway.kill();
    drop(device);
    // The time passing (not a wait for an event): the session expires while the gateway is down.
    let left = expires_ms.saturating_sub(gateway::store::now_ms()) + 50;
    tokio::time::sleep(Duration::from_millis(left as u64)).await;
    gateway.restart();
    let http = gateway.http.expect("HTTP enabled");
    let mut watcher = watch_status(&gateway, "ops-full-3").await;
    assert_degraded(&mut watcher, http).await;
    let mut device = TestDevice::connect(gateway.mqtt, DEVICE).await;
    let mut after = Sent::default();
    let reply = after
        .request(&mut device, &mut ledger, b"full", &[2.0])
        .await;
    assert_eq!(reply.reply.status, Status::Unavailable);

    std::fs::remove_file(&filler).expect("remove the filler");
    wait_state(&mut watcher, "online").await;
    let reply = after
        .request(&mut device, &mut ledger, b"space", &[3.0])
        .await;
    assert_eq!(reply.reply.status, Status::Accepted);
    ledger.until_finished(&mut device, &after.accepted).await;
    after.check_pubacks(&device).await;
    device.disconnect().await;
    let mut accepted = sent.accepted.clone();
    accepted.extend(after.accepted.clone());
    assert_store(&gateway, DEVICE, &accepted, &after.refused);
    gateway.kill();
}

/// A gateway started while its PostgreSQL is down waits for the database (saying so) instead of
/// exiting, and serves once the server is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_before_its_database_waits_for_it() {
    let cluster = PgCluster::start();
    let url = cluster.create_database("roost");
    cluster.stop();
    serves_once_its_database_does(&url, || cluster.start_server()).await;
}

/// A gateway started on a database that takes no writes (a read-only standby, as a failover can
/// leave the URL pointing at for a while) waits for it the same way instead of exiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_on_a_read_only_database_waits_for_it() {
    let cluster = PgCluster::start();
    let url = cluster.create_database("roost");
    let read_only = |on: &str| {
        let sql = format!("ALTER DATABASE roost SET default_transaction_read_only = {on}");
        cluster.query("postgres", &sql);
    };
    read_only("on");
    serves_once_its_database_does(&url, || read_only("off")).await;
}

/// Starts a gateway on the database at `url`, which cannot take its writes yet; once the
/// gateway said it waits, `serve` makes the database serve, and the gateway must then take a
/// request.
async fn serves_once_its_database_does(url: &str, serve: impl FnOnce()) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"gw-wait\"\ndata_dir = {:?}\n[broker]\nlisten = \"127.0.0.1:0\"\n\
             [http]\nlisten = \"\"\n[store]\nengine = \"postgres\"\nurl = \"{url}\"\n",
            dir.path().join("data")
        ),
    )
    .expect("config");
    let log_path = dir.path().join("gateway.log");
    let mut child = Command::new(Gateway::binary())
        .args(["run", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .env("RUST_LOG", gateway::logging::DEFAULT_FILTER)
        .spawn()
        .expect("spawn gateway");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log().contains("waiting for the store") {
        assert!(
            child.try_wait().expect("status").is_none(),
            "the gateway exited instead of waiting for its database:\n{}",
            log()
        );
        assert!(Instant::now() < deadline, "no wait was said:\n{}", log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    serve();
    let stdout = child.stdout.take().expect("stdout");
    let listening = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| {
                line.strip_prefix("roost gateway listening ")
                    .and_then(|rest| {
                        rest.split_whitespace()
                            .find_map(|p| p.strip_prefix("mqtt="))
                    })
                    .map(|addr| addr.parse::<SocketAddr>().expect("mqtt addr"))
            })
    });
    let mqtt = tokio::time::timeout(Duration::from_secs(60), listening)
        .await
        .expect("the gateway starts once the database is up")
        .expect("thread")
        .unwrap_or_else(|| panic!("the gateway ended:\n{}", log()));
    let mut device = TestDevice::connect(mqtt, "wait-1").await;
    let (mut ledger, mut sent) = (Ledger::default(), Sent::default());
    let reply = sent
        .request(&mut device, &mut ledger, b"after", &[1.0, 2.0])
        .await;
    assert_eq!(reply.reply.status, Status::Accepted);
    ledger
        .until_finished(&mut device, &[b"after".to_vec()])
        .await;
    device.disconnect().await;
    child.kill().expect("kill");
    child.wait().expect("reap");
}
