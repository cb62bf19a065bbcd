//! The Prometheus series that stall alarms and per-op dashboards need: the two stall gauges
//! (`roost_oldest_queued_age_seconds`, `roost_oldest_held_age_seconds`), dead letters by reason,
//! and request latency by op. Appended to `/metrics` by [`super::http`].

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use super::Metrics;
use crate::metrics::IntakeStats;

/// Appends the series; `ages` are when the oldest queued request was received and the oldest
/// held reply finished (ms since epoch), if any.
pub fn render(
    out: &mut String,
    metrics: &Metrics,
    intake: &IntakeStats,
    ages: (Option<i64>, Option<i64>),
    now_ms: i64,
) {
    let age = |at: Option<i64>| at.map_or(0.0, |at| (now_ms - at).max(0) as f64 / 1000.0);
    let _ = writeln!(
        out,
        "# HELP roost_oldest_queued_age_seconds Age of the oldest request still queued or running (0 when none).\n\
         # TYPE roost_oldest_queued_age_seconds gauge\n\
         roost_oldest_queued_age_seconds {}",
        age(ages.0)
    );
    let _ = writeln!(
        out,
        "# HELP roost_oldest_held_age_seconds Time since the oldest held reply was finished (0 when none).\n\
         # TYPE roost_oldest_held_age_seconds gauge\n\
         roost_oldest_held_age_seconds {}",
        age(ages.1)
    );
    let _ = writeln!(
        out,
        "# HELP roost_dead_letters_total Dead letters written since start, by reason.\n\
         # TYPE roost_dead_letters_total counter"
    );
    let mut reasons = intake
        .dead_letters
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    *reasons.entry("reply_ttl".to_owned()).or_insert(0) += metrics.dead_total.load(Relaxed);
    for (reason, count) in reasons {
        let reason = label(&reason);
        let _ = writeln!(
            out,
            "roost_dead_letters_total{{reason=\"{reason}\"}} {count}"
        );
    }
    let name = "roost_request_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Request received to final reply committed, by op.\n# TYPE {name} histogram"
    );
    for (op, histogram) in metrics.latency_by_op() {
        histogram.render_series(out, name, &format!("op=\"{}\",", label(op)));
    }
}

/// A label value with the characters the text format escapes left out.
fn label(value: &str) -> String {
    value
        .chars()
        .filter(|c| !matches!(c, '"' | '\\' | '\n'))
        .collect()
}
