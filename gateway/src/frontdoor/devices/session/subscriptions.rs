//! A device session's subscriptions: reply filters are recorded here and served by the router
//! (the service's replies); any other allowed filter goes to the session's side link to rumqttd,
//! so it gets retained messages. Messages for the device are matched against what it
//! subscribed to and sent at the granted QoS, with the Subscription Identifiers of every
//! matching subscription (MQTT-3.3.4-3/4), RETAIN as its options say (MQTT-3.3.1-9..13), and
//! never over the device's Maximum Packet Size (MQTT-3.1.2-24/25; a reply that does not fit
//! becomes a small `413` and a dead letter, see [`Session::too_large`]).
//!
//! rumqttd parses Retain Handling and Retain As Published but applies neither: it sends a
//! filter's retained messages (RETAIN 1) only when a connection subscribes to it anew, and every
//! live message with RETAIN 0. So Retain Handling is kept here (retained messages are dropped
//! unless the latest subscribe wanted them; Retain Handling 0 on an existing subscription
//! subscribes again on a new side link), and RETAIN is restored for Retain As Published from
//! what is known of the topic (the gateway publishes every status message retained).

use bytes::{Bytes, BytesMut};
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use tokio::io::AsyncWrite;

use super::{Session, SIDE_TIMEOUT};
use crate::frontdoor::devices::downstream::{self, Delivery};
use crate::frontdoor::devices::hub::parse_publish;
use crate::frontdoor::devices::link::{Link, LinkSpec};
use crate::frontdoor::devices::sessions::Sub;
use crate::frontdoor::devices::window::Refused;
use crate::frontdoor::limits::FrontDoorStats;
use crate::wire::envelope::Reply;
use crate::wire::packet::outgoing;
use crate::wire::packet::{Subscription, Version};
use crate::wire::{topics, ErrorCode};

impl<W: AsyncWrite + Unpin> Session<W> {
    pub(super) async fn subscribe(&mut self, subscription: Subscription, out: &mut BytesMut) {
        let requested = subscription.qos();
        let options = subscription.options();
        let id = subscription.id();
        let denied = outgoing::denied_subscription(self.version);
        let mut codes = vec![denied; subscription.filters.len()];
        let mut side = Vec::new();
        let mut reply_granted = false;
        for (i, filter) in subscription.filters.iter().enumerate() {
            if !self.principal.may_subscribe(filter) {
                FrontDoorStats::bump(&self.shared.stats.denied_subscribe);
                continue;
            }
            let option = options.get(i).copied().unwrap_or_default();
            let existed = self.subscriptions.iter().any(|sub| &sub.filter == filter);
            let reply = self
                .principal
                .device()
                .is_some_and(|device| topics::is_reply_filter(device, filter));
            let sub = Sub {
                filter: filter.clone(),
                qos: requested.get(i).copied().unwrap_or(0).min(1),
                id,
                retain_as_published: option.retain_as_published,
                retain_handling: option.retain_handling,
                side: !reply,
                retained_wanted: match option.retain_handling {
                    0 => true,
                    1 => !existed,
                    _ => false,
                },
            };
            if reply {
                codes[i] = sub.qos;
                reply_granted = true;
                self.record(sub);
            } else if existed && option.retain_handling != 0 {
                // Already subscribed upstream, and no retained messages wanted again.
                codes[i] = sub.qos;
                self.record(sub);
            } else {
                if existed {
                    // rumqttd sends retained messages only to a new subscription: start over
                    // on a new side link.
                    self.side = None;
                    for other in self.subscriptions.iter_mut().filter(|s| s.side) {
                        other.retained_wanted = false;
                        side.push((None, other.clone()));
                    }
                    side.retain(|(_, other)| &other.filter != filter);
                }
                side.push((Some(i), sub));
            }
        }
        if !side.is_empty() {
            let filters = side
                .iter()
                .map(|(_, s)| (s.filter.clone(), s.qos))
                .collect();
            let link = self.side_link();
            let granted = tokio::time::timeout(SIDE_TIMEOUT, link.subscribe(filters))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            for (n, (i, mut sub)) in side.into_iter().enumerate() {
                match (granted.get(n), i) {
                    (Some(code), Some(i)) if *code < 0x80 => {
                        sub.qos = (*code).min(sub.qos);
                        codes[i] = sub.qos;
                        self.record(sub);
                    }
                    (_, Some(i)) => codes[i] = outgoing::denied_subscription(self.version),
                    (_, None) => {}
                }
            }
        }
        self.save_live();
        out.extend_from_slice(&outgoing::suback(self.version, subscription.pkid, &codes));
        if reply_granted {
            if let Some(presence) = &self.presence {
                presence.subscribed().await;
            }
        }
    }

    /// Adds or replaces the subscription of its filter.
    fn record(&mut self, sub: Sub) {
        match self
            .subscriptions
            .iter_mut()
            .find(|s| s.filter == sub.filter)
        {
            Some(existing) => *existing = sub,
            None => self.subscriptions.push(sub),
        }
    }

    /// Stores the session's subscriptions now if it outlives its connection.
    pub(super) fn save_live(&self) {
        if self.expiry_s > 0 {
            let mut state = self.state();
            state.window = Default::default();
            self.shared.sessions.save_live(&self.client_id, &state);
        }
    }

    /// This session's side link, started on first use; its messages join the deliveries.
    pub(super) fn side_link(&mut self) -> Link {
        if let Some(link) = &self.side {
            return link.clone();
        }
        let deliveries_tx = self.deliveries_tx.clone();
        let stats = self.shared.stats.clone();
        let spec = LinkSpec {
            addr: self.shared.hub.addr,
            name: "roost-frontdoor-side".into(),
            max_packet: self.shared.hub.max_packet,
        };
        let link = Link::spawn(
            spec,
            Box::new(move |frame| {
                if deliveries_tx.try_send(frame).is_err() {
                    FrontDoorStats::bump(&stats.deliveries_dropped);
                }
            }),
        );
        self.side = Some(link.clone());
        link
    }

    /// A broker message for this device: sent at the highest QoS of the matching subscriptions,
    /// queued while the inflight window is full, dropped when nothing matches. A message with
    /// RETAIN 1 is a retained one sent on a subscribe (rumqttd clears RETAIN on live ones).
    pub(super) fn deliver(&mut self, frame: Bytes, out: &mut BytesMut) {
        let Some(topic) = downstream::topic(&frame) else {
            return;
        };
        let retained = frame.first().is_some_and(|b| b & 1 == 1);
        let mut delivery = Delivery::default();
        let mut matched = false;
        let mut as_published = false;
        for sub in &self.subscriptions {
            if !topics::filter_matches(&sub.filter, topic) || (retained && !sub.retained_wanted) {
                continue;
            }
            matched = true;
            delivery.qos = delivery.qos.max(sub.qos);
            as_published |= sub.retain_as_published;
            if let Some(id) = sub.id.filter(|_| self.version == Version::V5) {
                delivery.ids.push(id);
            }
        }
        if !matched {
            return;
        }
        delivery.retain = retained || (as_published && topics::is_status_topic(topic));
        match self.window.send(&frame, &delivery, out) {
            Ok(()) => {}
            Err(Refused::Full) => FrontDoorStats::bump(&self.shared.stats.deliveries_dropped),
            Err(Refused::TooLarge(size)) => self.too_large(&frame, size, &delivery, out),
        }
    }

    /// A message over the device's Maximum Packet Size was not sent. A reply becomes a small
    /// `413` reply with the same Correlation Data (when even that fits), and the service is told,
    /// so it dead-letters the reply and stops holding it.
    fn too_large(&mut self, frame: &Bytes, size: usize, delivery: &Delivery, out: &mut BytesMut) {
        FrontDoorStats::bump(&self.shared.stats.too_large);
        let max = self.max_packet.unwrap_or(u32::MAX);
        let is_reply = downstream::topic(frame).and_then(topics::reply_topic_device);
        let (Some(_), Some(presence)) = (is_reply, &self.presence) else {
            return;
        };
        let Some(publish) = parse_publish(frame.clone()) else {
            return;
        };
        let original = Reply::decode(&publish.payload).ok();
        let status = original.as_ref().map_or(0, |r| r.status.code());
        let message = format!(
            "the reply ({size} bytes) is over this device's Maximum Packet Size ({max} bytes)"
        );
        let properties = publish.properties.clone().unwrap_or_default();
        let corr = properties.correlation_data.clone();
        let mut error = match &original {
            Some(reply) => Reply {
                result: None,
                retry_after_ms: None,
                ..reply.clone()
            }
            .with_error(ErrorCode::ReplyTooLarge, message.clone()),
            None => Reply::rejected(ErrorCode::ReplyTooLarge, message.clone()),
        };
        error.corr = None;
        let small = PublishProperties {
            correlation_data: corr.clone(),
            content_type: properties.content_type,
            user_properties: vec![(
                "status".into(),
                ErrorCode::ReplyTooLarge.status().code().to_string(),
            )],
            message_expiry_interval: properties.message_expiry_interval,
            ..Default::default()
        };
        let mut reply = Publish::new(
            String::from_utf8_lossy(&publish.topic).into_owned(),
            QoS::AtLeastOnce,
            error.encode(),
            Some(small),
        );
        reply.pkid = 1;
        let mut small_frame = BytesMut::new();
        if Packet::Publish(reply).write(&mut small_frame, None).is_ok() {
            let mut plain = delivery.clone();
            plain.retain = false;
            // Too large even so: nothing is sent (MQTT-3.1.2-25), the dead letter says why.
            let _ = self.window.send(&small_frame, &plain, out);
        }
        let presence = presence.clone();
        presence.undeliverable(corr, status, format!("reply_too_large: {message}"));
    }
}
