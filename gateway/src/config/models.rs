//! `[models.NAME]` tables as written: one per ONNX model. Parsed here with the rest of the file;
//! checked and loaded by `crate::models` at start (a mistake there is exit 2 naming the key).

use std::path::PathBuf;

use serde::Deserialize;

/// One `[models.NAME]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// The `.onnx` file (relative to the working directory, like `gateway.data_dir`).
    pub path: PathBuf,
    /// Inputs whose shape or dtype the file leaves open (or that the operator wants pinned).
    #[serde(default)]
    pub inputs: Vec<RawTensor>,
    /// Outputs whose shape or dtype the file leaves open.
    #[serde(default)]
    pub outputs: Vec<RawTensor>,
    /// A run of this model longer than this is cut off: `504`, or its fallback answers.
    pub timeout_ms: Option<u64>,
    /// Another model to retry on once when this one fails (runtime error or timeout).
    pub fallback: Option<String>,
}

/// A declared input or output: `{ name = "x", shape = ["N", 4], dtype = "float32" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTensor {
    /// The tensor's name in the graph.
    pub name: String,
    /// Dimensions: a positive integer is fixed, a text names a free dimension (batch, length).
    pub shape: Option<Vec<RawDim>>,
    /// `float32`, `float64`, `int32` or `int64`.
    pub dtype: Option<String>,
}

/// One declared dimension.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RawDim {
    /// A fixed size.
    Fixed(u64),
    /// A free dimension, by symbol name.
    Free(String),
}
