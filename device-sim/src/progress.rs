//! The progress bar on long runs: elapsed time against the planned duration, requests sent,
//! replies per second over the last tick, errors and connected devices.
//!
//! Fed by the fleet's [`Live`] counters; draws on stderr only (indicatif hides itself when stderr
//! is not a terminal, and the scenario does not start one with `--json -` or `--quiet`).

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;

use crate::device::Schedule;
use crate::metrics::Live;

/// A running progress bar.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    ticker: JoinHandle<()>,
}

impl Progress {
    /// Starts drawing, ticking twice a second.
    pub fn start(live: Arc<Live>, schedule: Schedule, duration: Duration) -> Progress {
        let bar = ProgressBar::new(duration.as_secs().max(1));
        let style = ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len}s {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        let ticker = tokio::spawn(tick(bar.clone(), live, schedule));
        Progress { bar, ticker }
    }

    /// Stops and clears the bar.
    pub fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

async fn tick(bar: ProgressBar, live: Arc<Live>, schedule: Schedule) {
    let period = Duration::from_millis(500);
    let mut interval = tokio::time::interval(period);
    let mut last_done = 0u64;
    loop {
        interval.tick().await;
        let done = Live::get(&live.ok) + Live::get(&live.errors);
        let rate = (done.saturating_sub(last_done)) as f64 / period.as_secs_f64();
        last_done = done;
        bar.set_position(schedule.start.elapsed().as_secs());
        bar.set_message(format!(
            "sent {} ok {} err {} | {:.0} replies/s | {} connected",
            Live::get(&live.sent),
            Live::get(&live.ok),
            Live::get(&live.errors),
            rate,
            Live::get(&live.connected),
        ));
    }
}
