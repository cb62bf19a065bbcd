//! Several gateways on one PostgreSQL act as one gateway: three gateway processes in external
//! mode behind Mosquitto (a shared subscription hands each message to one of them) sharing one
//! database (a throwaway cluster). Duplicates, `status`, acks, presence and telemetry are
//! answered the same whichever gateway takes them; a killed gateway's held replies and queued
//! work are delivered and finished by the others.

use std::collections::HashSet;
use std::net::SocketAddr;

use gateway::wire::Status;
use roost_tests::device::{values, TestDevice};
use roost_tests::postgres::PgCluster;
use roost_tests::workload::{slow_infer, slow_model};
use roost_tests::{http_get, Gateway, Mosquitto};

/// One gateway of the cluster; `store` adds to its `[store]` table, `extra` follows `[limits]`.
fn member(mosquitto: &Mosquitto, url: &str, id: &str, store: &str, extra: &str) -> Gateway {
    Gateway::start_with(&format!(
        "[gateway]\nid = \"{id}\"\nworkers = 1\n\
         [broker]\nmode = \"external\"\nurl = \"mqtt://{}\"\nshare_group = \"roost\"\n\
         [store]\nengine = \"postgres\"\nurl = \"{url}\"\n{store}\
         [limits]\nmax_pending_per_device = 1000\nmax_payload_bytes = 4194304\n{extra}",
        mosquitto.addr
    ))
}

struct Rig {
    mosquitto: Mosquitto,
    postgres: PgCluster,
    gateways: Vec<Gateway>,
}

async fn rig(extra: &str) -> Rig {
    rig_with_store("lease_ms = 1000\n", extra).await
}

async fn rig_with_store(store: &str, extra: &str) -> Rig {
    let (postgres, url) = tokio::task::spawn_blocking(|| {
        let cluster = PgCluster::start();
        let url = cluster.create_database("cluster");
        (cluster, url)
    })
    .await
    .expect("postgres");
    let mosquitto = Mosquitto::start();
    let gateways = ["gw-1", "gw-2", "gw-3"]
        .iter()
        .map(|id| member(&mosquitto, &url, id, store, extra))
        .collect();
    Rig {
        mosquitto,
        postgres,
        gateways,
    }
}

/// Sends `n` runs of the slow model over `rows` rows from `device`, correlated `{prefix}{i}`.
async fn send_slow(device: &TestDevice, prefix: &str, n: usize, rows: usize) {
    let request = slow_infer(rows);
    for i in 0..n {
        device
            .request("infer", &request, format!("{prefix}{i}").as_bytes(), None)
            .await;
    }
}

impl Rig {
    fn sql(&self, query: &str) -> String {
        self.postgres.query("cluster", query)
    }

    /// Waits (bounded) until the cluster has admitted `n` requests.
    fn admitted(&self, n: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let count: usize = self
                .sql("SELECT COUNT(*) FROM requests")
                .parse()
                .expect("count");
            if count >= n {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "only {count} of {n} requests admitted"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// `roost_intake_total{outcome=...}` of one gateway.
async fn intake_count(http: SocketAddr, outcome: &str) -> u64 {
    counter(http, "roost_intake_total", outcome).await
}

/// Counter `name{outcome=...}` of one gateway.
async fn counter(http: SocketAddr, name: &str, outcome: &str) -> u64 {
    let (_, body) = tokio::task::spawn_blocking(move || http_get(http, "/metrics"))
        .await
        .expect("join");
    let prefix = format!("{name}{{outcome=\"{outcome}\"}} ");
    body.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Guarantee 2 across gateways: retries of one request, spread by the broker over all three
/// gateways, get the original's request id and its final reply byte for byte; the op runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_through_another_gateway_is_answered_as_the_original() {
    let rig = rig("").await;
    let mut device = TestDevice::connect(rig.mosquitto.addr, "dup-1").await;
    device
        .request("stats", &values(&[1.0, 2.0, 4.0]), b"once", None)
        .await;
    let accepted = device.reply_for(b"once").await;
    assert_eq!(accepted.reply.status, Status::Accepted);
    let id = accepted.reply.request_id.expect("request_id");
    let first = loop {
        let got = device.reply_for(b"once").await;
        if got.reply.status == Status::Ok {
            break got;
        }
    };
    const RETRIES: usize = 9;
    for _ in 0..RETRIES {
        device
            .request("stats", &values(&[9.0]), b"once", None)
            .await;
    }
    for _ in 0..RETRIES {
        let again = device.reply_for(b"once").await;
        assert_eq!(
            again.reply.request_id,
            Some(id),
            "the original's request id"
        );
        assert_eq!(
            again.payload, first.payload,
            "the same final reply, byte for byte"
        );
    }
    let mut answered_by = 0;
    for gateway in &rig.gateways {
        if intake_count(gateway.http.expect("http"), "duplicate").await > 0 {
            answered_by += 1;
        }
    }
    assert!(
        answered_by >= 2,
        "duplicates reached more than one gateway ({answered_by})"
    );
    assert_eq!(
        rig.sql("SELECT COUNT(*), MAX(executions) FROM requests"),
        "1|1"
    );
}

/// `status` answered by whichever gateway takes it; telemetry stored once, not once per gateway,
/// and a copy of a reading (a QoS 1 publish sent again), which the broker hands to another
/// gateway, is not stored again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_telemetry_are_handled_once_by_any_gateway() {
    let rig = rig("").await;
    let mut device = TestDevice::connect(rig.mosquitto.addr, "tel-1").await;
    const READINGS: u64 = 30;
    for i in 0..READINGS {
        let reading = ciborium::Value::Map(vec![
            (
                ciborium::Value::Text("ts".into()),
                ciborium::Value::Integer((1_000 + i).into()),
            ),
            (
                ciborium::Value::Text("t".into()),
                ciborium::Value::Float(i as f64),
            ),
        ]);
        let payload = gateway::wire::envelope::encode_value(&reading);
        for _copy in 0..2 {
            device
                .publish_raw("devices/tel-1/telemetry", payload.clone(), None)
                .await;
        }
    }
    device.request("stats", &values(&[1.0]), b"s", None).await;
    while device.reply_for(b"s").await.reply.status != Status::Ok {}
    let of = ciborium::Value::Map(vec![(
        ciborium::Value::Text("of".into()),
        ciborium::Value::Bytes(b"s".to_vec()),
    )]);
    for n in 0..6u8 {
        let corr = [b'q', n];
        device.request("status", &of, &corr, None).await;
        let got = device.reply_for(&corr).await;
        assert_eq!(
            got.reply.status,
            Status::Ok,
            "status answered: {:?}",
            got.reply
        );
    }
    // Telemetry goes through the same ordered inbox as the requests after it, per gateway; wait
    // until the gateways have committed every publish, copies included.
    let gateways = &rig.gateways;
    let readings = |outcome: &'static str| async move {
        let mut sum = 0;
        for gateway in gateways {
            let http = gateway.http.expect("http");
            sum += counter(http, "roost_telemetry_readings_total", outcome).await;
        }
        sum
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (stored, copies) = loop {
        let (stored, copies) = (readings("stored").await, readings("copy").await);
        if stored + copies >= 2 * READINGS {
            break (stored, copies);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "readings committed: {stored} stored, {copies} copies"
        );
        tokio::task::yield_now().await;
    };
    assert_eq!(
        (stored, copies),
        (READINGS, READINGS),
        "each copy seen as one"
    );
    assert_eq!(
        rig.sql("SELECT COUNT(*) FROM telemetry"),
        READINGS.to_string(),
        "each reading stored once"
    );
}

/// A device's retained status is the cluster's: its requests, spread by the broker over the
/// three gateways, are all counted in `pending` whichever gateway publishes the status (each
/// used to count only its own share).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_devices_status_counts_the_whole_clusters_requests() {
    let rig = rig(&slow_model()).await;
    let mut watcher =
        TestDevice::watch(rig.mosquitto.addr, "st-watch", "devices/st-1/status").await;
    let device = TestDevice::connect(rig.mosquitto.addr, "st-1").await;
    // Six runs of the slow model (300 chained 128 x 128 layers over 2,048 rows: seconds each
    // here), two per gateway behind one worker each: more than one gateway's share stays
    // pending past the first status publish of every gateway (one a second).
    const REQUESTS: usize = 6;
    send_slow(&device, "s", REQUESTS, 2048).await;
    rig.admitted(REQUESTS);
    let share: usize = rig
        .sql("SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM requests GROUP BY owner) s")
        .parse()
        .expect("count");
    assert!(
        share < REQUESTS,
        "the broker spread the requests over the gateways"
    );
    let mut most = 0;
    while most <= share {
        let Some(status) = watcher
            .next_json_within(std::time::Duration::from_secs(10))
            .await
        else {
            panic!("no status counted more than one gateway's share ({share}) of the requests");
        };
        most = most.max(status["pending"].as_u64().expect("pending") as usize);
    }
    assert!(most <= REQUESTS, "pending {most} of {REQUESTS} requests");
}

/// A device that said `asleep` is asleep in its status whichever gateway publishes it: the
/// gateway that runs its request saw only the request, whose listen window (60 s here) is still
/// open when the reply is ready (and held); the `asleep` went through the broker to whichever
/// gateway the share group picked. (Before, each gateway published its own view: the one
/// publishing after the reply said `awake`, seen failing three times in three.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_said_asleep_is_asleep_whichever_gateway_publishes() {
    let rig = rig(&format!("listen_window_ms = 60000\n{}", slow_model())).await;
    let mut watcher =
        TestDevice::watch(rig.mosquitto.addr, "aw-watch", "devices/aw-1/status").await;
    let device = TestDevice::connect(rig.mosquitto.addr, "aw-1").await;
    // The slow model over 4,096 rows: seconds, long past every gateway's next status write
    // (checked below, once the asleep is written).
    let request = slow_infer(4096);
    // Its `awake`, then the request, then its `asleep`: Mosquitto hands each shared
    // subscription's messages round to its subscribers in turn, so the `asleep` (the second
    // presence) goes to another gateway than the request (the first request).
    device
        .publish_raw(
            "devices/aw-1/presence",
            roost_tests::device::presence(true),
            None,
        )
        .await;
    device.request("infer", &request, b"s", None).await;
    rig.admitted(1);
    device
        .publish_raw(
            "devices/aw-1/presence",
            roost_tests::device::presence(false),
            None,
        )
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while rig.sql("SELECT COUNT(*) FROM devices WHERE id = 'aw-1' AND asleep_ms IS NOT NULL") != "1"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the asleep was never written"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let queued: usize = rig
        .sql("SELECT COUNT(*) FROM requests WHERE corr = 's'::bytea AND state = 'queued'")
        .parse()
        .expect("count");
    assert_eq!(
        queued, 1,
        "the request still runs once the asleep is written"
    );
    // The reply is held for the sleeping device; the first status written after it (the only
    // ones counting it) says asleep.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while rig.sql("SELECT COUNT(*) FROM requests WHERE corr = 's'::bytea AND delivery = 'held'")
        != "1"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never finished"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = loop {
        let Some(status) = watcher
            .next_json_within(std::time::Duration::from_secs(10))
            .await
        else {
            panic!("no status after the reply");
        };
        if status["held"].as_u64() == Some(1) {
            break status;
        }
    };
    assert_eq!(status["state"], "asleep", "{status}");
}

/// A device's `awake` reaches one gateway while that gateway's intake is busy (a commit that
/// takes seconds), and its `asleep` reaches another, which writes it at once. Each sighting
/// counts from when its gateway read it, not from when it got to it: the device is asleep in
/// the cluster's view. (Stamped when the busy gateway got to it, the `awake` looked newer than
/// the `asleep` and woke the device again for its whole listen window: the race behind a rare
/// failure of the test above.) Only the device's row is stamped so: each gateway's own view of
/// the wake, which decides publishing or holding, still counts from when it got to the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighting_counts_from_when_it_was_read_not_when_a_busy_gateway_got_to_it() {
    let rig = rig("listen_window_ms = 60000\n").await;
    let publish = |device: &str, topic: String, payload: Vec<u8>| {
        let (addr, device) = (rig.mosquitto.addr, device.to_owned());
        async move {
            let device = TestDevice::connect(addr, &device).await;
            device.publish_raw(&topic, payload, None).await;
            device.disconnect().await;
        }
    };
    // Which gateway the broker hands each presence to: three probes, each waited for.
    let mut presence_turns = Vec::new();
    for probe in ["p-1", "p-2", "p-3"] {
        publish(
            probe,
            format!("devices/{probe}/presence"),
            roost_tests::device::presence(true),
        )
        .await;
        presence_turns.push(
            until_sql(
                &rig,
                &format!("SELECT seen_by FROM devices WHERE id = '{probe}'"),
            )
            .await,
        );
    }
    // The next presence (the device's `awake`) goes to the first probe's gateway: make that one
    // busy. Which gateway the requests go to, in turn: three probes.
    let busy = presence_turns[0].clone();
    let mut request_turns = Vec::new();
    for (n, probe) in ["r-1", "r-2", "r-3"].iter().enumerate() {
        let device = TestDevice::connect(rig.mosquitto.addr, probe).await;
        device.request("stats", &values(&[1.0]), b"r", None).await;
        rig.admitted(n + 1);
        request_turns.push(rig.sql(&format!(
            "SELECT owner FROM requests WHERE device = '{probe}'"
        )));
        device.disconnect().await;
    }
    let fillers = request_turns
        .iter()
        .position(|g| *g == busy)
        .expect("busy takes requests");
    for n in 0..fillers {
        let probe = format!("f-{n}");
        let device = TestDevice::connect(rig.mosquitto.addr, &probe).await;
        device.request("stats", &values(&[1.0]), b"f", None).await;
        rig.admitted(4 + n);
        device.disconnect().await;
    }
    rig.postgres.slow_commits("cluster", 3);
    let slow = TestDevice::connect(rig.mosquitto.addr, "slow-1").await;
    slow.request("stats", &values(&[1.0]), b"s", None).await;
    rig.postgres.until_a_commit_sleeps("cluster").await;
    assert_eq!(
        rig.sql("SELECT owner FROM requests WHERE device = 'slow-1'"),
        "",
        "not committed yet"
    );
    // Its `awake` waits behind the sleeping commit; its `asleep`, half a second later (the
    // device's own pace: what two gateways read within a few milliseconds of each other has no
    // order to keep), goes to another gateway.
    publish(
        "aw-2",
        "devices/aw-2/presence".into(),
        roost_tests::device::presence(true),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    publish(
        "aw-2",
        "devices/aw-2/presence".into(),
        roost_tests::device::presence(false),
    )
    .await;
    until_sql(
        &rig,
        "SELECT asleep_ms IS NOT NULL FROM devices WHERE id = 'aw-2'",
    )
    .await;
    assert_eq!(
        rig.postgres.commits_sleeping("cluster"),
        "1",
        "the busy gateway is still busy"
    );
    // Once the busy gateway got to the `awake` and wrote what it saw of the device:
    let written = until_sql(
        &rig,
        &format!("SELECT seen_by = '{busy}' FROM devices WHERE id = 'aw-2' AND seen_by = '{busy}'"),
    )
    .await;
    assert_eq!(written, "t");
    assert_eq!(
        rig.sql("SELECT awake FROM devices WHERE id = 'aw-2'"),
        "f",
        "the asleep is newer than the awake: {:?} {:?} {} {}",
        presence_turns,
        request_turns,
        busy,
        rig.sql("SELECT * FROM devices WHERE id = 'aw-2'")
    );
    slow.disconnect().await;
}

/// What `query` answers once it answers anything (a row), waiting at most 30 s.
async fn until_sql(rig: &Rig, query: &str) -> String {
    let started = std::time::Instant::now();
    loop {
        let answer = rig.sql(query);
        if !answer.is_empty() {
            return answer;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "no answer to {query}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A gateway dies with queued work, and the answer to the `COMMIT` of a survivor's takeover is
/// lost (the server freezes while that commit runs). The survivor asks the database whether it
/// took the work before going on, so whichever way the commit ended, the work is run by a live
/// gateway, once: nothing stays owned by a gateway that does not know it has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_whose_commit_answer_is_lost_still_runs_the_work_once() {
    // Deadlines far off: the takeover's slow commits and the frozen server take most of the
    // default 30 s, and on a loaded machine the last requests expired before they ran (their
    // state `expired`, not `done`), which this test is not about.
    let mut rig = rig(&format!("op_timeout_ms = 600000\n{}", slow_model())).await;
    let device = TestDevice::connect(rig.mosquitto.addr, "tk-1").await;
    const HEAVY: usize = 12;
    send_slow(&device, "t", HEAVY, 256).await;
    rig.admitted(HEAVY);
    let ids = ["gw-1", "gw-2", "gw-3"];
    let queued_at = |id: &str| -> usize {
        rig.sql(&format!(
            "SELECT COUNT(*) FROM requests WHERE owner = '{id}' AND state = 'queued'"
        ))
        .parse()
        .expect("count")
    };
    let victim = ids
        .iter()
        .position(|id| queued_at(id) >= 2)
        .expect("a gateway has work waiting (the test needs slower requests)");
    // Only a change of owner (a takeover) sleeps in its commit, a second per row.
    rig.postgres
        .slow_commits_of("cluster", "UPDATE OF owner ON requests", 1);
    rig.gateways[victim].kill();
    rig.postgres.until_a_commit_sleeps("cluster").await;
    rig.postgres.freeze();
    let survivors: Vec<usize> = (0..ids.len()).filter(|i| *i != victim).collect();
    let logged = |text: &str| {
        survivors
            .iter()
            .any(|i| rig.gateways[*i].log().contains(text))
    };
    // The takeover's `COMMIT` answer is given up on after 10 s: settled then (or, were it not,
    // the takeover would fail).
    let started = std::time::Instant::now();
    while !logged("a commit's answer was lost") && !logged("takeover failed") {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "no commit answer was given up on"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    rig.postgres.thaw();
    rig.sql("DROP TRIGGER slow_commit ON requests");

    let started = std::time::Instant::now();
    while rig.sql("SELECT COUNT(*) FROM requests WHERE state <> 'done'") != "0" {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "work left undone: {}",
            rig.sql("SELECT convert_from(corr, 'UTF8'), owner, state FROM requests WHERE state <> 'done'")
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        logged("the commit whose answer was lost is settled"),
        "a lost answer was settled"
    );
    assert_eq!(rig.sql("SELECT COUNT(*) FROM requests"), HEAVY.to_string());
    assert_eq!(
        rig.sql("SELECT MAX(executions) FROM requests"),
        "1",
        "never recorded twice"
    );
    device.disconnect().await;
}

/// A gateway is killed (SIGKILL) holding an unacknowledged reply and with queued work: the
/// device's next wake, taken by another gateway, redelivers the held reply; after `lease_ms`
/// the others finish the queued work; every request ends with one final reply and `executions`
/// ≤ 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateways_replies_and_work_are_taken_over() {
    let mut rig = rig(&slow_model()).await;
    // A held reply: the request is answered while the device listens, and never acked.
    let mut device = TestDevice::connect(rig.mosquitto.addr, "fo-1").await;
    device
        .request("stats", &values(&[3.0, 5.0]), b"held", None)
        .await;
    let held = loop {
        let got = device.reply_for(b"held").await;
        if got.reply.status == Status::Ok {
            break got;
        }
    };
    // Queued work: slow requests, several waiting behind one worker per gateway; the holder is
    // killed (SIGKILL) while one runs and more wait (a request stays `queued` while it runs). Slow
    // inference rather than big `stats` series: the compute, not the upload, must dominate, or a
    // fast machine drains each queue as it arrives.
    let holder = rig.sql("SELECT owner FROM requests WHERE corr = 'held'::bytea");
    let index = ["gw-1", "gw-2", "gw-3"]
        .iter()
        .position(|id| *id == holder)
        .expect("the holder is one of the three");
    const HEAVY: usize = 12;
    send_slow(&device, "h", HEAVY, 256).await;
    let queued_at_holder = || -> usize {
        rig.sql(&format!(
            "SELECT COUNT(*) FROM requests WHERE owner = '{holder}' AND state = 'queued'"
        ))
        .parse()
        .expect("count")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while queued_at_holder() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the holder never had work waiting"
        );
    }
    rig.gateways[index].kill();
    device.disconnect().await;
    let queued_there: usize = rig
        .sql(&format!(
            "SELECT COUNT(*) FROM requests WHERE owner = '{holder}' AND state = 'queued'"
        ))
        .parse()
        .expect("count");
    assert!(
        queued_there > 0,
        "the killed gateway had queued work to take over (the test needs slower requests)"
    );
    // Accepted means committed: a request the holder had not committed when it died was never
    // accepted (no 202; a device retries it, or the broker hands it to another gateway).
    let accepted = || -> HashSet<Vec<u8>> {
        rig.sql("SELECT convert_from(corr, 'UTF8') FROM requests WHERE corr <> 'held'::bytea")
            .lines()
            .map(|corr| corr.as_bytes().to_vec())
            .collect()
    };

    // The device wakes, listens, sleeps, as sleepy devices do: whichever live gateway sees a
    // wake redelivers what is held (a reply published while it slept comes on a later wake).
    let mut finals: HashSet<Vec<u8>> = HashSet::new();
    let mut redelivered = false;
    for _wake in 0..30 {
        let mut device = TestDevice::wake(rig.mosquitto.addr, "fo-1").await;
        while let Some(got) = device.next_within(std::time::Duration::from_secs(2)).await {
            let corr = got.corr.expect("corr").to_vec();
            if corr == b"held" {
                assert_eq!(got.reply.request_id, held.reply.request_id);
                assert_eq!(got.payload, held.payload, "byte for byte");
                redelivered = true;
            } else if got.reply.status == Status::Ok {
                finals.insert(corr);
            }
        }
        if redelivered && finals.is_superset(&accepted()) {
            device.ack(b"held").await;
            device.sleep().await;
            break;
        }
        device.sleep().await;
    }
    assert!(redelivered, "the held reply came from another gateway");
    assert_eq!(
        finals,
        accepted(),
        "every accepted request finished, and only those"
    );
    assert_eq!(
        rig.sql("SELECT COUNT(*) FROM requests WHERE state <> 'done'"),
        "0"
    );
    assert_eq!(
        rig.sql("SELECT MAX(executions) FROM requests"),
        "1",
        "never recorded twice"
    );
}

/// Runs device-sim's sleepy fleet against the rig's broker in the background: `devices` devices
/// waking every second (persistent sessions, 400 ms listen, retrying on the next wake a request
/// that got no answer at all), sending for `secs` seconds.
fn sleepy_fleet(rig: &Rig, devices: usize, secs: u64) -> (std::process::Child, std::path::PathBuf) {
    let report = rig.gateways[0]
        .dir()
        .join(format!("fleet-{devices}-{secs}.json"));
    let child = std::process::Command::new(roost_tests::sibling_binary("roost-device-sim"))
        .arg("run")
        .args([
            "--broker",
            &rig.mosquitto.addr.to_string(),
            "--quiet",
            "--json",
        ])
        .arg(&report)
        .args([
            "--devices",
            &devices.to_string(),
            "--duration",
            &format!("{secs}s"),
        ])
        .args([
            "--wake-every",
            "1s",
            "--listen",
            "400ms",
            "--grace",
            "30s",
            "--seed",
            "7",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("device-sim starts");
    (child, report)
}

/// Waits for device-sim and reads its report.
async fn fleet_report(
    mut child: std::process::Child,
    report: std::path::PathBuf,
) -> serde_json::Value {
    tokio::task::spawn_blocking(move || child.wait().expect("device-sim ends"))
        .await
        .expect("join");
    serde_json::from_slice(&std::fs::read(&report).expect("report written")).expect("JSON")
}

/// A sleepy fleet through three gateways: each wake's presence, request and acks reach
/// different gateways, yet every device sees each final reply once (one wake's redelivery is
/// claimed by one gateway, after the device's acks had their chance) and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleepy_fleet_through_three_gateways_sees_each_reply_once() {
    let rig = rig("").await;
    let (child, report) = sleepy_fleet(&rig, 40, 8);
    let json = fleet_report(child, report).await;
    assert!(
        json["requests"].as_u64().is_some_and(|n| n >= 200),
        "{json}"
    );
    assert_eq!(json["lost"], 0, "nothing lost: {json}");
    assert_eq!(json["mismatched"], 0, "{json}");
    assert_eq!(json["duplicates"], 0, "each reply seen once: {json}");
    assert_eq!(rig.sql("SELECT MAX(executions) FROM requests"), "1");
    assert_eq!(rig.postgres.deadlocks_logged(), 0);
}

/// Three gateways of one database connection each (`pool_size = 1`) under a closed loop of
/// connected devices, whose replies one gateway publishes and counts while another takes their
/// acks: each gateway's two committers take turns on its connection, and no transaction ever
/// deadlocks with another gateway's. (With one committer, a transaction counted publishes of
/// some replies and acked others; two gateways' such transactions deadlocked, each deadlock
/// costing a second of `deadlock_timeout`: seen here before the fix.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_with_one_connection_each_never_deadlock() {
    let rig = rig_with_store("lease_ms = 1000\npool_size = 1\n", "").await;
    let report = rig.gateways[0].dir().join("load.json");
    let status = std::process::Command::new(roost_tests::sibling_binary("roost-device-sim"))
        .arg("load")
        .args(["--broker", &rig.mosquitto.addr.to_string()])
        .args([
            "--devices",
            "20",
            "--inflight",
            "4",
            "--closed",
            "--duration",
            "4s",
        ])
        .args(["--quiet", "--json"])
        .arg(&report)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("device-sim runs");
    assert!(status.success(), "device-sim load: {status}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report written")).expect("JSON");
    assert!(
        json["replies_ok"].as_u64().is_some_and(|n| n >= 100),
        "{json}"
    );
    assert_eq!(json["lost"], 0, "nothing lost: {json}");
    assert_eq!(json["duplicates"], 0, "{json}");
    assert_eq!(rig.postgres.deadlocks_logged(), 0);
}

/// Failover under load: the same fleet while the gateways are killed with SIGKILL: gw-1 killed
/// and restarted, gw-2 killed for good, gw-3 killed and restarted at once. Every request gets
/// its final reply (the takeover finishes a dead gateway's work; a request the broker had handed
/// to a gateway that died before committing it got no `202`, and its device sends it again on
/// its next wake), and no result is recorded twice. A killed gateway also takes with it the
/// acks the broker had handed it (Mosquitto drops a dead subscriber's unacknowledged messages),
/// so a reply acked just then comes again on the device's next wake: delivery is at least once,
/// and such duplicates are bounded by the kills, not by the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleepy_fleet_loses_nothing_while_gateways_are_killed() {
    let mut rig = rig("").await;
    let (child, report) = sleepy_fleet(&rig, 40, 14);
    rig.admitted(60);
    rig.gateways[0].kill();
    rig.admitted(140);
    rig.gateways[0].restart();
    rig.admitted(220);
    rig.gateways[1].kill();
    rig.admitted(300);
    rig.gateways[2].kill();
    rig.gateways[2].restart();
    let json = fleet_report(child, report).await;
    assert!(
        json["requests"].as_u64().is_some_and(|n| n >= 300),
        "{json}"
    );
    assert_eq!(json["lost"], 0, "nothing lost: {json}");
    assert_eq!(json["mismatched"], 0, "{json}");
    assert!(
        json["duplicates"].as_u64().is_some_and(|n| n <= 3 * 4),
        "duplicates only from acks in flight at the three kills: {json}"
    );
    assert_eq!(
        rig.sql("SELECT COUNT(*) FROM requests WHERE state = 'queued'"),
        "0"
    );
    assert_eq!(
        rig.sql("SELECT MAX(executions) FROM requests"),
        "1",
        "never recorded twice"
    );
}

/// A gateway stopped with SIGTERM gives up its lease once drained: the others take its queued
/// work at once, long before its 60 s lease would have run out. Its queued work is set up in
/// the store directly (requests it owns and has not run: what a drain leaves behind), so the
/// test does not depend on how fast the workers are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_stopping_gracefully_hands_its_queued_work_over_at_once() {
    let mut rig = rig_with_store("lease_ms = 60000\n", "").await;
    let args: String = gateway::wire::envelope::encode_value(&values(&[1.0, 2.0, 4.0]))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    for i in 0..5 {
        rig.sql(&format!(
            "INSERT INTO requests (id, device, corr, op, args, reply_topic, envelope,
                received_ms, deadline_ms, state, owner)
             VALUES (uuid_send(gen_random_uuid()), 'gs-1', 'g{i}'::bytea, 'stats',
                decode('{args}', 'hex'), 'devices/gs-1/reply', false,
                (extract(epoch from now()) * 1000)::bigint,
                (extract(epoch from now()) * 1000)::bigint + 600000, 'queued', 'gw-1')"
        ));
    }
    let status = rig.gateways[0].terminate();
    assert!(status.success(), "drained and stopped: {status:?}");
    // Every one finishes, well within the stopped gateway's lease.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let queued = rig.sql("SELECT COUNT(*) FROM requests WHERE state = 'queued'");
        if queued == "0" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{queued} requests still queued 30 s after a graceful stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        rig.sql("SELECT COUNT(*), MAX(executions) FROM requests WHERE state = 'done'"),
        "5|1"
    );
}
