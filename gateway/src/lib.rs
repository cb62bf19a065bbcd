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
pub mod app;
pub mod broker;
pub mod cli;
pub mod config;
pub mod flow;
pub mod frontdoor;
pub mod intake;
pub mod link;
pub mod metrics;
pub mod outbox;
pub mod recovery;
pub mod status;
pub mod store;
pub use wire;
