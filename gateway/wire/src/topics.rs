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

/// `roost/health/{client}`: the watchdog's own round trip through the embedded broker. Outside
/// `devices/` and `gateway/`, so no device or operator may ever subscribe to it.
pub fn health_probe(client: &str) -> String {
    format!("roost/health/{client}")
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
    shared(group, REQUEST_FILTER)
}

/// `filter` shared by a group of gateways: the broker hands each message to one of them.
pub fn shared(group: &str, filter: &str) -> String {
    format!("$share/{group}/{filter}")
}

/// The device id of a reply topic (`devices/{id}/reply` or below it), for routing replies to
/// that device's session.
pub fn reply_topic_device(topic: &str) -> Option<&str> {
    let mut levels = topic.splitn(4, '/');
    match (levels.next(), levels.next(), levels.next()) {
        (Some("devices"), Some(id), Some("reply")) if super::ids::is_valid_id(id) => Some(id),
        _ => None,
    }
}

/// Whether `topic` is a status topic (`devices/{id}/status`, `gateway/{gw}/status`): the gateway
/// publishes every message there retained.
pub fn is_status_topic(topic: &str) -> bool {
    let mut levels = topic.split('/');
    matches!(
        (levels.next(), levels.next(), levels.next(), levels.next()),
        (Some("devices" | "gateway"), Some(id), Some("status"), None) if !id.is_empty()
    )
}

/// Whether `topic` matches subscription `filter` (`+` one level, `#` the rest including the
/// parent level, as MQTT and rumqttd define it).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut topics = topic.split('/');
    for level in filter.split('/') {
        if level == "#" {
            return true;
        }
        match topics.next() {
            Some(t) if level == "+" || level == t => {}
            _ => return false,
        }
    }
    topics.next().is_none()
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

/// A topic name a client may publish to: non-empty, at most 65535 bytes, no wildcard, no NUL.
pub fn is_valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= 65_535 && !topic.contains(['+', '#', '\0'])
}

/// A syntactically valid subscription filter: non-empty, no NUL, `+` only as a whole level,
/// `#` only as the whole last level (so `a/#/b` and `a/b#` are invalid).
pub fn is_valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > 65_535 || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        let ok = match level {
            "#" => last,
            "+" => true,
            other => !other.contains(['+', '#']),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Whether device `device` may publish to `topic`: only `devices/{id}/req/{op}`, `ack`,
/// `presence` and `telemetry` under its own id.
pub fn device_may_publish(device: &DeviceId, topic: &str) -> bool {
    matches!(parse_device_topic(topic), Some((id, _)) if id == *device)
}

/// Whether device `device` may set a Will on `topic`: only its own `devices/{id}/presence`.
pub fn device_may_will(device: &DeviceId, topic: &str) -> bool {
    topic == presence(device)
}

/// Whether device `device` may subscribe to `filter`: `devices/{id}/reply`, `devices/{id}/status`,
/// `devices/{id}/reply/#`, or any valid filter below `devices/{id}/reply/` (which can only
/// match topics that `devices/{id}/reply/#` matches too).
pub fn device_may_subscribe(device: &DeviceId, filter: &str) -> bool {
    is_valid_filter(filter)
        && (filter == reply(device)
            || filter == device_status(device)
            || filter
                .strip_prefix(reply(device).as_str())
                .is_some_and(|rest| rest.len() > 1 && rest.starts_with('/')))
}

/// Whether `filter` is one a device subscribes to for its replies (what makes held replies
/// deliverable): `devices/{id}/reply` or a filter below it.
pub fn is_reply_filter(device: &DeviceId, filter: &str) -> bool {
    device_may_subscribe(device, filter) && filter != device_status(device)
}

/// Whether the read-only operator view allows `filter`: `gateway/#` or any filter below
/// `gateway/`, and `devices/+/status` or `devices/{id}/status`.
pub fn operator_may_subscribe(filter: &str) -> bool {
    if !is_valid_filter(filter) {
        return false;
    }
    if filter
        .strip_prefix("gateway/")
        .is_some_and(|rest| !rest.is_empty())
    {
        return true;
    }
    let mut levels = filter.split('/');
    matches!(
        (levels.next(), levels.next(), levels.next(), levels.next()),
        (Some("devices"), Some(id), Some("status"), None) if id == "+" || DeviceId::parse(id).is_some()
    )
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
    #[test]
    fn topic_and_filter_syntax() {
        for ok in ["a", "a/b", "/", "a//b", "devices/d1/req/x"] {
            assert!(is_valid_topic_name(ok), "{ok}");
        }
        for bad in ["", "a/+", "#", "a/#", "a\0b"] {
            assert!(!is_valid_topic_name(bad), "{bad}");
        }
        for ok in ["#", "+", "a/#", "+/+/status", "a/+/b", "/#", "a//b"] {
            assert!(is_valid_filter(ok), "{ok}");
        }
        for bad in ["", "a/#/b", "a/b#", "a+/b", "#/a", "a/\0", "##"] {
            assert!(!is_valid_filter(bad), "{bad}");
        }
    }

    #[test]
    fn device_acl_table() {
        let d = dev("d1");
        for ok in [
            "devices/d1/req/stats",
            "devices/d1/ack",
            "devices/d1/presence",
            "devices/d1/telemetry",
        ] {
            assert!(device_may_publish(&d, ok), "{ok}");
        }
        for bad in [
            "devices/d2/req/stats",
            "devices/d1/reply",
            "devices/d1/status",
            "gateway/gw-1/status",
            "devices/d1/req/+",
            "devices/d1/req/a/b",
            "devices/d1",
            "devices/d1/ack/x",
        ] {
            assert!(!device_may_publish(&d, bad), "{bad}");
        }
        assert!(device_may_will(&d, "devices/d1/presence"));
        assert!(!device_may_will(&d, "devices/d2/presence"));
        assert!(!device_may_will(&d, "devices/d1/req/stats"));
        for ok in [
            "devices/d1/reply",
            "devices/d1/reply/#",
            "devices/d1/reply/+",
            "devices/d1/reply/job/7",
            "devices/d1/status",
        ] {
            assert!(device_may_subscribe(&d, ok), "{ok}");
        }
        for bad in [
            "#",
            "devices/#",
            "devices/+/reply",
            "devices/d2/reply/#",
            "devices/d1/#",
            "devices/d1/replyx",
            "devices/d1/reply/",
            "devices/d1/reply/#/x",
            "$share/g/devices/d1/reply",
            "gateway/#",
        ] {
            assert!(!device_may_subscribe(&d, bad), "{bad}");
        }
        assert!(is_reply_filter(&d, "devices/d1/reply/#"));
        assert!(!is_reply_filter(&d, "devices/d1/status"));
    }

    #[test]
    fn operator_acl_table() {
        for ok in [
            "gateway/#",
            "gateway/gw-1/status",
            "gateway/+/deadletter",
            "devices/+/status",
            "devices/d1/status",
        ] {
            assert!(operator_may_subscribe(ok), "{ok}");
        }
        for bad in [
            "#",
            "+/#",
            "gateway",
            "gateway/",
            "devices/#",
            "devices/+/reply",
            "devices/d1/reply/#",
            "devices/+/status/#",
            "devices/a+b/status",
            "$share/g/gateway/#",
        ] {
            assert!(!operator_may_subscribe(bad), "{bad}");
        }
    }
}
