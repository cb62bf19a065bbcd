//! Login counters: authentication failures by reason, and connections delayed or refused to
//! protect the gateway, for `/metrics` and the gateway status.
//!
//! Fed by the session (each refusal), the login guard (throttle and pool) and the accept loop
//! (connect rate); read by [`super::super::FrontDoorStats::render`] and the status publisher.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde_json::{json, Map, Value};

use super::Refusal;

/// The counters. All monotonic except the `tracked_*` gauges.
#[derive(Debug, Default)]
pub struct LoginStats {
    failures: [AtomicU64; Refusal::ALL.len()],
    /// Logins that waited before their check (their source failed before).
    pub delayed: AtomicU64,
    /// Logins refused by the throttle without a check (`limits.max_auth_failures`).
    pub refused: AtomicU64,
    /// Logins refused for want of a place in the password pool in time.
    pub busy: AtomicU64,
    /// Connections closed at accept, over `limits.max_connect_rate`.
    pub rate_limited: AtomicU64,
    tracked_sources: AtomicU64,
    tracked_names: AtomicU64,
}

/// Identity's own refusals: the throttle's (`throttled`, `busy`) are counted as actions.
fn is_auth_failure(refusal: Refusal) -> bool {
    !matches!(refusal, Refusal::Throttled | Refusal::Busy)
}

impl LoginStats {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Counts a refused CONNECT by its reason.
    pub fn failed(&self, refusal: Refusal) {
        if let Some(at) = Refusal::ALL.iter().position(|r| *r == refusal) {
            Self::bump(&self.failures[at]);
        }
    }

    /// Authentication failures of one reason so far.
    pub fn failures(&self, refusal: Refusal) -> u64 {
        Refusal::ALL
            .iter()
            .position(|r| *r == refusal)
            .map_or(0, |at| self.failures[at].load(Relaxed))
    }

    /// Records the size of the failure tables (sources, names).
    pub fn set_tracked(&self, (sources, names): (usize, usize)) {
        self.tracked_sources.store(sources as u64, Relaxed);
        self.tracked_names.store(names as u64, Relaxed);
    }

    fn actions(&self) -> [(&'static str, u64); 4] {
        [
            ("delayed", self.delayed.load(Relaxed)),
            ("refused", self.refused.load(Relaxed)),
            ("busy", self.busy.load(Relaxed)),
            ("rate_limited", self.rate_limited.load(Relaxed)),
        ]
    }

    /// Appends the counters in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP roost_frontdoor_auth_failures_total CONNECTs refused by identity, by reason.\n\
             # TYPE roost_frontdoor_auth_failures_total counter"
        );
        for refusal in Refusal::ALL.into_iter().filter(|r| is_auth_failure(*r)) {
            let _ = writeln!(
                out,
                "roost_frontdoor_auth_failures_total{{reason=\"{}\"}} {}",
                refusal.label(),
                self.failures(refusal)
            );
        }
        let _ = writeln!(
            out,
            "# HELP roost_frontdoor_throttled_total Logins delayed or refused, and connections \
             refused at accept, to protect the gateway.\n\
             # TYPE roost_frontdoor_throttled_total counter"
        );
        for (action, count) in self.actions() {
            let _ = writeln!(
                out,
                "roost_frontdoor_throttled_total{{action=\"{action}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP roost_frontdoor_login_tracked Source addresses and operator names with recent \
             failed logins.\n# TYPE roost_frontdoor_login_tracked gauge\n\
             roost_frontdoor_login_tracked{{table=\"sources\"}} {}\n\
             roost_frontdoor_login_tracked{{table=\"names\"}} {}",
            self.tracked_sources.load(Relaxed),
            self.tracked_names.load(Relaxed)
        );
    }

    /// The `logins` object of the gateway status.
    pub fn status_json(&self) -> Value {
        let failures: Map<String, Value> = Refusal::ALL
            .into_iter()
            .filter(|r| is_auth_failure(*r))
            .map(|r| (r.label().to_owned(), json!(self.failures(r))))
            .collect();
        let throttled: Map<String, Value> = self
            .actions()
            .into_iter()
            .map(|(action, count)| (action.to_owned(), json!(count)))
            .collect();
        json!({ "auth_failures": failures, "throttled": throttled })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_by_reason_and_actions_render_apart() {
        let stats = LoginStats::default();
        stats.failed(Refusal::BadPassword);
        stats.failed(Refusal::BadPassword);
        stats.failed(Refusal::Throttled);
        LoginStats::bump(&stats.refused);
        let mut out = String::new();
        stats.render(&mut out);
        assert!(out.contains("roost_frontdoor_auth_failures_total{reason=\"bad_password\"} 2\n"));
        assert!(!out.contains("reason=\"throttled\""));
        assert!(out.contains("roost_frontdoor_throttled_total{action=\"refused\"} 1\n"));
        let status = stats.status_json();
        assert_eq!(status["auth_failures"]["bad_password"], 2);
        assert_eq!(status["throttled"]["refused"], 1);
    }
}
