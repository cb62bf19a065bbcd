//! device-sim against the benchmark yardstick, as processes: `gateway echo` hosts the gateway's
//! front door + rumqttd and answers every request at once; `run`/`load` verify every reply and write the JSON report the end-to-end
//! tests rely on. Waits on output lines with timeouts, never on sleeps.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_roost-device-sim");
const GATEWAY: &str = env!("CARGO_BIN_EXE_roost-gateway");

/// An echo process, killed on drop.
struct Echo {
    child: Child,
    addr: String,
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_echo() -> Echo {
    let mut child = Command::new(GATEWAY)
        .args(["echo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("echo starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (line_tx, line_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let addr = loop {
        let line = line_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("echo reports listening within 30 s");
        if let Some(rest) = line.strip_prefix("gateway echo listening mqtt=") {
            break rest.trim().to_owned();
        }
    };
    Echo { child, addr }
}

fn run_sim(args: &[&str]) -> (bool, serde_json::Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("report.json");
    let status = Command::new(BIN)
        .args(args)
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::null())
        .status()
        .expect("device-sim runs");
    let text = std::fs::read_to_string(&json).expect("report written");
    (
        status.success(),
        serde_json::from_str(&text).expect("report is JSON"),
    )
}

#[test]
fn load_against_echo_verifies_every_reply() {
    let echo = start_echo();
    let (ok, report) = run_sim(&[
        "load",
        "--broker",
        &echo.addr,
        "--devices",
        "20",
        "--closed",
        "--inflight",
        "2",
        "--requests",
        "25",
        "--duration",
        "20s",
        "--expect-202",
        "false",
        "--quiet",
    ]);
    assert!(ok, "{report:#}");
    assert_eq!(report["requests"], 500);
    assert_eq!(report["replies_ok"], 500);
    for key in ["replies_error", "lost", "mismatched"] {
        assert_eq!(report[key], 0, "{key}: {report:#}");
    }
    assert!(report["latency_ms"]["p50"].as_f64().expect("p50") > 0.0);
    assert!(report["throughput_rps"].as_f64().expect("rps") > 0.0);
    assert_eq!(report["passed"], true);
}

#[test]
fn a_missing_202_fails_the_run() {
    let echo = start_echo();
    // The echo never sends 202s: a strict run must notice and exit non-zero.
    let (ok, report) = run_sim(&[
        "run",
        "--broker",
        &echo.addr,
        "--devices",
        "3",
        "--requests",
        "2",
        "--interval",
        "0s",
        "--duration",
        "1s",
        "--grace",
        "1s",
        "--quiet",
    ]);
    assert!(!ok, "{report:#}");
    assert_eq!(report["mismatched"], 6, "{report:#}");
    assert_eq!(report["mismatch_reasons"]["final_without_202"], 6);
    assert_eq!(
        report["replies_ok"], 0,
        "each request counts once: {report:#}"
    );
    assert_eq!(report["passed"], false);
}

#[test]
fn sleepy_devices_wake_request_and_ack() {
    let echo = start_echo();
    let (ok, report) = run_sim(&[
        "run",
        "--broker",
        &echo.addr,
        "--devices",
        "10",
        "--wake-every",
        "300ms",
        "--listen",
        "100ms",
        "--requests",
        "2",
        "--duration",
        "20s",
        "--telemetry-every",
        "1",
        "--quiet",
    ]);
    assert!(ok, "{report:#}");
    assert_eq!(report["replies_ok"], 20);
    assert_eq!(report["counts"]["acks"], 20);
    assert!(report["counts"]["wakes"].as_u64().expect("wakes") >= 20);
    assert_eq!(report["counts"]["telemetry"], 20);
}
