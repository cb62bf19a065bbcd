//! `device-sim echo`: a trivial responder. It subscribes to `devices/+/req/+` and answers each
//! request at once with a final `200` on the request's Response Topic (or the default reply
//! topic), carrying its Correlation Data, Content Type and `status` user property, just as the
//! gateway's final reply does — but with no store, no `202` and no worker pool. `stats` gets its
//! real result (16 values cost microseconds); other ops get `404`. So `load --expect-202 false`
//! against it measures the broker's own round-trip ceiling.
//!
//! Against a running gateway the gateway would answer too, so for the yardstick of the gateway's
//! own message path use `gateway echo --listen ADDR` (the front door and rumqttd with nothing
//! behind them) instead.

use std::process::ExitCode;
use std::time::Duration;
use wire::ErrorCode;

use ciborium::Value;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use wire::envelope::{decode_value, map_get};
use wire::topics::{self, DeviceTopic};
use wire::{Reply, RequestId, State, Status};

use crate::cli::EchoArgs;
use crate::connection::{Link, LinkEvent, LinkOptions};
use crate::verify::stats_value;

/// Runs the responder until Ctrl-C, SIGTERM or `--duration`.
pub async fn run(args: EchoArgs) -> ExitCode {
    let (host, port) = match super::parse_broker(&args.broker) {
        Ok(ok) => ok,
        Err(message) => return super::usage(message),
    };
    let mut options = LinkOptions::new(&host, port, args.client_id.clone());
    options.inflight = 512;
    let mut link = Link::open(&options);
    let stop = stop_signal(args.duration);
    tokio::pin!(stop);
    let mut answered = 0u64;
    loop {
        let event = tokio::select! {
            event = link.events.recv() => event,
            _ = &mut stop => break,
        };
        match event {
            Some(LinkEvent::Connected { .. }) => {
                let subscribe = link
                    .client
                    .subscribe(topics::REQUEST_FILTER, QoS::AtLeastOnce);
                if let Err(error) = subscribe.await {
                    eprintln!("device-sim echo: cannot subscribe: {error}");
                    return ExitCode::FAILURE;
                }
            }
            Some(LinkEvent::Subscribed { granted }) => {
                if !granted {
                    eprintln!(
                        "device-sim echo: the broker refused {}",
                        topics::REQUEST_FILTER
                    );
                    return ExitCode::FAILURE;
                }
                println!("device-sim echo ready on {host}:{port}");
            }
            Some(LinkEvent::Message(publish)) => {
                if answer(&link.client, &publish).await {
                    answered += 1;
                }
            }
            Some(LinkEvent::Error(error)) => {
                eprintln!("device-sim echo: connection: {error} (retrying)");
            }
            Some(LinkEvent::Closed) | None => break,
        }
    }
    link.close(Duration::from_secs(2)).await;
    println!("device-sim echo: answered {answered} requests");
    ExitCode::SUCCESS
}

/// Resolves on Ctrl-C, SIGTERM, or after `duration`.
async fn stop_signal(duration: Option<Duration>) {
    let timer = async {
        match duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = timer => {}
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The reply to one request with its properties, or `None` when it cannot be addressed (no
/// correlation, bad topic).
fn reply_for(publish: &Publish) -> Option<(String, Reply, PublishProperties)> {
    let topic = std::str::from_utf8(&publish.topic).ok()?;
    let (device, DeviceTopic::Request(op)) = topics::parse_device_topic(topic)? else {
        return None;
    };
    let props = publish.properties.as_ref()?;
    let corr = props.correlation_data.clone()?;
    let reply_topic = match &props.response_topic {
        Some(wanted) if topics::is_own_reply_topic(&device, wanted) => wanted.clone(),
        _ => topics::reply(&device),
    };
    let reply = match (op.as_str(), series(&publish.payload)) {
        ("stats", Some(values)) => match stats_value(&values) {
            Some(result) => {
                let mut reply = Reply::new(Status::Ok, State::Done);
                reply.request_id = Some(RequestId::new());
                reply.result = Some(result);
                reply
            }
            None => Reply::rejected(ErrorCode::BadArgs, "the series is empty"),
        },
        ("stats", None) => Reply::rejected(ErrorCode::BadArgs, "no `values` array"),
        _ => Reply::rejected(ErrorCode::UnknownOp, "device-sim echo answers stats only"),
    };
    let properties = PublishProperties {
        correlation_data: Some(corr),
        content_type: Some("application/cbor".into()),
        user_properties: vec![("status".into(), reply.status.code().to_string())],
        ..PublishProperties::default()
    };
    Some((reply_topic, reply, properties))
}

/// The `values` of a request's argument map.
fn series(payload: &[u8]) -> Option<Vec<f64>> {
    let Value::Map(args) = decode_value(payload).ok()? else {
        return None;
    };
    let Value::Array(items) = map_get(&args, "values")? else {
        return None;
    };
    items
        .iter()
        .map(|v| match v {
            Value::Float(f) => Some(*f),
            Value::Integer(i) => Some(i128::from(*i) as f64),
            _ => None,
        })
        .collect()
}

async fn answer(client: &AsyncClient, publish: &Publish) -> bool {
    let Some((topic, reply, properties)) = reply_for(publish) else {
        return false;
    };
    let sent = client
        .publish_with_properties(topic, QoS::AtLeastOnce, false, reply.encode(), properties)
        .await;
    sent.is_ok()
}
