//! The embedded mode's way out: replies to the front door's router (device traffic never
//! crosses rumqttd), operator JSON to rumqttd through the service link.

use std::sync::Arc;

use crate::flow::{OutboundReply, Sent, Sink};
use crate::frontdoor::devices::router::Router;
use crate::link::Publisher;

/// See the module doc.
pub(super) struct Embedded {
    /// Live device sessions.
    pub router: Arc<Router>,
    /// The service link to rumqttd.
    pub link: Publisher,
}

impl Sink for Embedded {
    fn reply(&self, reply: OutboundReply) -> Sent<'_> {
        self.router.reply(reply);
        Box::pin(std::future::ready(()))
    }

    fn announce(&self, topic: String, payload: Vec<u8>, retain: bool) -> Sent<'_> {
        self.link.announce(topic, payload, retain)
    }
}
