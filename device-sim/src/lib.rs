//! device-sim: simulates fleets of sleepy MQTT devices against a Roost gateway. It is the demo,
//! the load generator and the end-to-end checker: it verifies every reply it receives.
//!
//! ```text
//! cli ─▶ scenario (run | load | flood | echo [--serve: bare_broker = the gateway's front door + rumqttd])
//!          │ run, load
//!          ▼
//!        fleet ─spawns─▶ device (connected | sleepy), one task each on a shared runtime
//!          │               │  workload: what to send      connection: rumqttc link + event task
//!          │               │  tracker: one reply ─▶ Outcome (verify: recompute stats)
//!          │               ▼
//!          │             metrics (per-device counts; shared live counters + HDR histograms)
//!          ▼
//!        progress (live bar)         probe (/proc: RSS, CPU) ─▶ report (JSON) + summary
//! ```
//!
//! Both sides speak one protocol definition: topics, ids, status codes and the CBOR envelope all
//! come from [`wire`].

pub mod cli;
pub mod connection;
pub mod device;
pub mod fleet;
pub mod metrics;
pub mod probe;
pub mod progress;
pub mod report;
pub mod scenario;
pub mod summary;
pub mod tracker;
pub mod verify;
pub mod workload;
