//! Identifier newtypes: a device id is validated once, here, and cannot be built otherwise.

use std::fmt;

use bytes::Bytes;

/// A device id: 1 to 64 characters of `[A-Za-z0-9._-]`, so it is always a safe topic level.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(String);

impl DeviceId {
    /// Validates a device id.
    pub fn parse(id: &str) -> Option<DeviceId> {
        is_valid_id(id).then(|| DeviceId(id.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The contract's id rule, shared by device ids and MQTT client ids.
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The gateway-assigned id of a stored request: a UUID v7, so ids sort by arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub uuid::Uuid);

impl RequestId {
    /// A fresh, time-ordered id.
    pub fn new() -> RequestId {
        RequestId(uuid::Uuid::now_v7())
    }

    /// The least id minted at `ms` (ms since the epoch): ids sort by time, so
    /// `id < RequestId::first_at(ms)` picks the requests received before `ms`.
    pub fn first_at(ms: i64) -> RequestId {
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&(ms.max(0) as u64).to_be_bytes()[2..]);
        RequestId(uuid::Uuid::from_bytes(bytes))
    }

    /// The 16 bytes, as stored.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Rebuilds an id from its stored bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<RequestId> {
        uuid::Uuid::from_slice(bytes).ok().map(RequestId)
    }
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// MQTT 5 Correlation Data (or a 3.1.1 envelope's `corr`): opaque bytes chosen by the device.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Correlation(pub Bytes);

impl Correlation {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Correlation data is shown as hex in logs and JSON.
impl fmt::Display for Correlation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.iter() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_follow_the_rule() {
        for ok in ["a", "dev-1", "site.A_9", &"x".repeat(64)] {
            assert!(DeviceId::parse(ok).is_some(), "{ok}");
        }
        for bad in ["", "site/dev1", "a+b", "#", "dév", &"x".repeat(65), "a b"] {
            assert!(DeviceId::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn request_ids_round_trip_and_sort_by_time() {
        let a = RequestId::new();
        let b = RequestId::new();
        assert!(a < b);
        assert_eq!(RequestId::from_slice(a.as_bytes()), Some(a));
        assert_eq!(a.0.get_version_num(), 7);
    }

    #[test]
    fn the_first_id_of_a_millisecond_bounds_the_ids_minted_in_it() {
        let id = RequestId::new();
        let (secs, nanos) = id.0.get_timestamp().expect("v7").to_unix();
        let ms = (secs * 1000 + u64::from(nanos) / 1_000_000) as i64;
        assert!(RequestId::first_at(ms) <= id);
        assert!(id < RequestId::first_at(ms + 1));
        assert!(RequestId::first_at(ms - 1) < RequestId::first_at(ms));
    }
}
