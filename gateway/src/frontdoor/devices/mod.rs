//! Device sessions, terminated at the front door: a device's publishes go straight to the
//! service's inbox ([`hub`]), the service's replies come back by device id ([`router`]) and
//! leave through each session's QoS 1 window ([`window`], re-framed by [`downstream`]), and a
//! session outlives its connection when the device asks ([`sessions`]); only a device's other
//! subscriptions (its retained status) use a side link to rumqttd ([`link`]). [`presence`]
//! turns connections into the outbox's per-device events.

pub mod downstream;
pub mod hub;
pub mod link;
pub mod presence;
pub mod router;
pub mod session;
pub mod sessions;
pub mod window;
