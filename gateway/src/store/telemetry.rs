//! Telemetry as the store records it: one reading per (device, metric, ts), read back as the
//! series of windowed ops.

/// One reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Metric name.
    pub metric: String,
    /// Timestamp, ms since epoch.
    pub ts: i64,
    /// Value.
    pub value: f64,
}

/// A time series: values, with timestamps (ms since epoch) when known.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// The readings, in time order.
    pub values: Vec<f64>,
    /// Their timestamps, same length, when given.
    pub ts: Option<Vec<u64>>,
}
