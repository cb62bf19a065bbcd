//! The shipped Prometheus rules and a live `/metrics` scrape pass Prometheus' own checker
//! (`promtool`, from Debian's `prometheus` package, which `tests/run.sh` installs), and every
//! `roost_*` series the rules and the Grafana dashboard query is in that scrape.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use gateway::wire::Status;
use roost_tests::device::{values, TestDevice};
use roost_tests::{http_get, Gateway};

fn examples() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/examples"))
}

/// The `roost_...` metric names a text mentions (recording-rule names `roost:...` excluded).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("roost_") {
        let boundary = at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric();
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if boundary {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn rules_and_a_live_scrape_pass_promtool() {
    let rules = examples().join("prometheus-rules.yml");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool is installed (apt-get install prometheus; tests/run.sh does)");
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let gateway = Gateway::start();
    let http = gateway.http.expect("the test config enables HTTP");
    let mut device = TestDevice::connect(gateway.mqtt, "prom-dev").await;
    device
        .request("stats", &values(&[1.0, 2.0]), b"a", None)
        .await;
    while device.reply_for(b"a").await.reply.status != Status::Ok {}
    device
        .request("no_such_op", &values(&[1.0]), b"b", None)
        .await;
    assert_eq!(device.reply_for(b"b").await.reply.status, Status::NotFound);
    let (code, scrape) = tokio::task::spawn_blocking(move || http_get(http, "/metrics"))
        .await
        .expect("join");
    assert_eq!(code, 200);
    assert!(
        scrape.contains("roost_dead_letters_total{reason=\"unknown_op\"} 1"),
        "{scrape}"
    );
    assert!(
        scrape.contains("roost_request_seconds_count{op=\"stats\"} 1"),
        "{scrape}"
    );
    assert!(
        scrape.contains("# TYPE roost_oldest_held_age_seconds gauge"),
        "{scrape}"
    );

    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(scrape.as_bytes())
        .expect("feed the scrape");
    let out = child.wait_with_output().expect("promtool ends");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let exposed = metric_names(&scrape);
    let dashboard = std::fs::read_to_string(examples().join("grafana-dashboard.json"))
        .expect("the Grafana dashboard");
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("the dashboard is JSON");
    let rules_text = std::fs::read_to_string(&rules).expect("rules");
    for name in metric_names(&rules_text).union(&metric_names(&dashboard)) {
        assert!(
            exposed.contains(name),
            "{name} is queried but not exposed; exposed: {exposed:?}"
        );
    }
}
