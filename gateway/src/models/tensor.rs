//! Tensors to and from CBOR: a request's nested arrays become a tract tensor after checking
//! them against the model's input (rank, fixed sizes, shared free sizes, dtype, total size);
//! a telemetry series is laid out into the one input; outputs become `{"shape", "data"}` maps.
//! No I/O; every refusal is an [`OpError`] the contract maps to `400` or `413`.

use std::collections::HashMap;

use ciborium::Value;
use tract_onnx::prelude::{DatumType, TValue, Tensor};

use super::config::{Dim, Dtype};
use super::load::InputSpec;
use crate::analytics::ops::{as_finite, result_map, uint, OpError};

/// Deepest nesting accepted (a guard against pathological payloads; real models stay far below).
const MAX_RANK: usize = 16;

/// Free dimension sizes seen so far in one request, by symbol: inputs sharing one must agree.
pub type FreeSizes = HashMap<String, usize>;

/// Checks `value` against `spec` and converts it; `budget` is what is left of
/// `limits.max_series_len` in elements for this request.
pub fn from_cbor(
    spec: &InputSpec,
    value: &Value,
    free: &mut FreeSizes,
    budget: &mut usize,
) -> Result<Tensor, OpError> {
    let name = &spec.name;
    let shape = shape_of(value).map_err(|m| OpError::BadArgs(format!("input {name:?}: {m}")))?;
    if shape.len() != spec.dims.len() {
        return Err(OpError::BadArgs(format!(
            "input {name:?} must have rank {} ({}), got shape {shape:?}",
            spec.dims.len(),
            shape_text(&spec.dims)
        )));
    }
    for (ix, (got, want)) in shape.iter().zip(&spec.dims).enumerate() {
        match want {
            Dim::Fixed(n) if got != n => {
                return Err(OpError::BadArgs(format!(
                    "input {name:?} must have shape {}: dimension {ix} is {got}, not {n}",
                    shape_text(&spec.dims)
                )))
            }
            Dim::Free(symbol) => {
                let size = *free.entry(symbol.clone()).or_insert(*got);
                if size != *got {
                    return Err(OpError::BadArgs(format!(
                        "input {name:?}: dimension {symbol} is {got} here but {size} in another input"
                    )));
                }
            }
            Dim::Fixed(_) => {}
        }
    }
    let count = shape.iter().try_fold(1usize, |acc, d| acc.checked_mul(*d));
    match count {
        Some(count) if count <= *budget => *budget -= count,
        _ => {
            return Err(OpError::TooLarge(format!(
            "input {name:?} of shape {shape:?} has more elements than limits.max_series_len allows"
        )))
        }
    }
    let mut leaves = Vec::new();
    flatten(value, &shape, 0, &mut leaves)
        .map_err(|m| OpError::BadArgs(format!("input {name:?}: {m}")))?;
    let bad =
        |what: &str| OpError::BadArgs(format!("input {name:?} is {}: {what}", spec.dtype.name()));
    let tensor = match spec.dtype {
        Dtype::F32 | Dtype::F64 => {
            let data = leaves
                .iter()
                .map(|v| as_finite(v))
                .collect::<Option<Vec<f64>>>()
                .ok_or_else(|| bad("every element must be a finite number"))?;
            if spec.dtype == Dtype::F32 {
                let data: Vec<f32> = data.iter().map(|x| *x as f32).collect();
                if data.iter().any(|x| !x.is_finite()) {
                    return Err(bad("an element is outside the float32 range"));
                }
                Tensor::from_shape(&shape, &data)
            } else {
                Tensor::from_shape(&shape, &data)
            }
        }
        Dtype::I32 | Dtype::I64 => {
            let data = leaves
                .iter()
                .map(|v| v.as_integer().map(i128::from))
                .collect::<Option<Vec<i128>>>()
                .ok_or_else(|| bad("every element must be an integer"))?;
            if spec.dtype == Dtype::I32 {
                let data = data
                    .iter()
                    .map(|x| i32::try_from(*x).ok())
                    .collect::<Option<Vec<i32>>>()
                    .ok_or_else(|| bad("an element is outside the int32 range"))?;
                Tensor::from_shape(&shape, &data)
            } else {
                let data = data
                    .iter()
                    .map(|x| i64::try_from(*x).ok())
                    .collect::<Option<Vec<i64>>>()
                    .ok_or_else(|| bad("an element is outside the int64 range"))?;
                Tensor::from_shape(&shape, &data)
            }
        }
    };
    tensor.map_err(|e| OpError::BadArgs(format!("input {name:?}: {e}")))
}

/// The shape a nested array spells, read along its first elements; [`flatten`] then checks that
/// every other element agrees.
fn shape_of(value: &Value) -> Result<Vec<usize>, String> {
    let mut shape = Vec::new();
    let mut at = value;
    while let Value::Array(items) = at {
        if items.is_empty() {
            return Err("an empty array: every dimension must be at least 1".into());
        }
        if shape.len() == MAX_RANK {
            return Err(format!("nested deeper than {MAX_RANK}"));
        }
        shape.push(items.len());
        at = &items[0];
    }
    if shape.is_empty() {
        return Err("must be an array (nested arrays of numbers)".into());
    }
    Ok(shape)
}

fn flatten<'a>(
    value: &'a Value,
    shape: &[usize],
    depth: usize,
    out: &mut Vec<&'a Value>,
) -> Result<(), String> {
    match (value, shape.get(depth)) {
        (Value::Array(items), Some(len)) => {
            if items.len() != *len {
                return Err(format!(
                    "ragged: an array at depth {depth} has {} elements, the first has {len}",
                    items.len()
                ));
            }
            items
                .iter()
                .try_for_each(|item| flatten(item, shape, depth + 1, out))
        }
        (Value::Array(_), None) => Err(format!(
            "ragged: an array at depth {depth} where numbers are"
        )),
        (_, Some(_)) => Err(format!(
            "ragged: a number at depth {depth} where arrays are"
        )),
        (leaf, None) => {
            out.push(leaf);
            Ok(())
        }
    }
}

/// Lays a telemetry series out into the model's single input: its one free dimension gets
/// `len / (product of the fixed ones)`, the values fill it row-major, oldest first, and the
/// oldest readings that do not fill a whole row are left out.
pub fn from_series(spec: &InputSpec, values: &[f64]) -> Result<Tensor, OpError> {
    let row: usize = spec
        .dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => *n,
            Dim::Free(_) => 1,
        })
        .product();
    let rows = values.len() / row.max(1);
    if rows == 0 {
        return Err(OpError::Failed(format!(
            "the window holds {} readings; input {:?} ({}) needs at least {row}",
            values.len(),
            spec.name,
            shape_text(&spec.dims)
        )));
    }
    let shape: Vec<usize> = spec
        .dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => *n,
            Dim::Free(_) => rows,
        })
        .collect();
    let used = &values[values.len() - rows * row..];
    let tensor = match spec.dtype {
        Dtype::F32 => {
            Tensor::from_shape(&shape, &used.iter().map(|x| *x as f32).collect::<Vec<_>>())
        }
        _ => Tensor::from_shape(&shape, used),
    };
    tensor.map_err(|e| OpError::Failed(e.to_string()))
}

/// The outputs as the result's `"outputs"` map; a NaN or infinity fails the run (no reply holds
/// one), as does an output tract cannot read as numbers.
pub fn outputs_to_cbor(names: &[String], values: &[TValue]) -> Result<Value, String> {
    let mut entries = Vec::with_capacity(values.len());
    for (name, value) in names.iter().zip(values) {
        let shape = Value::Array(value.shape().iter().map(|d| uint(*d)).collect());
        let dt = value.datum_type();
        let data: Vec<Value> = if dt.is_float() {
            let cast = value.cast_to::<f64>().map_err(|e| e.to_string())?;
            let view = cast
                .to_plain_array_view::<f64>()
                .map_err(|e| e.to_string())?;
            if view.iter().any(|x| !x.is_finite()) {
                return Err(format!("output {name:?} holds NaN or infinity"));
            }
            view.iter().map(|x| Value::Float(*x)).collect()
        } else if dt.is_integer() || dt == DatumType::Bool {
            let cast = value.cast_to::<i64>().map_err(|e| e.to_string())?;
            let view = cast
                .to_plain_array_view::<i64>()
                .map_err(|e| e.to_string())?;
            view.iter().map(|x| Value::Integer((*x).into())).collect()
        } else {
            return Err(format!("output {name:?} is {dt:?}, not numbers"));
        };
        entries.push((
            Value::Text(name.clone()),
            result_map(vec![("shape", shape), ("data", Value::Array(data))]),
        ));
    }
    Ok(Value::Map(entries))
}

/// `[N, 4]`.
pub fn shape_text(dims: &[Dim]) -> String {
    let dims: Vec<String> = dims.iter().map(ToString::to_string).collect();
    format!("[{}]", dims.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dtype: Dtype, dims: Vec<Dim>) -> InputSpec {
        InputSpec {
            name: "x".into(),
            dtype,
            dims,
        }
    }

    fn rows(rows: &[&[f64]]) -> Value {
        Value::Array(
            rows.iter()
                .map(|r| Value::Array(r.iter().map(|x| Value::Float(*x)).collect()))
                .collect(),
        )
    }

    fn n4() -> Vec<Dim> {
        vec![Dim::Free("N".into()), Dim::Fixed(4)]
    }

    #[test]
    fn nested_arrays_become_tensors_of_their_shape() {
        let mut free = FreeSizes::new();
        let mut budget = 100;
        let value = rows(&[&[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0]]);
        let tensor =
            from_cbor(&spec(Dtype::F32, n4()), &value, &mut free, &mut budget).expect("valid");
        assert_eq!(tensor.shape(), &[2, 4]);
        assert_eq!(budget, 92);
        assert_eq!(free["N"], 2);
    }

    #[test]
    fn wrong_shapes_and_types_are_bad_args_and_size_is_too_large() {
        let check = |dtype, value: Value, budget: usize| {
            let mut budget = budget;
            from_cbor(
                &spec(dtype, n4()),
                &value,
                &mut FreeSizes::new(),
                &mut budget,
            )
        };
        let bad = |r: Result<Tensor, OpError>| matches!(r, Err(OpError::BadArgs(_)));
        assert!(bad(check(Dtype::F32, rows(&[&[1.0, 2.0, 3.0]]), 100)));
        assert!(bad(check(
            Dtype::F32,
            rows(&[&[1.0, 2.0, 3.0, 4.0], &[1.0]]),
            100
        )));
        assert!(bad(check(Dtype::F32, Value::Float(1.0), 100)));
        assert!(bad(check(Dtype::F32, Value::Array(vec![]), 100)));
        assert!(bad(check(
            Dtype::F32,
            rows(&[&[1.0, 2.0, 3.0, f64::NAN]]),
            100
        )));
        assert!(bad(check(
            Dtype::F32,
            rows(&[&[1.0, 2.0, 3.0, 1e300]]),
            100
        )));
        assert!(bad(check(Dtype::I64, rows(&[&[1.0, 2.0, 3.0, 4.5]]), 100)));
        let text = Value::Array(vec![Value::Array(vec![Value::Text("a".into()); 4])]);
        assert!(bad(check(Dtype::F32, text, 100)));
        assert!(matches!(
            check(Dtype::F32, rows(&[&[1.0, 2.0, 3.0, 4.0] as &[f64]; 3]), 11),
            Err(OpError::TooLarge(_))
        ));
        let ints = Value::Array(vec![Value::Array(vec![Value::Integer(3.into()); 4])]);
        assert!(check(Dtype::I64, ints.clone(), 100).is_ok());
        assert!(check(Dtype::F64, ints, 100).is_ok(), "integers are numbers");
    }

    #[test]
    fn inputs_sharing_a_free_dimension_must_agree() {
        let mut free = FreeSizes::new();
        let mut budget = 100;
        let s = spec(Dtype::F32, n4());
        from_cbor(&s, &rows(&[&[1.0; 4]]), &mut free, &mut budget).expect("N = 1");
        assert!(from_cbor(&s, &rows(&[&[1.0; 4] as &[f64]; 2]), &mut free, &mut budget).is_err());
    }

    #[test]
    fn a_series_fills_whole_rows_newest_last() {
        let values: Vec<f64> = (0..10).map(f64::from).collect();
        let tensor = from_series(&spec(Dtype::F64, n4()), &values).expect("two rows");
        assert_eq!(tensor.shape(), &[2, 4]);
        let view = tensor.to_plain_array_view::<f64>().expect("f64");
        let flat: Vec<f64> = view.iter().copied().collect();
        assert_eq!(flat, (2..10).map(f64::from).collect::<Vec<_>>());
        let length = spec(Dtype::F32, vec![Dim::Fixed(1), Dim::Free("L".into())]);
        assert_eq!(
            from_series(&length, &values).expect("one row").shape(),
            &[1, 10]
        );
        assert!(matches!(
            from_series(&spec(Dtype::F32, n4()), &values[..3]),
            Err(OpError::Failed(_))
        ));
    }
}
