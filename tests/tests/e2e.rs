//! The end-to-end suite, one test binary (one link of the whole gateway instead of one per file:
//! forty copies filled a small CI disk). Each module is one capability; `both_engines` holds the
//! ones `tests/run.sh` runs a second time with every gateway's state in PostgreSQL.

mod frontdoor_support;

/// Run on SQLite, then by `tests/run.sh` on PostgreSQL: the guarantees, plus the paths that reach
/// the store (`frontdoor_limits`: its `413` dead letter goes through `Store::undeliverable`).
mod both_engines {
    mod control_ops;
    mod crash_restart;
    mod deadlines;
    mod dedupe;
    mod errors;
    mod frontdoor_limits;
    mod http_api;
    mod logs;
    mod roundtrip;
    mod sleepy_delivery;
    mod telemetry;
}

mod backup;
mod cluster;
mod config_errors;
mod dashboard_browser;
mod degraded;
mod descriptors;
mod device_clients;
mod device_last_error;
mod drain;
mod echo_roundtrip;
mod external_broker;
mod fairness;
mod fleet_sim;
mod frontdoor_aggregate;
mod frontdoor_auth;
mod frontdoor_delivery;
mod frontdoor_hostile;
mod frontdoor_interop;
mod frontdoor_relay;
mod frontdoor_sessions;
mod frontdoor_tls;
mod interop_mosquitto;
mod login_flood;
mod models;
mod models_fleet;
mod mqtt311_device;
mod operator_cli;
mod prometheus_promtool;
mod sleepy_fleet;
mod store_access;
mod store_budget;
mod store_engines;
