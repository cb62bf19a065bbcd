//! The operator's terminal views and actions over the same store as a running gateway (the
//! store's `Console`: SQLite in WAL mode, or PostgreSQL, lets them read while it serves):
//! `gateway status`, `gateway devices list|show`, `gateway requests show|cancel`. Each prints a
//! human view, or with `--json` the document the HTTP API serves for the same thing. Fed by the
//! command line ([`crate::cli`]).

mod request;
mod status;

pub use request::{cancel_request, show_request};
pub use status::status;

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::json;

use super::requests::{open, print_json};
use crate::cli::CliError;
use crate::config::Config;
use crate::status::rfc3339_ms;
use crate::store::devices::{self, DeviceDetail};
use crate::store::now_ms;

/// Requests, held replies and dead letters `devices show` lists.
const RECENT: usize = 50;

/// `gateway devices ...`: the devices the store knows (what the dashboard lists).
#[derive(Debug, Subcommand)]
pub enum DevicesAction {
    /// Devices in natural id order, with last seen, queued, held and last error.
    List {
        /// The configuration file (for `data_dir`).
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
        /// Only ids containing this text.
        #[arg(long)]
        search: Option<String>,
        /// Only devices awake now.
        #[arg(long)]
        awake: bool,
        /// Only devices with held replies.
        #[arg(long)]
        held: bool,
        /// Only devices with a last error.
        #[arg(long)]
        errors: bool,
        /// Skip this many.
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One device: its state, recent requests (with where each is), held replies, dead letters.
    Show {
        /// The configuration file (for `data_dir`).
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
        /// The device id.
        id: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn ago(ms: Option<i64>) -> String {
    ms.map(|at| format!("{} s ago", (now_ms() - at).max(0) / 1000))
        .unwrap_or_default()
}

/// Runs `gateway devices ...`.
pub fn devices(action: DevicesAction) -> std::process::ExitCode {
    match action {
        DevicesAction::List {
            config,
            search,
            awake,
            held,
            errors,
            offset,
            limit,
            json,
        } => crate::cli::with_config(&config, |config| {
            let filter = devices::Filter {
                search,
                awake,
                held,
                errors,
            };
            list_devices(config, &filter, offset, limit, json)
        }),
        DevicesAction::Show { config, id, json } => {
            crate::cli::with_config(&config, |config| show_device(config, &id, json))
        }
    }
}

fn list_devices(
    config: &Config,
    filter: &devices::Filter,
    offset: usize,
    limit: usize,
    json: bool,
) -> Result<(), CliError> {
    let (total, rows) = open(config, false)?.devices_page(filter, offset, limit.max(1))?;
    if json {
        return print_json(&json!({
            "total": total, "offset": offset, "limit": limit, "devices": rows,
        }));
    }
    println!(
        "{:<24}  {:<6}  {:<14}  {:>6}  {:>5}  {:>11}  last error",
        "device", "state", "last seen", "queued", "held", "oldest held"
    );
    for row in &rows {
        println!(
            "{:<24}  {:<6}  {:<14}  {:>6}  {:>5}  {:>11}  {}",
            row.id,
            if row.awake { "awake" } else { "asleep" },
            ago(row.last_seen_ms),
            row.queued,
            row.held,
            row.oldest_held_ms
                .map(|at| format!("{} s", (now_ms() - at).max(0) / 1000))
                .unwrap_or_default(),
            row.last_error.as_deref().unwrap_or(""),
        );
    }
    println!("({} of {total} devices from offset {offset})", rows.len());
    Ok(())
}

fn show_device(config: &Config, id: &str, json: bool) -> Result<(), CliError> {
    let Some(detail) = open(config, false)?.device(id, RECENT)? else {
        return Err(format!("unknown device {id:?}").into());
    };
    if json {
        return print_json(&detail);
    }
    let DeviceDetail {
        device,
        recent_requests: recent,
        held_replies: held,
        dead_letters: dead,
        dead_letters_total: dead_total,
    } = detail;
    println!("device      {}", device.id);
    println!(
        "state       {}",
        if device.awake { "awake" } else { "asleep" }
    );
    println!(
        "last seen   {}",
        device.last_seen_ms.map(rfc3339_ms).unwrap_or_default()
    );
    println!("queued      {}", device.queued);
    println!("held        {}", device.held);
    println!(
        "last error  {}",
        device.last_error.as_deref().unwrap_or("none")
    );
    println!("\nrecent requests (queued → done → held → acked / dead):");
    for request in recent
        .iter()
        .chain(held.iter().filter(|h| !recent.iter().any(|r| r.id == h.id)))
    {
        println!(
            "  {}  {:<10}  {:>3}  {:<7}  {}",
            request.id,
            request.op,
            request.status.map(|s| s.to_string()).unwrap_or_default(),
            request.lifecycle,
            rfc3339_ms(request.received_ms),
        );
    }
    println!("\ndead letters: {dead_total}");
    for row in dead {
        println!(
            "  {:>6}  {}  {:>3}  {}",
            row.id,
            rfc3339_ms(row.letter.at_ms),
            row.letter.status,
            row.letter.reason
        );
    }
    Ok(())
}
