//! `limits.max_connect_rate`: new connections per second across all sources, as a token bucket
//! holding one second's worth (so a burst of that many passes after a quiet second).
//!
//! Fed by the accept loop, once per accepted connection, with the time; feeds it yes or no. No
//! I/O and no clock of its own. A rate of 0 admits everything.

use std::time::Instant;

/// The bucket.
#[derive(Debug)]
pub struct ConnectRate {
    per_s: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl ConnectRate {
    /// A full bucket for `per_s` connections a second (0: no limit).
    pub fn new(per_s: u64) -> ConnectRate {
        ConnectRate {
            per_s: per_s as f64,
            tokens: per_s as f64,
            last: None,
        }
    }

    /// Whether one more connection may be accepted at `now`.
    pub fn admit(&mut self, now: Instant) -> bool {
        if self.per_s == 0.0 {
            return true;
        }
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.per_s;
            self.tokens = (self.tokens + refill).min(self.per_s);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_second_worth_passes_then_the_rate() {
        let mut rate = ConnectRate::new(100);
        let start = Instant::now();
        let burst = (0..150).filter(|_| rate.admit(start)).count();
        assert_eq!(burst, 100);
        // 15 ms later: one and a half connections' worth.
        let later = start + Duration::from_millis(15);
        assert_eq!((0..5).filter(|_| rate.admit(later)).count(), 1);
        // Over one simulated second at 1,000 attempts/s, about 100 pass.
        let mut passed = 0;
        for ms in 16..=1015 {
            let now = start + Duration::from_millis(ms);
            passed += usize::from(rate.admit(now));
        }
        assert!((99..=101).contains(&passed), "{passed}");
    }

    #[test]
    fn zero_is_off() {
        let mut rate = ConnectRate::new(0);
        let now = Instant::now();
        assert!((0..100_000).all(|_| rate.admit(now)));
    }
}
