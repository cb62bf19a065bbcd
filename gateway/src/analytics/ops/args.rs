//! A request's arguments as the ops read them: typed accessors whose errors are `400`-worthy,
//! and the series source (`values` + `ts` inline, or `metric` + `window_s` from telemetry).

use ciborium::Value;

use super::{as_finite, OpError, Series, Source};
use crate::wire::envelope::map_get;

/// A request's arguments, with typed accessors that produce `400`-worthy errors.
#[derive(Debug, Clone, Copy)]
pub struct Args<'a> {
    pub(super) entries: &'a [(Value, Value)],
    pub(super) max_series_len: usize,
}

impl<'a> Args<'a> {
    /// The raw value of a key.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        map_get(self.entries, key)
    }

    /// Whether the series comes inline.
    pub fn is_inline(&self) -> bool {
        self.get("values").is_some()
    }

    /// An unsigned integer argument, or `default` when absent.
    pub fn uint(&self, key: &str, default: u64) -> Result<u64, OpError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_integer()
                .and_then(|i| u64::try_from(i).ok())
                .ok_or_else(|| OpError::BadArgs(format!("{key} must be an unsigned integer"))),
        }
    }

    /// A finite number argument (integer or float), or `default` when absent.
    pub fn number(&self, key: &str, default: Option<f64>) -> Result<Option<f64>, OpError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => as_finite(v)
                .map(Some)
                .ok_or_else(|| OpError::BadArgs(format!("{key} must be a finite number"))),
        }
    }

    /// A text argument, or `default` when absent.
    pub fn text(&self, key: &str, default: &'a str) -> Result<&'a str, OpError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_text()
                .ok_or_else(|| OpError::BadArgs(format!("{key} must be text"))),
        }
    }

    /// Reads the series source: inline `values` (+ `ts`) or `metric` + `window_s`.
    pub fn source(&self) -> Result<Source, OpError> {
        match (self.get("values"), self.get("metric")) {
            (Some(values), None) => self.inline(values).map(Source::Inline),
            (None, Some(metric)) => {
                let metric = metric
                    .as_text()
                    .filter(|m| !m.is_empty())
                    .ok_or_else(|| OpError::BadArgs("metric must be non-empty text".into()))?;
                let window_s = self.uint("window_s", 0)?;
                if window_s == 0 {
                    return Err(OpError::BadArgs(
                        "window_s must be given and greater than 0 with metric".into(),
                    ));
                }
                Ok(Source::Telemetry {
                    metric: metric.to_owned(),
                    window_s,
                })
            }
            (Some(_), Some(_)) => Err(OpError::BadArgs(
                "give either values or metric, not both".into(),
            )),
            (None, None) => Err(OpError::BadArgs(
                "a series is required: values, or metric and window_s".into(),
            )),
        }
    }

    fn inline(&self, values: &Value) -> Result<Series, OpError> {
        let values = values
            .as_array()
            .ok_or_else(|| OpError::BadArgs("values must be an array of numbers".into()))?;
        self.check_len(values.len())?;
        if values.is_empty() {
            return Err(OpError::BadArgs("values must not be empty".into()));
        }
        let values = values
            .iter()
            .map(as_finite)
            .collect::<Option<Vec<f64>>>()
            .ok_or_else(|| OpError::BadArgs("values must all be finite numbers".into()))?;
        let ts = match self.get("ts") {
            None => None,
            Some(ts) => {
                let ts = ts
                    .as_array()
                    .ok_or_else(|| OpError::BadArgs("ts must be an array of uints".into()))?
                    .iter()
                    .map(|t| t.as_integer().and_then(|i| u64::try_from(i).ok()))
                    .collect::<Option<Vec<u64>>>()
                    .ok_or_else(|| OpError::BadArgs("ts must be an array of uints".into()))?;
                if ts.len() != values.len() {
                    return Err(OpError::BadArgs(format!(
                        "ts has {} entries but values has {}",
                        ts.len(),
                        values.len()
                    )));
                }
                Some(ts)
            }
        };
        Ok(Series { values, ts })
    }

    /// Refuses series over `limits.max_series_len` with `413`.
    pub fn check_len(&self, len: usize) -> Result<(), OpError> {
        if len > self.max_series_len {
            Err(OpError::TooLarge(format!(
                "series of {len} points is longer than limits.max_series_len = {}",
                self.max_series_len
            )))
        } else {
            Ok(())
        }
    }
}
