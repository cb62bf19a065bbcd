//! The gateway's log as an operator's log collector sees it (stderr to a file): plain text
//! without colour codes, nothing at WARN or ERROR through a serving run and a clean stop; and
//! with `[log] format = "json"`, one JSON object per line.

use gateway::wire::Status;
use roost_tests::device::{values, TestDevice};
use roost_tests::Gateway;

async fn serve_some(gateway: &Gateway) {
    let mut device = TestDevice::connect(gateway.mqtt, "log-dev").await;
    device
        .request("stats", &values(&[1.0, 2.0]), b"a", None)
        .await;
    while device.reply_for(b"a").await.reply.status != Status::Ok {}
    device.disconnect().await;
}

#[tokio::test]
async fn a_clean_run_logs_plain_text_without_errors() {
    let mut gateway = Gateway::start();
    serve_some(&gateway).await;
    assert!(gateway.terminate().success());
    let log = gateway.log();
    assert!(log.contains("INFO gateway::app: stopped"), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a file: {log:?}");
    for line in log.lines() {
        assert!(
            !line.contains(" ERROR ") && !line.contains(" WARN "),
            "a clean run logged: {line}"
        );
    }
}

#[tokio::test]
async fn log_format_json_writes_one_object_per_line() {
    let mut gateway = Gateway::start_with("[log]\nformat = \"json\"\n");
    serve_some(&gateway).await;
    assert!(gateway.terminate().success());
    let log = gateway.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "stopped" && l["level"] == "INFO"),
        "{log}"
    );
}

/// The store's schema is migrated once, and the log says so, with how long it took: a store
/// of an older gateway can take a while at its first start. A restart on the migrated store
/// migrates and says nothing.
#[tokio::test]
async fn the_schema_is_migrated_once_and_said_so() {
    let mut gateway = Gateway::start();
    let first = gateway.log();
    assert!(
        first.contains("migrating the store's schema") && first.contains("from=0"),
        "{first}"
    );
    assert!(first.contains("store schema migrated"), "{first}");
    assert!(gateway.terminate().success());
    gateway.restart();
    let again = gateway.log();
    assert!(!again.contains("migrating the store's schema"), "{again}");
    assert!(!again.contains("store schema migrated"), "{again}");
}
