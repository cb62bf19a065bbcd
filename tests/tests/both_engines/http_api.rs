//! The operator HTTP API: health, Prometheus metrics, status, paged devices, the dashboard.

use gateway::wire::Status;
use roost_tests::device::{values, TestDevice};
use roost_tests::{http_get, Gateway};

#[tokio::test]
async fn operators_read_health_metrics_status_and_devices() {
    let gateway = Gateway::start();
    let http = gateway.http.expect("the test config enables HTTP");
    let mut device = TestDevice::connect(gateway.mqtt, "http-dev").await;
    device
        .request("stats", &values(&[1.0, 2.0]), b"h", None)
        .await;
    loop {
        if device.reply_for(b"h").await.reply.status == Status::Ok {
            break;
        }
    }

    let get = |path: &'static str| tokio::task::spawn_blocking(move || http_get(http, path));
    let (code, body) = get("/healthz").await.expect("join");
    assert_eq!(code, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(health["store"], "up");

    let (code, body) = get("/metrics").await.expect("join");
    assert_eq!(code, 200);
    assert!(body.contains("# TYPE roost_queue_depth gauge"), "{body}");
    assert!(
        body.contains("roost_requests_finished_total{op=\"stats\",status=\"200\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("roost_intake_total{outcome=\"accepted\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("roost_request_seconds_count{op=\"stats\"} 1"),
        "{body}"
    );
    assert!(body.contains("roost_oldest_queued_age_seconds 0"), "{body}");
    assert!(body.contains("roost_store_commit_seconds_bucket"), "{body}");
    assert!(
        body.contains("roost_frontdoor_connections_total{outcome=\"connected\"}"),
        "{body}"
    );
    assert!(
        body.contains("roost_frontdoor_denials_total{kind=\"subscribe\"} 0"),
        "{body}"
    );

    let (code, body) = get("/api/status").await.expect("join");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(status["state"], "online");
    assert_eq!(status["requests"]["done_total"], 1);

    let (code, body) = get("/api/devices?limit=10").await.expect("join");
    assert_eq!(code, 200);
    let devices: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(devices["total"], 1);
    assert_eq!(devices["devices"][0]["id"], "http-dev");
    assert_eq!(devices["devices"][0]["held"], 1);

    let (code, body) = get("/api/devices/http-dev").await.expect("join");
    assert_eq!(code, 200);
    let one: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(one["recent_requests"][0]["op"], "stats");
    assert_eq!(get("/api/devices/nobody").await.expect("join").0, 404);

    let (code, body) = get("/").await.expect("join");
    assert_eq!(code, 200);
    assert!(body.contains("<title>Roost gateway</title>"));
}

/// Off loopback the API needs operator logins; with no operator account the gateway refuses to
/// start, naming the key, with exit code 2 (checked before anything binds the address).
#[test]
fn a_non_loopback_http_listen_without_operators_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\ndata_dir = {:?}\n[broker]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"0.0.0.0:0\"\n",
            dir.path().join("data")
        ),
    )
    .expect("write config");
    let out = std::process::Command::new(Gateway::binary())
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .expect("gateway runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("[http] listen"), "{stderr}");
}
