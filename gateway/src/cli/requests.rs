//! Operator subcommands over the same config and store as a running gateway (the store's
//! [`Console`]: SQLite in WAL mode, or PostgreSQL, lets them read while it serves). Human tables
//! by default, `--json` for scripts.

use super::CliError;
use crate::config::Config;
use crate::status::rfc3339_ms;
use crate::store::deadletters::Requeue;
use crate::store::{self, Console};

pub(super) fn open(config: &Config, write: bool) -> Result<Console, CliError> {
    Ok(Console::open(
        &config.store,
        &config.gateway.data_dir,
        write,
    )?)
}

/// Prints `value` as pretty JSON; a closed pipe (`| head`) is the reader's choice, not an error.
pub(super) fn print_json<T: serde::Serialize>(value: &T) -> Result<(), CliError> {
    use std::io::Write;
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    let _ = writeln!(std::io::stdout().lock(), "{text}");
    Ok(())
}

/// `gateway backup FILE`
pub fn backup(config: &Config, file: &std::path::Path) -> Result<(), CliError> {
    let report = open(config, false)?.backup(file)?;
    println!(
        "backed up {} pages ({} bytes) to {}; integrity_check ok",
        report.pages,
        report.bytes,
        report.path.display()
    );
    Ok(())
}

/// `gateway requests list`
pub fn list_requests(
    config: &Config,
    device: Option<&str>,
    state: Option<&str>,
    limit: usize,
    json: bool,
) -> Result<(), CliError> {
    let rows = open(config, false)?.requests(device, state, limit)?;
    if json {
        return print_json(&rows);
    }
    println!(
        "{:<36}  {:<16}  {:<10}  {:<9}  {:>6}  {:<8}  {:>4}  received",
        "request_id", "device", "op", "state", "status", "delivery", "runs"
    );
    for row in rows {
        println!(
            "{:<36}  {:<16}  {:<10}  {:<9}  {:>6}  {:<8}  {:>4}  {}",
            row.id,
            row.device,
            row.op,
            row.state,
            row.status.map(|s| s.to_string()).unwrap_or_default(),
            row.delivery.unwrap_or_default(),
            row.executions,
            rfc3339_ms(row.received_ms),
        );
    }
    Ok(())
}

/// `gateway deadletters list`
pub fn list_dead_letters(config: &Config, limit: usize, json: bool) -> Result<(), CliError> {
    let rows = open(config, false)?.dead_letters(limit)?;
    if json {
        return print_json(&rows);
    }
    println!(
        "{:>6}  {:<24}  {:<16}  {:>6}  reason",
        "id", "at", "device", "status"
    );
    for row in rows {
        println!(
            "{:>6}  {:<24}  {:<16}  {:>6}  {}",
            row.id,
            rfc3339_ms(row.letter.at_ms),
            row.letter.device.unwrap_or_default(),
            row.letter.status,
            row.letter.reason,
        );
    }
    Ok(())
}

/// `gateway deadletters requeue ID`
pub fn requeue_dead_letter(config: &Config, id: i64, json: bool) -> Result<(), CliError> {
    let console = open(config, true)?;
    let expires_ms = store::now_ms() + config.limits.reply_ttl.as_millis() as i64;
    let outcome = console.requeue(id, expires_ms)?;
    let (requeued, message) = match &outcome {
        Requeue::Requeued(request) => (Some(request.clone()), format!("dead letter {id} requeued: request {request} is held again and will be delivered when its device next wakes")),
        Requeue::NotStored => (None, format!("dead letter {id} is a request refused at intake; it was never stored, so the device must send it again")),
        Requeue::AlreadyRequeued => (None, format!("dead letter {id} was already requeued")),
        Requeue::NotDead => (None, format!("dead letter {id}: its request is no longer stored or its reply is not dead")),
        Requeue::NotFound => (None, format!("no dead letter {id}")),
    };
    if json {
        print_json(
            &serde_json::json!({ "id": id, "requeued": requeued.is_some(), "request_id": requeued }),
        )?;
    } else if requeued.is_some() {
        println!("{message}");
    }
    match requeued {
        Some(_) => Ok(()),
        None => Err(message.into()),
    }
}
