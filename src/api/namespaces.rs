//! `/v1/namespaces`: the groups instances live in, their quotas and what they use, and
//! terminating everything in one.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer};
use utoipa::ToSchema;

use crate::api::admission::{JobAnswer, TERRAFORM_UNAVAILABLE, WaitParams, admitted};
use crate::api::auth::Caller;
use crate::api::error::Key;
use crate::api::extract::{QueryParams, ValidJson, wait_param};
use crate::api::{ApiContext, ApiError, FieldError};
use crate::domain::{Backend, JobKind, Role, is_valid_namespace};
use crate::storage::new_id;
use crate::storage::{NamespaceChange, NamespaceRecord, NewJob, now_millis, to_datetime};
use crate::wire::{NamespaceBody, NamespaceList, Quota, Usage};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNamespaceBody {
    /// 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit.
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub name: String,
    #[serde(default)]
    pub quota: Quota,
    /// The backend (aws or terraform) of create requests in the namespace that name none;
    /// null or absent: the server's `terraform.default_backend`.
    #[schema(value_type = Option<crate::api::schema::Backends>)]
    pub default_backend: Option<String>,
}

/// Changes the settings given; the others stay as they are. At least one is given.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateNamespaceBody {
    /// The quotas given change; those left out stay.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<QuotaChange>, nullable = false)]
    pub quota: Option<Option<QuotaChange>>,
    /// aws or terraform; null returns the namespace to the server's default.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<crate::api::schema::Backends>)]
    pub default_backend: Option<Option<String>>,
}

/// Quotas to change: a number sets one, null lifts it (no limit), one left out stays.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaChange {
    /// Most instances the namespace may hold; null for no limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 0)]
    pub instances: Option<Option<i64>>,
    /// Most vCPUs its instances may have together; null for no limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 0)]
    pub vcpus: Option<Option<i64>>,
}

/// Tells a field given as null (`Some(None)`) from one left out (`None`, by `serde(default)`).
pub(super) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

impl From<&NamespaceRecord> for NamespaceBody {
    fn from(namespace: &NamespaceRecord) -> NamespaceBody {
        NamespaceBody {
            name: namespace.name.clone(),
            quota: Quota { instances: namespace.max_instances, vcpus: namespace.max_vcpus },
            default_backend: namespace.default_backend,
            usage: Usage { instances: namespace.instances, vcpus: namespace.vcpus },
            created_at: to_datetime(namespace.created_at),
            updated_at: to_datetime(namespace.updated_at),
        }
    }
}

pub fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(list_namespaces, create_namespace))
        .routes(routes!(get_namespace, update_namespace))
        .routes(routes!(terminate_namespace))
}

/// Creates a namespace, optionally with quotas and a default backend (admins only).
#[utoipa::path(post, path = "/v1/namespaces", tag = "namespaces", operation_id = "create_namespace",
    request_body = CreateNamespaceBody,
    responses(
        (status = 201, body = NamespaceBody),
        (status = 403, body = crate::api::Problem),
        (status = 409, description = "The name is taken", body = crate::api::Problem),
        (status = 422, body = crate::api::Problem),
    ))]
pub async fn create_namespace(
    State(ctx): State<ApiContext>,
    caller: Caller,
    ValidJson(body): ValidJson<CreateNamespaceBody>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let mut errors = Vec::new();
    if !is_valid_namespace(&body.name) {
        errors.push(FieldError::new(
            "name",
            "must be 1-63 characters of lowercase letters, digits and '-', starting and ending \
             with a letter or digit",
        ));
    }
    check_quota(&body.quota, &mut errors);
    let default_backend = check_backend(&ctx, body.default_backend.as_deref(), &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let now = now_millis();
    let namespace = NamespaceRecord {
        name: body.name.clone(),
        max_instances: body.quota.instances,
        max_vcpus: body.quota.vcpus,
        default_backend,
        instances: 0,
        vcpus: 0,
        created_at: now,
        updated_at: now,
    };
    if !ctx.store.create_namespace(&namespace, &caller.actor()).await? {
        return Err(ApiError::Conflict {
            detail: format!("a namespace named '{}' exists", body.name),
            errors: vec![FieldError::new("name", "taken")],
        });
    }
    Ok((StatusCode::CREATED, Json(NamespaceBody::from(&namespace))).into_response())
}

/// The namespaces the caller holds a role in (all, for an admin), with quotas and use.
#[utoipa::path(get, path = "/v1/namespaces", tag = "namespaces", operation_id = "list_namespaces",
    responses((status = 200, body = NamespaceList)))]
pub async fn list_namespaces(
    State(ctx): State<ApiContext>,
    caller: Caller,
) -> Result<Json<NamespaceList>, ApiError> {
    let visible = caller.principal.visible_namespaces();
    let namespaces = ctx.store.list_namespaces(visible.as_deref()).await?;
    Ok(Json(NamespaceList { items: namespaces.iter().map(NamespaceBody::from).collect() }))
}

/// One namespace, with its quotas and what it uses now.
#[utoipa::path(get, path = "/v1/namespaces/{namespace}", tag = "namespaces", operation_id = "get_namespace",
    params(("namespace" = String, Path)),
    responses((status = 200, body = NamespaceBody), (status = 404, body = crate::api::Problem)))]
pub async fn get_namespace(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<NamespaceBody>, ApiError> {
    caller.require(&name, Role::Viewer, || ApiError::not_found("namespace", Key::Name(&name)))?;
    let namespace = ctx
        .store
        .find_namespace(&name)
        .await?
        .ok_or_else(|| ApiError::not_found("namespace", Key::Name(&name)))?;
    Ok(Json(NamespaceBody::from(&namespace)))
}

/// Sets a namespace's quotas or default backend (admins only); what the body leaves out stays.
/// Lowering a quota below the current use refuses new instances until the use is below it
/// again; nothing running is touched. A new default backend applies to later requests only.
#[utoipa::path(patch, path = "/v1/namespaces/{namespace}", tag = "namespaces", operation_id = "update_namespace",
    params(("namespace" = String, Path)),
    request_body = UpdateNamespaceBody,
    responses(
        (status = 200, body = NamespaceBody),
        (status = 403, body = crate::api::Problem),
        (status = 404, body = crate::api::Problem),
        (status = 422, body = crate::api::Problem),
    ))]
pub async fn update_namespace(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(name): Path<String>,
    ValidJson(body): ValidJson<UpdateNamespaceBody>,
) -> Result<Json<NamespaceBody>, ApiError> {
    caller.require_admin()?;
    let mut errors = Vec::new();
    let (max_instances, max_vcpus) = match &body.quota {
        Some(Some(quota)) => {
            if quota.instances.is_none() && quota.vcpus.is_none() {
                errors.push(FieldError::new("quota", "give instances, vcpus or both"));
            }
            (quota.instances, quota.vcpus)
        }
        Some(None) => {
            errors.push(FieldError::new(
                "quota",
                "give the quotas to change, e.g. {\"instances\": null} to lift one",
            ));
            (None, None)
        }
        None => (None, None),
    };
    let quota = Quota { instances: max_instances.flatten(), vcpus: max_vcpus.flatten() };
    check_quota(&quota, &mut errors);
    let default_backend =
        body.default_backend.as_ref().map(|name| check_backend(&ctx, name.as_deref(), &mut errors));
    if body.quota.is_none() && body.default_backend.is_none() {
        errors.push(FieldError::new(
            "body",
            "nothing to change: give quota.instances, quota.vcpus or default_backend",
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let change = NamespaceChange { max_instances, max_vcpus, default_backend };
    let namespace = ctx
        .store
        .update_namespace(&name, &change, &caller.actor())
        .await?
        .ok_or_else(|| ApiError::not_found("namespace", Key::Name(&name)))?;
    Ok(Json(NamespaceBody::from(&namespace)))
}

/// Terminates every instance of a namespace as one job (one cloud call per region and batch).
/// A namespace with nothing to terminate answers with a job that has already succeeded.
#[utoipa::path(delete, path = "/v1/namespaces/{namespace}/instances", tag = "namespaces", operation_id = "terminate_namespace",
    params(
        ("namespace" = String, Path),
        WaitParams,
    ),
    responses(
        JobAnswer,
        (status = 403, body = crate::api::Problem),
        (status = 404, body = crate::api::Problem),
        (status = 409, description = "Some instances are busy with other jobs; all are listed", body = crate::api::Problem),
    ))]
pub async fn terminate_namespace(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(name): Path<String>,
    params: QueryParams,
) -> Result<Response, ApiError> {
    params.allow_only(&["wait"])?;
    let wait = wait_param(&params)?;
    caller.require(&name, Role::Operator, || ApiError::not_found("namespace", Key::Name(&name)))?;
    if ctx.store.find_namespace(&name).await?.is_none() {
        return Err(ApiError::not_found("namespace", Key::Name(&name)));
    }
    let job = NewJob {
        id: new_id(),
        kind: JobKind::TerminateInstances,
        payload: serde_json::json!({}),
        max_attempts: ctx.max_attempts,
        actor: caller.actor(),
        namespace: Some(name.clone()),
    };
    let admission = ctx.store.insert_namespace_terminate_job(&job, &name).await?;
    admitted(&ctx, admission, &job.id, wait, StatusCode::OK).await
}

fn check_quota(quota: &Quota, errors: &mut Vec<FieldError>) {
    for (field, value) in [("quota.instances", quota.instances), ("quota.vcpus", quota.vcpus)] {
        if value.is_some_and(|value| value < 0) {
            errors.push(FieldError::new(field, "must be 0 or more, or null for no limit"));
        }
    }
}

/// The backend a namespace setting names, if it is one this server can run.
fn check_backend(
    ctx: &ApiContext,
    name: Option<&str>,
    errors: &mut Vec<FieldError>,
) -> Option<Backend> {
    let name = name?;
    let backend = match name.parse::<Backend>() {
        Ok(backend) => backend,
        Err(unknown) => {
            errors.push(FieldError::new("default_backend", unknown.to_string()));
            return None;
        }
    };
    if backend == Backend::Terraform && !ctx.terraform_available {
        errors.push(FieldError::new("default_backend", TERRAFORM_UNAVAILABLE));
    }
    Some(backend)
}
