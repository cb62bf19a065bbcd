//! What a device sends, once checked: publishes handed to the service (acked only after intake
//! committed them), the QoS 2 flow, acks of our messages, UNSUBSCRIBE, PINGREQ, DISCONNECT and
//! the Will.
//!
//! **Invariant:** a QoS 2 publish is handed to the service once: until its PUBREL, the same
//! packet id again is answered with PUBREC and goes no further (MQTT-4.3.3-10).

use bytes::{Bytes, BytesMut};
use rumqttc::v5::mqttbytes::v5;
use tokio::io::AsyncWrite;

use super::{Acked, End, Session, FINAL_WRITE_TIMEOUT};
use crate::flow::{Ack, Handled};
use crate::frontdoor::devices::hub::parse_publish;
use crate::frontdoor::limits::FrontDoorStats;
use crate::frontdoor::session::SessionError;
use crate::wire::packet::outgoing::{self, reason};
use crate::wire::packet::translate;
use crate::wire::packet::{ConnectInfo, Inbound, Version, Violation};

/// MQTT 5 reason code: packet identifier not found.
const PKID_NOT_FOUND: u8 = 0x92;

impl<W: AsyncWrite + Unpin> Session<W> {
    /// Handles one checked device packet; `Some` ends the session.
    pub(super) async fn handle(
        &mut self,
        packet: Inbound,
        frame: Bytes,
        out: &mut BytesMut,
    ) -> Result<Option<End>, SessionError> {
        match packet {
            Inbound::Publish { topic, qos, pkid } => {
                self.publish(&topic, qos, pkid, frame, out).await?
            }
            Inbound::Subscribe(subscription) => self.subscribe(subscription, out).await,
            Inbound::Unsubscribe { pkid, filters } => self.unsubscribe(pkid, &filters, out),
            Inbound::Ack => self.device_ack(&frame, out),
            Inbound::PingReq => out.extend_from_slice(&[0xD0, 0]),
            Inbound::Disconnect => {
                // v5 reason 0x04: disconnect with Will message.
                let will = self.version == Version::V5 && frame.len() >= 3 && frame[2] == 0x04;
                self.disconnect_expiry(&frame)?;
                return Ok(Some(End::Clean { will }));
            }
        }
        Ok(None)
    }

    /// A v5 DISCONNECT may change the Session Expiry Interval, but not from 0 (MQTT-3.14.2-2).
    fn disconnect_expiry(&mut self, frame: &Bytes) -> Result<(), SessionError> {
        if self.version != Version::V5 || frame.len() <= 3 {
            return Ok(());
        }
        let Ok(header) = v5::check(frame.iter(), None) else {
            return Ok(());
        };
        let Ok(disconnect) = v5::Disconnect::read(header, frame.clone()) else {
            return Ok(());
        };
        if let Some(expiry) = disconnect
            .properties
            .and_then(|p| p.session_expiry_interval)
        {
            if self.asked_expiry_s == 0 && expiry > 0 {
                return Err(Violation::Protocol("Session Expiry set at DISCONNECT after 0").into());
            }
            self.expiry_s = self.shared.sessions.granted_expiry(expiry);
        }
        Ok(())
    }

    fn unsubscribe(&mut self, pkid: u16, filters: &[String], out: &mut BytesMut) {
        let mut codes = Vec::with_capacity(filters.len());
        for filter in filters {
            let before = self.subscriptions.len();
            self.subscriptions.retain(|sub| &sub.filter != filter);
            // 0x11: no subscription existed.
            codes.push(if self.subscriptions.len() < before {
                0
            } else {
                0x11
            });
        }
        self.save_live();
        let [hi, lo] = pkid.to_be_bytes();
        match self.version {
            Version::V4 => out.extend_from_slice(&[0xB0, 2, hi, lo]),
            Version::V5 => {
                let len = u8::try_from(3 + codes.len()).unwrap_or(u8::MAX);
                if len < 0x80 {
                    out.extend_from_slice(&[0xB0, len, hi, lo, 0]);
                    out.extend_from_slice(&codes);
                } else {
                    out.extend_from_slice(&[0xB0, 3, hi, lo, 0]);
                }
            }
        }
    }

    async fn publish(
        &mut self,
        topic: &str,
        qos: u8,
        pkid: u16,
        frame: Bytes,
        out: &mut BytesMut,
    ) -> Result<(), SessionError> {
        if !self.principal.may_publish(topic) {
            FrontDoorStats::bump(&self.shared.stats.denied_publish);
            tracing::info!(principal = ?self.principal, %topic, "publish denied");
            match self.version {
                Version::V4 => return Err(Violation::NotAuthorized("publish").into()),
                Version::V5 if qos > 0 => {
                    out.extend_from_slice(&outgoing::publish_refusal(
                        qos,
                        pkid,
                        reason::NOT_AUTHORIZED,
                    ));
                }
                Version::V5 => {}
            }
            return Ok(());
        }
        if qos == 2 {
            match self.awaiting_release.get(&pkid) {
                // Already committed: PUBREC again, nothing onward.
                Some(true) => {
                    let [hi, lo] = pkid.to_be_bytes();
                    out.extend_from_slice(&[0x50, 2, hi, lo]);
                    return Ok(());
                }
                // Still with intake: its PUBREC follows the commit.
                Some(false) => return Ok(()),
                None => {
                    self.awaiting_release.insert(pkid, false);
                }
            }
        }
        let upstream = match self.version {
            Version::V5 => frame,
            Version::V4 => {
                let mut translated = BytesMut::with_capacity(frame.len() + 1);
                translate::packet_up(&frame, &mut translated);
                translated.freeze()
            }
        };
        let Some(publish) = parse_publish(upstream) else {
            return Err(Violation::Malformed("unreadable PUBLISH".into()).into());
        };
        let ack = if qos > 0 {
            self.pending_acks += 1;
            let acks_tx = self.acks_tx.clone();
            Ack::Local(Box::new(move |handled| {
                let _ = acks_tx.send(Acked { pkid, qos, handled });
            }))
        } else {
            Ack::Local(Box::new(|_| {}))
        };
        self.shared
            .hub
            .hand_over(publish, ack)
            .await
            .map_err(|()| SessionError::Upstream)
    }

    /// The service handled a publish: ack the device (never before), with success only when
    /// it was committed. A refusal is a PUBACK (PUBREC) with reason 0x97 on MQTT 5 (the
    /// device's client frees its slot; the `503` reply says when to retry) and nothing on
    /// MQTT 3.1.1, which has no negative acknowledgement; a refused QoS 2 publish is forgotten,
    /// so the same packet id sent again is handed over again.
    pub(super) fn acked(&mut self, acked: Acked, out: &mut BytesMut) {
        self.pending_acks = self.pending_acks.saturating_sub(1);
        if acked.handled == Handled::Refused {
            if acked.qos == 2 {
                self.awaiting_release.remove(&acked.pkid);
            }
            if self.version == Version::V5 {
                out.extend_from_slice(&outgoing::publish_refusal(
                    acked.qos,
                    acked.pkid,
                    reason::QUOTA_EXCEEDED,
                ));
            }
            return;
        }
        let kind = if acked.qos == 2 {
            match self.awaiting_release.get_mut(&acked.pkid) {
                Some(committed) => *committed = true,
                // Released before we could answer (a device that did not wait): nothing owed.
                None => return,
            }
            0x50
        } else {
            0x40
        };
        let [hi, lo] = acked.pkid.to_be_bytes();
        out.extend_from_slice(&[kind, 2, hi, lo]);
    }

    /// PUBACK frees a slot of the window; PUBREL ends a QoS 2 publish from the device (PUBCOMP,
    /// or v5 0x92 for a packet id we do not know); PUBREC / PUBCOMP are not expected (we send
    /// QoS ≤ 1).
    fn device_ack(&mut self, frame: &[u8], out: &mut BytesMut) {
        let pkid = frame
            .get(2..4)
            .map_or(0, |id| u16::from_be_bytes([id[0], id[1]]));
        match frame.first().map(|b| b >> 4) {
            Some(4) => self.window.acked(pkid, out),
            Some(6) => {
                let known = self.awaiting_release.remove(&pkid).is_some();
                let [hi, lo] = pkid.to_be_bytes();
                if known || self.version == Version::V4 {
                    out.extend_from_slice(&[0x70, 2, hi, lo]);
                } else {
                    out.extend_from_slice(&[0x70, 3, hi, lo, PKID_NOT_FOUND]);
                }
            }
            _ => {}
        }
    }

    /// Hands the device's Will to the service (its topic passed the ACL at CONNECT).
    pub(super) async fn publish_will(&self, connect: &ConnectInfo) {
        let (Some(topic), Some((payload, qos, retain))) = (&connect.will_topic, &connect.will)
        else {
            return;
        };
        let frame = crate::frontdoor::devices::link::publish_frame(
            topic,
            (*qos).min(1),
            *retain,
            payload.clone(),
        );
        if let Some(publish) = frame.and_then(parse_publish) {
            let send = self
                .shared
                .hub
                .hand_over(publish, Ack::Local(Box::new(|_| {})));
            let _ = tokio::time::timeout(FINAL_WRITE_TIMEOUT, send).await;
        }
    }
}
