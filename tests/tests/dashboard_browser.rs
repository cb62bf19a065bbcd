//! The dashboard in a real browser (headless Chromium through WebDriver) against a real gateway
//! with a small simulated fleet: the charts have data points, the device list is in natural
//! order and finds a device by search, and a device page lists its requests in the same states
//! as `/api/devices/{id}`. Screenshots land in the gateway's temp dir (and in
//! `$ROOST_SCREENSHOT_DIR` when set, to look at them).

use std::time::Duration;

use fantoccini::Locator;
use gateway::wire::Status;
use roost_tests::browser::Browser;
use roost_tests::device::{values, TestDevice};
use roost_tests::{device_sim, http_get, Gateway};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

async fn screenshot(browser: &Browser, gateway: &Gateway, name: &str) {
    let png = browser.client.screenshot().await.expect("screenshot");
    let path = gateway.dir().join(name);
    std::fs::write(&path, &png).expect("write screenshot");
    if let Ok(dir) = std::env::var("ROOST_SCREENSHOT_DIR") {
        std::fs::write(std::path::Path::new(&dir).join(name), &png).expect("copy screenshot");
    }
    eprintln!("screenshot: {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_charts_devices_and_a_device_page() {
    let gateway = Gateway::start();
    let http = gateway.http.expect("the test config enables HTTP");
    // A small fleet whose replies are all acked, and one device that leaves replies held.
    let args = ["--devices", "12", "--requests", "3", "--id-prefix", "fleet"];
    let fleet = device_sim(&gateway, &args);
    assert_eq!(fleet["lost"], 0, "{fleet}");
    let mut holder = TestDevice::connect(gateway.mqtt, "holder-7").await;
    for corr in [b"h1", b"h2"] {
        holder
            .request("stats", &values(&[1.0, 2.0, 3.0]), corr, None)
            .await;
        while holder.reply_for(corr).await.reply.status != Status::Ok {}
    }
    holder
        .request("no_such_op", &values(&[1.0]), b"bad", None)
        .await;
    assert_eq!(
        holder.reply_for(b"bad").await.reply.status,
        Status::NotFound
    );

    let browser = Browser::start().await;
    browser
        .client
        .goto(&format!("http://{http}/"))
        .await
        .expect("open the dashboard");

    // Charts: all four drawn, each with at least two samples (the sampler runs every 5 s).
    let points = browser
        .wait_for(
            "every chart has two samples",
            "return [...document.querySelectorAll('.chart')].map(c => Number(c.dataset.points))",
            WAIT,
            |v| {
                v.as_array()
                    .is_some_and(|a| a.len() == 4 && a.iter().all(|p| p.as_u64() >= Some(2)))
            },
        )
        .await;
    let plotted = browser
        .client
        .execute(
            "return window.roost.charts.map(c => c.plot.data[0].length)",
            vec![],
        )
        .await
        .expect("uPlot data");
    assert_eq!(plotted, points, "uPlot holds what the page says it drew");

    // The device list: natural order (fleet-2 before fleet-10), then search finds one device.
    let order = browser
        .wait_for(
            "the device list shows the fleet",
            "return [...document.querySelectorAll('#devices tbody tr')].map(r => r.dataset.device)",
            WAIT,
            |v| v.as_array().is_some_and(|a| a.len() == 13),
        )
        .await;
    let ids: Vec<&str> = order
        .as_array()
        .expect("array")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let at = |id: &str| ids.iter().position(|d| *d == id).expect("listed");
    assert!(at("fleet-2") < at("fleet-10"), "natural order: {ids:?}");
    screenshot(&browser, &gateway, "dashboard.png").await;

    let search = browser
        .client
        .find(Locator::Css("#search"))
        .await
        .expect("search box");
    search.send_keys("lder-").await.expect("type");
    browser
        .wait_for(
            "search finds holder-7 alone",
            "return [...document.querySelectorAll('#devices tbody tr')].map(r => r.dataset.device)",
            WAIT,
            |v| *v == serde_json::json!(["holder-7"]),
        )
        .await;
    let last_error = browser
        .client
        .find(Locator::Css("#devices tbody tr td.error"))
        .await
        .expect("last error cell")
        .text()
        .await
        .expect("text");
    assert!(last_error.starts_with("unknown_op"), "{last_error}");

    // The device page: its requests, in the states the API gives.
    browser
        .client
        .find(Locator::Css("#devices tbody tr a"))
        .await
        .expect("device link")
        .click()
        .await
        .expect("open the device page");
    let rows = browser
        .wait_for(
            "the device page lists two requests",
            "return [...document.querySelectorAll('#requests tbody tr')].map(r => \
             [r.dataset.requestId, r.querySelector('.lifecycle').textContent])",
            WAIT,
            |v| v.as_array().is_some_and(|a| a.len() == 2),
        )
        .await;
    let (code, body) = tokio::task::spawn_blocking(move || http_get(http, "/api/devices/holder-7"))
        .await
        .expect("join");
    assert_eq!(code, 200, "{body}");
    let api: Value = serde_json::from_str(&body).expect("JSON");
    let expected: Vec<Value> = api["recent_requests"]
        .as_array()
        .expect("requests")
        .iter()
        .map(|r| serde_json::json!([r["id"], r["lifecycle"]]))
        .collect();
    assert_eq!(rows, Value::Array(expected), "page and API agree");
    assert!(
        rows.as_array()
            .expect("rows")
            .iter()
            .all(|r| r[1] == "held"),
        "both replies are held until acked: {rows}"
    );
    let held_rows = browser
        .client
        .find_all(Locator::Css("#held tbody tr"))
        .await
        .expect("held table");
    assert_eq!(held_rows.len(), 2);
    screenshot(&browser, &gateway, "device.png").await;

    // The dead-letters page lists the refused request.
    browser
        .client
        .goto(&format!("http://{http}/deadletters"))
        .await
        .expect("open dead letters");
    browser
        .wait_for(
            "the dead-letters page lists the 404",
            "return [...document.querySelectorAll('#dead-letters tbody tr td.error')].map(c => c.textContent)",
            WAIT,
            |v| {
                v.as_array().is_some_and(|a| {
                    a.iter()
                        .any(|r| r.as_str().is_some_and(|t| t.starts_with("unknown_op")))
                })
            },
        )
        .await;
    screenshot(&browser, &gateway, "deadletters.png").await;
    browser.close().await;
}
