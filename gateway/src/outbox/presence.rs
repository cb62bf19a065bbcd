//! Who is awake: a device is awake while connected through the front door, and for its listen
//! window after any publish of its own; `{"state": "asleep"}` ends that at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::DeviceEvent;
use crate::wire::DeviceId;

#[derive(Debug, Clone, Copy)]
struct Awake {
    until: Instant,
    connected: bool,
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
            .is_some_and(|a| a.connected || a.until > Instant::now())
    }

    /// Devices awake now.
    pub fn awake_count(&self) -> usize {
        let now = Instant::now();
        self.devices
            .values()
            .filter(|a| a.connected || a.until > now)
            .count()
    }

    /// Devices seen since start.
    pub fn known_count(&self) -> usize {
        self.devices.len()
    }

    /// Applies an event; returns the device if it just went from asleep to awake.
    pub fn apply(&mut self, event: &DeviceEvent) -> Option<DeviceId> {
        let now = Instant::now();
        let (device, was_awake) = match event {
            DeviceEvent::Seen(d, _)
            | DeviceEvent::Connected(d)
            | DeviceEvent::Disconnected(d)
            | DeviceEvent::Asleep(d)
            | DeviceEvent::Acked(d, _) => (d, self.is_awake(d)),
        };
        let entry = self.devices.entry(device.clone()).or_insert(Awake {
            until: now,
            connected: false,
        });
        match event {
            DeviceEvent::Seen(_, window) => entry.until = entry.until.max(now + *window),
            DeviceEvent::Connected(_) => entry.connected = true,
            DeviceEvent::Disconnected(_) => entry.connected = false,
            DeviceEvent::Asleep(_) => {
                entry.until = now;
                entry.connected = false;
            }
            DeviceEvent::Acked(_, _) => {
                entry.until = entry.until.max(now + Duration::from_millis(1))
            }
        }
        let awake = self.is_awake(device);
        (awake && !was_awake).then(|| device.clone())
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
        let seen = DeviceEvent::Seen(d.clone(), Duration::from_secs(60));
        assert_eq!(presence.apply(&seen), Some(d.clone()));
        assert_eq!(presence.apply(&seen), None, "still awake: no second wake");
        assert_eq!(presence.apply(&DeviceEvent::Asleep(d.clone())), None);
        assert!(!presence.is_awake(&d));
        assert_eq!(presence.apply(&seen), Some(d.clone()), "woke again");
    }

    #[test]
    fn connected_devices_stay_awake_until_they_leave() {
        let mut presence = Presence::default();
        let d = dev("p2");
        assert_eq!(
            presence.apply(&DeviceEvent::Connected(d.clone())),
            Some(d.clone())
        );
        assert!(presence.is_awake(&d));
        assert_eq!(presence.apply(&DeviceEvent::Disconnected(d.clone())), None);
        assert!(!presence.is_awake(&d));
        assert_eq!(presence.known_count(), 1);
        assert_eq!(presence.awake_count(), 0);
    }
}
