//! The checks of `[models.NAME]` tables (parsed as written by [`crate::config`]) that need no
//! model file: names, dtypes, dimensions, fallbacks. Feeds [`super::load`], which opens each
//! model.

use std::collections::BTreeMap;

use super::ModelError;
pub use crate::config::{RawDim, RawModel, RawTensor};

/// The element types `infer` takes and returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
    /// 32-bit signed integers.
    I32,
    /// 64-bit signed integers.
    I64,
}

impl Dtype {
    /// Parses a config dtype name.
    pub fn parse(name: &str) -> Option<Dtype> {
        match name {
            "float32" | "float" | "f32" => Some(Dtype::F32),
            "float64" | "double" | "f64" => Some(Dtype::F64),
            "int32" | "i32" => Some(Dtype::I32),
            "int64" | "i64" => Some(Dtype::I64),
            _ => None,
        }
    }

    /// The name used in `models list` and error messages.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
            Dtype::I32 => "int32",
            Dtype::I64 => "int64",
        }
    }

    /// Whether values are integers.
    pub fn is_integer(self) -> bool {
        matches!(self, Dtype::I32 | Dtype::I64)
    }
}

/// A dimension of a loaded model's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// Always this size.
    Fixed(usize),
    /// Any size of at least 1, named by its symbol (inputs sharing a symbol share the size).
    Free(String),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Free(name) => f.write_str(name),
        }
    }
}

/// A declared tensor, checked: the config key it came from for error messages.
#[derive(Debug, Clone)]
pub struct Declared {
    /// `models.NAME.inputs` or `models.NAME.outputs`.
    pub key: String,
    /// Its name in the graph.
    pub name: String,
    /// Its dimensions, when declared.
    pub shape: Option<Vec<Dim>>,
    /// Its dtype, when declared.
    pub dtype: Option<Dtype>,
}

/// Checks what can be checked without opening any file: model names, dtypes, dimensions,
/// timeouts, and that every fallback names another configured model.
pub fn check(models: &BTreeMap<String, RawModel>) -> Result<(), ModelError> {
    for (name, raw) in models {
        let key = |field: &str| format!("models.{name}.{field}");
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(ModelError::new(
                format!("models.{name}"),
                "a model name is 1 to 64 characters of [A-Za-z0-9._-]",
            ));
        }
        if raw.path.as_os_str().is_empty() {
            return Err(ModelError::new(key("path"), "is required"));
        }
        if raw.timeout_ms == Some(0) {
            return Err(ModelError::new(key("timeout_ms"), "must be greater than 0"));
        }
        if let Some(fallback) = &raw.fallback {
            if fallback == name {
                return Err(ModelError::new(
                    key("fallback"),
                    "a model cannot be its own fallback",
                ));
            }
            if !models.contains_key(fallback) {
                return Err(ModelError::new(
                    key("fallback"),
                    format!("{fallback:?} is not a configured model ([models.{fallback}])"),
                ));
            }
        }
        declared(&key("inputs"), &raw.inputs)?;
        declared(&key("outputs"), &raw.outputs)?;
    }
    Ok(())
}

/// Checks declared tensors and converts them.
pub fn declared(key: &str, tensors: &[RawTensor]) -> Result<Vec<Declared>, ModelError> {
    let mut seen = std::collections::HashSet::new();
    tensors
        .iter()
        .map(|raw| {
            if !seen.insert(raw.name.as_str()) {
                return Err(ModelError::new(
                    key,
                    format!("{:?} is declared twice", raw.name),
                ));
            }
            let dtype = match &raw.dtype {
                None => None,
                Some(name) => Some(Dtype::parse(name).ok_or_else(|| {
                    ModelError::new(
                        key,
                        format!(
                            "{}: dtype {name:?} is not float32, float64, int32 or int64",
                            raw.name
                        ),
                    )
                })?),
            };
            let shape = match &raw.shape {
                None => None,
                Some(dims) => Some(
                    dims.iter()
                        .map(|dim| match dim {
                            RawDim::Fixed(0) => Err(ModelError::new(
                                key,
                                format!("{}: a fixed dimension must be at least 1", raw.name),
                            )),
                            RawDim::Fixed(n) => usize::try_from(*n)
                                .map(Dim::Fixed)
                                .map_err(|_| ModelError::new(key, "dimension too large")),
                            RawDim::Free(s) if is_symbol(s) => Ok(Dim::Free(s.clone())),
                            RawDim::Free(s) => Err(ModelError::new(
                                key,
                                format!(
                                    "{}: free dimension {s:?} must be a name like \"N\" \
                                     (letters, digits, _; not starting with a digit)",
                                    raw.name
                                ),
                            )),
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
            };
            Ok(Declared {
                key: key.to_owned(),
                name: raw.name.clone(),
                shape,
                dtype,
            })
        })
        .collect()
}

fn is_symbol(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    fn parse(text: &str) -> BTreeMap<String, RawModel> {
        #[derive(Deserialize)]
        struct File {
            models: BTreeMap<String, RawModel>,
        }
        toml::from_str::<File>(text).expect("valid toml").models
    }

    #[test]
    fn declarations_parse_with_mixed_dimensions() {
        let models = parse(
            "[models.m]\npath = \"m.onnx\"\ntimeout_ms = 5\nfallback = \"n\"\n\
             inputs = [{ name = \"x\", shape = [\"N\", 4], dtype = \"float32\" }]\n\
             [models.n]\npath = \"n.onnx\"\n",
        );
        check(&models).expect("valid");
        let inputs = declared("models.m.inputs", &models["m"].inputs).expect("valid");
        assert_eq!(
            inputs[0].shape,
            Some(vec![Dim::Free("N".into()), Dim::Fixed(4)])
        );
        assert_eq!(inputs[0].dtype, Some(Dtype::F32));
    }

    #[test]
    fn mistakes_name_their_key() {
        for (text, key) in [
            (
                "[models.m]\npath = \"m.onnx\"\nfallback = \"nope\"\n",
                "models.m.fallback",
            ),
            (
                "[models.m]\npath = \"m.onnx\"\nfallback = \"m\"\n",
                "models.m.fallback",
            ),
            (
                "[models.m]\npath = \"m.onnx\"\ntimeout_ms = 0\n",
                "models.m.timeout_ms",
            ),
            (
                "[models.m]\npath = \"m.onnx\"\ninputs = [{ name = \"x\", dtype = \"f16\" }]\n",
                "models.m.inputs",
            ),
            (
                "[models.m]\npath = \"m.onnx\"\ninputs = [{ name = \"x\", shape = [0] }]\n",
                "models.m.inputs",
            ),
            (
                "[models.m]\npath = \"m.onnx\"\noutputs = [{ name = \"y\", shape = [\"2N\"] }]\n",
                "models.m.outputs",
            ),
            ("[models.\"a/b\"]\npath = \"m.onnx\"\n", "models.a/b"),
        ] {
            let error = check(&parse(text)).expect_err(text);
            assert_eq!(error.key, key, "{text}: {error}");
        }
    }
}
