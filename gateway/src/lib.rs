//! Roost: an edge gateway for sleepy MQTT devices.
//!
//! ```text
//! device ──TCP──▶ frontdoor ──▶ broker (rumqttd, loopback) ──▶ mqtt (service connection)
//!                                                                  │
//!            ┌──────────────── intake: decode, validate, dedupe ◀──┘
//!            ▼
//!          store (SQLite: committed before any reply) ──▶ 202 ──▶ device
//!            │
//!            ▼
//!          analytics (fair scheduler + worker pool) ──▶ store ──▶ outbox ──▶ device reply
//! ```
//!
//! Modules in flow order: [`config`] and [`cli`] start everything through [`app`];
//! [`frontdoor`] and [`broker`] carry MQTT; [`mqtt`] is the service's own connection; [`intake`]
//! admits requests into the [`store`]; [`analytics`] runs them; [`outbox`] delivers replies;
//! [`status`] reports to operators. [`wire`] is the protocol, shared with `device-sim`.

pub mod analytics;
pub(crate) mod app;
pub(crate) mod broker;
pub mod cli;
pub(crate) mod config;
pub(crate) mod flow;
pub(crate) mod frontdoor;
pub(crate) mod intake;
pub(crate) mod link;
pub mod logging;
pub(crate) mod metrics;
pub(crate) mod outbox;
pub(crate) mod recovery;
pub(crate) mod status;
pub(crate) mod store;
pub use wire;
