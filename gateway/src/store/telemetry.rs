//! Telemetry as the store records it: one reading per (device, metric, ts), read back as the
//! series of windowed ops, and which devices' readings the next prune holds to their cap.

/// One reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Metric name.
    pub metric: String,
    /// Timestamp, ms since epoch.
    pub ts: i64,
    /// Value.
    pub value: f64,
}

/// A time series: values, with timestamps (ms since epoch) when known.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// The readings, in time order.
    pub values: Vec<f64>,
    /// Their timestamps, same length, when given.
    pub ts: Option<Vec<u64>>,
}

/// Which devices' readings the telemetry prune holds to `limits.max_telemetry_rows_per_device`.
#[derive(Debug, Clone, PartialEq)]
pub enum Capped {
    /// Every device that has readings (the first prune after a start: what came before is not
    /// known); capped a few devices per chunk all the same.
    All,
    /// Only these: the devices that stored readings since the last prune, the only ones that
    /// can have gone over. Counting every device's readings at every prune took seconds with a
    /// few million readings, on the store thread (SQLite) or a pool connection (PostgreSQL).
    Devices(Vec<crate::wire::DeviceId>),
}

/// The devices that stored readings through this gateway since its last prune (on a shared
/// store every gateway prunes what it stored).
#[derive(Debug)]
pub struct Touched(std::sync::Mutex<Option<std::collections::HashSet<crate::wire::DeviceId>>>);

impl Default for Touched {
    fn default() -> Self {
        Touched(std::sync::Mutex::new(None))
    }
}

impl Touched {
    /// Notes the devices of the readings in `commands`.
    pub fn note(&self, commands: &[Option<super::commands::Command>]) {
        use super::commands::Command;
        let mut devices = commands
            .iter()
            .flatten()
            .filter_map(|command| match command {
                Command::Telemetry(device, _) => Some(device),
                _ => None,
            })
            .peekable();
        // Most batches carry no readings: they take no lock.
        if devices.peek().is_none() {
            return;
        }
        let mut touched = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(set) = touched.as_mut() {
            set.extend(devices.cloned());
        }
    }

    /// What the next prune caps; from now on only devices noted after this count.
    pub fn take(&self) -> Capped {
        let mut touched = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match touched.replace(Default::default()) {
            None => Capped::All,
            Some(set) => Capped::Devices(set.into_iter().collect()),
        }
    }

    /// Gives back what a prune that failed was to cap, for the next one.
    pub fn give_back(&self, capped: Capped) {
        let mut touched = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match (capped, touched.as_mut()) {
            (Capped::All, _) => *touched = None,
            (Capped::Devices(devices), Some(set)) => set.extend(devices),
            (Capped::Devices(_), None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::commands::Command;
    use crate::wire::DeviceId;

    fn readings(id: &str) -> Option<Command> {
        Some(Command::Telemetry(
            DeviceId::parse(id).expect("id"),
            Vec::new(),
        ))
    }

    #[test]
    fn caps_every_device_first_then_only_those_that_stored_readings() {
        let touched = Touched::default();
        touched.note(&[readings("a")]);
        assert_eq!(touched.take(), Capped::All, "the first prune after a start");
        assert_eq!(touched.take(), Capped::Devices(Vec::new()));
        touched.note(&[readings("b"), None, readings("b")]);
        let capped = touched.take();
        assert_eq!(
            capped,
            Capped::Devices(vec![DeviceId::parse("b").expect("id")])
        );
        touched.give_back(capped);
        touched.note(&[readings("c")]);
        let Capped::Devices(mut devices) = touched.take() else {
            panic!("devices");
        };
        devices.sort_by(|x, y| x.as_str().cmp(y.as_str()));
        assert_eq!(
            devices.len(),
            2,
            "a failed prune's devices come back: {devices:?}"
        );
    }
}
