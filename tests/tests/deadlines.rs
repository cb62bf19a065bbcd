//! Deadlines end to end: a request's deadline is `limits.op_timeout_ms` after it arrived (or its
//! Message Expiry Interval, if shorter). With a 1 ms deadline and one worker, a heavy op cannot
//! finish in time (a spectrum over 10^6 points takes tens of milliseconds), and a request
//! queued behind it expires before a worker reaches it: both get `504` as their final reply,
//! and the queued one never runs.

use ciborium::Value;
use gateway::wire::Status;
use roost_tests::device::{options, values, TestDevice};
use roost_tests::store_view::{hex, requests_of};
use roost_tests::Gateway;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_requests_get_504_and_a_queued_one_never_runs() {
    let gateway = Gateway::start_with(
        "[gateway]\nworkers = 1\n[limits]\nop_timeout_ms = 1\nmax_payload_bytes = 16777216\n",
    );
    let mut opts = options("deadline-1", gateway.mqtt);
    opts.set_max_packet_size(Some(32 << 20));
    let mut device = TestDevice::connect_with(opts, "deadline-1", true).await;

    let series: Vec<Value> = (0..1_000_000u64)
        .map(|i| Value::Float(((i * 7919) % 10007) as f64))
        .collect();
    let heavy = Value::Map(vec![
        (Value::Text("values".into()), Value::Array(series)),
        (Value::Text("sample_rate_hz".into()), Value::Float(1000.0)),
    ]);
    device.request("spectrum", &heavy, b"heavy", None).await;
    device
        .request("stats", &values(&[1.0, 2.0, 3.0]), b"queued", None)
        .await;

    let mut finals = Vec::new();
    while finals.len() < 2 {
        let got = device.next().await;
        if got.reply.status == Status::Accepted {
            continue;
        }
        assert_eq!(got.reply.status, Status::Timeout, "{:?}", got.reply);
        finals.push(got.corr.expect("correlated").to_vec());
    }
    finals.sort();
    assert_eq!(finals, vec![b"heavy".to_vec(), b"queued".to_vec()]);

    for row in requests_of(&gateway, "deadline-1") {
        assert_eq!(row.state, "expired", "{row:?}");
        assert_eq!(row.status, Some(504), "{row:?}");
        if row.corr == hex(b"queued") {
            assert_eq!(row.executions, 0, "the queued request never ran: {row:?}");
        }
    }
}
