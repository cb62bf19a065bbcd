//! A device that stays connected for the whole run and paces its requests open or closed loop
//! ([`Pacing`]). Used by `run` without `--wake-every`, and by `load`.
//!
//! Lifecycle: connect and subscribe (bounded by `connect_timeout`), report ready to the fleet,
//! wait for the shared [`Schedule`], send until `stop_sending`, then drain until every request is
//! answered or `give_up`. Every wait is bounded by the schedule.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio::time::sleep_until;

use super::{Device, DeviceConfig, Pacing, Schedule};
use crate::connection::{Link, LinkEvent, LinkOptions};
use crate::metrics::{DeviceStats, Live};
use crate::tracker::{Outcome, Tracker};

/// An open-loop send more than this behind its schedule counts as late.
const LATE: Duration = Duration::from_millis(10);

/// Runs device `index` to the end of the schedule.
pub async fn run(
    index: usize,
    config: Arc<DeviceConfig>,
    live: Arc<Live>,
    ready_tx: mpsc::Sender<bool>,
    mut schedule_rx: watch::Receiver<Option<Schedule>>,
) -> DeviceStats {
    let Some(id) = config.device_id(index) else {
        let _ = ready_tx.send(false).await;
        drop(ready_tx);
        return failed();
    };
    let reply_topic = wire::topics::reply(&id);
    let mut options = LinkOptions::new(&config.host, config.port, id.to_string());
    options.inflight = u16::try_from(config.pacing.inflight() * 2 + 4).unwrap_or(u16::MAX);
    let mut device = Device {
        tracker: Tracker::new(config.nonce, reply_topic, config.strict_202),
        id,
        config: &config,
        stats: DeviceStats::default(),
        live: &live,
        rng: rand::rngs::StdRng::seed_from_u64(config.seed ^ index as u64),
        unanswered: Default::default(),
    };
    let mut link = Link::open(&options);
    let ready = tokio::time::timeout(config.connect_timeout, connect(&mut device, &mut link)).await;
    let ready = matches!(ready, Ok(true));
    let _ = ready_tx.send(ready).await;
    drop(ready_tx);
    if !ready {
        tracing::warn!(device = %device.id, "could not connect and subscribe in time");
        link.close(Duration::from_millis(200)).await;
        let mut stats = device.finish();
        stats.counts.devices_failed += 1;
        return stats;
    }
    Live::bump(&live.connected);
    // The fleet sends the schedule once every device has reported; it dropping the sender
    // without one means the run was abandoned.
    let schedule = match schedule_rx.wait_for(Option::is_some).await {
        Ok(schedule) => *schedule,
        Err(_) => None,
    };
    if let Some(schedule) = schedule {
        drive(&mut device, &mut link, schedule).await;
    }
    live.connected
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    link.close(Duration::from_secs(2)).await;
    device.finish()
}

fn failed() -> DeviceStats {
    let mut stats = DeviceStats::default();
    stats.counts.devices_failed = 1;
    stats
}

/// Waits for CONNACK, subscribes, waits for SUBACK. Messages arriving meanwhile are handled.
async fn connect(device: &mut Device<'_>, link: &mut Link) -> bool {
    loop {
        match link.events.recv().await {
            Some(LinkEvent::Connected { .. }) => {
                if device.subscribe(&link.client).await.is_err() {
                    return false;
                }
            }
            Some(LinkEvent::Subscribed { granted }) => return granted,
            Some(LinkEvent::Message(publish)) => {
                device.on_message(&link.client, &publish).await;
            }
            Some(LinkEvent::Error(_)) => device.stats.counts.connect_errors += 1,
            Some(LinkEvent::Closed) | None => return false,
        }
    }
}

/// Sends and receives until the schedule says stop.
async fn drive(device: &mut Device<'_>, link: &mut Link, schedule: Schedule) {
    let pacing = device.config.pacing;
    let cap = pacing.inflight();
    let offset = match pacing {
        Pacing::Closed { think, .. } => think,
        Pacing::Open { interval, .. } => interval,
    };
    // Spread the fleet's first requests over one interval instead of a thundering herd.
    let mut next_send = schedule.start + offset.mul_f64(device.rng.gen_range(0.0..1.0));
    let mut online = true;
    loop {
        let now = Instant::now();
        let sending = device.may_send(&schedule, now);
        if now >= schedule.give_up || (!sending && device.tracker.unsettled() == 0) {
            return;
        }
        // Send everything that is due and fits under the cap.
        while online
            && device.may_send(&schedule, now)
            && next_send <= now
            && device.tracker.in_flight() < cap
        {
            let sent_at = match pacing {
                Pacing::Closed { .. } => now,
                Pacing::Open { interval, .. } => {
                    if now.saturating_duration_since(next_send) > LATE {
                        device.stats.counts.late_sends += 1;
                    }
                    let scheduled = next_send;
                    next_send += interval;
                    scheduled
                }
            };
            device.send_request(&link.client, sent_at).await;
        }
        let mut wake = schedule.give_up;
        if sending {
            wake = wake.min(schedule.stop_sending);
            if online && device.tracker.in_flight() < cap {
                wake = wake.min(next_send);
            }
        }
        tokio::select! {
            event = link.events.recv() => {
                match &event {
                    Some(LinkEvent::Error(_)) => online = false,
                    Some(LinkEvent::Subscribed { .. }) => online = true,
                    _ => {}
                }
                if let Some(LinkEvent::Message(publish)) = &event {
                    let outcome = device.on_message(&link.client, publish).await;
                    let finished = matches!(
                        outcome,
                        Outcome::Final { .. } | Outcome::Mismatch { finished: true, .. }
                    );
                    if let (true, Pacing::Closed { think, .. }) = (finished, pacing) {
                        next_send = next_send.max(Instant::now() + think);
                    }
                } else if !device.on_event(link, event).await {
                    return;
                }
            }
            _ = sleep_until(wake.into()) => {}
        }
    }
}
