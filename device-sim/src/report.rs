//! The run's verdict: the contract's JSON report (`requests`, `replies_ok`, `replies_error`,
//! `lost`, `duplicates`, `mismatched`, `latency_ms`, `throughput_rps`, plus extras), a human
//! summary, and the pass/fail rule.
//!
//! Fed by [`crate::fleet::FleetResult`]; feeds the scenario's exit code and `--json FILE`.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::fleet::FleetResult;
use crate::metrics::Counts;
use crate::probe::Resources;

/// Latency quantiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Quantiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Quantiles {
    /// Reads a microsecond histogram (empty gives zeros).
    pub fn from_micros(histogram: &Histogram<u64>) -> Quantiles {
        if histogram.is_empty() {
            return Quantiles::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Quantiles {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        }
    }
}

/// What the scenario was asked to do, echoed into the report.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// `run` or `load`.
    pub scenario: &'static str,
    /// `closed`, `open` or `sleepy`.
    pub mode: &'static str,
    /// Devices requested.
    pub devices: usize,
    /// In-flight requests per device (cap, for open loop).
    pub inflight: usize,
    /// Open loop: offered requests per second, all devices together.
    pub rate_rps: Option<f64>,
    /// Sending time, seconds.
    pub duration_s: f64,
    /// Grace for late replies, seconds.
    pub grace_s: f64,
    /// Values per request.
    pub values: usize,
    /// Whether a `202` was required before each final reply.
    pub expect_202: bool,
    /// Broker address.
    pub broker: String,
}

/// The JSON report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was asked.
    pub settings: Settings,
    /// Requests published.
    pub requests: u64,
    /// Correct final `200` replies.
    pub replies_ok: u64,
    /// Final error replies (4xx/5xx).
    pub replies_error: u64,
    /// Requests with no final reply by the end of the grace period.
    pub lost: u64,
    /// Replies received again and dropped.
    pub duplicates: u64,
    /// Replies that broke the protocol or carried a wrong result.
    pub mismatched: u64,
    /// Request published → final reply received, ms.
    pub latency_ms: Quantiles,
    /// Request published → `202` received, ms.
    pub accept_latency_ms: Quantiles,
    /// Final replies per second, from the start of sending to the last final reply.
    pub throughput_rps: f64,
    /// Seconds from the start of sending to the last final reply (or the end).
    pub elapsed_s: f64,
    /// Devices that connected (or, sleepy, were started).
    pub devices_ready: usize,
    /// MQTT PUBLISH bytes per request: `up` (request + ack), `down` (202 + final + duplicates).
    pub wire_bytes_per_request: BTreeMap<&'static str, f64>,
    /// Every other count (accepted, acks, foreign, connect errors, wakes, telemetry...).
    pub counts: BTreeMap<&'static str, u64>,
    /// Final error replies by status code.
    pub errors_by_status: BTreeMap<String, u64>,
    /// Mismatches by reason.
    pub mismatch_reasons: BTreeMap<&'static str, u64>,
    /// Memory and CPU of device-sim and (with `--gateway-pid`) the gateway.
    #[serde(flatten)]
    pub resources: Resources,
    /// The verdict: nothing lost, nothing mismatched, something answered, every device connected.
    pub passed: bool,
    /// Why it failed, if it did.
    pub failures: Vec<String>,
}

fn extra_counts(c: &Counts) -> BTreeMap<&'static str, u64> {
    BTreeMap::from([
        ("accepted", c.accepted),
        ("foreign", c.foreign),
        ("finals_without_202", c.finals_without_202),
        ("late_202", c.late_202),
        ("acks", c.acks),
        ("connect_errors", c.connect_errors),
        ("devices_failed", c.devices_failed),
        ("wakes", c.wakes),
        ("telemetry", c.telemetry),
        ("late_sends", c.late_sends),
        ("retries", c.retries),
        ("repeated_202", c.repeated_202),
    ])
}

/// Why a run with these counts fails; empty means it passed.
pub fn failures(c: &Counts) -> Vec<String> {
    let mut why = Vec::new();
    if c.lost > 0 {
        why.push(format!("{} requests lost", c.lost));
    }
    if c.mismatched > 0 {
        why.push(format!("{} replies mismatched", c.mismatched));
    }
    if c.devices_failed > 0 {
        why.push(format!("{} devices never connected", c.devices_failed));
    }
    if c.replies_ok + c.replies_error == 0 {
        why.push("no request was answered".into());
    }
    why
}

impl Report {
    /// Builds the report from a finished fleet.
    pub fn new(settings: Settings, fleet: &FleetResult, resources: Resources) -> Report {
        let stats = &fleet.stats;
        let c = &stats.counts;
        let end = stats.last_final.unwrap_or(fleet.ended);
        let elapsed = fleet
            .schedule
            .map(|s| end.saturating_duration_since(s.start).as_secs_f64())
            .unwrap_or(0.0);
        let finals = c.replies_ok + c.replies_error;
        let throughput = if elapsed > 0.0 {
            finals as f64 / elapsed
        } else {
            0.0
        };
        let failures = failures(c);
        Report {
            settings,
            requests: c.requests,
            replies_ok: c.replies_ok,
            replies_error: c.replies_error,
            lost: c.lost,
            duplicates: c.duplicates,
            mismatched: c.mismatched,
            latency_ms: Quantiles::from_micros(&fleet.latency),
            accept_latency_ms: Quantiles::from_micros(&fleet.accept_latency),
            throughput_rps: (throughput * 10.0).round() / 10.0,
            elapsed_s: (elapsed * 1000.0).round() / 1000.0,
            devices_ready: fleet.devices_ready,
            wire_bytes_per_request: {
                let per = |bytes: u64| (bytes as f64 / c.requests.max(1) as f64).round();
                BTreeMap::from([("up", per(c.bytes_up)), ("down", per(c.bytes_down))])
            },
            counts: extra_counts(c),
            errors_by_status: stats
                .errors_by_status
                .iter()
                .map(|(code, n)| (code.to_string(), *n))
                .collect(),
            mismatch_reasons: stats.mismatch_reasons.clone(),
            resources,
            passed: failures.is_empty(),
            failures,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_in_ms() {
        let mut h = crate::metrics::histogram();
        for micros in 1..=1000u64 {
            h.record(micros * 10).expect("in range");
        }
        let q = Quantiles::from_micros(&h);
        assert!((q.p50 - 5.0).abs() < 0.01, "{q:?}");
        assert!((q.p99 - 9.9).abs() < 0.01, "{q:?}");
        assert!((q.max - 10.0).abs() < 0.01, "{q:?}");
        assert_eq!(
            Quantiles::from_micros(&crate::metrics::histogram()),
            Quantiles::default()
        );
    }

    #[test]
    fn verdict_follows_the_contract() {
        let ok = Counts {
            requests: 3,
            replies_ok: 3,
            duplicates: 2,
            ..Counts::default()
        };
        assert!(failures(&ok).is_empty());
        assert_eq!(
            failures(&Counts {
                lost: 1,
                ..ok.clone()
            })
            .len(),
            1
        );
        assert_eq!(
            failures(&Counts {
                mismatched: 1,
                ..ok.clone()
            })
            .len(),
            1
        );
        assert_eq!(
            failures(&Counts::default()),
            vec!["no request was answered".to_owned()]
        );
    }
}
