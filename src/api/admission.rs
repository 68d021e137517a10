//! Admission: what every mutating route does around the job it stores. It reads the
//! `Idempotency-Key` header (scoped to the caller, fingerprinted with the request), replays the
//! job of a key seen before (or refuses a key reused for another request), turns what the
//! store answered (`storage::Admission`) into the response, and answers with the job: `202`
//! while it runs, the route's own status once it has finished (`?wait=`), `Location` naming it.

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::api::error::{Key, no_such};
use crate::api::{ApiContext, ApiError, FieldError};
use crate::storage::{Admission, IdempotencyKey, JobView};
use crate::wire::JobBody;

/// `?wait=SECONDS`, which every route that stores a job takes.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitParams {
    /// Seconds to wait for the job to finish before answering (default 0: at once).
    #[param(minimum = 0, maximum = 60)]
    pub wait: Option<i64>,
}

impl WaitParams {
    /// `?wait=` of `params`, checked (0-60).
    pub fn from_query(params: &crate::api::extract::QueryParams) -> Result<WaitParams, ApiError> {
        Ok(WaitParams { wait: params.int("wait", 0, 60)? })
    }

    /// How long to wait for the job; `None` answers at once.
    pub fn duration(&self) -> Option<std::time::Duration> {
        self.wait
            .filter(|seconds| *seconds > 0)
            .map(|seconds| std::time::Duration::from_secs(seconds.unsigned_abs()))
    }
}

/// The answer of a route that stores a job: `200` once the job has finished (within
/// `?wait=`), `202` while it is queued or running; `Location` names the job either way.
#[derive(utoipa::IntoResponses)]
pub enum JobAnswer {
    /// The job finished within `wait`
    #[response(status = 200, headers(("location" = String, description = "The job")))]
    Finished(#[to_schema] JobBody),
    /// The job is queued or running
    #[response(status = 202, headers(("location" = String, description = "The job")))]
    Accepted(#[to_schema] JobBody),
}

/// `JobAnswer` of a create: `201` once the job has finished, `202` before.
#[derive(utoipa::IntoResponses)]
pub enum JobCreated {
    /// The job finished within `wait`
    #[response(status = 201, headers(("location" = String, description = "The job")))]
    Finished(#[to_schema] JobBody),
    /// The job is queued or running
    #[response(status = 202, headers(("location" = String, description = "The job")))]
    Accepted(#[to_schema] JobBody),
}

/// Why a request or setting naming the Terraform backend is refused on this server.
pub const TERRAFORM_UNAVAILABLE: &str = "the Terraform backend is unavailable: terraform is not installed on this server \
     (terraform.binary)";

/// The `Idempotency-Key` request header, checked: 1-255 visible ASCII characters.
pub struct IdempotencyHeader(pub Option<String>);

pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyHeader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(IDEMPOTENCY_HEADER) else {
            return Ok(IdempotencyHeader(None));
        };
        match value.to_str() {
            Ok(key)
                if !key.is_empty()
                    && key.len() <= 255
                    && key.chars().all(|c| c.is_ascii_graphic()) =>
            {
                Ok(IdempotencyHeader(Some(key.to_string())))
            }
            _ => Err(ApiError::bad_field(
                "Idempotency-Key",
                "must be 1-255 visible ASCII characters",
            )),
        }
    }
}

impl IdempotencyHeader {
    /// The key, scoped to the caller (one user's key never finds another's job), with the
    /// fingerprint of the request it came with: method, path, and body in a canonical form (so
    /// that key order and spacing do not matter).
    pub fn with_request(
        &self,
        caller: &crate::api::auth::Caller,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Option<crate::storage::IdempotencyKey> {
        use sha2::Digest;
        let key = format!("{}:{}", caller.principal.user_id, self.0.as_ref()?);
        let mut hasher = sha2::Sha256::new();
        hasher.update(method.as_bytes());
        hasher.update(b"\n");
        hasher.update(path.as_bytes());
        hasher.update(b"\n");
        if let Some(body) = body {
            hasher.update(body.to_string().as_bytes());
        }
        let fingerprint = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Some(crate::storage::IdempotencyKey { key, fingerprint })
    }
}

/// The answer to a request that enqueued a job: `202 Accepted` while it runs, `finished_status`
/// (`201` for a create, `200` otherwise) once it has finished.
pub fn job_accepted(view: &JobView, finished_status: StatusCode) -> Response {
    let body = JobBody::from(view);
    match (finished_status == StatusCode::CREATED, view.job.status.is_finished()) {
        (true, true) => JobCreated::Finished(body).into_response(),
        (true, false) => JobCreated::Accepted(body).into_response(),
        (false, true) => JobAnswer::Finished(body).into_response(),
        (false, false) => JobAnswer::Accepted(body).into_response(),
    }
}

impl IntoResponse for JobAnswer {
    fn into_response(self) -> Response {
        match self {
            JobAnswer::Finished(body) => job_response(StatusCode::OK, body),
            JobAnswer::Accepted(body) => job_response(StatusCode::ACCEPTED, body),
        }
    }
}

impl IntoResponse for JobCreated {
    fn into_response(self) -> Response {
        match self {
            JobCreated::Finished(body) => job_response(StatusCode::CREATED, body),
            JobCreated::Accepted(body) => job_response(StatusCode::ACCEPTED, body),
        }
    }
}

/// `status`, the job, and `Location` naming it.
fn job_response(status: StatusCode, body: JobBody) -> Response {
    let location = format!("/v1/jobs/{}", body.id);
    (status, [(header::LOCATION, location)], Json(body)).into_response()
}

/// The answer to a request whose job the store admitted, replayed, or refused.
pub async fn admitted(
    ctx: &ApiContext,
    admission: Admission,
    job_id: &str,
    wait: Option<std::time::Duration>,
    finished_status: StatusCode,
) -> Result<Response, ApiError> {
    match admission {
        Admission::Stored => {
            ctx.queue.wake_workers();
            respond_with_job(ctx, job_id, wait, finished_status).await
        }
        Admission::Replay { job_id } => {
            let mut response = respond_with_job(ctx, &job_id, wait, finished_status).await?;
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(response)
        }
        Admission::KeyMismatch => Err(key_mismatch()),
        Admission::Conflicts(conflicts) => {
            let errors: Vec<FieldError> =
                conflicts.into_iter().map(|c| FieldError::new(c.instance_id, c.reason)).collect();
            let detail = match errors.as_slice() {
                [only] => only.message.clone(),
                [] => "the instances changed while the request was handled; retry".to_string(),
                _ => format!("{} instances cannot take the action now", errors.len()),
            };
            Err(ApiError::Conflict { detail, errors })
        }
        Admission::UnknownNamespace(namespace) => Err(ApiError::Validation(vec![FieldError::new(
            "namespace",
            format!(
                "{}; an admin creates it with POST /v1/namespaces",
                no_such("namespace", Key::Name(&namespace))
            ),
        )])),
        Admission::OverQuota(exceeded) => Err(ApiError::QuotaExceeded(format!(
            "namespace '{}' allows {} {}; {} in use, {} requested",
            exceeded.namespace, exceeded.limit, exceeded.quota, exceeded.used, exceeded.requested
        ))),
        Admission::NamesTaken { namespace, names } => {
            let quoted: Vec<String> = names.iter().map(|name| format!("'{name}'")).collect();
            Err(ApiError::Validation(vec![FieldError::new(
                "name",
                format!(
                    "namespace '{namespace}' has a live instance named {} already; names are \
                     unique among the live instances of a namespace",
                    quoted.join(", ")
                ),
            )]))
        }
    }
}

/// For a key seen before: the original job (same request) or a 422 (different request).
pub async fn replay(
    ctx: &ApiContext,
    key: Option<&IdempotencyKey>,
    wait: Option<std::time::Duration>,
    finished_status: StatusCode,
) -> Result<Option<Response>, ApiError> {
    let Some(key) = key else { return Ok(None) };
    let Some((fingerprint, job_id)) = ctx.store.find_idempotency_key(&key.key).await? else {
        return Ok(None);
    };
    if fingerprint != key.fingerprint {
        return Err(key_mismatch());
    }
    let admission = Admission::Replay { job_id: job_id.clone() };
    admitted(ctx, admission, &job_id, wait, finished_status).await.map(Some)
}

fn key_mismatch() -> ApiError {
    ApiError::Validation(vec![FieldError::new(
        "Idempotency-Key",
        "this key was already used with a different request; use a new key for a new request",
    )])
}

async fn respond_with_job(
    ctx: &ApiContext,
    job_id: &str,
    wait: Option<std::time::Duration>,
    finished_status: StatusCode,
) -> Result<Response, ApiError> {
    let view: JobView = match wait {
        Some(wait) => ctx.queue.wait_for(job_id, wait).await?,
        None => ctx.store.get_job(job_id).await?.ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!("job {job_id} vanished right after it was stored"))
        })?,
    };
    Ok(job_accepted(&view, finished_status))
}
