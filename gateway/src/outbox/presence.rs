//! Who is awake: a device is awake while connected through the front door, and for its listen
//! window after any publish of its own (all an external broker lets us see); `{"state":
//! "asleep"}` ends the window at once, and the end of its front-door connection ends the
//! connection's wake.
//!
//! A device once seen connecting through the front door is awake exactly while connected: its
//! publishes' `Seen` and `Asleep` come from intake after their commit, so one sent just before
//! DISCONNECT (an ack, its `asleep`) can arrive after the disconnect, or even after its next
//! connection began, and would otherwise keep it "awake" through its next wake, or put it to
//! sleep during it: either way that wake would redeliver nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::DeviceEvent;
use crate::wire::DeviceId;

#[derive(Debug, Clone, Copy)]
struct Awake {
    until: Instant,
    connected: bool,
    /// Connected through the front door at least once: presence is its connections.
    front_door: bool,
    /// Whether it was awake when last looked at (by `apply` or `sweep`).
    was_awake: bool,
    /// Its window was last ended by the device itself (`asleep`, or its connection's end), at
    /// `until`, rather than left to run out.
    ended: bool,
}

impl Awake {
    fn is_awake(&self, now: Instant) -> bool {
        self.connected || self.until > now
    }
}

/// Presence of every device seen since start.
#[derive(Debug, Default)]
pub struct Presence {
    devices: HashMap<DeviceId, Awake>,
}

impl Presence {
    /// Whether `device` is awake now.
    pub fn is_awake(&self, device: &DeviceId) -> bool {
        self.devices
            .get(device)
            .is_some_and(|a| a.is_awake(Instant::now()))
    }

    /// What this gateway knows of `device`'s wake, as wall-clock ms (`now` is `now_ms` on the
    /// monotonic clock): until when it is awake (`i64::MAX` while connected through the front
    /// door, 0 when never seen), and when the device itself ended its last wake, if that is the
    /// last thing seen of it. A shared store merges these with other gateways' (see
    /// [`crate::store::devices::Seen`]).
    pub fn window(&self, device: &DeviceId, now: Instant, now_ms: i64) -> (i64, Option<i64>) {
        let Some(entry) = self.devices.get(device) else {
            return (0, None);
        };
        if entry.connected {
            return (i64::MAX, None);
        }
        let until_ms = if entry.until >= now {
            now_ms.saturating_add(entry.until.duration_since(now).as_millis() as i64)
        } else {
            now_ms.saturating_sub(now.duration_since(entry.until).as_millis() as i64)
        };
        (until_ms, entry.ended.then_some(until_ms))
    }

    /// Devices awake now.
    pub fn awake_count(&self) -> usize {
        let now = Instant::now();
        self.devices.values().filter(|a| a.is_awake(now)).count()
    }

    /// Devices seen since start.
    pub fn known_count(&self) -> usize {
        self.devices.len()
    }

    /// Applies an event that happened at `now`; returns the device if it just went from asleep
    /// to awake.
    pub fn apply(&mut self, event: &DeviceEvent, now: Instant) -> Option<DeviceId> {
        let device = event.device();
        let entry = self.devices.entry(device.clone()).or_insert(Awake {
            until: now,
            connected: false,
            front_door: false,
            was_awake: false,
            ended: false,
        });
        let was_awake = entry.is_awake(now);
        match event {
            DeviceEvent::Seen(_, window, _) if !entry.front_door => {
                entry.until = entry.until.max(now + *window);
                entry.ended = false;
            }
            DeviceEvent::Seen(..) => {}
            DeviceEvent::Connected(_) => {
                entry.connected = true;
                entry.front_door = true;
                entry.ended = false;
            }
            // Behind the front door connections are seen: leaving ends the listen window too.
            DeviceEvent::Disconnected(_) => {
                entry.connected = false;
                entry.until = now;
                entry.ended = true;
            }
            // A front-door device is awake while connected: its `asleep` comes from intake
            // after the commit, and may arrive after its next connection began (which would
            // then redeliver nothing); its connection's end says when it left.
            DeviceEvent::Asleep(..) => {
                entry.until = now;
                entry.ended = true;
            }
            DeviceEvent::Acked(_) if !entry.front_door => {
                entry.until = entry.until.max(now + Duration::from_millis(1));
                entry.ended = false;
            }
            DeviceEvent::Acked(_) => {}
            DeviceEvent::Rejected(_, _) | DeviceEvent::Undeliverable(..) => {}
        }
        entry.was_awake = entry.is_awake(now);
        (entry.was_awake && !was_awake).then(|| device.clone())
    }

    /// Devices whose listen window ran out, as of `now`, since the last sweep.
    pub fn sweep(&mut self, now: Instant) -> Vec<DeviceId> {
        let mut fell_asleep = Vec::new();
        for (device, entry) in &mut self.devices {
            if entry.was_awake && !entry.is_awake(now) {
                entry.was_awake = false;
                fell_asleep.push(device.clone());
            }
        }
        fell_asleep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str) -> DeviceId {
        DeviceId::parse(id).expect("valid")
    }

    #[test]
    fn wakes_once_per_sleep() {
        let mut presence = Presence::default();
        let d = dev("p1");
        let seen = DeviceEvent::Seen(d.clone(), Duration::from_secs(60), 0);
        let t0 = Instant::now();
        assert_eq!(presence.apply(&seen, t0), Some(d.clone()));
        assert_eq!(
            presence.apply(&seen, t0),
            None,
            "still awake: no second wake"
        );
        assert_eq!(presence.apply(&DeviceEvent::Asleep(d.clone(), 0), t0), None);
        assert!(!presence.is_awake(&d));
        assert_eq!(presence.apply(&seen, t0), Some(d.clone()), "woke again");
    }

    #[test]
    fn the_window_says_until_when_and_whether_the_device_ended_it() {
        let mut presence = Presence::default();
        let d = dev("w1");
        let t0 = Instant::now();
        assert_eq!(presence.window(&d, t0, 1_000), (0, None), "never seen");
        presence.apply(&DeviceEvent::Seen(d.clone(), Duration::from_secs(5), 0), t0);
        assert_eq!(presence.window(&d, t0, 1_000), (6_000, None));
        let later = t0 + Duration::from_secs(2);
        presence.apply(&DeviceEvent::Asleep(d.clone(), 0), later);
        assert_eq!(
            presence.window(&d, later, 3_000),
            (3_000, Some(3_000)),
            "ended by the device"
        );
        presence.apply(
            &DeviceEvent::Seen(d.clone(), Duration::from_secs(5), 0),
            later,
        );
        assert_eq!(
            presence.window(&d, later, 3_000),
            (8_000, None),
            "woke again"
        );
        presence.apply(&DeviceEvent::Connected(d.clone()), later);
        assert_eq!(presence.window(&d, later, 3_000), (i64::MAX, None));
    }

    #[test]
    fn connected_devices_stay_awake_until_they_leave() {
        let mut presence = Presence::default();
        let d = dev("p2");
        let t0 = Instant::now();
        assert_eq!(
            presence.apply(&DeviceEvent::Connected(d.clone()), t0),
            Some(d.clone())
        );
        assert!(presence.is_awake(&d));
        assert_eq!(
            presence.apply(&DeviceEvent::Disconnected(d.clone()), t0),
            None
        );
        assert!(!presence.is_awake(&d));
        assert_eq!(presence.known_count(), 1);
        assert_eq!(presence.awake_count(), 0);
    }

    #[test]
    fn a_late_seen_does_not_keep_a_front_door_device_awake() {
        let mut presence = Presence::default();
        let d = dev("p4");
        let t0 = Instant::now();
        presence.apply(&DeviceEvent::Connected(d.clone()), t0);
        presence.apply(&DeviceEvent::Disconnected(d.clone()), t0);
        // Its ack's `Seen`, committed after it left.
        let seen = DeviceEvent::Seen(d.clone(), Duration::from_secs(5), 0);
        assert_eq!(presence.apply(&seen, t0), None);
        presence.apply(&DeviceEvent::Acked(d.clone()), t0);
        assert!(!presence.is_awake(&d));
        assert_eq!(
            presence.apply(&DeviceEvent::Connected(d.clone()), t0),
            Some(d.clone()),
            "its next connection is a wake"
        );
    }

    #[test]
    fn a_late_asleep_does_not_end_the_next_connection() {
        let mut presence = Presence::default();
        let d = dev("p5");
        let t0 = Instant::now();
        presence.apply(&DeviceEvent::Connected(d.clone()), t0);
        presence.apply(&DeviceEvent::Disconnected(d.clone()), t0);
        assert_eq!(
            presence.apply(&DeviceEvent::Connected(d.clone()), t0),
            Some(d.clone()),
            "its next connection is a wake"
        );
        // The `asleep` it published before the first connection ended, committed only now.
        presence.apply(&DeviceEvent::Asleep(d.clone(), 0), t0);
        assert!(presence.is_awake(&d), "awake while connected");
    }

    #[test]
    fn sweep_reports_expired_windows_once() {
        let mut presence = Presence::default();
        let d = dev("p3");
        let t0 = Instant::now();
        presence.apply(&DeviceEvent::Seen(d.clone(), Duration::ZERO, 0), t0);
        assert!(
            presence.sweep(t0).is_empty(),
            "a zero window never made it awake"
        );
        presence.apply(&DeviceEvent::Seen(d.clone(), Duration::from_secs(5), 0), t0);
        assert!(
            presence.sweep(t0 + Duration::from_secs(4)).is_empty(),
            "still in its window"
        );
        assert_eq!(presence.sweep(t0 + Duration::from_secs(6)), vec![d.clone()]);
        assert!(
            presence.sweep(t0 + Duration::from_secs(7)).is_empty(),
            "reported once"
        );
    }
}
