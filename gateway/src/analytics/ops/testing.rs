//! Test support for the ops: the numpy reference fixtures (`tests/fixtures/ops.json`, written by
//! `tests/fixtures/gen_ops.py`) run through the same [`prepare`] as intake, then compared with
//! the expected result, integers exactly and floats within a tolerance.

use ciborium::Value;
use serde_json::Value as Json;

use super::{as_finite, prepare, Source};
use crate::wire::envelope::map_get;

const FIXTURES: &str = include_str!("../../../../tests/fixtures/ops.json");

/// A numeric field of a result map.
pub fn number(result: &Value, key: &str) -> f64 {
    as_finite(field(result, key)).unwrap_or_else(|| panic!("{key} is not a finite number"))
}

/// A field of a result map.
pub fn field<'a>(result: &'a Value, key: &str) -> &'a Value {
    let Value::Map(entries) = result else {
        panic!("result is not a map: {result:?}")
    };
    map_get(entries, key).unwrap_or_else(|| panic!("result has no {key}: {result:?}"))
}

/// JSON → CBOR, integers staying integers.
pub fn cbor(json: &Json) -> Value {
    match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Value::Integer(u.into()),
            (None, Some(i), _) => Value::Integer(i.into()),
            (_, _, Some(f)) => Value::Float(f),
            _ => panic!("unrepresentable number {n}"),
        },
        Json::String(s) => Value::Text(s.clone()),
        Json::Array(items) => Value::Array(items.iter().map(cbor).collect()),
        Json::Object(entries) => Value::Map(
            entries
                .iter()
                .map(|(k, v)| (Value::Text(k.clone()), cbor(v)))
                .collect(),
        ),
    }
}

/// Runs `op` on request arguments given as JSON, as intake and a worker would.
pub fn run(op: &str, args: &Json) -> Value {
    let call = prepare(op, &cbor(args), 1 << 20).expect("fixture arguments are valid");
    let Source::Inline(series) = &call.source else {
        panic!("fixtures carry inline series")
    };
    call.prepared.run(series).expect("fixture runs")
}

/// Runs every fixture case of `op` and compares with numpy's answer.
pub fn check_fixtures(op: &str, tolerance: f64) {
    let all: Json = serde_json::from_str(FIXTURES).expect("ops.json is JSON");
    let cases = all[op].as_array().expect("fixtures for the op");
    assert!(!cases.is_empty());
    for case in cases {
        let name = case["name"].as_str().expect("case name");
        // A case may loosen the tolerance, saying why in gen_ops.py.
        let tolerance = case["tolerance"].as_f64().unwrap_or(tolerance);
        let result = run(op, &case["args"]);
        assert_matches(&result, &case["expect"], tolerance, &format!("{op}/{name}"));
    }
}

/// Compares a result with the expected JSON, recursively.
pub fn assert_matches(actual: &Value, expected: &Json, tolerance: f64, path: &str) {
    match (actual, expected) {
        (Value::Map(_), Json::Object(entries)) => {
            let Value::Map(got) = actual else {
                unreachable!()
            };
            assert_eq!(got.len(), entries.len(), "{path}: keys {got:?}");
            for (key, want) in entries {
                assert_matches(
                    field(actual, key),
                    want,
                    tolerance,
                    &format!("{path}.{key}"),
                );
            }
        }
        (Value::Array(got), Json::Array(want)) => {
            assert_eq!(got.len(), want.len(), "{path}: length of {got:?}");
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert_matches(g, w, tolerance, &format!("{path}[{i}]"));
            }
        }
        (Value::Integer(got), Json::Number(want)) if want.is_u64() => {
            assert_eq!(u64::try_from(*got).ok(), want.as_u64(), "{path}");
        }
        (Value::Float(got), Json::Number(want)) if want.is_f64() => {
            let want = want.as_f64().expect("f64");
            let close = (got - want).abs() <= tolerance * (1.0 + want.abs());
            assert!(close, "{path}: got {got:e}, numpy says {want:e}");
        }
        _ => panic!("{path}: got {actual:?}, expected {expected}"),
    }
}
