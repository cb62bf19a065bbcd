//! The MLP fixture as the model benchmarks load it: `tests/fixtures/models/mlp.onnx` through
//! the gateway's own registry, and 1,000 deterministic rows of input.

use std::collections::BTreeMap;
use std::sync::Arc;

use gateway::models::{RawModel, Registry};

/// Rows per call.
pub const ROWS: usize = 1000;

/// The MLP with its batch dimension free (`"N"`, as served) or fixed at a size.
pub fn registry_with(batch: &str) -> Arc<Registry> {
    let toml = format!(
        "path = {:?}\ninputs = [{{ name = \"x\", shape = [{batch}, 8], dtype = \"float32\" }}]\n",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/models/mlp.onnx"
        )
    );
    let raw: RawModel = toml::from_str(&toml).expect("model table");
    let models = BTreeMap::from([("mlp".to_owned(), raw)]);
    Arc::new(Registry::load(&models).expect("mlp.onnx loads"))
}

/// 1,000 rows of 8 deterministic pseudo-random features (xorshift), as f32.
pub fn rows() -> Vec<f32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..ROWS * 8)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 11) as f64 / (1u64 << 53) as f64 * 6.0 - 3.0) as f32
        })
        .collect()
}
