//! The operator JSON API behind the dashboard: the device list (natural order, search, filters,
//! paged on the server), one device (recent requests with where each is on its way, held replies,
//! dead letters), one request, dead letters, and the chart samples. Read-only: every handler
//! reads through the store's typed views.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::http::{store_failed, HttpState};
use super::rfc3339_ms;
use crate::store::{devices, now_ms};

/// Most rows one page holds.
const MAX_PAGE: usize = 1000;
/// Recent requests a device page shows.
const RECENT: usize = 50;

fn default_limit() -> usize {
    100
}

/// `?offset=&limit=&q=&awake=&held=&errors=` of the device list.
#[derive(Debug, serde::Deserialize)]
pub(super) struct DeviceQuery {
    #[serde(default)]
    offset: usize,
    #[serde(default = "default_limit")]
    limit: usize,
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    awake: Option<String>,
    #[serde(default)]
    held: Option<String>,
    #[serde(default)]
    errors: Option<String>,
}

fn flag(value: &Option<String>) -> bool {
    matches!(value.as_deref(), Some("1" | "true" | "on" | "yes"))
}

/// A device row as the API shows it: the stored row plus readable times and ages.
fn device_json(row: &devices::DeviceRow, now: i64) -> serde_json::Value {
    let mut value = serde_json::to_value(row).unwrap_or_default();
    value["last_seen"] = json!(row.last_seen_ms.map(rfc3339_ms));
    value["oldest_held_age_s"] = json!(row.oldest_held_ms.map(|at| (now - at).max(0) / 1000));
    value
}

/// `GET /api/devices`
pub(super) async fn devices_page(
    State(state): State<HttpState>,
    Query(query): Query<DeviceQuery>,
) -> Response {
    let limit = query.limit.clamp(1, MAX_PAGE);
    let offset = query.offset;
    let filter = devices::Filter {
        search: query.q.clone().filter(|q| !q.trim().is_empty()),
        awake: flag(&query.awake),
        held: flag(&query.held),
        errors: flag(&query.errors),
    };
    match state.status.store.devices_page(filter, offset, limit).await {
        Ok((total, rows)) => {
            let now = now_ms();
            let rows: Vec<_> = rows.iter().map(|row| device_json(row, now)).collect();
            Json(json!({ "total": total, "offset": offset, "limit": limit, "devices": rows }))
                .into_response()
        }
        Err(error) => store_failed(error),
    }
}

/// `GET /api/devices/{id}`
pub(super) async fn device(State(state): State<HttpState>, Path(id): Path<String>) -> Response {
    match state.status.store.device(id.clone(), RECENT).await {
        Ok(Some(mut detail)) => {
            for request in &mut detail.recent_requests {
                let running = request.lifecycle == "queued"
                    && uuid::Uuid::parse_str(&request.id).is_ok_and(|u| {
                        state.status.scheduler.is_running(crate::wire::RequestId(u))
                    });
                if running {
                    request.lifecycle = "running";
                }
            }
            Json(json!({
                "device": device_json(&detail.device, now_ms()),
                "recent_requests": detail.recent_requests,
                "held_replies": detail.held_replies,
                "dead_letters": detail.dead_letters,
                "dead_letters_total": detail.dead_letters_total,
            }))
            .into_response()
        }
        Ok(None) => not_found(format!("unknown device {id:?}")),
        Err(error) => store_failed(error),
    }
}

/// `GET /api/requests/{id}`
pub(super) async fn request(State(state): State<HttpState>, Path(id): Path<String>) -> Response {
    match state.status.store.request(id.clone()).await {
        Ok(Some(detail)) => Json(detail).into_response(),
        Ok(None) => not_found(format!("unknown request {id:?}")),
        Err(error) => store_failed(error),
    }
}

/// `?offset=&limit=&device=` of the dead letters.
#[derive(Debug, serde::Deserialize)]
pub(super) struct DeadQuery {
    #[serde(default)]
    offset: usize,
    #[serde(default = "default_limit")]
    limit: usize,
    #[serde(default)]
    device: Option<String>,
}

/// `GET /api/deadletters`
pub(super) async fn dead_letters(
    State(state): State<HttpState>,
    Query(query): Query<DeadQuery>,
) -> Response {
    let limit = query.limit.clamp(1, MAX_PAGE);
    let offset = query.offset;
    let device = query.device.clone().filter(|d| !d.is_empty());
    match state
        .status
        .store
        .dead_letters_page(device, offset, limit)
        .await
    {
        Ok((total, rows)) => {
            let now = now_ms();
            let rows: Vec<_> = rows
                .iter()
                .map(|row| {
                    let mut value = serde_json::to_value(row).unwrap_or_default();
                    value["at"] = json!(rfc3339_ms(row.letter.at_ms));
                    value["age_s"] = json!((now - row.letter.at_ms).max(0) / 1000);
                    value
                })
                .collect();
            Json(json!({ "total": total, "offset": offset, "limit": limit, "dead_letters": rows }))
                .into_response()
        }
        Err(error) => store_failed(error),
    }
}

/// `GET /api/series`
pub(super) async fn series(State(state): State<HttpState>) -> Response {
    Json(state.series.columns()).into_response()
}

fn not_found(message: String) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "error": message }))).into_response()
}
