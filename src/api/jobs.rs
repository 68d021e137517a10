//! `/v1/jobs`: the durable jobs behind every mutating request, and the wire form of a job.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::extract::{QueryParams, encode_cursor, page_param};
use crate::api::{ApiContext, ApiError};
use crate::domain::JobStatus;
use crate::storage::{InstanceRecord, JobView, to_datetime};

#[derive(Serialize, ToSchema)]
pub struct JobBody {
    pub id: String,
    /// `create_instances`, `start_instances`, `stop_instances`, `reboot_instances` or
    /// `terminate_instances`.
    pub kind: String,
    /// `queued`, `running`, `succeeded` or `failed`.
    pub status: String,
    /// Attempts made so far (including the running one).
    pub attempts: i64,
    pub max_attempts: i64,
    /// Why the job failed, or why its last attempt failed while it is queued for a retry.
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The instances the job touches, as last reported by the cloud.
    pub instances: Vec<JobInstanceBody>,
}

#[derive(Serialize, ToSchema)]
pub struct JobInstanceBody {
    pub id: String,
    pub cloud_id: Option<String>,
    pub name: String,
    pub state: String,
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct JobPage {
    pub items: Vec<JobBody>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

impl From<&InstanceRecord> for JobInstanceBody {
    fn from(instance: &InstanceRecord) -> JobInstanceBody {
        JobInstanceBody {
            id: instance.id.clone(),
            cloud_id: instance.cloud_id.clone(),
            name: instance.name.clone(),
            state: instance.state.to_string(),
            public_ip: instance.public_ip.clone(),
            private_ip: instance.private_ip.clone(),
        }
    }
}

impl From<&JobView> for JobBody {
    fn from(view: &JobView) -> JobBody {
        let job = &view.job;
        JobBody {
            id: job.id.clone(),
            kind: job.kind.to_string(),
            status: job.status.to_string(),
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            error: job.error.clone(),
            created_at: to_datetime(job.created_at),
            updated_at: to_datetime(job.updated_at),
            started_at: job.started_at.map(to_datetime),
            finished_at: job.finished_at.map(to_datetime),
            instances: view.instances.iter().map(JobInstanceBody::from).collect(),
        }
    }
}

/// The answer to a request that enqueued a job: `202 Accepted` while it runs, `finished_status`
/// once it has finished; `Location` points at the job either way.
pub fn job_accepted(view: &JobView, finished_status: StatusCode) -> Response {
    let status = if view.job.status.is_finished() { finished_status } else { StatusCode::ACCEPTED };
    let location = format!("/v1/jobs/{}", view.job.id);
    (status, [(header::LOCATION, location)], Json(JobBody::from(view))).into_response()
}

pub fn router() -> Router<ApiContext> {
    Router::new().route("/jobs", get(list_jobs)).route("/jobs/{id}", get(get_job))
}

/// One job, with the instances it touches.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", operation_id = "get_job",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = JobBody), (status = 404, body = crate::api::Problem)))]
pub async fn get_job(
    State(ctx): State<ApiContext>,
    Path(id): Path<String>,
) -> Result<Json<JobBody>, ApiError> {
    let view = ctx.store.get_job(&id).await?.ok_or_else(|| job_not_found(&id))?;
    Ok(Json(JobBody::from(&view)))
}

/// Jobs, newest first, optionally by status.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", operation_id = "list_jobs",
    params(
        ("status" = Option<String>, Query, description = "queued, running, succeeded or failed"),
        ("limit" = Option<i64>, Query, description = "Page size, 1-100 (default 50)"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
    ),
    responses((status = 200, body = JobPage), (status = 400, body = crate::api::Problem)))]
pub async fn list_jobs(
    State(ctx): State<ApiContext>,
    params: QueryParams,
) -> Result<Json<JobPage>, ApiError> {
    params.allow_only(&["status", "limit", "cursor"])?;
    let status = params.parsed::<JobStatus>("status")?;
    let page = ctx.store.list_jobs(status, &page_param(&params)?).await?;
    Ok(Json(JobPage {
        items: page.items.iter().map(JobBody::from).collect(),
        next_cursor: page.next_after.as_deref().map(encode_cursor),
    }))
}

pub fn job_not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no job with id '{id}'"))
}
