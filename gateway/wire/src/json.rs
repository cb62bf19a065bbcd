//! CBOR ↔ JSON for people: the operator CLI, the HTTP API and `device-sim send` show request
//! arguments and replies as JSON, and take arguments as JSON. Byte strings become hex text;
//! map keys that are not text become their JSON text. No I/O.

use ciborium::Value as Cbor;
use serde_json::Value as Json;

/// The JSON a person reads for a CBOR value.
pub fn cbor_to_json(value: &Cbor) -> Json {
    match value {
        Cbor::Integer(i) => {
            let wide = i128::from(*i);
            i64::try_from(wide)
                .map(Json::from)
                .or_else(|_| u64::try_from(wide).map(Json::from))
                .unwrap_or_else(|_| Json::String(wide.to_string()))
        }
        Cbor::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Cbor::Bytes(bytes) => Json::String(bytes.iter().map(|b| format!("{b:02x}")).collect()),
        Cbor::Text(text) => Json::String(text.clone()),
        Cbor::Bool(b) => Json::Bool(*b),
        Cbor::Null => Json::Null,
        Cbor::Tag(_, inner) => cbor_to_json(inner),
        Cbor::Array(items) => Json::Array(items.iter().map(cbor_to_json).collect()),
        Cbor::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(key, value)| {
                    let key = match key {
                        Cbor::Text(text) => text.clone(),
                        other => cbor_to_json(other).to_string(),
                    };
                    (key, cbor_to_json(value))
                })
                .collect(),
        ),
        _ => Json::Null,
    }
}

/// Decodes a CBOR payload into JSON; `None` if it is not CBOR.
pub fn payload_to_json(payload: &[u8]) -> Option<Json> {
    crate::envelope::decode_value(payload)
        .ok()
        .map(|v| cbor_to_json(&v))
}

/// The CBOR value for JSON a person wrote (numbers stay integers when they are).
pub fn json_to_cbor(value: &Json) -> Cbor {
    match value {
        Json::Null => Cbor::Null,
        Json::Bool(b) => Cbor::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Cbor::Integer(i.into()),
            (None, Some(u)) => Cbor::Integer(u.into()),
            _ => Cbor::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Cbor::Text(s.clone()),
        Json::Array(items) => Cbor::Array(items.iter().map(json_to_cbor).collect()),
        Json::Object(map) => Cbor::Map(
            map.iter()
                .map(|(k, v)| (Cbor::Text(k.clone()), json_to_cbor(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_what_people_write() {
        let json: Json = serde_json::json!({"values": [1, 2.5, -3], "name": "x", "ok": true});
        assert_eq!(cbor_to_json(&json_to_cbor(&json)), json);
        let bytes = Cbor::Map(vec![(Cbor::Integer(1.into()), Cbor::Bytes(vec![0xab, 1]))]);
        assert_eq!(cbor_to_json(&bytes), serde_json::json!({"1": "ab01"}));
    }
}
