//! The operator HTTP API, read-only: `GET /healthz`, `/metrics` (Prometheus text), `/api/status`,
//! the JSON behind the dashboard ([`super::api`]), and the dashboard itself ([`super::assets`]:
//! `/`, `/devices/{id}`, `/deadletters`).
//!
//! Database reads go through the store's read methods (with SQLite, a read-only connection on a
//! blocking thread, beside the store thread's writes); nothing here can write. On a non-loopback
//! address every route but `/healthz` needs an operator login ([`super::login`]).

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{api, assets, GatewayStatus};
use crate::metrics::IntakeStats;
use crate::store::{self, StoreError};

/// What the stages report about their own health.
#[derive(Debug)]
pub struct Health {
    /// The broker (embedded or external link) is up.
    pub broker: AtomicBool,
    /// The workers are serving (false once draining).
    pub workers: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            broker: AtomicBool::new(true),
            workers: AtomicBool::new(true),
        }
    }
}

/// Everything the handlers read.
#[derive(Clone)]
pub struct HttpState {
    /// The gateway status document and queue counts.
    pub status: GatewayStatus,
    /// Intake counters.
    pub intake: Arc<IntakeStats>,
    /// Stage health.
    pub health: Arc<Health>,
    /// Extra Prometheus text from other stages (the front door's counters).
    pub extra_metrics: Arc<dyn Fn(&mut String) + Send + Sync>,
    /// The dashboard's chart samples.
    pub series: Arc<super::series::Series>,
    /// Operator logins, when the listener is not on loopback.
    pub login: Option<Arc<super::login::Login>>,
}

impl HttpState {
    /// Handler state (the store is the status publisher's).
    pub fn new(status: GatewayStatus, intake: Arc<IntakeStats>, health: Arc<Health>) -> HttpState {
        HttpState {
            status,
            intake,
            health,
            extra_metrics: Arc::new(|_| {}),
            series: Arc::default(),
            login: None,
        }
    }
}

/// A store failure as the API answers it: 500 with the error.
pub(super) fn store_failed(error: StoreError) -> Response {
    internal(error.to_string())
}

fn internal(error: String) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({ "error": error })),
    )
        .into_response()
}

/// The bound listener, so a taken port is reported at start (exit 2).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `shutdown`.
pub async fn serve(listener: TcpListener, state: HttpState, shutdown: CancellationToken) {
    tokio::spawn(state.series.clone().run(
        state.status.clone(),
        state.intake.clone(),
        shutdown.clone(),
    ));
    let guarded = Router::new()
        .route("/", get(assets::page))
        .route("/devices/:id", get(assets::page))
        .route("/deadletters", get(assets::page))
        .route("/assets/:name", get(assets::asset))
        .route("/metrics", get(metrics))
        .route("/api/status", get(api_status))
        .route("/api/series", get(api::series))
        .route("/api/devices", get(api::devices_page))
        .route("/api/devices/:id", get(api::device))
        .route("/api/requests/:id", get(api::request))
        .route("/api/deadletters", get(api::dead_letters));
    let guarded = match state.login.clone() {
        Some(login) => guarded.layer(axum::middleware::from_fn_with_state(
            login,
            super::login::require,
        )),
        None => guarded,
    };
    let app = guarded.route("/healthz", get(healthz)).with_state(state);
    let stopped = async move { shutdown.cancelled().await };
    // The peer's address goes to the login's throttle.
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!(%error, "HTTP server stopped");
    }
}

async fn healthz(State(state): State<HttpState>) -> Response {
    let degraded = state.status.store.health().reason();
    let store_up = degraded.is_none()
        && tokio::time::timeout(Duration::from_secs(2), state.status.store.ping())
            .await
            .is_ok_and(|r| r.is_ok());
    let broker_up = state.health.broker.load(Relaxed);
    let workers_up = state.health.workers.load(Relaxed);
    let up = |ok: bool| if ok { "up" } else { "down" };
    let mut body =
        json!({ "broker": up(broker_up), "store": up(store_up), "workers": up(workers_up) });
    if let Some(reason) = degraded {
        body["store"] = json!("degraded");
        body["reason"] = json!(format!("store cannot write: {reason}"));
    }
    let code = if store_up && broker_up && workers_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn api_status(State(state): State<HttpState>) -> Response {
    let document = state
        .status
        .document_for(state.status.serving_state())
        .await;
    ([(header::CONTENT_TYPE, "application/json")], document).into_response()
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let mut out = String::with_capacity(4096);
    let counts = state.status.scheduler.counts();
    let backlog = state.status.store.backlog().await.unwrap_or_default();
    let m = &state.status.metrics;
    let i = &state.intake;
    let mut gauge = |name: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    gauge(
        "roost_queue_depth",
        "Requests queued or running.",
        &[
            ("{state=\"queued\"}", counts.queued as u64),
            ("{state=\"running\"}", counts.running as u64),
        ],
    );
    gauge(
        "roost_held_replies",
        "Final replies held until their device acks them.",
        &[("", backlog.held)],
    );
    gauge(
        "roost_devices",
        "Devices seen since start, and awake now.",
        &[
            ("{state=\"known\"}", m.devices_known.load(Relaxed) as u64),
            ("{state=\"awake\"}", m.devices_awake.load(Relaxed) as u64),
        ],
    );
    if let Some(view) = state.status.store.cluster_view() {
        let now = store::now_ms();
        let age = |at: Option<i64>| at.map_or(0, |at| ((now - at).max(0) / 1000) as u64);
        let alive = view.alive() as u64;
        gauge(
            "roost_cluster_gateways",
            "Gateways sharing this store, by whether their heartbeat lease is fresh.",
            &[
                ("{state=\"alive\"}", alive),
                ("{state=\"dead\"}", view.gateways.len() as u64 - alive),
            ],
        );
        gauge(
            "roost_cluster_requests",
            "Requests queued or running, and final replies held, cluster-wide.",
            &[
                ("{state=\"queued\"}", view.totals.queued),
                ("{state=\"held\"}", view.totals.held),
            ],
        );
        gauge(
            "roost_cluster_oldest_age_seconds",
            "Age of the oldest queued request and held reply, cluster-wide.",
            &[
                ("{state=\"queued\"}", age(view.totals.oldest_queued_ms)),
                ("{state=\"held\"}", age(view.totals.oldest_held_ms)),
            ],
        );
    }
    let _ = writeln!(out, "# HELP roost_intake_total Requests at intake by outcome.\n# TYPE roost_intake_total counter");
    for (outcome, counter) in [
        ("accepted", &i.accepted),
        ("duplicate", &i.duplicates),
        ("rejected", &i.rejected),
        ("over_quota", &i.over_quota),
        ("unavailable", &i.unavailable),
    ] {
        let _ = writeln!(
            out,
            "roost_intake_total{{outcome=\"{outcome}\"}} {}",
            counter.load(Relaxed)
        );
    }
    let _ = writeln!(out, "# HELP roost_telemetry_readings_total Telemetry readings at intake: stored, or a copy of one already stored (not stored again).\n# TYPE roost_telemetry_readings_total counter");
    for (outcome, counter) in [("stored", &i.readings_stored), ("copy", &i.reading_copies)] {
        let _ = writeln!(
            out,
            "roost_telemetry_readings_total{{outcome=\"{outcome}\"}} {}",
            counter.load(Relaxed)
        );
    }
    let _ = writeln!(out, "# HELP roost_requests_finished_total Final replies by op and status.\n# TYPE roost_requests_finished_total counter");
    for ((op, status), count) in m.finished_by_op() {
        let _ = writeln!(
            out,
            "roost_requests_finished_total{{op=\"{op}\",status=\"{status}\"}} {count}"
        );
    }
    let ages = (backlog.oldest_queued_ms, backlog.oldest_held_ms);
    super::prometheus::render(&mut out, m, i, ages, store::now_ms());
    let _ = writeln!(out, "# HELP roost_store_evicted_total Finished requests evicted to keep the store within limits.max_store_bytes.\n# TYPE roost_store_evicted_total counter\nroost_store_evicted_total {}", m.evicted_total.load(Relaxed));
    let health = state.status.store.health();
    let _ = writeln!(
        out,
        "# HELP roost_store_degraded 1 while the store cannot write (new requests get 503).\n\
         # TYPE roost_store_degraded gauge\nroost_store_degraded {}\n\
         # HELP roost_store_degraded_seconds_total Time spent degraded since start.\n\
         # TYPE roost_store_degraded_seconds_total counter\nroost_store_degraded_seconds_total {:.3}\n\
         # HELP roost_store_degraded_periods_total Times the store became degraded since start.\n\
         # TYPE roost_store_degraded_periods_total counter\nroost_store_degraded_periods_total {}",
        u8::from(health.is_degraded()),
        health.degraded_seconds(),
        health.periods(),
    );
    state.status.store.commit_latency().render(
        &mut out,
        "roost_store_commit_seconds",
        "One group commit of the store.",
    );
    (state.extra_metrics)(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
