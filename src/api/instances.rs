//! `/v1/instances`: create, list, get, and the lifecycle actions, single and in bulk.
//!
//! Every mutating route stores its job in the same transaction as the change it records and
//! answers `202` with the job; `?wait=SECONDS` (up to 60) holds the answer until the job ends.
//! An `Idempotency-Key` header makes a retried request return the job of the first one.

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::admission::{
    IdempotencyHeader, JobAnswer, JobCreated, TERRAFORM_UNAVAILABLE, WaitParams, admitted, replay,
};
use crate::api::auth::Caller;
use crate::api::error::Key;
use crate::api::extract::{
    ClientAddress, PageParams, QueryParams, ValidJson, encode_cursor, page_param, wait_param,
};
use crate::api::{ApiContext, ApiError, FieldError};
use crate::cloud::CloudError;
use crate::domain::{
    Action, Backend, CreateRequest, IngressRequest, InstanceState, JobKind, LaunchSpec, Role,
    check_name_and_tags, ssh_command,
};
use crate::jobs::{CreatePayload, TagPayload};
use crate::storage::{
    Admission, IdempotencyKey, InstanceFilter, InstanceRecord, NewJob, new_id, now_millis,
    to_datetime,
};
use crate::wire::{InstanceBody, InstancePage};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Most ids one bulk action may name.
const MAX_BULK_IDS: usize = 1000;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInstancesBody {
    /// Name of the instance; for several, use `name_prefix`.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub name: Option<String>,
    /// Names instances `<prefix>-1` … `<prefix>-<count>`.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,59}$")]
    pub name_prefix: Option<String>,
    /// How many instances to create (default 1, at most the policy's `max_count`).
    #[schema(minimum = 1)]
    pub count: Option<i64>,
    /// Region (default: the policy's `default_region`).
    pub region: Option<String>,
    /// An AMI id, `ami-` and 1-32 letters or digits.
    #[schema(pattern = "^ami-[A-Za-z0-9]{1,32}$")]
    pub ami: Option<String>,
    pub instance_type: Option<String>,
    /// Root volume size in GiB (default from the policy).
    pub storage_gb: Option<i64>,
    /// CPU credit mode for burstable types (default: the policy's first allowed mode).
    #[schema(value_type = Option<crate::api::schema::CpuCreditModes>)]
    pub cpu_credits: Option<String>,
    /// Existing EC2 key pair for SSH: 1-255 printable ASCII characters.
    #[schema(pattern = "^[ -~]{1,255}$")]
    pub key_name: Option<String>,
    #[schema(max_items = 5)]
    pub security_group_ids: Option<Vec<String>>,
    /// Script or cloud-init data run at first boot (plain text, not base64).
    pub user_data: Option<String>,
    pub tags: Option<BTreeMap<String, String>>,
    /// Namespace (default `default`).
    pub namespace: Option<String>,
    /// Traffic to let in. corral creates a security group with these rules for the request,
    /// tagged like the instances, and deletes it when its last instance is terminated.
    #[schema(max_items = 20)]
    pub ingress: Option<Vec<IngressBody>>,
}

/// One rule of the security group corral creates for a request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IngressBody {
    /// Port to open, 1-65535.
    #[schema(minimum = 1, maximum = 65535)]
    pub port: Option<i64>,
    /// `tcp` (default) or `udp`.
    #[schema(pattern = "^(tcp|udp)$")]
    pub protocol: Option<String>,
    /// Address range allowed in, e.g. `203.0.113.0/24`; `caller` means the address this request
    /// came from, alone (/32).
    pub cidr: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkActionBody {
    #[schema(value_type = crate::api::schema::Actions)]
    pub action: String,
    /// corral ids, EC2 instance ids (`i-…`) or names of live instances, 1 to 1000.
    #[schema(min_items = 1, max_items = 1000)]
    pub ids: Vec<String>,
}

impl From<&InstanceRecord> for InstanceBody {
    fn from(instance: &InstanceRecord) -> InstanceBody {
        InstanceBody {
            id: instance.id.clone(),
            cloud_id: instance.cloud_id.clone(),
            name: instance.name.clone(),
            namespace: instance.namespace.clone(),
            region: instance.region.clone(),
            ami: instance.ami.clone(),
            instance_type: instance.instance_type.clone(),
            storage_gb: instance.storage_gb,
            state: instance.state.to_string(),
            public_ip: instance.public_ip.clone(),
            private_ip: instance.private_ip.clone(),
            key_name: instance.key_name.clone(),
            ssh_command: ssh_command(
                instance.key_name.as_deref(),
                instance.public_ip.as_deref(),
                instance.login_user.as_deref(),
            ),
            tags: instance.tags.clone(),
            security_groups: instance.security_groups.clone(),
            backend: instance.backend.to_string(),
            active_job_id: instance.active_job_id.clone(),
            created_at: to_datetime(instance.created_at),
            updated_at: to_datetime(instance.updated_at),
        }
    }
}

pub fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(create_instances, list_instances))
        .routes(routes!(act_on_instances))
        .routes(routes!(get_instance, update_instance, terminate_instance))
        .routes(routes!(start_instance))
        .routes(routes!(stop_instance))
        .routes(routes!(reboot_instance))
        .routes(routes!(refresh_instance))
        .routes(routes!(list_drift))
}

/// Creates `count` instances as one job, after checking the request against the policy.
#[utoipa::path(post, path = "/v1/instances", tag = "instances", operation_id = "create_instances",
    request_body = CreateInstancesBody,
    params(
        WaitParams,
        ("backend" = inline(Option<crate::api::schema::Backends>), Query, description = "aws (native AWS API; awscli is its older name) or terraform; default: the namespace's default_backend, else terraform.default_backend"),
    ),
    responses(
        JobCreated,
        (status = 400, body = crate::api::Problem),
        (status = 403, body = crate::api::Problem),
        (status = 404, description = "No such namespace", body = crate::api::Problem),
        (status = 413, body = crate::api::Problem),
        (status = 422, description = "The request breaks the policy (every violation is listed) or a quota of its namespace", body = crate::api::Problem),
    ))]
pub async fn create_instances(
    State(ctx): State<ApiContext>,
    ClientAddress(client): ClientAddress,
    caller: Caller,
    params: QueryParams,
    idempotency: IdempotencyHeader,
    ValidJson(body): ValidJson<CreateInstancesBody>,
) -> Result<Response, ApiError> {
    params.allow_only(&["wait", "backend"])?;
    let wait = wait_param(&params)?;
    let named = params.one("backend")?;
    let named = named
        .map(|name| {
            name.parse::<Backend>().map_err(|err| ApiError::bad_field("backend", err.to_string()))
        })
        .transpose()?;
    let namespace = body.namespace.clone().unwrap_or_else(|| "default".to_string());
    caller.require(&namespace, Role::Operator, || {
        ApiError::not_found("namespace", Key::Name(&namespace))
    })?;
    // An unknown namespace is refused when the job is stored, after the policy's checks.
    let namespace_default = ctx.store.namespace_default_backend(&namespace).await?;
    let backend = named.or(namespace_default).unwrap_or(ctx.default_backend);
    if backend == Backend::Terraform && !ctx.terraform_available {
        let chosen_by = match named {
            Some(_) => String::new(),
            None => format!(" (namespace '{namespace}' defaults to it)"),
        };
        return Err(ApiError::bad_field(
            "backend",
            format!("{TERRAFORM_UNAVAILABLE}{chosen_by}; use backend=aws"),
        ));
    }
    // The request as sent: a retry replays its job even if the namespace's default changed.
    let fingerprinted = serde_json::json!({ "backend": named.map(Backend::as_str), "body": &body });
    let key = idempotency.with_request(&caller, "POST", "/v1/instances", Some(&fingerprinted));
    if let Some(replay) = replay(&ctx, key.as_ref(), wait, StatusCode::CREATED).await? {
        return Ok(replay);
    }
    let request = CreateRequest {
        name: body.name,
        name_prefix: body.name_prefix,
        count: body.count,
        region: body.region,
        ami: body.ami,
        instance_type: body.instance_type,
        storage_gb: body.storage_gb,
        cpu_credits: body.cpu_credits,
        key_name: body.key_name,
        security_group_ids: body.security_group_ids.unwrap_or_default(),
        user_data: body.user_data,
        tags: body.tags.unwrap_or_default(),
        namespace: body.namespace,
        ingress: body
            .ingress
            .unwrap_or_default()
            .into_iter()
            .map(|rule| IngressRequest {
                port: rule.port,
                protocol: rule.protocol,
                cidr: rule.cidr,
            })
            .collect(),
        caller_ip: Some(client),
    };
    let mut spec = ctx.policy.check_request(&request).map_err(|violations| {
        ApiError::Validation(
            violations.into_iter().map(|v| FieldError::new(v.field, v.message)).collect(),
        )
    })?;
    let vcpus = vcpus_of(&ctx, &spec).await?;
    // Numbered names go on from the highest number held in the namespace, so that a second
    // `name_prefix` request adds web-3 and web-4 to web-1 and web-2. A concurrent request that
    // took those numbers first makes this one number again, a few times.
    let mut tries = if request.name_prefix.is_some() { 3 } else { 1 };
    loop {
        tries -= 1;
        if let Some(prefix) = &request.name_prefix {
            spec.names = numbered(&ctx, &spec.namespace, prefix, spec.names.len()).await?;
        }
        let job_id = new_id();
        let now = now_millis();
        let instances: Vec<InstanceRecord> = (0..spec.names.len())
            .map(|idx| InstanceRecord {
                backend,
                ..InstanceRecord::desired(&spec, &job_id, idx, vcpus, now)
            })
            .collect();
        let payload = CreatePayload {
            spec: spec.clone(),
            client_token: uuid::Uuid::new_v4().to_string(),
            backend,
        };
        let job = NewJob {
            id: job_id,
            kind: JobKind::CreateInstances,
            payload: serde_json::to_value(&payload).expect("payload serializes"),
            max_attempts: ctx.max_attempts,
            actor: caller.actor(),
            namespace: Some(spec.namespace.clone()),
        };
        let admission = ctx.store.insert_create_job(&job, &instances, key.as_ref()).await?;
        if matches!(admission, Admission::NamesTaken { .. }) && tries > 0 {
            continue;
        }
        return admitted(&ctx, admission, &job.id, wait, StatusCode::CREATED).await;
    }
}

/// `count` names `<prefix>-<n>`, numbered on from the highest `n` held in `namespace`; a
/// numbering that would make a name corral refuses (past 64 characters) is refused, naming
/// the prefix.
async fn numbered(
    ctx: &ApiContext,
    namespace: &str,
    prefix: &str,
    count: usize,
) -> Result<Vec<String>, ApiError> {
    let highest = ctx.store.highest_number(namespace, prefix).await?;
    let names: Option<Vec<String>> = (1..=count as u64)
        .map(|n| highest.checked_add(n).map(|number| format!("{prefix}-{number}")))
        .collect();
    match names {
        Some(names) if names.iter().all(|name| crate::domain::is_valid_instance_name(name)) => {
            Ok(names)
        }
        _ => Err(ApiError::Validation(vec![FieldError::new(
            "name_prefix",
            format!(
                "numbering on from {prefix}-{highest} in namespace '{namespace}' would make \
                 names longer than 64 characters; choose a shorter prefix"
            ),
        )])),
    }
}

/// vCPUs of the requested instance type. A namespace with a vCPU quota needs the number now,
/// from the cloud if the catalog has not cached it, to admit the request; elsewhere a request
/// does not wait for the cloud (the create job looks the type up anyway and records the
/// number), so that requests are accepted while the cloud is unreachable.
async fn vcpus_of(ctx: &ApiContext, spec: &LaunchSpec) -> Result<i64, ApiError> {
    let (region, instance_type) = (spec.region.as_str(), spec.instance_type.as_str());
    if let Some(facts) = ctx.catalog.cached_instance_type(region, instance_type) {
        return Ok(i64::from(facts.vcpus));
    }
    let namespace = ctx.store.find_namespace(&spec.namespace).await?;
    if namespace.is_none_or(|namespace| namespace.max_vcpus.is_none()) {
        return Ok(0);
    }
    match ctx.catalog.instance_type(region, instance_type).await {
        Ok(facts) => Ok(i64::from(facts.vcpus)),
        Err(CloudError::Rejected { message, .. }) => {
            Err(ApiError::Validation(vec![FieldError::new("instance_type", message)]))
        }
        Err(err) => Err(ApiError::Unavailable(format!(
            "namespace '{}' has a vCPU quota, and the vCPUs of '{instance_type}' could not be \
             looked up: {err}",
            spec.namespace
        ))),
    }
}

/// Instances, newest first, filtered by state, namespace, name and tags; the live ones (not
/// terminated, not failed) unless a state or `all=true` says otherwise.
#[utoipa::path(get, path = "/v1/instances", tag = "instances", operation_id = "list_instances",
    params(
        ("state" = inline(Option<crate::api::schema::InstanceStates>), Query, description = "Only instances in this state; without it, terminated and failed instances are left out unless all=true"),
        ("all" = Option<bool>, Query, description = "With no state: list terminated and failed instances too (default false)"),
        ("namespace" = Option<String>, Query),
        ("name" = Option<String>, Query, description = "Exact name"),
        ("tag" = inline(Option<Vec<crate::api::schema::TagFilter>>), Query, description = "KEY:VALUE; repeat for several (all must match)"),
        PageParams,
    ),
    responses((status = 200, body = InstancePage), (status = 400, body = crate::api::Problem)))]
pub async fn list_instances(
    State(ctx): State<ApiContext>,
    caller: Caller,
    params: QueryParams,
) -> Result<Json<InstancePage>, ApiError> {
    params.allow_only(&["state", "all", "namespace", "name", "tag", "limit", "cursor"])?;
    let mut filter = InstanceFilter {
        visible: caller.principal.visible_namespaces(),
        state: params.parsed::<InstanceState>("state")?,
        ended_too: params.boolean("all")?.unwrap_or(false),
        namespace: params.one("namespace")?.map(str::to_string),
        name: params.one("name")?.map(str::to_string),
        tags: Vec::new(),
    };
    for tag in params.all("tag") {
        let Some((key, value)) = tag.split_once(':') else {
            return Err(ApiError::bad_field("tag", format!("'{tag}' is not KEY:VALUE")));
        };
        filter.tags.push((key.to_string(), value.to_string()));
    }
    let page = ctx.store.list_instances(&filter, &page_param(&params)?).await?;
    Ok(Json(InstancePage {
        items: page.items.iter().map(InstanceBody::from).collect(),
        next_cursor: page.next_after.as_deref().map(encode_cursor),
    }))
}

/// One instance, by corral id, EC2 instance id, or name.
#[utoipa::path(get, path = "/v1/instances/{id}", tag = "instances", operation_id = "get_instance",
    params(("id" = String, Path, description = "corral id, EC2 instance id (i-…), or the name of a live instance")),
    responses((status = 200, body = InstanceBody), (status = 404, body = crate::api::Problem),
        (status = 409, description = "The name is shared by several instances the caller sees", body = crate::api::Problem)))]
pub async fn get_instance(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<InstanceBody>, ApiError> {
    let instance = visible_instance(&ctx, &caller, &id).await?;
    Ok(Json(InstanceBody::from(&instance)))
}

macro_rules! single_action {
    ($handler:ident, $method:ident, $path:literal, $action:expr, $summary:literal) => {
        #[doc = $summary]
        #[utoipa::path($method, path = $path, tag = "instances", operation_id = stringify!($handler),
            params(
                ("id" = String, Path, description = "corral id, EC2 instance id (i-…), or the name of a live instance"),
                WaitParams,
            ),
            responses(
                JobAnswer,
                (status = 403, body = crate::api::Problem),
                (status = 404, body = crate::api::Problem),
                (status = 409, description = "The instance's state does not allow the action, or another job owns it", body = crate::api::Problem),
            ))]
        pub async fn $handler(
            State(ctx): State<ApiContext>,
            caller: Caller,
            Path(id): Path<String>,
            params: QueryParams,
            idempotency: IdempotencyHeader,
        ) -> Result<Response, ApiError> {
            params.allow_only(&["wait"])?;
            let wait = wait_param(&params)?;
            let path = format!("/v1/instances/{id}/{}", $action.as_str());
            let key = idempotency.with_request(&caller, "POST", &path, None);
            let kind = JobKind::for_action($action);
            enqueue_instances_job(&ctx, &caller, kind, vec![id], wait, key).await
        }
    };
}

single_action!(
    start_instance,
    post,
    "/v1/instances/{id}/start",
    Action::Start,
    "Starts a stopped instance."
);
single_action!(
    stop_instance,
    post,
    "/v1/instances/{id}/stop",
    Action::Stop,
    "Stops a running instance."
);
single_action!(
    reboot_instance,
    post,
    "/v1/instances/{id}/reboot",
    Action::Reboot,
    "Reboots a running instance."
);
single_action!(
    terminate_instance,
    delete,
    "/v1/instances/{id}",
    Action::Terminate,
    "Terminates an instance; its record stays, with state `terminated`."
);

/// Applies one action to many instances as one job (one cloud call per region).
#[utoipa::path(post, path = "/v1/instances/actions", tag = "instances", operation_id = "act_on_instances",
    request_body = BulkActionBody,
    params(WaitParams),
    responses(
        JobAnswer,
        (status = 403, body = crate::api::Problem),
        (status = 404, description = "Some ids are unknown; all are listed", body = crate::api::Problem),
        (status = 409, description = "Some instances cannot take the action now; all are listed", body = crate::api::Problem),
        (status = 422, body = crate::api::Problem),
    ))]
pub async fn act_on_instances(
    State(ctx): State<ApiContext>,
    caller: Caller,
    params: QueryParams,
    idempotency: IdempotencyHeader,
    ValidJson(body): ValidJson<BulkActionBody>,
) -> Result<Response, ApiError> {
    params.allow_only(&["wait"])?;
    let wait = wait_param(&params)?;
    let fingerprinted = serde_json::to_value(&body).expect("body serializes");
    let key =
        idempotency.with_request(&caller, "POST", "/v1/instances/actions", Some(&fingerprinted));
    let action: Action = body
        .action
        .parse()
        .map_err(|err: String| ApiError::Validation(vec![FieldError::new("action", err)]))?;
    if body.ids.is_empty() || body.ids.len() > MAX_BULK_IDS {
        return Err(ApiError::Validation(vec![FieldError::new(
            "ids",
            format!("must list 1 to {MAX_BULK_IDS} instance ids"),
        )]));
    }
    enqueue_instances_job(&ctx, &caller, JobKind::for_action(action), body.ids, wait, key).await
}

/// Describes an instance again and records what the cloud reports, noting drift.
#[utoipa::path(post, path = "/v1/instances/{id}/refresh", tag = "instances", operation_id = "refresh_instance",
    params(
        ("id" = String, Path, description = "corral id, EC2 instance id (i-…), or the name of a live instance"),
        WaitParams,
    ),
    responses(
        JobAnswer,
        (status = 403, body = crate::api::Problem),
        (status = 404, body = crate::api::Problem),
    ))]
pub async fn refresh_instance(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(id): Path<String>,
    params: QueryParams,
    idempotency: IdempotencyHeader,
) -> Result<Response, ApiError> {
    params.allow_only(&["wait"])?;
    let wait = wait_param(&params)?;
    let key =
        idempotency.with_request(&caller, "POST", &format!("/v1/instances/{id}/refresh"), None);
    enqueue_instances_job(&ctx, &caller, JobKind::RefreshInstances, vec![id], wait, key).await
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateInstanceBody {
    /// New name (the EC2 `Name` tag).
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub name: Option<String>,
    /// Tags to set: a value sets one, null removes it, and a tag left out stays.
    pub tags: Option<BTreeMap<String, Option<String>>>,
}

/// Renames an instance or changes its tags (what the body leaves out stays). corral records the change (with old and new
/// values in the audit log) and a job applies it to the cloud.
#[utoipa::path(patch, path = "/v1/instances/{id}", tag = "instances", operation_id = "update_instance",
    request_body = UpdateInstanceBody,
    params(
        ("id" = String, Path, description = "corral id, EC2 instance id (i-…), or the name of a live instance"),
        WaitParams,
    ),
    responses(
        JobAnswer,
        (status = 403, body = crate::api::Problem),
        (status = 404, body = crate::api::Problem),
        (status = 409, description = "The instance is busy with another job, or not in the cloud", body = crate::api::Problem),
        (status = 422, body = crate::api::Problem),
    ))]
pub async fn update_instance(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(id): Path<String>,
    params: QueryParams,
    ValidJson(body): ValidJson<UpdateInstanceBody>,
) -> Result<Response, ApiError> {
    params.allow_only(&["wait"])?;
    let wait = wait_param(&params)?;
    let instance = visible_instance(&ctx, &caller, &id).await?;
    caller.require(&instance.namespace, Role::Operator, || {
        ApiError::not_found("instance", Key::Id(&id))
    })?;
    if body.name.is_none() && body.tags.is_none() {
        return Err(ApiError::Validation(vec![FieldError::new(
            "body",
            "give name, tags, or both",
        )]));
    }
    let name = body.name.unwrap_or_else(|| instance.name.clone());
    let mut tags = instance.tags.clone();
    crate::domain::merge(&mut tags, body.tags.into_iter().flatten());
    let violations = check_name_and_tags(&name, &tags);
    if !violations.is_empty() {
        return Err(ApiError::Validation(
            violations.into_iter().map(|v| FieldError::new(v.field, v.message)).collect(),
        ));
    }
    let removed: Vec<String> =
        instance.tags.keys().filter(|key| !tags.contains_key(*key)).cloned().collect();
    let payload = TagPayload { name: name.clone(), tags: tags.clone(), removed };
    let job = NewJob {
        id: new_id(),
        kind: JobKind::TagInstances,
        payload: serde_json::to_value(&payload).expect("payload serializes"),
        max_attempts: ctx.max_attempts,
        actor: caller.actor(),
        namespace: Some(instance.namespace.clone()),
    };
    let admission = match ctx.store.update_instance(&job, &instance, &name, &tags).await? {
        Ok(_) => Admission::Stored,
        Err(refused) => refused,
    };
    admitted(&ctx, admission, &job.id, wait, StatusCode::OK).await
}

#[derive(Serialize, ToSchema)]
pub struct DriftBody {
    pub id: String,
    pub instance_id: String,
    pub at: DateTime<Utc>,
    /// What changed, e.g. `state`.
    pub field: String,
    pub old_value: Option<String>,
    pub new_value: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DriftList {
    pub items: Vec<DriftBody>,
}

/// Changes found on an instance that corral did not make, newest first.
#[utoipa::path(get, path = "/v1/instances/{id}/drift", tag = "instances", operation_id = "list_drift",
    params(("id" = String, Path, description = "corral id, EC2 instance id (i-…), or the name of a live instance")),
    responses((status = 200, body = DriftList), (status = 404, body = crate::api::Problem)))]
pub async fn list_drift(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DriftList>, ApiError> {
    let instance = visible_instance(&ctx, &caller, &id).await?;
    let items = ctx
        .store
        .drift_of(&instance.id)
        .await?
        .into_iter()
        .map(|drift| DriftBody {
            id: drift.id,
            instance_id: drift.instance_id,
            at: to_datetime(drift.at),
            field: drift.field,
            old_value: drift.old_value,
            new_value: drift.new_value,
        })
        .collect();
    Ok(Json(DriftList { items }))
}

/// Resolves ids (corral or cloud), then stores a job of `kind` for them: for an action, only if
/// every instance can take it.
pub async fn enqueue_instances_job(
    ctx: &ApiContext,
    caller: &Caller,
    kind: JobKind,
    ids: Vec<String>,
    wait: Option<std::time::Duration>,
    key: Option<IdempotencyKey>,
) -> Result<Response, ApiError> {
    if let Some(replay) = replay(ctx, key.as_ref(), wait, StatusCode::OK).await? {
        return Ok(replay);
    }
    let requested: BTreeSet<String> = ids.into_iter().collect();
    let requested: Vec<String> = requested.into_iter().collect();
    let found = resolve_instances(ctx, caller, &requested).await?;
    for instance in &found {
        caller.require(&instance.namespace, Role::Operator, || {
            ApiError::not_found("instance", Key::Id(&instance.id))
        })?;
    }
    let instance_ids: Vec<String> =
        found.iter().map(|i| i.id.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    let namespaces: BTreeSet<&str> = found.iter().map(|i| i.namespace.as_str()).collect();
    let job = NewJob {
        id: new_id(),
        kind,
        payload: serde_json::json!({}),
        max_attempts: ctx.max_attempts,
        actor: caller.actor(),
        namespace: match namespaces.into_iter().collect::<Vec<_>>().as_slice() {
            [only] => Some(only.to_string()),
            _ => None,
        },
    };
    let admission =
        ctx.store.insert_instances_job(&job, kind.action(), &instance_ids, key.as_ref()).await?;
    admitted(ctx, admission, &job.id, wait, StatusCode::OK).await
}

/// The instance `reference` (a corral id, an EC2 id, or a name) means, if the caller may see
/// it; otherwise it does not exist, as far as the caller can tell.
pub async fn visible_instance(
    ctx: &ApiContext,
    caller: &Caller,
    reference: &str,
) -> Result<InstanceRecord, ApiError> {
    let mut found = resolve_instances(ctx, caller, &[reference.to_string()]).await?;
    Ok(found.pop().expect("one reference resolves to one instance"))
}

/// The instances `references` mean, one for each, among those the caller may see (what it
/// may not see does not exist for it): a corral id or an EC2 id names its instance; a name,
/// the one live instance of that name the caller sees. A name several visible live instances
/// share is a `409` listing them; references that name nothing are a `404` listing them.
pub async fn resolve_instances(
    ctx: &ApiContext,
    caller: &Caller,
    references: &[String],
) -> Result<Vec<InstanceRecord>, ApiError> {
    let mut found = ctx.store.find_instances(references).await?;
    found.retain(|instance| caller.sees(&instance.namespace));
    let mut resolved: Vec<InstanceRecord> = Vec::with_capacity(references.len());
    let mut unknown = Vec::new();
    for reference in references {
        let by_id = found
            .iter()
            .find(|i| &i.id == reference || i.cloud_id.as_deref() == Some(reference.as_str()));
        if let Some(instance) = by_id {
            resolved.push(instance.clone());
            continue;
        }
        let named: Vec<&InstanceRecord> =
            found.iter().filter(|i| &i.name == reference && i.state.holds_name()).collect();
        match named.as_slice() {
            [] => unknown.push(reference.as_str()),
            [instance] => resolved.push((*instance).clone()),
            several => {
                let candidates: Vec<String> = several
                    .iter()
                    .map(|i| format!("{} (namespace {}, {})", i.id, i.namespace, i.state))
                    .collect();
                return Err(ApiError::Conflict {
                    detail: format!(
                        "'{reference}' names {} instances you can see: {}; use an id",
                        several.len(),
                        candidates.join(", ")
                    ),
                    errors: Vec::new(),
                });
            }
        }
    }
    match unknown.as_slice() {
        [] => {}
        [only] => return Err(ApiError::not_found("instance", Key::Reference(only))),
        several => {
            return Err(ApiError::NotFound(format!(
                "no instances with ids or names: {}",
                several.join(", ")
            )));
        }
    }
    resolved.sort_by(|a, b| a.id.cmp(&b.id));
    resolved.dedup_by(|a, b| a.id == b.id);
    Ok(resolved)
}
