//! `gateway status`: the live gateway's word when it answers, and the store's counts.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;

use super::{open, print_json};
use crate::cli::CliError;
use crate::config::Config;
use crate::store::{devices, now_ms};

/// `gateway status`: the running gateway's `/api/status` when its HTTP API is on loopback and
/// answers; otherwise the same document computed from the store, with `"state": "unknown"`.
pub fn status(config: &Config, json: bool) -> Result<(), CliError> {
    let live = config
        .http
        .filter(|addr| addr.ip().is_loopback())
        .and_then(|addr| local_get(addr, "/api/status"))
        .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok());
    let console = open(config, false)?;
    let counts = || -> Result<serde_json::Value, crate::store::StoreError> {
        let backlog = console.backlog()?;
        let age = |at: Option<i64>| at.map_or(0, |at| (now_ms() - at).max(0) / 1000);
        Ok(json!({
            "queued": backlog.queued,
            "held": backlog.held,
            "dead_letters": console.dead_letters_page(None, 0, 1)?.0,
            "devices": console.devices_page(&devices::Filter::default(), 0, 0)?.0,
            "oldest_queued_age_s": age(backlog.oldest_queued_ms),
            "oldest_held_age_s": age(backlog.oldest_held_ms),
        }))
    };
    let store = counts()?;
    let document =
        json!({ "gateway": live.clone().unwrap_or(json!({"state": "unknown"})), "store": store });
    if json {
        return print_json(&document);
    }
    match &live {
        Some(live) => {
            println!(
                "gateway   {} (version {}, up {} s)",
                live["state"].as_str().unwrap_or("?"),
                live["version"].as_str().unwrap_or("?"),
                live["uptime_s"]
            );
            println!(
                "requests  queued {}  running {}  held {}  done {}  failed {}  dead {}  (since start)",
                live["requests"]["queued"],
                live["requests"]["running"],
                live["requests"]["held"],
                live["requests"]["done_total"],
                live["requests"]["failed_total"],
                live["requests"]["dead_total"]
            );
            println!(
                "devices   awake {} of {} seen since start",
                live["devices"]["awake"], live["devices"]["known"]
            );
        }
        None => println!("gateway   not answering on [http] listen (stopped, or HTTP off)"),
    }
    println!(
        "store     queued {}  held {}  dead letters {}  devices {}",
        store["queued"], store["held"], store["dead_letters"], store["devices"]
    );
    println!(
        "stalls    oldest queued {} s  oldest held {} s",
        store["oldest_queued_age_s"], store["oldest_held_age_s"]
    );
    Ok(())
}

/// A plain HTTP/1.1 GET to the gateway's own loopback API; `None` if it does not answer 200.
fn local_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return None;
    }
    Some(body.to_owned())
}
