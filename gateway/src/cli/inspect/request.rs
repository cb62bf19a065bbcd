//! `gateway requests show ID` and `gateway requests cancel ID`.

use serde_json::json;

use super::{open, print_json};
use crate::cli::CliError;
use crate::config::Config;
use crate::status::rfc3339_ms;
use crate::store::now_ms;
use crate::store::requests::OperatorCancel;
use crate::wire::{Correlation, ErrorCode, Reply, RequestId, State, Status};

/// `gateway requests show ID`
pub fn show_request(config: &Config, id: &str, json: bool) -> Result<(), CliError> {
    let Some(detail) = open(config, false)?.request(id)? else {
        return Err(format!("no request {id}").into());
    };
    if json {
        return print_json(&serde_json::to_value(&detail).map_err(|e| e.to_string())?);
    }
    let s = &detail.summary;
    println!("request     {}", s.id);
    println!("device      {}", s.device);
    println!("op          {}", s.op);
    println!("correlation {}", s.corr);
    println!("state       {} ({})", s.lifecycle, s.state);
    println!(
        "status      {}",
        s.status.map(|c| c.to_string()).unwrap_or_default()
    );
    println!("received    {}", rfc3339_ms(s.received_ms));
    println!(
        "finished    {}",
        s.finished_ms.map(rfc3339_ms).unwrap_or_default()
    );
    println!("published   {} time(s), runs {}", s.published, s.executions);
    println!("reply topic {}", detail.reply_topic);
    let text =
        |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string()).unwrap_or_default();
    println!("args        {}", text(&detail.args));
    println!("reply       {}", text(&detail.reply));
    Ok(())
}

/// `gateway requests cancel ID`: a queued request gets its final `410`, held for its device.
pub fn cancel_request(config: &Config, id: &str, json: bool) -> Result<(), CliError> {
    let now = now_ms();
    let expires_ms = now + config.limits.reply_ttl.as_millis() as i64;
    let outcome = open(config, true)?.cancel_request(id, now, expires_ms, operator_cancelled)?;
    let (ok, state, message) = match outcome {
        OperatorCancel::Cancelled => (
            true,
            "cancelled",
            format!("request {id} cancelled: its 410 reply is held and goes out when its device next wakes"),
        ),
        OperatorCancel::AlreadyFinished(state) => (
            false,
            state.as_str(),
            format!("request {id} has already finished ({})", state.as_str()),
        ),
        OperatorCancel::NotFound => (false, "unknown", format!("no request {id}")),
    };
    if json {
        print_json(&json!({ "request_id": id, "cancelled": ok, "state": state }))?;
        return if ok { Ok(()) } else { Err(message.into()) };
    }
    if ok {
        println!("{message}");
        Ok(())
    } else {
        Err(message.into())
    }
}

/// The final reply an operator's cancel records: `410`, like the device's own cancel.
fn operator_cancelled(request: RequestId, envelope: bool, corr: &Correlation) -> Vec<u8> {
    let mut reply = Reply::new(Status::Gone, State::Cancelled)
        .with_error(ErrorCode::Cancelled, "an operator cancelled this request");
    reply.request_id = Some(request);
    if envelope {
        reply.corr = Some(corr.clone());
    }
    reply.encode()
}
