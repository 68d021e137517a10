//! `/v1/orphans`: instances tagged by corral that corral has no record of, as the reconciler last
//! saw them, and the two ways to resolve one: adopt it, or adopt and terminate it.
//! `POST /v1/reconcile` runs a reconcile pass now, as a job.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::admission::{IdempotencyHeader, JobAnswer, WaitParams};
use crate::api::auth::Caller;
use crate::api::error::{Key, no_such};
use crate::api::extract::{QueryParams, wait_param};
use crate::api::instances::enqueue_instances_job;
use crate::api::{ApiContext, ApiError, FieldError};
use crate::cloud::{TAG_JOB_ID, TAG_NAMESPACE};
use crate::domain::{JobKind, is_valid_namespace};
use crate::storage::{InstanceRecord, OrphanRecord, now_millis, to_datetime};
use crate::wire::InstanceBody;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Serialize, ToSchema)]
pub struct OrphanBody {
    /// EC2 instance id.
    pub cloud_id: String,
    pub region: String,
    pub state: String,
    pub name: Option<String>,
    pub namespace: Option<String>,
    /// The corral job that launched it, from its `corral:job-id` tag.
    pub job_id: Option<String>,
    pub ami: Option<String>,
    pub instance_type: Option<String>,
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct OrphanList {
    pub items: Vec<OrphanBody>,
}

impl From<&OrphanRecord> for OrphanBody {
    fn from(orphan: &OrphanRecord) -> OrphanBody {
        OrphanBody {
            cloud_id: orphan.cloud_id.clone(),
            region: orphan.region.clone(),
            state: orphan.state.to_string(),
            name: orphan.tags.get("Name").cloned(),
            namespace: orphan.tags.get(TAG_NAMESPACE).cloned(),
            job_id: orphan.tags.get(TAG_JOB_ID).cloned(),
            ami: orphan.ami.clone(),
            instance_type: orphan.instance_type.clone(),
            public_ip: orphan.public_ip.clone(),
            private_ip: orphan.private_ip.clone(),
            tags: orphan.tags.clone(),
            first_seen_at: to_datetime(orphan.first_seen),
            last_seen_at: to_datetime(orphan.last_seen),
        }
    }
}

pub fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(list_orphans))
        .routes(routes!(adopt_orphan))
        .routes(routes!(terminate_orphan))
        .routes(routes!(reconcile_now))
}

/// Runs a reconcile pass over every instance now, as a job: state and IPs refreshed, drift and
/// missing instances recorded, orphans listed.
#[utoipa::path(
    post,
    path = "/v1/reconcile",
    tag = "orphans",
    operation_id = "reconcile_now",
    params(WaitParams),
    responses(JobAnswer,)
)]
pub async fn reconcile_now(
    State(ctx): State<ApiContext>,
    caller: Caller,
    params: QueryParams,
    idempotency: IdempotencyHeader,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    params.allow_only(&["wait"])?;
    let wait = wait_param(&params)?;
    let key = idempotency.with_request(&caller, "POST", "/v1/reconcile", None);
    enqueue_instances_job(&ctx, &caller, JobKind::Reconcile, Vec::new(), wait, key).await
}

/// Instances tagged `corral:*` that corral does not know, as of the last reconcile pass.
#[utoipa::path(get, path = "/v1/orphans", tag = "orphans", operation_id = "list_orphans",
    responses((status = 200, body = OrphanList)))]
pub async fn list_orphans(
    State(ctx): State<ApiContext>,
    caller: Caller,
) -> Result<Json<OrphanList>, ApiError> {
    caller.require_admin()?;
    let items = ctx.store.list_orphans().await?.iter().map(OrphanBody::from).collect();
    Ok(Json(OrphanList { items }))
}

/// Makes corral manage an orphan: it gets an instance record in the namespace the admin names
/// (`?namespace=`; default: the one its `corral:namespace` tag names, which anyone with access
/// to the cloud account can write), refreshed by the reconciler. The namespace must exist.
#[utoipa::path(post, path = "/v1/orphans/{cloud_id}/adopt", tag = "orphans", operation_id = "adopt_orphan",
    params(("cloud_id" = String, Path, description = "EC2 instance id"),
        ("namespace" = Option<String>, Query, description = "The namespace it joins (default: its corral:namespace tag's, else default)")),
    responses((status = 201, body = InstanceBody), (status = 404, body = crate::api::Problem),
        (status = 422, description = "The namespace is malformed or does not exist", body = crate::api::Problem)))]
pub async fn adopt_orphan(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(cloud_id): Path<String>,
    params: QueryParams,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    params.allow_only(&["namespace"])?;
    let instance = adopt(&ctx, &caller, &cloud_id, params.one("namespace")?).await?;
    Ok((StatusCode::CREATED, Json(InstanceBody::from(&instance))).into_response())
}

/// Adopts an orphan and terminates it, as one job.
#[utoipa::path(post, path = "/v1/orphans/{cloud_id}/terminate", tag = "orphans", operation_id = "terminate_orphan",
    params(
        ("cloud_id" = String, Path, description = "EC2 instance id"),
        WaitParams,
        ("namespace" = Option<String>, Query, description = "The namespace it joins first (default: its corral:namespace tag's, else default)"),
    ),
    responses(
        JobAnswer,
        (status = 404, body = crate::api::Problem),
        (status = 422, description = "The namespace is malformed or does not exist", body = crate::api::Problem),
    ))]
pub async fn terminate_orphan(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(cloud_id): Path<String>,
    params: QueryParams,
    idempotency: IdempotencyHeader,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    params.allow_only(&["wait", "namespace"])?;
    let wait = wait_param(&params)?;
    let instance = adopt(&ctx, &caller, &cloud_id, params.one("namespace")?).await?;
    let path = format!("/v1/orphans/{cloud_id}/terminate");
    let key = idempotency.with_request(&caller, "POST", &path, None);
    let ids = vec![instance.id];
    enqueue_instances_job(&ctx, &caller, JobKind::TerminateInstances, ids, wait, key).await
}

/// Adopts orphan `cloud_id` into `namespace` (default: its tag's), which must exist.
async fn adopt(
    ctx: &ApiContext,
    caller: &Caller,
    cloud_id: &str,
    namespace: Option<&str>,
) -> Result<InstanceRecord, ApiError> {
    let not_found = || ApiError::not_found("orphan", Key::CloudId(cloud_id));
    let orphans = ctx.store.list_orphans().await?;
    let orphan = orphans.iter().find(|o| o.cloud_id == cloud_id).ok_or_else(not_found)?;
    let now = now_millis();
    let tags = &orphan.tags;
    let namespace = namespace
        .map(str::to_string)
        .or_else(|| tags.get(TAG_NAMESPACE).cloned())
        .unwrap_or_else(|| "default".to_string());
    let refuse =
        |message: String| ApiError::Validation(vec![FieldError::new("namespace", message)]);
    if !is_valid_namespace(&namespace) {
        return Err(refuse(format!(
            "'{namespace}' is not a namespace name (from the orphan's corral:namespace tag unless \
             ?namespace= names one); pass ?namespace= with an existing namespace"
        )));
    }
    if ctx.store.find_namespace(&namespace).await?.is_none() {
        return Err(refuse(format!(
            "{}; create it first (POST /v1/namespaces) or pass ?namespace= with an existing one",
            no_such("namespace", Key::Name(&namespace))
        )));
    }
    // The Name tag, when it is a name corral gives and no instance of the namespace holds it;
    // else one made from the cloud id.
    let name = match tags.get("Name") {
        Some(name)
            if crate::domain::is_valid_instance_name(name)
                && !ctx.store.name_held(&namespace, name).await? =>
        {
            name.clone()
        }
        _ => format!("adopted-{}", orphan.cloud_id.trim_start_matches("i-")),
    };
    let created_by_job = tags.get(TAG_JOB_ID).cloned().unwrap_or_default();
    // Counted against the namespace's vCPU quota; 0 when the cloud cannot say now.
    let vcpus = match &orphan.instance_type {
        Some(instance_type) => ctx
            .catalog
            .instance_type(&orphan.region, instance_type)
            .await
            .map_or(0, |facts| i64::from(facts.vcpus)),
        None => 0,
    };
    let instance = InstanceRecord {
        id: crate::storage::new_id(),
        cloud_id: Some(orphan.cloud_id.clone()),
        name,
        namespace,
        region: orphan.region.clone(),
        ami: orphan.ami.clone().unwrap_or_default(),
        instance_type: orphan.instance_type.clone().unwrap_or_default(),
        // The scan does not read volumes; 0 means unknown.
        storage_gb: 0,
        state: orphan.state,
        public_ip: orphan.public_ip.clone(),
        private_ip: orphan.private_ip.clone(),
        key_name: None,
        tags: crate::domain::user_tags(tags),
        security_groups: None,
        login_user: None,
        backend: crate::domain::Backend::Aws,
        launch_index: 0,
        created_by_job,
        active_job_id: None,
        vcpus,
        created_at: now,
        updated_at: now,
    };
    ctx.store.adopt_orphan(cloud_id, &instance, &caller.actor()).await?.ok_or_else(not_found)
}
