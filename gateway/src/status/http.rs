//! The operator HTTP API, read-only: `GET /healthz`, `/metrics` (Prometheus text), `/api/status`,
//! `/api/devices` (paged), `/api/devices/{id}`, and `/`, a small live dashboard of the same data.
//!
//! Database reads go through the store's read methods (with SQLite, a read-only connection on a
//! blocking thread, beside the store thread's writes); nothing here can write.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::GatewayStatus;
use crate::metrics::IntakeStats;

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
}

impl HttpState {
    /// Handler state (the store is the status publisher's).
    pub fn new(status: GatewayStatus, intake: Arc<IntakeStats>, health: Arc<Health>) -> HttpState {
        HttpState {
            status,
            intake,
            health,
            extra_metrics: Arc::new(|_| {}),
        }
    }
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
    let app = Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/status", get(api_status))
        .route("/api/devices", get(api_devices))
        .route("/api/devices/:id", get(api_device))
        .with_state(state);
    let stopped = async move { shutdown.cancelled().await };
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!(%error, "HTTP server stopped");
    }
}

async fn healthz(State(state): State<HttpState>) -> Response {
    let store_up = tokio::time::timeout(Duration::from_secs(2), state.status.store.ping())
        .await
        .is_ok_and(|r| r.is_ok());
    let broker_up = state.health.broker.load(Relaxed);
    let workers_up = state.health.workers.load(Relaxed);
    let up = |ok: bool| if ok { "up" } else { "down" };
    let body = json!({ "broker": up(broker_up), "store": up(store_up), "workers": up(workers_up) });
    let code = if store_up && broker_up && workers_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn api_status(State(state): State<HttpState>) -> Response {
    let document = state.status.document_for("online").await;
    ([(header::CONTENT_TYPE, "application/json")], document).into_response()
}

#[derive(serde::Deserialize)]
struct Page {
    #[serde(default)]
    offset: usize,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

async fn api_devices(State(state): State<HttpState>, Query(page): Query<Page>) -> Response {
    let limit = page.limit.clamp(1, 1000);
    let offset = page.offset;
    match state.status.store.devices_page(offset, limit).await {
        Ok((total, rows)) => {
            Json(json!({ "total": total, "offset": offset, "limit": limit, "devices": rows }))
                .into_response()
        }
        Err(error) => internal(error.to_string()),
    }
}

async fn api_device(State(state): State<HttpState>, Path(id): Path<String>) -> Response {
    let found = state.status.store.device(id.clone()).await;
    match found {
        Ok((Some(device), recent)) => {
            Json(json!({ "device": device, "recent_requests": recent })).into_response()
        }
        Ok((None, _)) => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("unknown device {id:?}") })),
        )
            .into_response(),
        Err(error) => internal(error.to_string()),
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let mut out = String::with_capacity(4096);
    let counts = state.status.scheduler.counts();
    let held = state.status.store.held_total().await.unwrap_or(0);
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
        &[("", held as u64)],
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
        let now = crate::store::now_ms();
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
                ("{state=\"queued\"}", view.queued),
                ("{state=\"held\"}", view.held),
            ],
        );
        gauge(
            "roost_cluster_oldest_age_seconds",
            "Age of the oldest queued request and held reply, cluster-wide.",
            &[
                ("{state=\"queued\"}", age(view.oldest_queued_ms)),
                ("{state=\"held\"}", age(view.oldest_held_ms)),
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
    let _ = writeln!(out, "# HELP roost_requests_finished_total Final replies by op and status.\n# TYPE roost_requests_finished_total counter");
    for ((op, status), count) in m.finished_by_op() {
        let _ = writeln!(
            out,
            "roost_requests_finished_total{{op=\"{op}\",status=\"{status}\"}} {count}"
        );
    }
    let _ = writeln!(out, "# HELP roost_dead_letters_total Replies dead-lettered since start.\n# TYPE roost_dead_letters_total counter\nroost_dead_letters_total {}", m.dead_total.load(Relaxed));
    m.request_latency.render(
        &mut out,
        "roost_request_seconds",
        "Request received to final reply committed.",
    );
    state.status.store.commit_latency().render(
        &mut out,
        "roost_store_commit_seconds",
        "One group commit of the store.",
    );
    (state.extra_metrics)(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}
