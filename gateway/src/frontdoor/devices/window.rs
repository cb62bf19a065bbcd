//! One device session's QoS 1 flow towards its device: its own packet ids, the device's Receive
//! Maximum (MQTT-3.3.4-9) and Maximum Packet Size (MQTT-3.1.2-24/25), and what is kept when the
//! session is parked (unacknowledged messages resent with DUP 1 and their packet ids on resume,
//! MQTT-4.4.0-1).
//!
//! Fed by the device session ([`super::session`]) with broker messages and the device's
//! PUBACKs; feeds the bytes to write. Pure state, no I/O.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

use super::downstream::{for_device, set_pkid, Delivery};
use crate::wire::packet::Version;

/// Our own cap on QoS 1 messages sent to one device and not yet PUBACKed (the device's
/// Receive Maximum lowers it, MQTT-3.3.4-9).
pub const INFLIGHT_WINDOW: usize = 32;
/// QoS 1 messages waiting for room in the window before new ones are dropped.
pub const WINDOW_QUEUE: usize = 256;

/// Why a message was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The window and its queue are full: dropped (the outbox redelivers replies on the next
    /// wake).
    Full,
    /// It would be this many bytes, over the device's Maximum Packet Size (MQTT-3.1.2-24):
    /// not sent, as if it had been (MQTT-3.1.2-25).
    TooLarge(usize),
}

/// What a window keeps when its session is parked: unacknowledged QoS 1 messages with their
/// packet ids (in send order), queued ones, and the last packet id used. Frames are in the
/// device's protocol version.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Parked {
    /// Sent, not acknowledged: (packet id, frame).
    pub inflight: Vec<(u16, Vec<u8>)>,
    /// Waiting for room: frames without their packet id yet.
    pub queued: Vec<Vec<u8>>,
    /// The last packet id used.
    pub next_pkid: u16,
}

/// One session's QoS 1 flow towards its device: its own packet ids, at most its limit
/// unacknowledged (the smaller of [`INFLIGHT_WINDOW`] and the device's Receive Maximum), then up
/// to [`WINDOW_QUEUE`] waiting; past that a message is dropped. Nothing over the device's
/// Maximum Packet Size is sent.
#[derive(Debug)]
pub struct Window {
    version: Version,
    limit: usize,
    max_packet: usize,
    inflight: VecDeque<(u16, Bytes)>,
    queued: VecDeque<Bytes>,
    next_pkid: u16,
}

impl Window {
    /// An empty window for a device speaking `version` with this Receive Maximum and Maximum
    /// Packet Size.
    pub fn new(version: Version, receive_maximum: u16, max_packet: Option<u32>) -> Window {
        Window {
            version,
            limit: INFLIGHT_WINDOW.min(usize::from(receive_maximum.max(1))),
            max_packet: max_packet.map_or(usize::MAX, |max| max as usize),
            inflight: VecDeque::new(),
            queued: VecDeque::new(),
            next_pkid: 0,
        }
    }

    /// A window resuming a parked one; its unacknowledged messages are to be resent
    /// ([`Window::resend`]). A session parked by a device of the other version resumes empty.
    pub fn resume(mut self, parked: Parked, parked_version: Version) -> Window {
        if parked_version != self.version {
            return self;
        }
        self.inflight = parked
            .inflight
            .into_iter()
            .map(|(pkid, frame)| (pkid, Bytes::from(frame)))
            .collect();
        self.queued = parked.queued.into_iter().map(Bytes::from).collect();
        self.next_pkid = parked.next_pkid;
        self
    }

    /// What to keep when the session is parked.
    pub fn park(&self) -> Parked {
        Parked {
            inflight: self
                .inflight
                .iter()
                .map(|(pkid, frame)| (*pkid, frame.to_vec()))
                .collect(),
            queued: self.queued.iter().map(|frame| frame.to_vec()).collect(),
            next_pkid: self.next_pkid,
        }
    }

    /// Appends every unacknowledged message again, DUP set, same packet ids (MQTT-4.4.0-1,
    /// MQTT-3.3.1-1), then as many queued ones as the window takes.
    pub fn resend(&mut self, out: &mut BytesMut) {
        for (_, frame) in &self.inflight {
            if let Some((&first, rest)) = frame.split_first() {
                out.put_u8(first | 0b1000);
                out.put_slice(rest);
            }
        }
        self.fill(out);
    }

    /// Appends broker message `frame` to `out` as `delivery` says, or queues it.
    pub fn send(
        &mut self,
        frame: &[u8],
        delivery: &Delivery,
        out: &mut BytesMut,
    ) -> Result<(), Refused> {
        let qos1 = delivery.qos > 0 && frame.first().is_some_and(|b| (b >> 1) & 0b11 > 0);
        let pkid = qos1.then_some(0);
        let Some(bytes) = for_device(frame, pkid, delivery, self.version) else {
            return Ok(());
        };
        if bytes.len() > self.max_packet {
            return Err(Refused::TooLarge(bytes.len()));
        }
        if !qos1 {
            out.extend_from_slice(&bytes);
        } else if self.queued.len() >= WINDOW_QUEUE {
            return Err(Refused::Full);
        } else {
            self.queued.push_back(bytes);
            self.fill(out);
        }
        Ok(())
    }

    /// The device PUBACKed `pkid`: the window moves on.
    pub fn acked(&mut self, pkid: u16, out: &mut BytesMut) {
        let Some(at) = self.inflight.iter().position(|(id, _)| *id == pkid) else {
            return;
        };
        self.inflight.remove(at);
        self.fill(out);
    }

    /// Messages sent and not acknowledged.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    fn fill(&mut self, out: &mut BytesMut) {
        while self.inflight.len() < self.limit {
            let Some(bytes) = self.queued.pop_front() else {
                return;
            };
            loop {
                self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
                if !self.inflight.iter().any(|(id, _)| *id == self.next_pkid) {
                    break;
                }
            }
            let bytes = set_pkid(&bytes, self.next_pkid);
            out.extend_from_slice(&bytes);
            self.inflight.push_back((self.next_pkid, bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontdoor::devices::downstream::tests::{parse, publish_frame};

    #[test]
    fn window_keeps_to_the_receive_maximum_and_resends_with_dup() {
        let frame = publish_frame("devices/d/reply", "r", None);
        let qos1 = Delivery {
            qos: 1,
            ..Delivery::default()
        };
        let mut window = Window::new(Version::V5, 2, None);
        let mut out = BytesMut::new();
        for _ in 0..2 + WINDOW_QUEUE {
            window.send(&frame, &qos1, &mut out).expect("taken");
        }
        assert_eq!(window.in_flight(), 2, "the device's Receive Maximum");
        assert_eq!(
            window.send(&frame, &qos1, &mut out),
            Err(Refused::Full),
            "full: dropped"
        );
        // QoS 0 bypasses the window.
        let sent = out.len();
        window
            .send(&frame, &Delivery::default(), &mut out)
            .expect("qos 0");
        assert!(out.len() > sent);
        let sent = out.len();
        window.acked(999, &mut out);
        assert_eq!(out.len(), sent, "an unknown packet id moves nothing");
        window.acked(1, &mut out);
        assert_eq!(parse(&out.split_off(sent)).pkid, 3);
        // Parked and resumed: the unacknowledged ones again, DUP set, same packet ids.
        let parked = window.park();
        assert_eq!(
            parked
                .inflight
                .iter()
                .map(|(id, _)| *id)
                .collect::<Vec<_>>(),
            [2, 3]
        );
        let mut resumed = Window::new(Version::V5, 10, None).resume(parked, Version::V5);
        let mut again = BytesMut::new();
        resumed.resend(&mut again);
        let first = parse(&again);
        assert!(first.dup);
        assert_eq!(first.pkid, 2);
        assert_eq!(
            resumed.in_flight(),
            10,
            "queued ones fill the larger window"
        );
    }

    #[test]
    fn nothing_over_the_device_maximum_packet_size_is_sent() {
        let frame = publish_frame("devices/d/reply", &"x".repeat(100), None);
        let mut window = Window::new(Version::V5, 10, Some(64));
        let mut out = BytesMut::new();
        let qos1 = Delivery {
            qos: 1,
            ..Delivery::default()
        };
        assert!(matches!(
            window.send(&frame, &qos1, &mut out),
            Err(Refused::TooLarge(size)) if size > 64
        ));
        assert!(out.is_empty());
        assert_eq!(
            window.in_flight(),
            0,
            "as if sent: nothing waits for an ack"
        );
    }
}
