//! Guarantee 6: fairness under load. One device floods large `spectrum` requests while another
//! sends a small `stats` request: the quiet device is served ahead of the flooder's backlog (per
//! device round robin, one worker here), and the flooder gets `429` past its quota. Asserted on
//! the order replies arrive in, never on durations.

use ciborium::Value;
use gateway::wire::Status;
use roost_tests::device::{values, TestDevice};
use roost_tests::Gateway;

const QUOTA: usize = 4;

const READINGS: usize = 100_000;

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

/// Telemetry readings `{"ts", "x"}` ending now, one per millisecond.
fn telemetry(from: usize, to: usize, now_ms: u64) -> Value {
    Value::Array(
        (from..to)
            .map(|i| {
                let ts = now_ms - (READINGS - i) as u64;
                let x = (i as f64 * 0.37).sin() + (i % 17) as f64 * 0.01;
                Value::Map(vec![
                    (text("ts"), Value::Integer(ts.into())),
                    (text("x"), Value::Float(x)),
                ])
            })
            .collect(),
    )
}

/// An op over the device's last 1000 s of `x` readings: tiny to send, long to run.
fn windowed() -> Value {
    Value::Map(vec![
        (text("metric"), text("x")),
        (text("window_s"), Value::Integer(1000.into())),
    ])
}

#[tokio::test]
async fn a_quiet_device_is_served_ahead_of_a_flooders_backlog() {
    let gateway = Gateway::start_with(&format!(
        "[gateway]\nworkers = 1\n[limits]\nmax_pending_per_device = {QUOTA}\nmax_payload_bytes = 1048576\n"
    ));
    let mut flooder = TestDevice::connect(gateway.mqtt, "flooder").await;
    let mut quiet = TestDevice::connect(gateway.mqtt, "quiet").await;
    // The flooder uploads a long series of telemetry, then checks it is all stored.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    for chunk in 0..10 {
        let readings = telemetry(chunk * READINGS / 10, (chunk + 1) * READINGS / 10, now_ms);
        let payload = gateway::wire::envelope::encode_value(&readings);
        flooder
            .publish_raw("devices/flooder/telemetry", payload, None)
            .await;
    }
    // Telemetry travels on another topic than requests, so a probe may run before the last
    // chunk is stored: probe again (a new request each time), a bounded number of times.
    let mut stored = 0;
    for attempt in 0..50 {
        let corr = format!("probe-{attempt}");
        flooder
            .request("stats", &windowed(), corr.as_bytes(), None)
            .await;
        let done = loop {
            let got = flooder.reply_for(corr.as_bytes()).await;
            if got.reply.status != Status::Accepted {
                break got;
            }
        };
        stored = roost_tests::device::field(done.reply.result.as_ref().expect("result"), "count")
            as usize;
        if stored == READINGS {
            break;
        }
    }
    assert_eq!(stored, READINGS, "all telemetry stored");
    // Tiny requests, long runs: all arrive while the first still runs.
    let mut spectrum = windowed();
    if let Value::Map(entries) = &mut spectrum {
        entries.push((text("peaks"), Value::Integer(3.into())));
    }
    for i in 0..=QUOTA {
        flooder
            .request("spectrum", &spectrum, format!("f{i}").as_bytes(), None)
            .await;
    }
    // QUOTA accepted, the next one refused with 429 and a retry hint.
    let (mut accepted, mut refused) = (0, 0);
    let mut finals = Vec::new();
    while accepted + refused < QUOTA + 1 {
        let got = flooder.next().await;
        match got.reply.status {
            Status::Accepted => accepted += 1,
            Status::TooMany => {
                refused += 1;
                assert!(got.reply.retry_after_ms.is_some_and(|ms| ms > 0));
                assert_eq!(
                    got.reply.error.as_ref().map(|e| e.code.as_str()),
                    Some("too_many_pending")
                );
            }
            Status::Ok => finals.push(got.at),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((accepted, refused), (QUOTA, 1));

    quiet
        .request("stats", &values(&[1.0, 2.0, 3.0]), b"q", None)
        .await;
    let quiet_done = loop {
        let got = quiet.reply_for(b"q").await;
        if got.reply.status == Status::Ok {
            break got.at;
        }
    };
    while finals.len() < QUOTA {
        let got = flooder.next().await;
        assert_eq!(got.reply.status, Status::Ok, "{:?}", got.reply);
        finals.push(got.at);
    }
    finals.sort();
    assert!(
        quiet_done < finals[QUOTA - 1],
        "the quiet device's reply came after the whole backlog of the flooder (FIFO, not fair)"
    );
}
