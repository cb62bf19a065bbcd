//! Who a connection is ([`Principal`]) and what it may do: the contract's ACL as one table.
//!
//! Fed by identity (after CONNECT); consulted by the session for the Will, every PUBLISH and
//! every SUBSCRIBE filter. The topic predicates themselves live in [`crate::wire::topics`].
//!
//! | principal | publish | Will | subscribe |
//! | --- | --- | --- | --- |
//! | device X (password or certificate) | `devices/X/{req/op,ack,presence,telemetry}` | `devices/X/presence` | `devices/X/reply`, below it, `devices/X/status` |
//! | operator | nothing | none | `gateway/#` (or below), `devices/+/status` (or one id's) |
//! | anonymous X on a loopback listener | as device X | as device X | device X's, plus the operator view |
//! | anonymous, empty client id, loopback listener | nothing | none | the operator view |
//! | anonymous X on another listener (`allow_anonymous_remote`) | as device X | as device X | device X's only |

use crate::wire::topics;
use crate::wire::DeviceId;

/// Who a connection authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A provisioned device (username/password or client certificate).
    Device(DeviceId),
    /// An operator account: read-only.
    Operator(String),
    /// An anonymous client with an empty client id (the broker assigns one, as
    /// `mosquitto_sub` asks by default) on a loopback listener: the operator view only.
    Viewer,
    /// A device without credentials, whose client id is its device id.
    Anonymous {
        /// The device id (= client id).
        device: DeviceId,
        /// Whether it also gets the read-only operator view (loopback listeners only).
        operator_view: bool,
    },
}

impl Principal {
    /// The device this connection speaks for, if any (presence events are sent for it).
    pub fn device(&self) -> Option<&DeviceId> {
        match self {
            Principal::Device(device) | Principal::Anonymous { device, .. } => Some(device),
            Principal::Operator(_) | Principal::Viewer => None,
        }
    }

    /// Whether a PUBLISH to `topic` may pass.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.device()
            .is_some_and(|device| topics::device_may_publish(device, topic))
    }

    /// Whether a Will on `topic` is allowed.
    pub fn may_will(&self, topic: &str) -> bool {
        self.device()
            .is_some_and(|device| topics::device_may_will(device, topic))
    }

    /// Whether a subscription to `filter` may pass.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        let own = self
            .device()
            .is_some_and(|device| topics::device_may_subscribe(device, filter));
        let operator_view = matches!(
            self,
            Principal::Operator(_)
                | Principal::Viewer
                | Principal::Anonymous {
                    operator_view: true,
                    ..
                }
        );
        own || (operator_view && topics::operator_may_subscribe(filter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str) -> DeviceId {
        DeviceId::parse(id).expect("valid id")
    }

    #[test]
    fn acl_table() {
        let device = Principal::Device(dev("d1"));
        let operator = Principal::Operator("ops".into());
        let local = Principal::Anonymous {
            device: dev("d1"),
            operator_view: true,
        };
        let remote = Principal::Anonymous {
            device: dev("d1"),
            operator_view: false,
        };
        // (principal, publish req, will presence, sub own reply, sub gateway/#, sub other reply, sub #)
        let viewer = Principal::Viewer;
        let table = [
            (&viewer, false, false, false, true, false, false),
            (&device, true, true, true, false, false, false),
            (&operator, false, false, false, true, false, false),
            (&local, true, true, true, true, false, false),
            (&remote, true, true, true, false, false, false),
        ];
        for (who, publish, will, own, gateway, other, all) in table {
            assert_eq!(who.may_publish("devices/d1/req/stats"), publish, "{who:?}");
            assert_eq!(who.may_will("devices/d1/presence"), will, "{who:?}");
            assert_eq!(who.may_subscribe("devices/d1/reply/#"), own, "{who:?}");
            assert_eq!(who.may_subscribe("gateway/#"), gateway, "{who:?}");
            assert_eq!(who.may_subscribe("devices/d2/reply/#"), other, "{who:?}");
            assert_eq!(who.may_subscribe("#"), all, "{who:?}");
            assert!(!who.may_publish("devices/d2/req/stats"), "{who:?}");
            assert!(!who.may_will("devices/d2/presence"), "{who:?}");
            assert!(!who.may_publish("devices/d1/reply"), "{who:?}");
        }
        assert!(operator.may_subscribe("devices/+/status"));
        assert!(!device.may_subscribe("devices/+/status"));
        assert!(device.may_subscribe("devices/d1/status"));
        assert_eq!(device.device(), Some(&dev("d1")));
        assert_eq!(operator.device(), None);
    }
}
