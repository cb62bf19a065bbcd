//! CBOR payloads: decoding a device's request body and encoding (or decoding) a reply.
//!
//! MQTT 5 devices send the op's arguments as the whole payload and put their correlation in the
//! Correlation Data property; MQTT 3.1.1 devices (no properties) wrap it as
//! `{"corr": bstr, "args": map}` and get `"corr"` back inside the reply.

use crate::ErrorCode;
use bytes::Bytes;
use ciborium::Value;

use super::ids::{Correlation, RequestId};
use super::status::{State, Status};

/// Why a payload could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The bytes are not one well-formed CBOR item.
    #[error("payload is not CBOR: {0}")]
    NotCbor(String),
    /// The item is not a map.
    #[error("payload is not a CBOR map")]
    NotMap,
    /// Neither a Correlation Data property nor a `{"corr", "args"}` envelope.
    #[error("request has no Correlation Data and no {{\"corr\", \"args\"}} envelope")]
    NoCorrelation,
    /// A reply map that lacks a key or has one of the wrong type.
    #[error("reply field {0} is missing or of the wrong type")]
    BadReply(&'static str),
}

/// A request's decoded body.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestBody {
    /// The correlation the reply must carry.
    pub corr: Correlation,
    /// The op's arguments: always a CBOR map.
    pub args: Value,
    /// Whether it came in the 3.1.1 envelope (so the reply carries `"corr"` in its payload).
    pub envelope: bool,
}

/// Decodes a CBOR payload into one value, refusing trailing bytes.
pub fn decode_value(payload: &[u8]) -> Result<Value, WireError> {
    let mut reader = payload;
    let value: Value =
        ciborium::from_reader(&mut reader).map_err(|e| WireError::NotCbor(e.to_string()))?;
    if !reader.is_empty() {
        return Err(WireError::NotCbor(format!(
            "{} trailing bytes after the first item",
            reader.len()
        )));
    }
    Ok(value)
}

/// Encodes a CBOR value.
pub fn encode_value(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    ciborium::into_writer(value, &mut out).expect("writing CBOR to a Vec cannot fail");
    out
}

/// Looks up a text key in a CBOR map's entries.
pub fn map_get<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
}

/// Decodes a request body. `corr_property` is the MQTT 5 Correlation Data, if any.
pub fn decode_request(
    payload: &[u8],
    corr_property: Option<Bytes>,
) -> Result<RequestBody, WireError> {
    let value = decode_value(payload)?;
    let Value::Map(entries) = &value else {
        return Err(WireError::NotMap);
    };
    if let Some(corr) = corr_property {
        return Ok(RequestBody {
            corr: Correlation(corr),
            args: value,
            envelope: false,
        });
    }
    match (map_get(entries, "corr"), map_get(entries, "args")) {
        (Some(Value::Bytes(corr)), Some(args @ Value::Map(_))) => Ok(RequestBody {
            corr: Correlation(Bytes::copy_from_slice(corr)),
            args: args.clone(),
            envelope: true,
        }),
        _ => Err(WireError::NoCorrelation),
    }
}

/// Reads the correlation of a 3.1.1 ack payload `{"corr": bstr}`.
pub fn decode_ack_envelope(payload: &[u8]) -> Option<Correlation> {
    match decode_value(payload).ok()? {
        Value::Map(entries) => match map_get(&entries, "corr") {
            Some(Value::Bytes(corr)) => Some(Correlation(Bytes::copy_from_slice(corr))),
            _ => None,
        },
        _ => None,
    }
}

/// The `error` member of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyError {
    /// A stable machine-readable code, e.g. `bad_request`.
    pub code: String,
    /// A human explanation.
    pub message: String,
}

/// A reply payload, as the contract's table describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The status code.
    pub status: Status,
    /// The request's id, whenever it was stored.
    pub request_id: Option<RequestId>,
    /// The request's state.
    pub state: State,
    /// On 202: when the final reply should be ready; on 429/503: when to retry.
    pub retry_after_ms: Option<u64>,
    /// On 200: the result map.
    pub result: Option<Value>,
    /// On 4xx/5xx.
    pub error: Option<ReplyError>,
    /// For 3.1.1 devices: the envelope's correlation, echoed.
    pub corr: Option<Correlation>,
}

impl Reply {
    /// A reply with just a status and state.
    pub fn new(status: Status, state: State) -> Reply {
        Reply {
            status,
            request_id: None,
            state,
            retry_after_ms: None,
            result: None,
            error: None,
            corr: None,
        }
    }

    /// An error reply for a request refused at intake.
    pub fn rejected(code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply::new(code.status(), State::Rejected).with_error(code, message)
    }

    /// Adds an `error` member, and the status that goes with its code.
    pub fn with_error(mut self, code: ErrorCode, message: impl Into<String>) -> Reply {
        self.status = code.status();
        self.error = Some(ReplyError {
            code: code.as_str().to_owned(),
            message: message.into(),
        });
        self
    }

    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let text = |s: &str| Value::Text(s.to_owned());
        let mut map = vec![
            (text("status"), Value::Integer(self.status.code().into())),
            (text("state"), text(self.state.as_str())),
        ];
        if let Some(id) = self.request_id {
            map.push((text("request_id"), Value::Text(id.to_string())));
        }
        if let Some(ms) = self.retry_after_ms {
            map.push((text("retry_after_ms"), Value::Integer(ms.into())));
        }
        if let Some(result) = &self.result {
            map.push((text("result"), result.clone()));
        }
        if let Some(error) = &self.error {
            map.push((
                text("error"),
                Value::Map(vec![
                    (text("code"), text(&error.code)),
                    (text("message"), text(&error.message)),
                ]),
            ));
        }
        if let Some(corr) = &self.corr {
            map.push((text("corr"), Value::Bytes(corr.as_bytes().to_vec())));
        }
        encode_value(&Value::Map(map))
    }

    /// Decodes a reply payload (device side, tests).
    pub fn decode(payload: &[u8]) -> Result<Reply, WireError> {
        let Value::Map(entries) = decode_value(payload)? else {
            return Err(WireError::NotMap);
        };
        let get = |key| map_get(&entries, key);
        let status = get("status")
            .and_then(|v| v.as_integer())
            .and_then(|i| u64::try_from(i).ok())
            .and_then(Status::from_code)
            .ok_or(WireError::BadReply("status"))?;
        let state = get("state")
            .and_then(Value::as_text)
            .and_then(State::parse)
            .ok_or(WireError::BadReply("state"))?;
        let request_id = match get("request_id") {
            None => None,
            Some(v) => Some(
                v.as_text()
                    .and_then(|t| uuid::Uuid::parse_str(t).ok())
                    .map(RequestId)
                    .ok_or(WireError::BadReply("request_id"))?,
            ),
        };
        let retry_after_ms = match get("retry_after_ms") {
            None => None,
            Some(v) => Some(
                v.as_integer()
                    .and_then(|i| u64::try_from(i).ok())
                    .ok_or(WireError::BadReply("retry_after_ms"))?,
            ),
        };
        let error = match get("error") {
            None => None,
            Some(Value::Map(e)) => {
                let field = |k| map_get(e, k).and_then(Value::as_text).map(str::to_owned);
                Some(ReplyError {
                    code: field("code").ok_or(WireError::BadReply("error.code"))?,
                    message: field("message").ok_or(WireError::BadReply("error.message"))?,
                })
            }
            Some(_) => return Err(WireError::BadReply("error")),
        };
        let corr = match get("corr") {
            None => None,
            Some(Value::Bytes(b)) => Some(Correlation(Bytes::copy_from_slice(b))),
            Some(_) => return Err(WireError::BadReply("corr")),
        };
        Ok(Reply {
            status,
            request_id,
            state,
            retry_after_ms,
            result: get("result").cloned(),
            error,
            corr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cbor(value: &Value) -> Vec<u8> {
        encode_value(value)
    }

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    #[test]
    fn v5_request_takes_the_property() {
        let args = Value::Map(vec![(
            text("values"),
            Value::Array(vec![Value::Float(1.0)]),
        )]);
        let body = decode_request(&cbor(&args), Some(Bytes::from_static(b"c1"))).expect("valid");
        assert_eq!(body.corr.as_bytes(), b"c1");
        assert_eq!(body.args, args);
        assert!(!body.envelope);
    }

    #[test]
    fn envelope_request_for_311() {
        let args = Value::Map(vec![]);
        let env = Value::Map(vec![
            (text("corr"), Value::Bytes(b"k".to_vec())),
            (text("args"), args.clone()),
        ]);
        let body = decode_request(&cbor(&env), None).expect("valid envelope");
        assert_eq!(body.corr.as_bytes(), b"k");
        assert_eq!(body.args, args);
        assert!(body.envelope);
        assert_eq!(
            decode_ack_envelope(&cbor(&Value::Map(vec![(
                text("corr"),
                Value::Bytes(b"k".to_vec())
            )])))
            .map(|c| c.0),
            Some(Bytes::from_static(b"k"))
        );
    }

    #[test]
    fn bad_payloads_are_named() {
        assert!(matches!(
            decode_request(b"\xff\xff", Some(Bytes::new())),
            Err(WireError::NotCbor(_))
        ));
        assert!(matches!(
            decode_request(&cbor(&Value::Integer(3.into())), Some(Bytes::new())),
            Err(WireError::NotMap)
        ));
        assert_eq!(
            decode_request(&cbor(&Value::Map(vec![])), None),
            Err(WireError::NoCorrelation)
        );
        let mut trailing = cbor(&Value::Map(vec![]));
        trailing.push(0);
        assert!(matches!(
            decode_request(&trailing, Some(Bytes::new())),
            Err(WireError::NotCbor(_))
        ));
        assert!(matches!(
            decode_request(b"", Some(Bytes::new())),
            Err(WireError::NotCbor(_))
        ));
    }

    #[test]
    fn reply_round_trips() {
        let mut reply = Reply::new(Status::Accepted, State::Accepted);
        reply.request_id = Some(RequestId::new());
        reply.retry_after_ms = Some(12);
        reply.corr = Some(Correlation(Bytes::from_static(b"x")));
        assert_eq!(Reply::decode(&reply.encode()), Ok(reply));
        let err = Reply::rejected(ErrorCode::UnknownOp, "no op named foo");
        assert_eq!(Reply::decode(&err.encode()), Ok(err));
    }
}
