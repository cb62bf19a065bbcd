//! Roost: an edge gateway for sleepy MQTT devices.
//!
//! ```text
//! device ──TCP──▶ frontdoor (devices/: sessions end here) ──Inbound──▶ intake ──▶ store
//!                  ▲ router                                   (one commit per batch, then acks,
//!                  │                                           202s and errors)
//!                  │                                               │ Job
//!                  │                                               ▼
//!                  │                       analytics (fair scheduler + worker pool) ──▶ store
//!                  │                                               │ FinalReply
//!                  └──────────── flow::Replies ◀──── outbox (held until acked, on every wake)
//! external broker ◀──▶ link (external mode: all of it; embedded: status and dead letters)
//! ```
//!
//! Modules in flow order: [`cli`] starts everything through `app` from `config`; `frontdoor`
//! and `broker` carry MQTT, `link` is the service's own connection to a broker; `flow` declares
//! what crosses threads; `intake` admits requests into the `store`; [`analytics`] runs them
//! (operators' ONNX models through [`models`]);
//! `outbox` delivers replies; `status` reports to operators from `metrics`. [`wire`] is the
//! protocol (its own crate, shared with `device-sim`). ARCHITECTURE.md has the layer rules.

pub mod analytics;
pub(crate) mod app;
pub(crate) mod broker;
pub mod cli;
pub(crate) mod cluster;
pub mod config;
pub(crate) mod flow;
pub(crate) mod frontdoor;
pub(crate) mod intake;
pub(crate) mod link;
pub mod logging;
pub(crate) mod metrics;
pub mod models;
pub(crate) mod outbox;
pub(crate) mod recovery;
pub(crate) mod status;
pub mod store;
pub use wire;
