//! Turns one incoming PUBLISH into what intake must do with it, with no I/O: decode, validate,
//! and pick the contract's error for bad input. Every decoder a device can reach starts here.

use crate::wire::ErrorCode;
use bytes::Bytes;
use ciborium::Value;
use rumqttc::v5::mqttbytes::v5::Publish;

use crate::analytics::ops::{self, Call, OpError, PrepareError};
use crate::config::Limits;
use crate::store::deadletters::DeadLetter;
use crate::store::now_ms;
use crate::store::telemetry::Reading;
use crate::wire::envelope::{
    decode_ack_envelope, decode_request, decode_value, map_get, WireError,
};
use crate::wire::topics::{self, DeviceTopic};
use crate::wire::{Correlation, DeviceId, Reply};

/// Where and how to answer a request.
#[derive(Debug, Clone)]
pub struct Address {
    /// The device.
    pub device: DeviceId,
    /// The reply topic.
    pub topic: String,
    /// Its correlation, when it had one.
    pub corr: Option<Correlation>,
    /// 3.1.1 envelope form (the reply carries `corr` in its payload).
    pub envelope: bool,
}

/// A request that passed validation.
#[derive(Debug)]
pub struct Valid {
    /// Where to answer.
    pub address: Address,
    /// The correlation (always present for a valid request).
    pub corr: Correlation,
    /// The op name.
    pub op: String,
    /// The arguments, CBOR, as stored.
    pub args: Vec<u8>,
    /// What to do.
    pub kind: RequestKind,
    /// The request's own deadline, if it set a Message Expiry Interval (seconds).
    pub expiry_s: Option<u32>,
}

/// A valid request's kind.
#[derive(Debug)]
pub enum RequestKind {
    /// An analytics op to admit.
    Analytics(Call),
    /// `status` of the earlier request with this correlation.
    Status(Correlation),
    /// `cancel` of the earlier request with this correlation.
    Cancel(Correlation),
}

/// A request refused at intake: answered once, never stored.
#[derive(Debug)]
pub struct Rejection {
    /// Where to answer.
    pub address: Address,
    /// The answer.
    pub reply: Reply,
    /// The dead letter to record (400, 403, 404, 413; not 429/503).
    pub dead: Option<DeadLetter>,
}

/// What one incoming publish is.
#[derive(Debug)]
pub enum Incoming {
    /// A valid request.
    Request(Valid),
    /// A request refused at intake.
    Rejected(Rejection),
    /// `devices/{id}/ack`.
    Ack(DeviceId, Correlation),
    /// `devices/{id}/telemetry`.
    Telemetry(DeviceId, Vec<Reading>),
    /// `devices/{id}/presence`: awake for `Some(ms)`, asleep for `None`.
    Presence(DeviceId, Option<u64>),
    /// Nothing for the gateway (a malformed ack, telemetry or presence is logged and dropped).
    Ignored,
}

/// Classifies a publish.
pub fn classify(publish: &Publish, limits: &Limits) -> Incoming {
    let Ok(topic) = std::str::from_utf8(&publish.topic) else {
        return Incoming::Ignored;
    };
    let Some((device, kind)) = topics::parse_device_topic(topic) else {
        return Incoming::Ignored;
    };
    let props = publish.properties.as_ref();
    let corr_property = props.and_then(|p| p.correlation_data.clone());
    match kind {
        DeviceTopic::Request(op) => request(publish, limits, device, op),
        DeviceTopic::Ack => corr_property
            .map(Correlation)
            .or_else(|| decode_ack_envelope(&publish.payload))
            .map_or(Incoming::Ignored, |corr| Incoming::Ack(device, corr)),
        DeviceTopic::Telemetry => match telemetry(&publish.payload) {
            Some(readings) => Incoming::Telemetry(device, readings),
            None => Incoming::Ignored,
        },
        DeviceTopic::Presence => presence(&publish.payload, limits)
            .map_or(Incoming::Ignored, |awake| Incoming::Presence(device, awake)),
    }
}

fn request(publish: &Publish, limits: &Limits, device: DeviceId, op: String) -> Incoming {
    let props = publish.properties.as_ref();
    let corr_property = props.and_then(|p| p.correlation_data.clone());
    let default_topic = topics::reply(&device);
    let mut address = Address {
        device: device.clone(),
        topic: default_topic.clone(),
        corr: corr_property.clone().map(Correlation),
        envelope: false,
    };
    let reject = |address: Address, code: ErrorCode, message: String| {
        let dead = DeadLetter {
            at_ms: now_ms(),
            device: Some(address.device.to_string()),
            request_id: None,
            corr: address.corr.as_ref().map(|c| c.to_string()),
            op: Some(op.clone()),
            status: code.status().code(),
            reason: format!("{code}: {message}"),
        };
        Incoming::Rejected(Rejection {
            address,
            reply: Reply::rejected(code, message),
            dead: Some(dead),
        })
    };
    if publish.payload.len() > limits.max_payload_bytes {
        let message = format!(
            "payload of {} bytes is larger than limits.max_payload_bytes = {}",
            publish.payload.len(),
            limits.max_payload_bytes
        );
        return reject(address, ErrorCode::TooLarge, message);
    }
    let body = match decode_request(&publish.payload, corr_property) {
        Ok(body) => body,
        Err(
            error @ (WireError::NotCbor(_)
            | WireError::NotMap
            | WireError::NoCorrelation
            | WireError::BadReply(_)),
        ) => {
            return reject(address, ErrorCode::BadRequest, error.to_string());
        }
    };
    address.corr = Some(body.corr.clone());
    address.envelope = body.envelope;
    if let Some(topic) = props.and_then(|p| p.response_topic.as_deref()) {
        if !topics::is_own_reply_topic(&device, topic) {
            let message = format!("Response Topic {topic:?} is outside devices/{device}/reply");
            return reject(address, ErrorCode::ForbiddenReplyTopic, message);
        }
        address.topic = topic.to_owned();
    }
    let kind = match op.as_str() {
        "status" | "cancel" => match of_argument(&body.args) {
            Some(of) if op == "status" => RequestKind::Status(of),
            Some(of) => RequestKind::Cancel(of),
            None => {
                let message = format!(
                    "{op} needs {{\"of\": bstr}}, the Correlation Data of an earlier request"
                );
                return reject(address, ErrorCode::BadArgs, message);
            }
        },
        _ => match ops::prepare(&op, &body.args, limits.max_series_len) {
            Ok(call) => RequestKind::Analytics(call),
            Err(PrepareError::UnknownOp(_)) => {
                let message = format!("unknown op {op:?}");
                return reject(address, ErrorCode::UnknownOp, message);
            }
            Err(PrepareError::Op(OpError::TooLarge(message))) => {
                return reject(address, ErrorCode::TooLarge, message);
            }
            Err(PrepareError::UnknownModel(model)) => {
                let message = format!("no model {model:?} is configured");
                return reject(address, ErrorCode::UnknownModel, message);
            }
            Err(PrepareError::Op(
                OpError::BadArgs(message) | OpError::Failed(message) | OpError::TimedOut(message),
            )) => {
                return reject(address, ErrorCode::BadArgs, message);
            }
        },
    };
    Incoming::Request(Valid {
        address,
        corr: body.corr,
        // MQTT 5: the payload is exactly the arguments; only an envelope needs re-encoding.
        args: if body.envelope {
            crate::wire::envelope::encode_value(&body.args)
        } else {
            publish.payload.to_vec()
        },
        op,
        kind,
        expiry_s: props.and_then(|p| p.message_expiry_interval),
    })
}

fn of_argument(args: &Value) -> Option<Correlation> {
    let Value::Map(entries) = args else {
        return None;
    };
    match map_get(entries, "of") {
        Some(Value::Bytes(of)) => Some(Correlation(Bytes::copy_from_slice(of))),
        _ => None,
    }
}

/// `{"ts": uint, "<metric>": number, ...}` or an array of them. Invalid entries are skipped;
/// `None` when nothing valid is left.
fn telemetry(payload: &[u8]) -> Option<Vec<Reading>> {
    let value = decode_value(payload).ok()?;
    let maps = match value {
        Value::Array(items) => items,
        map @ Value::Map(_) => vec![map],
        _ => return None,
    };
    let mut readings = Vec::new();
    for item in maps {
        let Value::Map(entries) = item else { continue };
        let Some(ts) = map_get(&entries, "ts")
            .and_then(Value::as_integer)
            .and_then(|i| i64::try_from(i).ok())
        else {
            continue;
        };
        for (key, value) in &entries {
            match (key.as_text(), ops::as_finite(value)) {
                (Some(metric), Some(value)) if metric != "ts" && !metric.is_empty() => readings
                    .push(Reading {
                        metric: metric.to_owned(),
                        ts,
                        value,
                    }),
                _ => {}
            }
        }
    }
    (!readings.is_empty()).then_some(readings)
}

/// `Some(Some(listen_ms))` for awake, `Some(None)` for asleep.
fn presence(payload: &[u8], limits: &Limits) -> Option<Option<u64>> {
    let Value::Map(entries) = decode_value(payload).ok()? else {
        return None;
    };
    match map_get(&entries, "state").and_then(Value::as_text)? {
        "awake" => {
            let default = limits.listen_window.as_millis() as u64;
            let listen = map_get(&entries, "listen_ms")
                .and_then(Value::as_integer)
                .and_then(|i| u64::try_from(i).ok())
                .unwrap_or(default);
            Some(Some(listen))
        }
        "asleep" => Some(None),
        _ => None,
    }
}
