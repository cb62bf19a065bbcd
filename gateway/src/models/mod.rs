//! Operators' own ONNX models and the `infer` op that runs them.
//!
//! Fed by `[models.NAME]` config tables ([`config`]): at start every model is loaded, checked
//! against its declared inputs and optimised once by tract, a pure-Rust runtime ([`load`]), then
//! timed by a warm-up whose figures seed the scheduler's cost model. Sizes seen twice get a plan
//! of their own, optimised in the background ([`plans`]), whose matrix-product kernel is timed
//! against the alternatives on this machine ([`kernels`]). A mistake (missing or
//! invalid file, a declared shape the graph cannot take) is a [`ModelError`] naming the key:
//! exit 2. The loaded [`Registry`] is installed once ([`install`]) before serving.
//!
//! Feeds the analytics pipeline like any op: [`prepare`] validates an `infer` request at intake
//! (`404` unknown model, `400` wrong shape or dtype, `413` past `limits.max_series_len`) into a
//! [`crate::analytics::ops::Call`] whose run happens on a worker thread ([`infer`]), with the
//! model's timeout and its fallback.
//!
//! **Invariant:** inference runs only on worker threads (and the warm-up and kernel trials: at
//! start, and on the plans' background thread), never on an async task; a model's own panic is
//! caught and becomes a failed run, never a dead worker. Plans per size are optimised only on
//! their background thread, never waited for by a run.

use std::collections::BTreeMap;
use std::sync::Arc;

use ciborium::Value;

pub mod config;
mod infer;
mod kernels;
pub mod list;
pub mod load;
mod plans;
pub mod run;
mod tensor;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_kernels;
#[cfg(test)]
mod tests_plans;

pub use crate::config::RawModel;
pub use load::Model;

use crate::analytics::ops::{Call, PrepareError};

/// A model config mistake, naming the key: the gateway exits with code 2.
#[derive(Debug, Clone, thiserror::Error)]
#[error("config key {key}: {message}")]
pub struct ModelError {
    /// The dotted key, e.g. `models.mlp.path`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl ModelError {
    /// An error about `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> ModelError {
        ModelError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Every configured model, loaded and optimised, by name.
#[derive(Debug, Default)]
pub struct Registry {
    models: BTreeMap<String, Arc<Model>>,
}

impl Registry {
    /// Loads, checks, optimises and warms up every configured model. Slow (tract optimises each
    /// graph): call once at start, off the async runtime's worker threads if it matters.
    pub fn load(raw: &BTreeMap<String, RawModel>) -> Result<Registry, ModelError> {
        config::check(raw)?;
        let mut models = BTreeMap::new();
        for (name, model) in raw {
            models.insert(name.clone(), Arc::new(load::load(name, model)?));
        }
        // A fallback takes the same request, so it must take the same inputs.
        for model in models.values() {
            if let Some(fallback) = &model.fallback {
                let other = &models[fallback];
                if other.inputs != model.inputs {
                    return Err(ModelError::new(
                        format!("models.{}.fallback", model.name),
                        format!(
                            "{fallback:?} takes other inputs ({}) than {:?} ({})",
                            list::inputs_text(other),
                            model.name,
                            list::inputs_text(model)
                        ),
                    ));
                }
            }
        }
        Ok(Registry { models })
    }

    /// The model called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Model>> {
        self.models.get(name)
    }

    /// Every model, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Model>> {
        self.models.values()
    }

    /// Whether no model is configured.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// Validates an `infer` request's arguments against this registry.
    pub fn prepare(
        self: &Arc<Self>,
        args: &Value,
        max_series_len: usize,
    ) -> Result<Call, PrepareError> {
        infer::prepare(self, args, max_series_len)
    }
}

/// Makes `registry` the one `infer` requests use (through `ops::prepare`), for the life of the
/// process. Called once by `app::run` before serving; a second call is ignored (false).
pub fn install(registry: Arc<Registry>) -> bool {
    crate::analytics::ops::install_infer(Box::new(move |args, max_series_len| {
        registry.prepare(args, max_series_len)
    }))
}
