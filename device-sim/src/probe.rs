//! What a run cost: resident memory and CPU time of device-sim itself and, with
//! `--gateway-pid`, of the gateway, read from Linux `/proc` before and after the run.
//!
//! Fed by the scenario (a [`Meter`] started before the fleet); feeds [`crate::report`] with
//! [`Resources`]. Off Linux every figure is simply absent.

use serde::Serialize;

/// `/proc/{pid}/stat` times are in USER_HZ ticks, fixed at 100 by the Linux ABI.
const TICKS_PER_S: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// Resident memory now (VmRSS), KiB.
    pub rss_kib: u64,
    /// Peak resident memory (VmHWM), KiB.
    pub peak_rss_kib: u64,
    /// User + system CPU time so far, seconds.
    pub cpu_s: f64,
}

/// Reads a process (`"self"` or a pid).
pub fn usage(pid: &str) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after its closing ')' are plain.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, i.e. 11 and 12 after the name.
    let ticks = |i: usize| fields.get(i).and_then(|t| t.parse::<u64>().ok());
    Some(Usage {
        rss_kib: field("VmRSS:")?,
        peak_rss_kib: field("VmHWM:")?,
        cpu_s: (ticks(11)? + ticks(12)?) as f64 / TICKS_PER_S,
    })
}

/// The run's resource figures, flattened into the JSON report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Resources {
    /// The gateway's resident memory at the end, KiB.
    pub gateway_rss_kib: Option<u64>,
    /// The gateway's peak resident memory (VmHWM), KiB.
    pub gateway_peak_rss_kib: Option<u64>,
    /// Gateway CPU seconds spent during the run.
    pub gateway_cpu_s: Option<f64>,
    /// Gateway CPU per final reply, µs.
    pub gateway_cpu_us_per_request: Option<f64>,
    /// device-sim's own peak resident memory, KiB.
    pub sim_peak_rss_kib: Option<u64>,
    /// device-sim CPU seconds spent during the run.
    pub sim_cpu_s: Option<f64>,
}

/// Readings taken when the run starts.
#[derive(Debug, Clone)]
pub struct Meter {
    gateway: Option<(String, Option<Usage>)>,
    sim: Option<Usage>,
}

impl Meter {
    /// Takes the starting readings.
    pub fn start(gateway_pid: Option<u32>) -> Meter {
        let gateway = gateway_pid.map(|pid| {
            let pid = pid.to_string();
            let first = usage(&pid);
            if first.is_none() {
                eprintln!("device-sim: cannot read /proc/{pid}: gateway figures left out");
            }
            (pid, first)
        });
        Meter {
            gateway,
            sim: usage("self"),
        }
    }

    /// Takes the final readings; `finals` is the number of final replies, for CPU per request.
    pub fn finish(&self, finals: u64) -> Resources {
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        let sim_end = usage("self");
        let sim_cpu = self.sim.zip(sim_end).map(|(a, b)| round(b.cpu_s - a.cpu_s));
        let (gateway_end, gateway_start) = match &self.gateway {
            Some((pid, start)) => (usage(pid), *start),
            None => (None, None),
        };
        let gateway_cpu = gateway_start
            .zip(gateway_end)
            .map(|(a, b)| round(b.cpu_s - a.cpu_s));
        Resources {
            gateway_rss_kib: gateway_end.map(|u| u.rss_kib),
            gateway_peak_rss_kib: gateway_end.map(|u| u.peak_rss_kib),
            gateway_cpu_s: gateway_cpu,
            gateway_cpu_us_per_request: gateway_cpu
                .filter(|_| finals > 0)
                .map(|cpu| round(cpu * 1e6 / finals as f64)),
            sim_peak_rss_kib: sim_end.map(|u| u.peak_rss_kib),
            sim_cpu_s: sim_cpu,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_usage_is_readable() {
        let first = usage("self").expect("linux /proc");
        assert!(first.rss_kib > 0 && first.peak_rss_kib >= first.rss_kib);
        // Burn a little CPU so the reading can move; it must never go backwards.
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        let second = usage("self").expect("linux /proc");
        assert!(second.cpu_s >= first.cpu_s);
        assert!(usage("not-a-pid").is_none());
    }

    #[test]
    fn meter_without_a_gateway_reports_only_itself() {
        let resources = Meter::start(None).finish(10);
        assert!(resources.gateway_rss_kib.is_none() && resources.gateway_cpu_s.is_none());
        assert!(resources.sim_peak_rss_kib.is_some() && resources.sim_cpu_s.is_some());
    }
}
