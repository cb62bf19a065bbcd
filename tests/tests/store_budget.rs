//! `limits.max_store_bytes`: past the budget the oldest finished (acked) requests are evicted,
//! counted in `roost_store_evicted_total`, and the gateway keeps serving; over the budget with
//! nothing finished to evict, it is degraded (`503`) until acks make room, then serves again by
//! itself.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ciborium::Value;
use gateway::wire::Status;
use roost_tests::device::{TestDevice, WAIT};
use roost_tests::store_view::{hex, requests_of};
use roost_tests::{http_get, Gateway};

const BUDGET: &str = "[limits]\nmax_store_bytes = 1048576\nmax_pending_per_device = 1000\n";

/// A `histogram` of 1,000 bins: a final reply of about 12 KB, so a few hundred fill 1 MiB.
fn big_reply_args() -> Value {
    Value::Map(vec![
        (
            Value::Text("values".into()),
            Value::Array((0..10).map(|i| Value::Float(f64::from(i))).collect()),
        ),
        (Value::Text("bins".into()), Value::Integer(1000.into())),
    ])
}

/// Sends one request and waits for its final reply (skipping its 202); returns the first reply
/// when that is not a 202.
async fn run_one(device: &mut TestDevice, corr: &[u8]) -> Status {
    device
        .request("histogram", &big_reply_args(), corr, None)
        .await;
    loop {
        let reply = device.reply_for(corr).await;
        if reply.reply.status != Status::Accepted {
            return reply.reply.status;
        }
    }
}

fn metric(http: SocketAddr, name: &str) -> u64 {
    let (_, body) = http_get(http, "/metrics");
    body.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

/// Polls `/metrics` until `name` is at least `at_least` (bounded by [`WAIT`]).
async fn wait_metric(http: SocketAddr, name: &'static str, at_least: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = tokio::task::spawn_blocking(move || metric(http, name))
            .await
            .expect("join");
        if value >= at_least {
            return value;
        }
        assert!(Instant::now() < deadline, "{name} stayed at {value}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_budget_the_oldest_finished_requests_are_evicted_and_serving_goes_on() {
    let gateway = Gateway::start_with(BUDGET);
    let http = gateway.http.expect("HTTP enabled");
    let mut device = TestDevice::connect(gateway.mqtt, "budget-1").await;
    let corrs: Vec<Vec<u8>> = (0..200).map(|i| format!("b-{i:03}").into_bytes()).collect();
    for corr in &corrs {
        assert_eq!(run_one(&mut device, corr).await, Status::Ok);
        device.ack(corr).await;
    }
    wait_metric(http, "roost_store_evicted_total", 1).await;
    let (code, body) = tokio::task::spawn_blocking(move || http_get(http, "/healthz"))
        .await
        .expect("join");
    assert_eq!(code, 200, "evicting is not degrading: {body}");
    let stored: Vec<String> = requests_of(&gateway, "budget-1")
        .into_iter()
        .map(|row| row.corr)
        .collect();
    assert!(stored.len() < corrs.len(), "some were evicted");
    assert!(!stored.contains(&hex(&corrs[0])), "the oldest went first");
    assert!(
        stored.contains(&hex(&corrs[corrs.len() - 1])),
        "the newest stays: {} stored, {:?}",
        stored.len(),
        stored.iter().take(5).collect::<Vec<_>>()
    );
    // Still serving.
    assert_eq!(run_one(&mut device, b"after").await, Status::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_budget_with_nothing_to_evict_it_degrades_until_acks_make_room() {
    let gateway = Gateway::start_with(BUDGET);
    let http = gateway.http.expect("HTTP enabled");
    let mut watcher = TestDevice::watch(gateway.mqtt, "ops-budget", "gateway/gw-test/status").await;
    let mut device = TestDevice::connect(gateway.mqtt, "budget-2").await;
    // Held, never acked: nothing is evictable, so the budget fills up.
    let mut held = Vec::new();
    let mut refused = false;
    for i in 0..1000 {
        let corr = format!("h-{i:03}").into_bytes();
        match run_one(&mut device, &corr).await {
            Status::Ok => held.push(corr),
            Status::Unavailable => {
                refused = true;
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(refused, "the budget never degraded the gateway");
    let status = loop {
        let status = watcher.next_json().await;
        if status["state"] == "degraded" {
            break status;
        }
    };
    assert!(
        status["reason"]
            .as_str()
            .is_some_and(|r| r.contains("limits.max_store_bytes")),
        "{status}"
    );
    // Acks still commit while degraded; they make the held replies evictable.
    for corr in &held {
        device.ack(corr).await;
    }
    loop {
        let status = watcher.next_json().await;
        if status["state"] == "online" {
            break;
        }
    }
    assert!(wait_metric(http, "roost_store_evicted_total", 1).await >= 1);
    assert_eq!(run_one(&mut device, b"room-again").await, Status::Ok);
}
