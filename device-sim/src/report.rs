//! The run's verdict: the contract's JSON report (`requests`, `replies_ok`, `replies_error`,
//! `lost`, `duplicates`, `mismatched`, `latency_ms`, `throughput_rps`, plus extras), a human
//! summary, and the pass/fail rule.
//!
//! Fed by [`crate::fleet::FleetResult`]; feeds the scenario's exit code and `--json FILE`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

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

    /// The human summary.
    pub fn summary(&self) -> String {
        let s = &self.settings;
        let q = |q: &Quantiles| {
            format!(
                "p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
                q.p50, q.p90, q.p99, q.max
            )
        };
        let mut out = String::new();
        let rate = s
            .rate_rps
            .map(|r| format!(" at {r} req/s"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "device-sim {} ({}{rate}): {} devices ({} ready) x {} in flight, {} s + {} s grace, broker {}",
            s.scenario, s.mode, s.devices, self.devices_ready, s.inflight, s.duration_s, s.grace_s, s.broker
        );
        let accepted = self.counts.get("accepted").copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "  requests     {:>9}   accepted (202) {accepted}",
            self.requests
        );
        let _ = writeln!(
            out,
            "  replies ok   {:>9}   error {} {:?}",
            self.replies_ok, self.replies_error, self.errors_by_status
        );
        let _ = writeln!(
            out,
            "  lost {}   duplicates {}   mismatched {} {:?}",
            self.lost, self.duplicates, self.mismatched, self.mismatch_reasons
        );
        let _ = writeln!(
            out,
            "  latency ms   {}   (request -> final reply)",
            q(&self.latency_ms)
        );
        let _ = writeln!(out, "  202 ms       {}", q(&self.accept_latency_ms));
        let _ = writeln!(
            out,
            "  throughput   {:.1} replies/s over {:.1} s",
            self.throughput_rps, self.elapsed_s
        );
        let r = &self.resources;
        let mib = |kib: u64| kib as f64 / 1024.0;
        if let (Some(rss), Some(peak)) = (r.gateway_rss_kib, r.gateway_peak_rss_kib) {
            let _ = writeln!(
                out,
                "  gateway RSS  {:.1} MiB (peak {:.1} MiB)",
                mib(rss),
                mib(peak)
            );
        }
        if let (Some(cpu), Some(per)) = (r.gateway_cpu_s, r.gateway_cpu_us_per_request) {
            let _ = writeln!(out, "  gateway CPU  {cpu:.2} s ({per:.0} us per request)");
        }
        if let (Some(cpu), Some(peak)) = (r.sim_cpu_s, r.sim_peak_rss_kib) {
            let _ = writeln!(
                out,
                "  device-sim   {cpu:.2} s CPU, peak RSS {:.1} MiB",
                mib(peak)
            );
        }
        let verdict = if self.passed {
            "PASS".to_owned()
        } else {
            format!("FAIL: {}", self.failures.join(", "))
        };
        let _ = write!(out, "  {verdict}");
        out
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
