//! The fleet: spawns one lightweight task per device on the shared tokio runtime (no OS thread
//! per device), ramps connections at `connect_rate`, starts everyone on one [`Schedule`], shows
//! progress, and merges every device's [`DeviceStats`] when they are done.
//!
//! Fed by a scenario with a [`DeviceConfig`] and a [`Plan`]; feeds [`crate::report`] with a
//! [`FleetResult`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::device::{connected, sleepy, DeviceConfig, Schedule};
use crate::metrics::{DeviceStats, Live};
use crate::progress::Progress;

/// How many devices, for how long.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Devices to simulate.
    pub devices: usize,
    /// Sending time.
    pub duration: Duration,
    /// Extra time for replies after sending stops; still missing then = lost.
    pub grace: Duration,
    /// New connections per second while ramping up.
    pub connect_rate: f64,
    /// Show a progress bar.
    pub progress: bool,
}

/// What the fleet did.
#[derive(Debug)]
pub struct FleetResult {
    /// Every device's results, merged.
    pub stats: DeviceStats,
    /// Request published → final reply, µs.
    pub latency: Histogram<u64>,
    /// Request published → `202`, µs.
    pub accept_latency: Histogram<u64>,
    /// When sending started (None when no device connected).
    pub schedule: Option<Schedule>,
    /// When the last device finished.
    pub ended: Instant,
    /// Devices that connected (connected rhythm) or were started (sleepy rhythm).
    pub devices_ready: usize,
}

/// Runs the whole fleet to completion.
pub async fn run(config: DeviceConfig, plan: Plan) -> FleetResult {
    let config = Arc::new(config);
    let live = Arc::new(Live::default());
    let (schedule_tx, schedule_rx) = watch::channel(None::<Schedule>);
    let (ready_tx, mut ready_rx) = mpsc::channel::<bool>(plan.devices.max(1));
    let mut tasks = JoinSet::new();
    let spacing = Duration::from_secs_f64(1.0 / plan.connect_rate.max(1.0));
    let ramp_started = Instant::now();
    for index in 0..plan.devices {
        let (shared, live, rx) = (config.clone(), live.clone(), schedule_rx.clone());
        match config.sleepy {
            Some(rhythm) => tasks.spawn(sleepy::run(index, shared, rhythm, live, rx)),
            None => tasks.spawn(connected::run(index, shared, live, ready_tx.clone(), rx)),
        };
        if config.sleepy.is_none() {
            // Pacing the ramp (rumqttd accepts ~900 connections/s per listener), not syncing.
            tokio::time::sleep_until((ramp_started + spacing * (index as u32 + 1)).into()).await;
        }
    }
    drop(ready_tx);
    let devices_ready = match config.sleepy {
        Some(_) => plan.devices,
        None => {
            // Every device reports once, bounded by its own connect timeout.
            // (Each device drops its sender after reporting, so a crashed one cannot hang this.)
            let mut ready = 0;
            for _ in 0..plan.devices {
                match ready_rx.recv().await {
                    Some(ok) => ready += usize::from(ok),
                    None => break,
                }
            }
            ready
        }
    };
    let schedule = (devices_ready > 0).then(|| {
        let start = Instant::now();
        Schedule {
            start,
            stop_sending: start + plan.duration,
            give_up: start + plan.duration + plan.grace,
        }
    });
    // Sending `None` (nobody connected) releases the devices to finish at once.
    let _ = schedule_tx.send(schedule);
    drop(schedule_tx);
    let progress = schedule
        .filter(|_| plan.progress)
        .map(|s| Progress::start(live.clone(), s, plan.duration));
    let mut stats = DeviceStats::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(device) => stats.merge(&device),
            Err(error) => {
                tracing::error!(%error, "a device task failed");
                stats.counts.devices_failed += 1;
            }
        }
    }
    if let Some(progress) = progress {
        progress.finish();
    }
    let (latency, accept_latency) = live.latencies();
    FleetResult {
        stats,
        latency,
        accept_latency,
        schedule,
        ended: Instant::now(),
        devices_ready,
    }
}
