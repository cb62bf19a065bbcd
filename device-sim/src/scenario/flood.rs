//! `device-sim flood`: what an attacker with nothing but a socket can do to the operator login.
//! `--connections` loops each open a TCP connection, send an MQTT 5 CONNECT with `--user` (an
//! existing operator's name: names are not secret) and a wrong password, wait for the answer
//! (CONNACK or close), and start again, for `--duration` or `--attempts` in total, whichever
//! comes first. The connections are spread over `--sources` loopback source addresses
//! (127.0.0.2, 127.0.0.3, ...), so the gateway sees that many attackers.
//!
//! Loopback only: a non-loopback `--broker` is refused. Prints a summary and writes `--json`
//! with the attempts by answer (`0x86`, `0x9f`, closed, ...) and the answer latency. It never
//! fails the run for what the gateway answers: it measures, the caller decides.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::{Connect, Login, Packet};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::cli::FloodArgs;

/// How long one attempt may wait for its answer before it counts as `no_answer`.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// The JSON report of a flood.
#[derive(Debug, Default, Serialize)]
pub struct FloodReport {
    /// CONNECTs sent.
    pub attempts: u64,
    /// Answers by kind: `connack_0x86`, `connack_0x9f`, `connack_0x00` (a success: the password
    /// was right after all), `closed` (no CONNACK), `no_answer`, `connect_error`.
    pub answers: BTreeMap<String, u64>,
    /// Attempts per second over the run.
    pub attempts_per_s: f64,
    /// Time from sending the CONNECT to its answer, in ms.
    pub answer_ms: Percentiles,
    /// How long the flood ran, in seconds.
    pub elapsed_s: f64,
}

/// Latency percentiles in ms.
#[derive(Debug, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

#[derive(Debug, Default)]
struct Tally {
    attempts: u64,
    answers: BTreeMap<String, u64>,
    latencies: Vec<Duration>,
}

/// Runs the `flood` scenario.
pub async fn run(args: FloodArgs) -> ExitCode {
    let broker: SocketAddr = match args.broker.parse() {
        Ok(addr) => addr,
        Err(_) => return super::usage(format!("--broker {:?} is not IP:PORT", args.broker)),
    };
    if !broker.ip().is_loopback() {
        return super::usage("flood only runs against a loopback --broker");
    }
    if args.connections == 0 || args.sources == 0 || args.sources > 250 {
        return super::usage("--connections must be at least 1, --sources 1 to 250");
    }
    let tally = Arc::new(Mutex::new(Tally::default()));
    let start = Instant::now();
    let deadline = start + args.duration;
    let budget = Arc::new(std::sync::atomic::AtomicU64::new(args.attempts));
    let tasks: Vec<_> = (0..args.connections)
        .map(|n| {
            let source = source_address(broker, n % args.sources);
            let connect = connect_frame(&format!("flood-{n}"), &args.user, &args.password);
            let (tally, budget) = (tally.clone(), budget.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline && take_one(&budget) {
                    let sent = Instant::now();
                    let left = deadline.saturating_duration_since(sent).max(ANSWER_TIMEOUT);
                    let answer = tokio::time::timeout(left, attempt(broker, source, &connect))
                        .await
                        .unwrap_or_else(|_| "no_answer".to_owned());
                    let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
                    tally.attempts += 1;
                    if answer.starts_with("connack") || answer == "closed" {
                        tally.latencies.push(sent.elapsed());
                    }
                    *tally.answers.entry(answer).or_insert(0) += 1;
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut tally = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
    tally.latencies.sort();
    let pct = |p: f64| {
        let at = ((tally.latencies.len() as f64 - 1.0) * p).round().max(0.0) as usize;
        tally
            .latencies
            .get(at)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let report = FloodReport {
        attempts: tally.attempts,
        attempts_per_s: tally.attempts as f64 / elapsed.max(1e-9),
        answer_ms: Percentiles {
            p50: pct(0.5),
            p99: pct(0.99),
            max: pct(1.0),
        },
        answers: tally.answers,
        elapsed_s: elapsed,
    };
    eprintln!(
        "flood: {} attempts in {:.1} s ({:.0}/s), answers {:?}, answer p50 {:.1} ms p99 {:.1} ms",
        report.attempts,
        report.elapsed_s,
        report.attempts_per_s,
        report.answers,
        report.answer_ms.p50,
        report.answer_ms.p99
    );
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).unwrap_or_default();
        let written = if path.as_os_str() == "-" {
            println!("{json}");
            Ok(())
        } else {
            std::fs::write(path, json + "\n")
        };
        if let Err(error) = written {
            eprintln!("device-sim: cannot write {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// Takes one attempt from the shared budget; false when it is spent.
fn take_one(budget: &std::sync::atomic::AtomicU64) -> bool {
    use std::sync::atomic::Ordering;
    budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

/// The `n`th source address: 127.0.0.(2 + n) against an IPv4 broker; ::1 against IPv6.
fn source_address(broker: SocketAddr, n: usize) -> IpAddr {
    match broker.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + n as u8)),
        IpAddr::V6(v6) => IpAddr::V6(v6),
    }
}

fn connect_frame(client_id: &str, user: &str, password: &str) -> BytesMut {
    let mut out = BytesMut::new();
    let connect = Connect {
        keep_alive: 30,
        client_id: client_id.into(),
        clean_start: true,
        properties: None,
    };
    let login = Login::new(user, password);
    // Encoding a CONNECT into memory cannot fail for these sizes.
    let _ = Packet::Connect(connect, None, Some(login)).write(&mut out, None);
    out
}

/// One login attempt; the answer's name.
async fn attempt(broker: SocketAddr, source: IpAddr, connect: &[u8]) -> String {
    let socket = match broker {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    };
    let stream = async {
        let socket = socket?;
        socket.bind(SocketAddr::new(source, 0))?;
        let mut stream = socket.connect(broker).await?;
        stream.set_nodelay(true)?;
        stream.write_all(connect).await?;
        Ok::<_, std::io::Error>(stream)
    };
    let mut stream = match stream.await {
        Ok(stream) => stream,
        Err(_) => return "connect_error".into(),
    };
    // A CONNACK is 0x20, a one-byte length, the flags and the reason code: read it by hand.
    let mut buf = BytesMut::with_capacity(64);
    loop {
        if let [first, _, _, code, ..] = buf[..] {
            return match first {
                0x20 => format!("connack_{code:#04x}"),
                _ => "other_packet".into(),
            };
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return "closed".into(),
            Ok(_) => {}
        }
    }
}
