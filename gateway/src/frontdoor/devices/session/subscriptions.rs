//! A device session's subscriptions: reply filters are recorded here and served by the router
//! (the service's replies); any other allowed filter goes to the session's side link to rumqttd,
//! so it gets retained messages. Messages for the device are matched against what it
//! subscribed to and sent at the granted QoS.

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;

use super::{Session, SIDE_TIMEOUT};
use crate::frontdoor::devices::downstream;
use crate::frontdoor::devices::link::{Link, LinkSpec};
use crate::frontdoor::limits::FrontDoorStats;
use crate::wire::packet::outgoing;
use crate::wire::packet::Subscription;
use crate::wire::topics;

impl<W: AsyncWrite + Unpin> Session<W> {
    pub(super) async fn subscribe(&mut self, subscription: Subscription, out: &mut BytesMut) {
        let requested = subscription.qos();
        let denied = outgoing::denied_subscription(self.version);
        let mut codes = vec![denied; subscription.filters.len()];
        let mut side = Vec::new();
        let mut reply_granted = false;
        for (i, filter) in subscription.filters.iter().enumerate() {
            if !self.principal.may_subscribe(filter) {
                FrontDoorStats::bump(&self.shared.stats.denied_subscribe);
                continue;
            }
            let qos = requested.get(i).copied().unwrap_or(0).min(1);
            let reply = self
                .principal
                .device()
                .is_some_and(|device| topics::is_reply_filter(device, filter));
            if reply {
                codes[i] = qos;
                reply_granted = true;
                self.record(filter, qos);
            } else {
                side.push((i, filter.clone(), qos));
            }
        }
        if !side.is_empty() {
            let filters = side.iter().map(|(_, f, q)| (f.clone(), *q)).collect();
            let link = self.side_link();
            let granted = tokio::time::timeout(SIDE_TIMEOUT, link.subscribe(filters))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            for (n, (i, filter, qos)) in side.into_iter().enumerate() {
                match granted.get(n) {
                    Some(code) if *code < 0x80 => {
                        codes[i] = (*code).min(qos);
                        self.record(&filter, codes[i]);
                    }
                    _ => codes[i] = outgoing::denied_subscription(self.version),
                }
            }
        }
        out.extend_from_slice(&outgoing::suback(self.version, subscription.pkid, &codes));
        if reply_granted {
            if let Some(presence) = &self.presence {
                presence.subscribed().await;
            }
        }
    }

    fn record(&mut self, filter: &str, qos: u8) {
        self.subscriptions.retain(|(f, _)| f != filter);
        self.subscriptions.push((filter.to_owned(), qos));
    }

    /// This session's side link, started on first use; its messages join the deliveries.
    fn side_link(&mut self) -> Link {
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
    /// queued while the inflight window is full, dropped when nothing matches.
    pub(super) fn deliver(&mut self, frame: Bytes, out: &mut BytesMut) {
        let Some(topic) = downstream::topic(&frame) else {
            return;
        };
        let granted = self
            .subscriptions
            .iter()
            .filter(|(filter, _)| topics::filter_matches(filter, topic))
            .map(|(_, qos)| *qos)
            .max();
        let Some(granted) = granted else {
            return;
        };
        if !self.window.send(frame, granted, out) {
            FrontDoorStats::bump(&self.shared.stats.deliveries_dropped);
        }
    }
}
