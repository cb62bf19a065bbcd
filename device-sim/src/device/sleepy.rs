//! A sleepy device: wakes every `wake_every` (± jitter), connects with a persistent session
//! (Clean Start 0, Session Expiry longer than its sleep), announces presence, collects and acks
//! the replies held for it, sends again any request of an earlier wake that got no answer at all
//! (same correlation: the gateway that took it may have died before committing it), sends its
//! next request, listens for `listen`, announces sleep and disconnects. Used by `run --wake-every`.
//!
//! After `stop_sending` it makes drain wakes, staying connected until every request is answered or
//! the schedule's `give_up`. Every wait is bounded by `connect_timeout`, `listen` or `give_up`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::sleep_until;
use wire::topics;

use super::{now_ms, Device, DeviceConfig, Schedule, Sleepy};
use crate::connection::{Link, LinkEvent, LinkOptions};
use crate::metrics::{DeviceStats, Live};
use crate::tracker::Tracker;
use crate::workload;

/// Runs sleepy device `index` until the schedule ends.
pub async fn run(
    index: usize,
    config: Arc<DeviceConfig>,
    sleepy: Sleepy,
    live: Arc<Live>,
    mut schedule_rx: watch::Receiver<Option<Schedule>>,
) -> DeviceStats {
    let Some(id) = config.device_id(index) else {
        let mut stats = DeviceStats::default();
        stats.counts.devices_failed = 1;
        return stats;
    };
    let Some(schedule) = schedule_rx
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|s| *s)
    else {
        return DeviceStats::default();
    };
    let mut options = LinkOptions::new(&config.host, config.port, id.to_string());
    options.clean_start = false;
    options.reconnect = false;
    let session = sleepy.wake_every * 2 + sleepy.listen + Duration::from_secs(60);
    options.session_expiry_s = Some(u32::try_from(session.as_secs()).unwrap_or(u32::MAX));
    let mut device = Device {
        tracker: Tracker::new(config.nonce, topics::reply(&id), false),
        id,
        config: &config,
        stats: DeviceStats::default(),
        live: &live,
        rng: rand::rngs::StdRng::seed_from_u64(config.seed ^ index as u64),
        unanswered: Default::default(),
    };
    // The first wakes spread over one sleep, so the fleet does not connect all at once.
    let mut wake = schedule.start + sleepy.wake_every.mul_f64(device.rng.gen_range(0.0..1.0));
    let mut connected_once = false;
    loop {
        if wake >= schedule.give_up {
            break;
        }
        sleep_until(wake.into()).await;
        let sending = device.may_send(&schedule, Instant::now());
        if !sending && device.tracker.unsettled() == 0 {
            break;
        }
        if cycle(&mut device, &options, sleepy, schedule, sending).await {
            connected_once = true;
        }
        let jitter = 1.0 + sleepy.jitter * device.rng.gen_range(-1.0..=1.0);
        wake = Instant::now() + sleepy.wake_every.mul_f64(jitter.max(0.0));
    }
    let mut stats = device.finish();
    if !connected_once && stats.counts.connect_errors > 0 {
        stats.counts.devices_failed += 1;
    }
    stats
}

/// One wake: returns whether the device got connected and subscribed.
async fn cycle(
    device: &mut Device<'_>,
    options: &LinkOptions,
    sleepy: Sleepy,
    schedule: Schedule,
    sending: bool,
) -> bool {
    let mut link = Link::open(options);
    let connect_until = Instant::now() + device.config.connect_timeout;
    if !connect(device, &mut link, connect_until).await {
        device.stats.counts.connect_errors += 1;
        Live::bump(&device.live.errors);
        link.close(Duration::from_millis(200)).await;
        return false;
    }
    Live::bump(&device.live.connected);
    let listen_ms = u64::try_from(sleepy.listen.as_millis()).unwrap_or(u64::MAX);
    let presence = workload::presence(Some(listen_ms));
    device
        .publish(&link.client, topics::presence(&device.id), presence)
        .await;
    let wakes = device.stats.counts.wakes;
    // What got no answer on an earlier wake (queued replies from the session came first).
    device.retry_unanswered(&link.client).await;
    if sending {
        device.send_request(&link.client, Instant::now()).await;
        if wakes.checked_rem(u64::from(sleepy.telemetry_every)) == Some(0) {
            let payload = workload::telemetry(now_ms(), &mut device.rng);
            device
                .publish(&link.client, topics::telemetry(&device.id), payload)
                .await;
            device.stats.counts.telemetry += 1;
        }
    }
    // Listen for the window; a drain wake stays until nothing is pending or the run gives up.
    let listen_until = Instant::now() + sleepy.listen;
    loop {
        let now = Instant::now();
        let draining = !sending && device.tracker.unsettled() > 0;
        let until = if draining {
            schedule.give_up
        } else {
            listen_until
        };
        if now >= until || (!sending && device.tracker.unsettled() == 0) {
            break;
        }
        tokio::select! {
            event = link.events.recv() => {
                if !device.on_event(&link, event).await {
                    break;
                }
            }
            _ = sleep_until(until.into()) => {}
        }
    }
    device
        .publish(
            &link.client,
            topics::presence(&device.id),
            workload::presence(None),
        )
        .await;
    device.stats.counts.wakes += 1;
    device
        .live
        .connected
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    link.close(Duration::from_secs(2)).await;
    true
}

/// Waits for CONNACK, subscribes, waits for SUBACK, until `deadline`.
async fn connect(device: &mut Device<'_>, link: &mut Link, deadline: Instant) -> bool {
    loop {
        let event = tokio::select! {
            event = link.events.recv() => event,
            _ = sleep_until(deadline.into()) => return false,
        };
        match event {
            Some(LinkEvent::Connected { .. }) => {
                if device.subscribe(&link.client).await.is_err() {
                    return false;
                }
            }
            Some(LinkEvent::Subscribed { granted }) => return granted,
            Some(LinkEvent::Message(publish)) => {
                device.on_message(&link.client, &publish).await;
            }
            Some(LinkEvent::Error(_)) | Some(LinkEvent::Closed) | None => return false,
        }
    }
}
