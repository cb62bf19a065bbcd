//! `gateway models list`: every configured model with its inputs, outputs, timeout, fallback
//! and the cost its warm-up measured, as a table or JSON. Loads the models the way `gateway run`
//! does, so a model that lists is a model that serves.

use std::collections::BTreeMap;

use super::tensor::shape_text;
use super::{Model, RawModel, Registry};

/// `x: float32 [N, 4]`, comma-separated.
pub fn inputs_text(model: &Model) -> String {
    model
        .inputs
        .iter()
        .map(|i| format!("{}: {} {}", i.name, i.dtype.name(), shape_text(&i.dims)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn outputs_text(model: &Model) -> String {
    model
        .outputs
        .iter()
        .map(|o| format!("{}: {} [{}]", o.name, o.dtype, o.dims.join(", ")))
        .collect::<Vec<_>>()
        .join(", ")
}

fn cost_text(model: &Model) -> String {
    let w = model.warmup;
    let note = if w.ok { "" } else { " (warm-up run failed)" };
    format!(
        "{:.0} µs + {:.3} µs/element{note}",
        w.base_us, w.per_element_us
    )
}

/// Loads the configured models and prints them; `Err` is the message for a model that does not
/// load (exit 2, as for `gateway run`).
pub fn print(models: &BTreeMap<String, RawModel>, json: bool) -> Result<(), super::ModelError> {
    let registry = Registry::load(models)?;
    if json {
        let list: Vec<serde_json::Value> = registry.iter().map(|m| to_json(m)).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_else(|_| "[]".into())
        );
        return Ok(());
    }
    if registry.is_empty() {
        println!("no models configured ([models.NAME] path = \"model.onnx\")");
        return Ok(());
    }
    for model in registry.iter() {
        println!("{}  {}", model.name, model.path.display());
        println!("  sha256   {}", model.sha256);
        println!("  inputs   {}", inputs_text(model));
        println!("  outputs  {}", outputs_text(model));
        let timeout = model
            .timeout
            .map_or("none (limits.op_timeout_ms)".into(), |t| {
                format!("{} ms", t.as_millis())
            });
        println!("  timeout  {timeout}");
        println!("  fallback {}", model.fallback.as_deref().unwrap_or("none"));
        println!("  cost     {}", cost_text(model));
    }
    Ok(())
}

fn to_json(model: &Model) -> serde_json::Value {
    serde_json::json!({
        "name": model.name,
        "path": model.path.display().to_string(),
        "sha256": model.sha256,
        "inputs": model.inputs.iter().map(|i| serde_json::json!({
            "name": i.name,
            "dtype": i.dtype.name(),
            "shape": i.dims.iter().map(|d| match d {
                super::config::Dim::Fixed(n) => serde_json::json!(n),
                super::config::Dim::Free(s) => serde_json::json!(s),
            }).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "outputs": model.outputs.iter().map(|o| serde_json::json!({
            "name": o.name, "dtype": o.dtype, "shape": o.dims,
        })).collect::<Vec<_>>(),
        "timeout_ms": model.timeout.map(|t| t.as_millis() as u64),
        "fallback": model.fallback,
        "cost": {
            "base_us": model.warmup.base_us,
            "per_element_us": model.warmup.per_element_us,
            "warmup_ok": model.warmup.ok,
        },
    })
}
