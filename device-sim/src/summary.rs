//! The human summary of a [`Report`]: a few aligned lines and the verdict, printed after every
//! `run` and `load` (on stdout, or on stderr when the JSON goes to stdout).

use std::fmt::Write as _;

use crate::report::{Quantiles, Report};

impl Report {
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
