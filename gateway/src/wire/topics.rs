//! Every topic string Roost builds or parses lives here, and nowhere else.
//!
//! Device topics are `devices/{id}/...`; gateway topics are `gateway/{gw}/...`.

use super::ids::DeviceId;

/// What a topic under `devices/{id}/` is for, parsed from a topic a device published to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceTopic {
    /// `devices/{id}/req/{op}`
    Request(String),
    /// `devices/{id}/ack`
    Ack,
    /// `devices/{id}/presence`
    Presence,
    /// `devices/{id}/telemetry`
    Telemetry,
}

/// Parses a topic a device publishes to into its device id and kind.
///
/// Returns `None` for anything else, including an invalid device id, an empty or wildcard op.
pub fn parse_device_topic(topic: &str) -> Option<(DeviceId, DeviceTopic)> {
    let mut levels = topic.split('/');
    if levels.next()? != "devices" {
        return None;
    }
    let device = DeviceId::parse(levels.next()?)?;
    let kind = match (levels.next()?, levels.next(), levels.next()) {
        ("req", Some(op), None) if is_plain_level(op) => DeviceTopic::Request(op.to_owned()),
        ("ack", None, None) => DeviceTopic::Ack,
        ("presence", None, None) => DeviceTopic::Presence,
        ("telemetry", None, None) => DeviceTopic::Telemetry,
        _ => return None,
    };
    Some((device, kind))
}

/// A non-empty topic level with no wildcard.
fn is_plain_level(level: &str) -> bool {
    !level.is_empty() && !level.contains(['+', '#', '/'])
}

/// `devices/{id}/req/{op}`: where a device sends a request.
pub fn request(device: &DeviceId, op: &str) -> String {
    format!("devices/{device}/req/{op}")
}

/// `devices/{id}/reply`: the default reply topic.
pub fn reply(device: &DeviceId) -> String {
    format!("devices/{device}/reply")
}

/// `devices/{id}/reply/#`: what a device subscribes to for its replies.
pub fn reply_filter(device: &DeviceId) -> String {
    format!("devices/{device}/reply/#")
}

/// `devices/{id}/ack`
pub fn ack(device: &DeviceId) -> String {
    format!("devices/{device}/ack")
}

/// `devices/{id}/presence`
pub fn presence(device: &DeviceId) -> String {
    format!("devices/{device}/presence")
}

/// `devices/{id}/telemetry`
pub fn telemetry(device: &DeviceId) -> String {
    format!("devices/{device}/telemetry")
}

/// `devices/{id}/status`: per-device status for operators, retained.
pub fn device_status(device: &DeviceId) -> String {
    format!("devices/{device}/status")
}

/// `gateway/{gw}/status`: gateway health, retained, and the gateway's Last Will.
pub fn gateway_status(gateway: &str) -> String {
    format!("gateway/{gateway}/status")
}

/// `gateway/{gw}/deadletter`: one message per dead-lettered request or reply.
pub fn deadletter(gateway: &str) -> String {
    format!("gateway/{gateway}/deadletter")
}

/// The filter the gateway service takes requests from.
pub const REQUEST_FILTER: &str = "devices/+/req/+";
/// Acks from every device.
pub const ACK_FILTER: &str = "devices/+/ack";
/// Presence from every device.
pub const PRESENCE_FILTER: &str = "devices/+/presence";
/// Telemetry from every device.
pub const TELEMETRY_FILTER: &str = "devices/+/telemetry";

/// The request filter shared by a group of gateways on an external broker.
pub fn shared_request_filter(group: &str) -> String {
    format!("$share/{group}/{REQUEST_FILTER}")
}

/// Whether `topic` is `devices/{id}/reply` or a concrete topic below it: the only places a
/// reply for `device` may be published (guarantee 4).
pub fn is_own_reply_topic(device: &DeviceId, topic: &str) -> bool {
    let base = reply(device);
    match topic.strip_prefix(base.as_str()) {
        Some("") => true,
        Some(rest) => rest.starts_with('/') && !rest.contains(['+', '#', '\0']),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str) -> DeviceId {
        DeviceId::parse(id).expect("valid id")
    }

    #[test]
    fn parses_device_topics() {
        assert_eq!(
            parse_device_topic("devices/d1/req/stats"),
            Some((dev("d1"), DeviceTopic::Request("stats".into())))
        );
        assert_eq!(
            parse_device_topic("devices/d1/ack"),
            Some((dev("d1"), DeviceTopic::Ack))
        );
        assert_eq!(
            parse_device_topic("devices/d1/presence"),
            Some((dev("d1"), DeviceTopic::Presence))
        );
        for bad in [
            "devices/d1/req",
            "devices/d1/req/",
            "devices/d1/req/a/b",
            "devices/d+1/req/stats",
            "devices//req/stats",
            "gateway/gw-1/status",
            "devices/d1/reply",
            "devices/d1/ack/x",
        ] {
            assert_eq!(parse_device_topic(bad), None, "{bad}");
        }
    }

    #[test]
    fn builds_topics() {
        let d = dev("d1");
        assert_eq!(request(&d, "stats"), "devices/d1/req/stats");
        assert_eq!(reply(&d), "devices/d1/reply");
        assert_eq!(reply_filter(&d), "devices/d1/reply/#");
        assert_eq!(gateway_status("gw-1"), "gateway/gw-1/status");
        assert_eq!(shared_request_filter("g"), "$share/g/devices/+/req/+");
        assert_eq!(
            parse_device_topic(&request(&d, "x")).map(|(id, _)| id),
            Some(d)
        );
    }

    #[test]
    fn reply_namespace_is_enforced() {
        let d = dev("d1");
        assert!(is_own_reply_topic(&d, "devices/d1/reply"));
        assert!(is_own_reply_topic(&d, "devices/d1/reply/job/7"));
        for bad in [
            "devices/d2/reply",
            "devices/d1/replyx",
            "devices/d1/reply/+",
            "devices/d1/reply/#",
            "devices/d1/status",
            "gateway/gw-1/status",
            "devices/d1",
        ] {
            assert!(!is_own_reply_topic(&d, bad), "{bad}");
        }
    }
}
