//! `devices/{id}/status`: retained JSON per device, published on change and at most once a
//! second per device (changes in between are folded into one trailing publish).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::json;

use super::rfc3339_ms;
use crate::wire::DeviceId;

/// What a device's status says.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceStatus {
    /// Awake now.
    pub awake: bool,
    /// Last publish of its own (ms since epoch).
    pub last_seen_ms: i64,
    /// Requests queued or running.
    pub pending: usize,
    /// Final replies held for it.
    pub held: usize,
    /// The last error it was answered with, `"code: message"`.
    pub last_error: Option<String>,
}

impl DeviceStatus {
    /// The retained JSON document.
    pub fn to_json(&self) -> Vec<u8> {
        let document = json!({
            "state": if self.awake { "awake" } else { "asleep" },
            "last_seen": rfc3339_ms(self.last_seen_ms),
            "pending": self.pending,
            "held": self.held,
            "last_error": self.last_error,
        });
        serde_json::to_vec(&document).expect("a JSON value always serialises")
    }
}

/// Which devices' status changed and when each was last published.
#[derive(Debug, Default)]
pub struct StatusBoard {
    dirty: HashSet<DeviceId>,
    published: HashMap<DeviceId, Instant>,
    /// Last error per device, and when (ms since epoch).
    pub last_error: HashMap<DeviceId, (String, i64)>,
    /// Last publish of its own per device (ms since epoch, when the gateway read it).
    pub last_seen_ms: HashMap<DeviceId, i64>,
    /// When the device said `asleep` (ms since epoch, when the gateway read it), while that is
    /// the last thing it did.
    pub asleep_ms: HashMap<DeviceId, i64>,
}

impl StatusBoard {
    /// Notes that a device's status may have changed.
    pub fn touch(&mut self, device: &DeviceId) {
        self.dirty.insert(device.clone());
    }

    /// Devices due a publish now (changed, and not published within the last second).
    pub fn due(&mut self) -> Vec<DeviceId> {
        let now = Instant::now();
        let due: Vec<DeviceId> = self
            .dirty
            .iter()
            .filter(|d| {
                self.published
                    .get(*d)
                    .is_none_or(|at| now.duration_since(*at) >= Duration::from_secs(1))
            })
            .cloned()
            .collect();
        for device in &due {
            self.dirty.remove(device);
            self.published.insert(device.clone(), now);
        }
        due
    }

    /// Notes the device published something, read at `at_ms`: last seen only grows (a
    /// gateway may get to what it read out of order with what it learnt meanwhile).
    pub fn seen(&mut self, device: &DeviceId, at_ms: i64) {
        let last = self.last_seen_ms.entry(device.clone()).or_default();
        *last = (*last).max(at_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_per_device() {
        let mut board = StatusBoard::default();
        let d = DeviceId::parse("s1").expect("valid");
        board.touch(&d);
        assert_eq!(board.due(), vec![d.clone()]);
        board.touch(&d);
        assert!(board.due().is_empty(), "published less than a second ago");
        assert!(board.dirty.contains(&d), "kept for a trailing publish");
    }

    #[test]
    fn json_has_the_contract_fields() {
        let status = DeviceStatus {
            awake: true,
            last_seen_ms: 0,
            pending: 2,
            held: 1,
            last_error: None,
        };
        let value: serde_json::Value = serde_json::from_slice(&status.to_json()).expect("json");
        assert_eq!(value["state"], "awake");
        assert_eq!(value["last_seen"], "1970-01-01T00:00:00.000Z");
        assert_eq!(value["pending"], 2);
        assert_eq!(value["held"], 1);
        assert!(value["last_error"].is_null());
    }
}
