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

    let mut finals = std::collections::HashMap::new();
    while finals.len() < 2 {
        let got = device.next().await;
        if got.reply.status == Status::Accepted {
            continue;
        }
        assert_eq!(got.reply.status, Status::Timeout, "{:?}", got.reply);
        let id = got
            .reply
            .request_id
            .expect("a stored request's id")
            .to_string();
        let corr = got.corr.expect("correlated").to_vec();
        assert!(finals.insert(corr, id).is_none(), "one final reply each");
    }
    let final_id = |corr: &[u8]| finals.get(corr).cloned().expect("answered");

    // The store holds exactly these two requests, each expired with its 504 held for delivery;
    // the queued one never ran. (The heavy one may have finished running after its deadline,
    // then its result was discarded: it ran at most once.)
    let mut rows = requests_of(&gateway, "deadline-1");
    rows.sort_by(|a, b| a.corr.cmp(&b.corr));
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (heavy, queued) = (&rows[0], &rows[1]);
    assert_eq!(heavy.corr, hex(b"heavy"), "{rows:?}");
    assert_eq!(queued.corr, hex(b"queued"), "{rows:?}");
    for (row, op, corr) in [
        (heavy, "spectrum", b"heavy".as_slice()),
        (queued, "stats", b"queued"),
    ] {
        assert_eq!(row.op, op, "{row:?}");
        assert_eq!(
            row.id,
            final_id(corr),
            "the 504 names this request: {row:?}"
        );
        assert_eq!(row.state, "expired", "{row:?}");
        assert_eq!(row.status, Some(504), "{row:?}");
        assert_eq!(row.delivery.as_deref(), Some("held"), "{row:?}");
    }
    assert!(heavy.executions <= 1, "{heavy:?}");
    assert_eq!(
        queued.executions, 0,
        "the queued request never ran: {queued:?}"
    );
}
