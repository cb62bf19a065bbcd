//! Which device session gets a broker message: the live session of each device id.
//!
//! Fed by the gateway service ([`Router::reply`]: its replies, by device id) and
//! by device sessions ([`Router::register`] after CONNECT, [`Router::unregister`] at their end);
//! feeds each session's bounded delivery channel. The session matches the message against the
//! subscriptions it recorded and sends it on at the QoS granted.
//!
//! **Invariant:** dispatch never waits: a session whose channel is full (its device stopped
//! reading) loses that message (counted), and the outbox redelivers it on the next wake, so one
//! device cannot delay another's replies. A device not connected gets it kept in its session,
//! if it has one that matches ([`Sessions::offer`]), else loses it the same way.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::downstream;
use super::sessions::Sessions;
use crate::flow::OutboundReply;
use crate::frontdoor::limits::FrontDoorStats;
#[cfg(test)]
use crate::wire::DeviceId;

/// One live device session, as the router sees it.
#[derive(Debug, Clone)]
pub struct Route {
    /// The session's connection number.
    pub connection: u64,
    /// Broker messages for it (whole MQTT 5 PUBLISH frames).
    pub deliveries_tx: mpsc::Sender<Bytes>,
    /// Cancelled when a newer connection of the same client id takes over.
    pub taken_over: CancellationToken,
    /// Cancelled once the session has ended and parked its state, so a connection that took
    /// over can resume it.
    pub parked: CancellationToken,
}

/// Sessions by client id (= device id).
#[derive(Debug)]
pub struct Router {
    routes: Mutex<HashMap<String, Route>>,
    stats: Arc<FrontDoorStats>,
    /// Sessions of devices that are away: a reply for one waits there.
    sessions: Option<Arc<Sessions>>,
}

impl Router {
    /// An empty router counting dropped deliveries in `stats`.
    pub fn new(stats: Arc<FrontDoorStats>) -> Router {
        Router {
            routes: Mutex::new(HashMap::new()),
            stats,
            sessions: None,
        }
    }

    /// A router that keeps replies for devices that are away in their sessions.
    pub fn with_sessions(stats: Arc<FrontDoorStats>, sessions: Arc<Sessions>) -> Router {
        Router {
            sessions: Some(sessions),
            ..Router::new(stats)
        }
    }

    /// Makes `route` the live session of `client_id` and tells the one it replaces, if any, that
    /// it was taken over; returns that one.
    pub fn register(&self, client_id: &str, route: Route) -> Option<Route> {
        let old = self
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(client_id.to_owned(), route);
        if let Some(old) = &old {
            FrontDoorStats::bump(&self.stats.takeovers);
            old.taken_over.cancel();
        }
        old
    }

    /// Removes `client_id`'s route if it is still connection `connection`'s.
    pub fn unregister(&self, client_id: &str, connection: u64) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if routes
            .get(client_id)
            .is_some_and(|route| route.connection == connection)
        {
            routes.remove(client_id);
        }
    }

    /// Hands a reply to its device's session, if connected; never waits. The reply is
    /// encoded here, once, as the MQTT 5 PUBLISH frame the session sends on (at QoS 1 where the
    /// device subscribed at 1; translated for an MQTT 3.1.1 device).
    pub fn reply(&self, reply: OutboundReply) {
        let properties = (!reply.envelope).then(|| reply.properties());
        let mut publish = Publish::new(reply.topic, QoS::AtLeastOnce, reply.payload, properties);
        publish.pkid = 1;
        let mut frame = BytesMut::with_capacity(publish.size());
        match Packet::Publish(publish).write(&mut frame, None) {
            Ok(_) => self.dispatch(reply.device.as_str(), frame.freeze()),
            Err(error) => tracing::error!(%error, "reply not encodable"),
        }
    }

    /// Hands a whole MQTT 5 PUBLISH frame for `device` to its session, if connected (else to
    /// its parked session, if it has one that matches); never waits.
    fn dispatch(&self, device: &str, frame: Bytes) {
        let deliveries_tx = {
            let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
            routes.get(device).map(|route| route.deliveries_tx.clone())
        };
        let Some(deliveries_tx) = deliveries_tx else {
            if let (Some(sessions), Some(topic)) = (&self.sessions, downstream::topic(&frame)) {
                sessions.offer(device, topic, &frame);
            }
            return;
        };
        if deliveries_tx.try_send(frame).is_err() {
            bump_dropped(&self.stats.deliveries_dropped);
        }
    }

    /// Sessions registered now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.routes.lock().map(|r| r.len()).unwrap_or(0)
    }
}

fn bump_dropped(counter: &AtomicU64) {
    FrontDoorStats::bump(counter);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontdoor::devices::downstream;

    fn reply(device: &str, topic: &str) -> OutboundReply {
        OutboundReply {
            device: DeviceId::parse(device).expect("device id"),
            topic: topic.into(),
            payload: b"r".to_vec(),
            corr: None,
            status: crate::wire::Status::Ok,
            expiry: std::time::Duration::from_secs(60),
            envelope: true,
        }
    }

    #[tokio::test]
    async fn replies_go_to_their_device_only_and_never_wait() {
        let router = Router::new(Arc::default());
        let (a_tx, mut a_rx) = mpsc::channel(1);
        let (b_tx, mut b_rx) = mpsc::channel(1);
        let route = |connection, deliveries_tx| Route {
            connection,
            deliveries_tx,
            taken_over: CancellationToken::new(),
            parked: CancellationToken::new(),
        };
        assert!(router.register("a", route(1, a_tx)).is_none());
        router.register("b", route(2, b_tx));
        router.reply(reply("a", "devices/a/reply"));
        router.reply(reply("a", "devices/a/reply/x")); // a's channel is full: dropped, no wait
        router.reply(reply("c", "devices/c/reply")); // nobody
        assert_eq!(
            downstream::topic(&a_rx.recv().await.expect("a")),
            Some("devices/a/reply")
        );
        assert!(a_rx.try_recv().is_err());
        assert!(b_rx.try_recv().is_err());
        assert_eq!(
            router
                .stats
                .deliveries_dropped
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // A newer session of "a" takes over; the old one's end does not remove the new route.
        let (new_tx, _new_rx) = mpsc::channel(1);
        let old_taken = CancellationToken::new();
        router.register(
            "c",
            Route {
                connection: 3,
                deliveries_tx: new_tx.clone(),
                taken_over: old_taken.clone(),
                parked: CancellationToken::new(),
            },
        );
        let replaced = router.register("c", route(4, new_tx));
        assert_eq!(replaced.map(|old| old.connection), Some(3));
        assert!(old_taken.is_cancelled());
        router.unregister("c", 3);
        assert_eq!(router.len(), 3);
        router.unregister("c", 4);
        assert_eq!(router.len(), 2);
    }
}
