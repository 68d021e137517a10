//! `/v1/jobs`: the durable jobs behind every mutating request, and the wire form of a job.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};

use crate::api::auth::Caller;
use crate::api::error::Key;
use crate::api::extract::{PageParams, QueryParams, encode_cursor, page_param};
use crate::api::limits::StreamSlot;
use crate::api::{ApiContext, ApiError};
use crate::domain::JobStatus;
use crate::storage::{InstanceRecord, JobEvent, JobFilter, JobRecord, JobView, to_datetime};
use crate::wire::{JobBody, JobEventBody, JobEventList, JobInstanceBody, JobPage};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

impl From<&InstanceRecord> for JobInstanceBody {
    fn from(instance: &InstanceRecord) -> JobInstanceBody {
        JobInstanceBody {
            id: instance.id.clone(),
            cloud_id: instance.cloud_id.clone(),
            name: instance.name.clone(),
            state: instance.state.to_string(),
            public_ip: instance.public_ip.clone(),
            private_ip: instance.private_ip.clone(),
            key_name: instance.key_name.clone(),
            ssh_command: crate::domain::ssh_command(
                instance.key_name.as_deref(),
                instance.public_ip.as_deref(),
                instance.login_user.as_deref(),
            ),
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
            actor: job.actor.clone(),
            credential: job.credential.clone(),
            namespace: job.namespace.clone(),
            instances: view.instances.iter().map(JobInstanceBody::from).collect(),
        }
    }
}

pub fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(get_job_events))
}

impl From<JobEvent> for JobEventBody {
    fn from(event: JobEvent) -> JobEventBody {
        JobEventBody {
            seq: event.seq,
            at: to_datetime(event.at),
            attempt: event.attempt,
            kind: event.kind,
            message: event.message,
        }
    }
}

/// A job's history: every step with its time, and every attempt's error. With
/// `Accept: text/event-stream` the history is streamed as server-sent events (event type =
/// `kind`, id = `seq`; `Last-Event-ID` resumes) until the job ends, then an `end` event carries
/// the job.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs", operation_id = "get_job_events",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The history as JSON, or as an event stream", body = JobEventList),
        (status = 404, body = crate::api::Problem),
        (status = 429, description = "As many event streams are open as allowed (server.max_event_streams, server.max_event_streams_per_caller)", body = crate::api::Problem),
    ))]
pub async fn get_job_events(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    visible_job(&ctx, &caller, &id).await?;
    let wants_stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"));
    if !wants_stream {
        let items =
            ctx.store.job_events(&id, 0).await?.into_iter().map(JobEventBody::from).collect();
        return Ok(Json(JobEventList { items }).into_response());
    }
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0);
    let slot = ctx.limits.streams.take(&caller.principal.user_id)?;
    let stream = event_stream(ctx, id, after, slot);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

struct StreamState {
    ctx: ApiContext,
    job_id: String,
    after: i64,
    buffered: VecDeque<Event>,
    ended: bool,
    /// Held while the stream is open.
    _slot: StreamSlot,
}

/// Polls the job's history; waits on the in-process finish signal between polls.
fn event_stream(
    ctx: ApiContext,
    job_id: String,
    after: i64,
    slot: StreamSlot,
) -> impl futures_util::Stream<Item = Result<Event, Infallible>> {
    let state =
        StreamState { ctx, job_id, after, buffered: VecDeque::new(), ended: false, _slot: slot };
    futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.buffered.pop_front() {
                return Some((Ok(event), state));
            }
            if state.ended {
                return None;
            }
            let Ok(view) = state.ctx.store.get_job(&state.job_id).await else { return None };
            let view = view?;
            let Ok(events) = state.ctx.store.job_events(&state.job_id, state.after).await else {
                return None;
            };
            for event in events {
                state.after = event.seq;
                let id = event.seq.to_string();
                let kind = event.kind.clone();
                let body = JobEventBody::from(event);
                let data = serde_json::to_string(&body).expect("event serializes");
                state.buffered.push_back(Event::default().id(id).event(kind).data(data));
            }
            if view.job.status.is_finished() {
                let data = serde_json::to_string(&JobBody::from(&view)).expect("job serializes");
                state.buffered.push_back(Event::default().event("end").data(data));
                state.ended = true;
                continue;
            }
            if state.buffered.is_empty() {
                let _ = state.ctx.queue.wait_for(&state.job_id, Duration::from_millis(500)).await;
            }
        }
    })
}

/// One job, with the instances it touches.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", operation_id = "get_job",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = JobBody), (status = 404, body = crate::api::Problem)))]
pub async fn get_job(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobBody>, ApiError> {
    let view = visible_job(&ctx, &caller, &id).await?;
    Ok(Json(JobBody::from(&view)))
}

/// The job `id` if the caller may see it: an admin sees every job, others the jobs of their
/// namespaces and the jobs they asked for.
async fn visible_job(ctx: &ApiContext, caller: &Caller, id: &str) -> Result<JobView, ApiError> {
    let view =
        ctx.store.get_job(id).await?.ok_or_else(|| ApiError::not_found("job", Key::Id(id)))?;
    if sees_job(caller, &view.job) {
        Ok(view)
    } else {
        Err(ApiError::not_found("job", Key::Id(id)))
    }
}

fn sees_job(caller: &Caller, job: &JobRecord) -> bool {
    caller.principal.admin
        || job.namespace.as_deref().is_some_and(|namespace| caller.sees(namespace))
        || job.user_id.as_deref() == Some(caller.principal.user_id.as_str())
}

/// Jobs, newest first, optionally by status: every job for an admin, else those of the caller's
/// namespaces and those the caller asked for.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", operation_id = "list_jobs",
    params(
        ("status" = inline(Option<crate::api::schema::JobStatuses>), Query),
        PageParams,
    ),
    responses((status = 200, body = JobPage), (status = 400, body = crate::api::Problem)))]
pub async fn list_jobs(
    State(ctx): State<ApiContext>,
    caller: Caller,
    params: QueryParams,
) -> Result<Json<JobPage>, ApiError> {
    params.allow_only(&["status", "limit", "cursor"])?;
    let filter = JobFilter {
        status: params.parsed::<JobStatus>("status")?,
        visible: caller
            .principal
            .visible_namespaces()
            .map(|namespaces| (namespaces, caller.principal.user_id.clone())),
    };
    let page = ctx.store.list_jobs(&filter, &page_param(&params)?).await?;
    Ok(Json(JobPage {
        items: page.items.iter().map(JobBody::from).collect(),
        next_cursor: page.next_after.as_deref().map(encode_cursor),
    }))
}
