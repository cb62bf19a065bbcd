//! The aggregating side of the front door: a few long-lived MQTT 5 links to rumqttd that every
//! device session shares, and the router that brings replies back.
//!
//! Fed by [`super::FrontDoor::run`] once at start; used by every device session
//! ([`super::terminated`]). Device publishes go up on one of [`PUBLISH_LINKS`] links, picked by
//! device id so one device's publishes stay in order on one connection; one more link
//! subscribes to `devices/+/reply/#` and hands each reply to [`Router::dispatch`].
//!
//! Why: rumqttd accepts at most ~1 connection per millisecond per listener, and several
//! listeners race in its router, so a broker connection per device capped sleepy-device churn
//! at ~800 cycles/s. Device sessions need no broker state: held replies live in the outbox.

use std::hash::{Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::limits::FrontDoorStats;
use super::link::{Link, LinkSpec};
use super::router::Router;
use crate::wire::topics;

/// Upstream links carrying device publishes.
pub const PUBLISH_LINKS: usize = 2;

/// The shared upstream links and the reply router.
#[derive(Debug)]
pub struct Hub {
    links: Vec<Link>,
    /// The reply link's handle: a link ends when its last handle is dropped.
    _replies: Link,
    /// Live device sessions by client id.
    pub router: Arc<Router>,
    /// rumqttd's MQTT 5 listener (for sessions' side links).
    pub addr: SocketAddr,
    /// Largest packet taken from the broker.
    pub max_packet: usize,
}

impl Hub {
    /// Connects the links and waits until the reply link's subscription is granted.
    pub async fn start(
        addr: SocketAddr,
        max_packet: usize,
        stats: Arc<FrontDoorStats>,
    ) -> io::Result<Hub> {
        let router = Arc::new(Router::new(stats));
        let links = (0..PUBLISH_LINKS)
            .map(|n| {
                let spec = LinkSpec {
                    addr,
                    name: format!("roost-frontdoor-up{n}"),
                    max_packet,
                    filters: Vec::new(),
                    persistent: true,
                };
                Link::spawn(spec, None, None)
            })
            .collect();
        let dispatch = router.clone();
        let (ready_tx, ready_rx) = oneshot::channel();
        let spec = LinkSpec {
            addr,
            name: "roost-frontdoor-replies".into(),
            max_packet,
            filters: vec![topics::REPLY_FILTER_ALL.to_owned()],
            persistent: true,
        };
        let replies = Link::spawn(
            spec,
            Some(Box::new(move |frame| dispatch.dispatch(frame))),
            Some(ready_tx),
        );
        match tokio::time::timeout(Duration::from_secs(10), ready_rx).await {
            Ok(Ok(())) => Ok(Hub {
                links,
                _replies: replies,
                router,
                addr,
                max_packet,
            }),
            _ => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the broker did not grant the front door's reply subscription",
            )),
        }
    }

    /// The link device `client_id` publishes on.
    pub fn link_for(&self, client_id: &str) -> &Link {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        client_id.hash(&mut hasher);
        let index = usize::try_from(hasher.finish() % self.links.len() as u64).unwrap_or(0);
        &self.links[index]
    }
}
