//! `gateway echo --listen ADDR`: the message path with nothing behind it, the yardstick of
//! `device-sim/bench.sh`. The gateway's own front door and embedded rumqttd, wired exactly as
//! `gateway run` wires them (devices terminated at the front door, their publishes on the
//! service inbox, replies back through the front door's router), but every request is
//! answered at once with a final reply computed in place: no store, no `202`, no worker pool.
//! `stats` gets its real result; other ops get `404`. So `device-sim load --expect-202 false`
//! against it measures the front door's own round-trip ceiling on this machine.

use crate::wire::ErrorCode;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use ciborium::Value;
use tokio_util::sync::CancellationToken;

use crate::analytics::ops;
use crate::broker::EmbeddedBroker;
use crate::config::{AuthConfig, Limits};
use crate::flow::{self, OutboundReply};
use crate::frontdoor::{FrontDoor, Settings};
use crate::wire::topics::{self, DeviceTopic};
use crate::wire::{envelope, Correlation, Reply, RequestId, State, Status};

/// Serves until SIGINT/SIGTERM or `duration`; prints `gateway echo listening mqtt=ADDR`.
pub fn run(listen: SocketAddr, duration: Option<Duration>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("gateway echo: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(listen, duration))
}

async fn serve(listen: SocketAddr, duration: Option<Duration>) -> ExitCode {
    let dir = match tempfile_dir() {
        Ok(dir) => dir,
        Err(message) => return fail(message),
    };
    let limits = Limits::default();
    let settings = Settings {
        listen,
        limits: limits.clone(),
        auth: AuthConfig {
            allow_anonymous: true,
            allow_anonymous_remote: false,
        },
        tls: None,
        db_path: dir.join(crate::store::DB_FILE),
    };
    let front = match FrontDoor::bind(settings).await {
        Ok(front) => front,
        Err(error) => {
            eprintln!("gateway echo: {error}");
            return ExitCode::from(crate::config::EXIT_CONFIG);
        }
    };
    let addr = front.local_addr().unwrap_or(listen);
    // Starting rumqttd probes its listeners synchronously: keep that off the async workers.
    let broker = match tokio::task::spawn_blocking(move || EmbeddedBroker::start(&limits)).await {
        Ok(Ok(broker)) => broker,
        Ok(Err(error)) => return fail(error.to_string()),
        Err(error) => return fail(error.to_string()),
    };
    let stop = CancellationToken::new();
    let router = front.router();
    let (inbox_tx, mut inbox_rx) = flow::inbox();
    // Presence matters to the gateway's outbox only; here it is drained and dropped.
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move { while events_rx.recv().await.is_some() {} });
    tokio::spawn(front.run(broker, inbox_tx, events_tx, stop.clone()));
    println!("gateway echo listening mqtt={addr}");
    let deadline = async {
        match duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let shutdown = crate::app::shutdown_signal();
    tokio::pin!(shutdown);
    let mut answered = 0u64;
    loop {
        let inbound = tokio::select! {
            inbound = inbox_rx.recv() => inbound,
            _ = &mut deadline => break,
            _ = &mut shutdown => break,
        };
        let Some(inbound) = inbound else { break };
        if let Some(reply) = answer(&inbound.publish) {
            router.reply(reply);
            answered += 1;
        }
        inbound.ack().await;
    }
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
    println!("gateway echo: answered {answered} requests");
    ExitCode::SUCCESS
}

/// The final reply to one MQTT 5 request, or `None` when it cannot be addressed (not a
/// request, or no Correlation Data).
fn answer(publish: &rumqttc::v5::mqttbytes::v5::Publish) -> Option<OutboundReply> {
    let topic = std::str::from_utf8(&publish.topic).ok()?;
    let (device, DeviceTopic::Request(op)) = topics::parse_device_topic(topic)? else {
        return None;
    };
    let props = publish.properties.as_ref()?;
    let corr = Correlation(props.correlation_data.clone()?);
    let reply_topic = match &props.response_topic {
        Some(wanted) if topics::is_own_reply_topic(&device, wanted) => wanted.clone(),
        _ => topics::reply(&device),
    };
    let reply = match op.as_str() {
        "stats" => stats(&publish.payload),
        _ => Reply::rejected(ErrorCode::UnknownOp, "gateway echo answers stats only"),
    };
    Some(OutboundReply {
        device,
        topic: reply_topic,
        payload: reply.encode(),
        corr: Some(corr),
        status: reply.status,
        expiry: Duration::from_secs(3600),
        envelope: false,
    })
}

/// A `stats` request answered with the gateway's own op.
fn stats(payload: &[u8]) -> Reply {
    let args = envelope::decode_value(payload).unwrap_or(Value::Null);
    let result = ops::prepare("stats", &args, usize::MAX)
        .map_err(|e| e.to_string())
        .and_then(|call| match &call.source {
            ops::Source::Inline(series) => call.prepared.run(series).map_err(|e| e.to_string()),
            ops::Source::Telemetry { .. } => Err("gateway echo has no telemetry".into()),
            ops::Source::Own => Err("gateway echo answers stats only".into()),
        });
    match result {
        Ok(result) => {
            let mut reply = Reply::new(Status::Ok, State::Done);
            reply.request_id = Some(RequestId::new());
            reply.result = Some(result);
            reply
        }
        Err(message) => Reply::rejected(ErrorCode::BadArgs, &message),
    }
}

/// A fresh directory for the (empty) credentials database the front door reads.
fn tempfile_dir() -> Result<std::path::PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("roost-echo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

fn fail(message: String) -> ExitCode {
    eprintln!("gateway echo: {message}");
    ExitCode::FAILURE
}
