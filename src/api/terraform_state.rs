//! `/v1/terraform/state/{workspace}`: Terraform's HTTP backend protocol, so that the state of
//! Terraform-backed instances lives in corral's database rather than on a worker's disk.
//!
//! `GET` reads the state (204 when there is none), `POST` writes it and `DELETE` removes it;
//! `LOCK` and `UNLOCK` take and release the workspace's lock, answering `423 Locked` with the
//! holder's lock info. A write while another lock holds the workspace is refused the same way.
//! A workspace is the id of the create job that made its instances. It is written (`POST`,
//! `DELETE`, `LOCK`, `UNLOCK`) only by the Terraform run of a job that corral gave a token for
//! that workspace alone, and by admins: corral applies what the state says under its own cloud
//! identity, so whoever could write it could point corral at any instance of the account. The
//! namespace's operators may read it (state documents hold every attribute of the resources, so
//! viewers do not). Terraform authenticates with HTTP Basic, the password being an API key or a
//! token. Callers are authorized before the body is read.

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::auth::Caller;
use crate::api::error::Key;
use crate::api::extract::QueryParams;
use crate::api::{ApiContext, ApiError};
use crate::domain::{Credential, Role};
use crate::storage::LockOutcome;

/// Largest state document accepted.
const MAX_STATE_BYTES: usize = 16 * 1024 * 1024;

/// The route is documented as its `GET` (OpenAPI has no `LOCK` or `UNLOCK`; the operation says
/// what the other methods do) and answers every method.
pub fn router() -> OpenApiRouter<ApiContext> {
    let (schemas, paths, _get_only) = routes!(state);
    let any_method = any(state).layer(DefaultBodyLimit::max(MAX_STATE_BYTES));
    OpenApiRouter::new().routes((schemas, paths, any_method))
}

/// Reads a workspace's Terraform state (204 when none); `POST` writes it, `DELETE` removes it,
/// and the methods `LOCK`/`UNLOCK` of Terraform's HTTP backend take and release its lock
/// (423 with the holder's lock info when another holds it).
#[utoipa::path(get, path = "/v1/terraform/state/{workspace}", tag = "terraform",
    operation_id = "get_terraform_state",
    params(("workspace" = String, Path, description = "The id of the create job whose instances the state holds")),
    responses((status = 200, description = "The state document"), (status = 204, description = "No state yet"),
        (status = 404, body = crate::api::Problem)))]
pub async fn state(
    State(ctx): State<ApiContext>,
    caller: Caller,
    method: Method,
    Path(workspace): Path<String>,
    params: QueryParams,
    request: Request,
) -> Result<Response, ApiError> {
    authorize(&ctx, &caller, &workspace, method == Method::GET).await?;
    params.allow_only(&["ID"])?;
    let body = axum::body::to_bytes(request.into_body(), MAX_STATE_BYTES)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(MAX_STATE_BYTES))?;
    let lock_id = params.one("ID")?;
    match method.as_str() {
        "GET" => Ok(match ctx.store.terraform_state(&workspace).await? {
            Some(state) => ([(header::CONTENT_TYPE, "application/json")], state).into_response(),
            None => StatusCode::NO_CONTENT.into_response(),
        }),
        "POST" => {
            let state = std::str::from_utf8(&body)
                .ok()
                .filter(|text| serde_json::from_str::<serde_json::Value>(text).is_ok())
                .ok_or_else(|| ApiError::bad_field("body", "the state must be a JSON document"))?;
            let outcome = ctx.store.write_terraform_state(&workspace, Some(state), lock_id).await?;
            Ok(answer(outcome))
        }
        "DELETE" => {
            let outcome = ctx.store.write_terraform_state(&workspace, None, lock_id).await?;
            Ok(answer(outcome))
        }
        "LOCK" => {
            let info = lock_info(&body)?;
            let id = info["ID"].as_str().filter(|id| !id.is_empty()).ok_or_else(|| {
                ApiError::bad_field("ID", "the lock info must name the lock's ID")
            })?;
            let job_id = match &caller.principal.credential {
                Credential::Workspace { job_id, .. } => Some(job_id.as_str()),
                _ => None,
            };
            let text = info.to_string();
            Ok(answer(ctx.store.lock_terraform_state(&workspace, id, &text, job_id).await?))
        }
        "UNLOCK" => {
            // `terraform force-unlock` sends the ID too; an empty body releases any lock.
            let info = if body.is_empty() { serde_json::Value::Null } else { lock_info(&body)? };
            let id = info["ID"].as_str().filter(|id| !id.is_empty());
            Ok(answer(ctx.store.unlock_terraform_state(&workspace, id).await?))
        }
        other => Err(ApiError::BadRequest {
            detail: format!(
                "method {other} is not part of Terraform's HTTP backend protocol; use GET, POST, \
                 DELETE, LOCK or UNLOCK"
            ),
            errors: Vec::new(),
        }),
    }
}

fn lock_info(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .filter(serde_json::Value::is_object)
        .ok_or_else(|| ApiError::bad_field("body", "the lock info must be a JSON object"))
}

fn answer(outcome: LockOutcome) -> Response {
    match outcome {
        LockOutcome::Done => StatusCode::OK.into_response(),
        LockOutcome::HeldBy(info) => (
            StatusCode::LOCKED,
            [(header::CONTENT_TYPE, "application/json")],
            info.unwrap_or_else(|| "{}".to_string()),
        )
            .into_response(),
    }
}

/// A workspace exists when a create job of that id does. Its own run's token may do anything
/// with it, admins too; an operator of its namespace may only `read` it.
async fn authorize(
    ctx: &ApiContext,
    caller: &Caller,
    workspace: &str,
    read: bool,
) -> Result<(), ApiError> {
    let not_found = || ApiError::not_found("Terraform workspace", Key::Name(workspace));
    if let Credential::Workspace { workspace: allowed, .. } = &caller.principal.credential {
        // The middleware lets such a token reach its own workspace only.
        return if allowed == workspace { Ok(()) } else { Err(not_found()) };
    }
    let job = ctx.store.get_job(workspace).await?.ok_or_else(not_found)?;
    match &job.job.namespace {
        Some(namespace) => caller.require(namespace, Role::Operator, not_found)?,
        None => caller.require_admin()?,
    }
    if read || caller.principal.admin {
        return Ok(());
    }
    Err(ApiError::Forbidden(
        "only corral's own Terraform runs and admins write a workspace's state or its lock: \
         corral applies what the state names"
            .to_string(),
    ))
}
