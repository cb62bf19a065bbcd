//! Counting: each device's own [`DeviceStats`] (plain counts, merged once at the end) and the
//! fleet's [`Live`] state shared by all devices: atomic counters for the progress bar and the two
//! HDR latency histograms. One histogram at 3 significant digits over 1 µs..1 h is ~190 KB, so
//! devices share them (a lock held only to record one value) rather than own a copy each.
//!
//! Fed by the device loops with [`Outcome`]s; feeds [`crate::report`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::tracker::Outcome;

/// State shared by all devices: counters the progress bar reads while the run goes on, and the
/// latency histograms.
#[derive(Debug)]
pub struct Live {
    /// Requests published.
    pub sent: AtomicU64,
    /// Correct final `200` replies.
    pub ok: AtomicU64,
    /// Final error replies, mismatches and connection errors.
    pub errors: AtomicU64,
    /// Devices connected and subscribed right now.
    pub connected: AtomicU64,
    /// Request published → final reply, µs.
    latency: Mutex<Histogram<u64>>,
    /// Request published → `202`, µs.
    accept_latency: Mutex<Histogram<u64>>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            sent: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            latency: Mutex::new(histogram()),
            accept_latency: Mutex::new(histogram()),
        }
    }
}

/// Locks a histogram; a panic elsewhere cannot leave one half-updated, so poison is ignored.
fn lock(histogram: &Mutex<Histogram<u64>>) -> MutexGuard<'_, Histogram<u64>> {
    histogram
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Live {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }

    fn record_final(&self, latency: Duration) {
        lock(&self.latency).saturating_record(micros(latency));
    }

    fn record_accept(&self, latency: Duration) {
        lock(&self.accept_latency).saturating_record(micros(latency));
    }

    /// Copies of the (final, `202`) latency histograms, µs.
    pub fn latencies(&self) -> (Histogram<u64>, Histogram<u64>) {
        (
            lock(&self.latency).clone(),
            lock(&self.accept_latency).clone(),
        )
    }
}

/// Plain counts, one set per device, summed at the end.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Requests published.
    pub requests: u64,
    /// First `202`s received.
    pub accepted: u64,
    /// Correct final `200` replies.
    pub replies_ok: u64,
    /// Final replies with an error status (4xx/5xx), including intake rejections.
    pub replies_error: u64,
    /// Requests with no final reply by the end of the grace period.
    pub lost: u64,
    /// Replies received again after their request was answered (dropped, as devices must).
    pub duplicates: u64,
    /// Replies carrying another run's correlation data (same device ids reused).
    pub foreign: u64,
    /// Replies that broke the protocol or carried a wrong result.
    pub mismatched: u64,
    /// Final replies that arrived without a `202` first (normal for sleepy devices).
    pub finals_without_202: u64,
    /// Strict mode: `202`s that arrived after their final reply (still matching it).
    pub late_202: u64,
    /// Requests sent again with the same correlation because no `202` came before the device
    /// slept (sleepy devices, on their next wake; the gateway's dedupe answers them).
    pub retries: u64,
    /// `202`s repeated for a pending request (answers to retries).
    pub repeated_202: u64,
    /// Acks published.
    pub acks: u64,
    /// Connections that failed or dropped.
    pub connect_errors: u64,
    /// Devices that never managed to connect and subscribe.
    pub devices_failed: u64,
    /// Sleepy wake cycles completed.
    pub wakes: u64,
    /// Telemetry uploads published.
    pub telemetry: u64,
    /// Open loop: sends delayed past their schedule by the in-flight cap.
    pub late_sends: u64,
    /// Bytes of request and ack PUBLISH packets sent (PUBACKs and pings not included).
    pub bytes_up: u64,
    /// Bytes of reply PUBLISH packets received, duplicates included.
    pub bytes_down: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        let pairs = [
            (&mut self.requests, o.requests),
            (&mut self.accepted, o.accepted),
            (&mut self.replies_ok, o.replies_ok),
            (&mut self.replies_error, o.replies_error),
            (&mut self.lost, o.lost),
            (&mut self.duplicates, o.duplicates),
            (&mut self.foreign, o.foreign),
            (&mut self.mismatched, o.mismatched),
            (&mut self.finals_without_202, o.finals_without_202),
            (&mut self.late_202, o.late_202),
            (&mut self.retries, o.retries),
            (&mut self.repeated_202, o.repeated_202),
            (&mut self.acks, o.acks),
            (&mut self.connect_errors, o.connect_errors),
            (&mut self.devices_failed, o.devices_failed),
            (&mut self.wakes, o.wakes),
            (&mut self.telemetry, o.telemetry),
            (&mut self.late_sends, o.late_sends),
            (&mut self.bytes_up, o.bytes_up),
            (&mut self.bytes_down, o.bytes_down),
        ];
        for (mine, theirs) in pairs {
            *mine += theirs;
        }
    }
}

/// Microsecond histogram from 1 µs to 1 hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}

/// One device's counts (or, after [`DeviceStats::merge`], the fleet's).
#[derive(Debug, Clone, Default)]
pub struct DeviceStats {
    /// The counts.
    pub counts: Counts,
    /// Final error replies by status code.
    pub errors_by_status: BTreeMap<u16, u64>,
    /// Mismatches by reason.
    pub mismatch_reasons: BTreeMap<&'static str, u64>,
    /// When the last final reply arrived.
    pub last_final: Option<Instant>,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl DeviceStats {
    /// Counts one reply's outcome; `live` mirrors it for the progress bar.
    pub fn record(&mut self, outcome: &Outcome, now: Instant, live: &Live) {
        match outcome {
            Outcome::Accepted { latency } => {
                self.counts.accepted += 1;
                live.record_accept(*latency);
            }
            Outcome::Final {
                status,
                latency,
                had_202,
            } => {
                self.last_final = Some(now);
                live.record_final(*latency);
                if !had_202 {
                    self.counts.finals_without_202 += 1;
                }
                if *status == 200 {
                    self.counts.replies_ok += 1;
                    Live::bump(&live.ok);
                } else {
                    self.counts.replies_error += 1;
                    *self.errors_by_status.entry(*status).or_default() += 1;
                    Live::bump(&live.errors);
                }
            }
            Outcome::Late202 { latency } => {
                self.counts.accepted += 1;
                self.counts.late_202 += 1;
                live.record_accept(*latency);
            }
            Outcome::Duplicate => self.counts.duplicates += 1,
            Outcome::Repeated202 => self.counts.repeated_202 += 1,
            Outcome::Foreign => self.counts.foreign += 1,
            Outcome::Mismatch {
                reason, finished, ..
            } => {
                if *finished {
                    self.last_final = Some(now);
                }
                self.counts.mismatched += 1;
                *self.mismatch_reasons.entry(reason).or_default() += 1;
                Live::bump(&live.errors);
            }
        }
    }

    /// Adds another device's results into these.
    pub fn merge(&mut self, other: &DeviceStats) {
        self.counts.add(&other.counts);
        for (status, n) in &other.errors_by_status {
            *self.errors_by_status.entry(*status).or_default() += n;
        }
        for (reason, n) in &other.mismatch_reasons {
            *self.mismatch_reasons.entry(reason).or_default() += n;
        }
        self.last_final = self.last_final.max(other.last_final);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_and_merged() {
        let live = Live::default();
        let now = Instant::now();
        let mut a = DeviceStats::default();
        let ms = Duration::from_millis;
        a.record(&Outcome::Accepted { latency: ms(1) }, now, &live);
        let done = |status| Outcome::Final {
            status,
            latency: ms(4),
            had_202: true,
        };
        a.record(&done(200), now, &live);
        let mut b = DeviceStats::default();
        b.record(&done(503), now, &live);
        b.record(&Outcome::Duplicate, now, &live);
        let wrong = Outcome::Mismatch {
            reason: "result_value",
            detail: String::new(),
            finished: true,
        };
        b.record(&wrong, now, &live);
        a.merge(&b);
        let c = &a.counts;
        assert_eq!((c.accepted, c.replies_ok, c.replies_error), (1, 1, 1));
        assert_eq!((c.duplicates, c.mismatched), (1, 1));
        assert_eq!(a.errors_by_status.get(&503), Some(&1));
        assert_eq!(a.mismatch_reasons.get("result_value"), Some(&1));
        let (latency, accept) = live.latencies();
        assert_eq!((latency.len(), accept.len()), (2, 1));
        assert_eq!((Live::get(&live.ok), Live::get(&live.errors)), (1, 2));
    }
}
