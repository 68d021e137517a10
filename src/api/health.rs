//! Liveness, readiness and status: `/health`, `/ready`, `/status`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::{ApiContext, ApiError};
use crate::storage::{now_millis, to_datetime};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Serialize, ToSchema)]
pub struct HealthBody {
    pub status: String,
}

#[derive(Serialize, ToSchema)]
pub struct StatusBody {
    pub version: String,
    pub uptime_seconds: u64,
    pub timestamp: DateTime<Utc>,
    /// Where cloud calls go: AWS itself, or an emulator.
    pub cloud: String,
    /// Number of instances per state.
    pub instances: BTreeMap<String, i64>,
    /// Number of jobs per status.
    pub jobs: BTreeMap<String, i64>,
}

/// Liveness and readiness, open to probes without credentials.
pub fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new().routes(routes!(get_health)).routes(routes!(get_ready))
}

/// `/status`, which tells more about the deployment and needs credentials.
pub fn status_router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new().routes(routes!(get_status))
}

/// Liveness: answers as long as the process serves HTTP.
#[utoipa::path(get, path = "/health", tag = "health", operation_id = "get_health", security(()),
    responses((status = 200, body = HealthBody)))]
pub async fn get_health() -> Json<HealthBody> {
    Json(HealthBody { status: "ok".to_string() })
}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/ready", tag = "health", operation_id = "get_ready", security(()),
    responses((status = 200, body = HealthBody), (status = 503, body = crate::api::Problem)))]
pub async fn get_ready(State(ctx): State<ApiContext>) -> Result<Json<HealthBody>, ApiError> {
    ctx.store.ping().await.map_err(|err| {
        tracing::warn!(error = ?err, "readiness check failed");
        ApiError::Unavailable("the database does not answer".to_string())
    })?;
    Ok(Json(HealthBody { status: "ready".to_string() }))
}

/// Version, uptime, and counts of instances by state and jobs by status.
#[utoipa::path(get, path = "/status", tag = "health", operation_id = "get_status",
    responses((status = 200, body = StatusBody)))]
pub async fn get_status(State(ctx): State<ApiContext>) -> Result<Json<StatusBody>, ApiError> {
    let counts = ctx.store.counts().await?;
    Ok(Json(StatusBody {
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_seconds: ctx.started_at.elapsed().as_secs(),
        timestamp: to_datetime(now_millis()),
        cloud: ctx.cloud_endpoint.to_string(),
        instances: counts.instances_by_state,
        jobs: counts.jobs_by_status,
    }))
}
