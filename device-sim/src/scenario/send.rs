//! `device-sim send`: one request by hand, as device X, with its arguments as JSON. Connects,
//! subscribes to its replies, publishes the request (Correlation Data and Response Topic set),
//! prints each reply for it as one line of JSON (the `202`, then the final reply), acknowledges
//! the final one and exits: 0 for a final `2xx`, 1 for an error reply or no final reply within
//! `--timeout`, 2 for a usage mistake.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use wire::envelope::encode_value;
use wire::json::{json_to_cbor, payload_to_json};
use wire::{topics, DeviceId, Reply, Status};

use super::{parse_broker, usage};
use crate::connection::MAX_PACKET_BYTES;

/// `device-sim send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The gateway's device-facing address.
    #[arg(long, default_value = "127.0.0.1:1883", value_name = "HOST:PORT")]
    pub broker: String,
    /// Send as this device (its MQTT client id).
    #[arg(long, value_name = "ID")]
    pub device: String,
    /// The op: stats, histogram, anomaly, trend, spectrum, infer, status, cancel.
    #[arg(long)]
    pub op: String,
    /// The op's arguments as a JSON object (sent as CBOR).
    #[arg(long, default_value = "{}", value_name = "JSON")]
    pub args: String,
    /// Correlation Data (default: a fresh random one). Sending the same again asks for the
    /// request's current state, as a device does after waking.
    #[arg(long)]
    pub corr: Option<String>,
    /// The device's secret (user name = the device id), for a provisioned device.
    #[arg(long)]
    pub password: Option<String>,
    /// Give up waiting for the final reply after this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Sends one request and prints its replies.
pub async fn run(args: SendArgs) -> ExitCode {
    let Some(device) = DeviceId::parse(&args.device) else {
        return usage(format!(
            "--device {:?} is not a device id ([A-Za-z0-9._-], 1 to 64)",
            args.device
        ));
    };
    let arguments: serde_json::Value = match serde_json::from_str(&args.args) {
        Ok(value @ serde_json::Value::Object(_)) => value,
        Ok(_) => return usage("--args must be a JSON object, e.g. '{\"values\": [1, 2, 3]}'"),
        Err(error) => return usage(format!("--args is not JSON: {error}")),
    };
    let (host, port) = match parse_broker(&args.broker) {
        Ok(address) => address,
        Err(message) => return usage(message),
    };
    let corr = args
        .corr
        .clone()
        .unwrap_or_else(|| format!("send-{}", uuid::Uuid::new_v4().simple()));
    let mut options = MqttOptions::new(device.as_str(), host, port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(Some(MAX_PACKET_BYTES));
    if let Some(password) = &args.password {
        options.set_credentials(device.as_str(), password.as_str());
    }
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let outcome = tokio::time::timeout(args.timeout, async {
        client
            .subscribe(topics::reply_filter(&device), QoS::AtLeastOnce)
            .await
            .map_err(|e| e.to_string())?;
        let mut sent = false;
        loop {
            match eventloop.poll().await.map_err(|e| e.to_string())? {
                Event::Incoming(Packet::SubAck(_)) if !sent => {
                    sent = true;
                    let properties = PublishProperties {
                        correlation_data: Some(Bytes::from(corr.clone().into_bytes())),
                        response_topic: Some(topics::reply(&device)),
                        ..Default::default()
                    };
                    client
                        .publish_with_properties(
                            topics::request(&device, &args.op),
                            QoS::AtLeastOnce,
                            false,
                            encode_value(&json_to_cbor(&arguments)),
                            properties,
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Event::Incoming(Packet::Publish(publish)) => {
                    let ours = publish
                        .properties
                        .as_ref()
                        .and_then(|p| p.correlation_data.as_deref())
                        == Some(corr.as_bytes());
                    if !ours {
                        continue;
                    }
                    let json = payload_to_json(&publish.payload)
                        .unwrap_or_else(|| serde_json::json!({"undecodable": true}));
                    println!("{json}");
                    let status = Reply::decode(&publish.payload)
                        .map(|reply| reply.status)
                        .map_err(|e| e.to_string())?;
                    if status != Status::Accepted {
                        let ack = PublishProperties {
                            correlation_data: Some(Bytes::from(corr.clone().into_bytes())),
                            ..Default::default()
                        };
                        client
                            .publish_with_properties(
                                topics::ack(&device),
                                QoS::AtLeastOnce,
                                false,
                                Vec::new(),
                                ack,
                            )
                            .await
                            .map_err(|e| e.to_string())?;
                        return Ok::<Status, String>(status);
                    }
                }
                _ => {}
            }
        }
    })
    .await;
    let status = match outcome {
        Ok(Ok(status)) => status,
        Ok(Err(error)) => {
            eprintln!("device-sim send: {error}");
            return ExitCode::FAILURE;
        }
        Err(_) => {
            eprintln!(
                "device-sim send: no final reply within {}",
                humantime::format_duration(args.timeout)
            );
            return ExitCode::FAILURE;
        }
    };
    // Let the ack reach the gateway before leaving.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    let _ = client.disconnect().await;
    if status.code() < 400 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
