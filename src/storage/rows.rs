//! Row types shared by both dialects, and their conversion into storage records.

use std::collections::BTreeMap;

use crate::domain::{Backend, Role};
use crate::storage::{
    ApiKeyRecord, AuditRecord, ClaimedDelivery, DeliveryRecord, DriftRecord, InstanceRecord,
    JobRecord, NamespaceRecord, OrphanRecord, StorageError, SubscriptionRecord, UserRecord,
};

#[derive(sqlx::FromRow)]
pub struct InstanceRow {
    id: String,
    cloud_id: Option<String>,
    name: String,
    namespace: String,
    region: String,
    ami: String,
    instance_type: String,
    storage_gb: i64,
    state: String,
    public_ip: Option<String>,
    private_ip: Option<String>,
    key_name: Option<String>,
    tags: String,
    backend: String,
    launch_index: i64,
    created_by_job: String,
    active_job_id: Option<String>,
    vcpus: i64,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<InstanceRow> for InstanceRecord {
    type Error = StorageError;

    fn try_from(row: InstanceRow) -> Result<Self, Self::Error> {
        Ok(InstanceRecord {
            state: row.state.parse().map_err(StorageError::Corrupt)?,
            tags: serde_json::from_str(&row.tags)
                .map_err(|err| StorageError::Corrupt(format!("tags of {}: {err}", row.id)))?,
            id: row.id,
            cloud_id: row.cloud_id,
            name: row.name,
            namespace: row.namespace,
            region: row.region,
            ami: row.ami,
            instance_type: row.instance_type,
            storage_gb: row.storage_gb,
            public_ip: row.public_ip,
            private_ip: row.private_ip,
            key_name: row.key_name,
            backend: row.backend,
            launch_index: row.launch_index,
            created_by_job: row.created_by_job,
            active_job_id: row.active_job_id,
            vcpus: row.vcpus,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub struct JobRow {
    id: String,
    kind: String,
    status: String,
    payload: String,
    attempts: i64,
    max_attempts: i64,
    run_at: i64,
    error: Option<String>,
    created_at: i64,
    updated_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    launch_started_at: Option<i64>,
    transient_failures: i64,
    transient_since: Option<i64>,
    actor: String,
    user_id: Option<String>,
    namespace: Option<String>,
}

impl TryFrom<JobRow> for JobRecord {
    type Error = StorageError;

    fn try_from(row: JobRow) -> Result<Self, Self::Error> {
        Ok(JobRecord {
            kind: row.kind.parse().map_err(StorageError::Corrupt)?,
            status: row.status.parse().map_err(StorageError::Corrupt)?,
            payload: serde_json::from_str(&row.payload)
                .map_err(|err| StorageError::Corrupt(format!("payload of {}: {err}", row.id)))?,
            id: row.id,
            attempts: row.attempts,
            max_attempts: row.max_attempts,
            run_at: row.run_at,
            error: row.error,
            created_at: row.created_at,
            updated_at: row.updated_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            launch_started_at: row.launch_started_at,
            transient_failures: row.transient_failures,
            transient_since: row.transient_since,
            actor: row.actor,
            user_id: row.user_id,
            namespace: row.namespace,
        })
    }
}

#[derive(sqlx::FromRow)]
pub struct DriftRow {
    id: String,
    instance_id: String,
    at: i64,
    field: String,
    old_value: Option<String>,
    new_value: Option<String>,
}

#[derive(sqlx::FromRow)]
pub struct OrphanRow {
    cloud_id: String,
    region: String,
    state: String,
    ami: Option<String>,
    instance_type: Option<String>,
    public_ip: Option<String>,
    private_ip: Option<String>,
    tags: String,
    first_seen: i64,
    last_seen: i64,
}

impl TryFrom<OrphanRow> for OrphanRecord {
    type Error = StorageError;

    fn try_from(row: OrphanRow) -> Result<Self, Self::Error> {
        Ok(OrphanRecord {
            state: row.state.parse().map_err(StorageError::Corrupt)?,
            tags: serde_json::from_str(&row.tags)
                .map_err(|err| StorageError::Corrupt(format!("tags of {}: {err}", row.cloud_id)))?,
            cloud_id: row.cloud_id,
            region: row.region,
            ami: row.ami,
            instance_type: row.instance_type,
            public_ip: row.public_ip,
            private_ip: row.private_ip,
            first_seen: row.first_seen,
            last_seen: row.last_seen,
        })
    }
}

pub fn convert<R, T: TryFrom<R, Error = StorageError>>(
    rows: Vec<R>,
) -> Result<Vec<T>, StorageError> {
    rows.into_iter().map(T::try_from).collect()
}

pub const JOB_COLUMNS: &str = "id, kind, status, payload, attempts, max_attempts, run_at, error, \
                               created_at, updated_at, started_at, finished_at, launch_started_at, actor, \
                               user_id, namespace, transient_failures, transient_since";

impl From<DriftRow> for DriftRecord {
    fn from(row: DriftRow) -> DriftRecord {
        DriftRecord {
            id: row.id,
            instance_id: row.instance_id,
            at: row.at,
            field: row.field,
            old_value: row.old_value,
            new_value: row.new_value,
        }
    }
}

#[derive(sqlx::FromRow)]
pub struct UserRow {
    pub id: String,
    username: String,
    password_hash: String,
    is_admin: bool,
    credentials_version: i64,
    must_change_password: bool,
    created_at: i64,
    updated_at: i64,
}

pub const USER_COLUMNS: &str = "id, username, password_hash, is_admin, credentials_version, \
                                must_change_password, created_at, updated_at";

/// Users with their roles, from `(user_id, namespace, role)` bindings.
pub fn with_roles(
    rows: Vec<UserRow>,
    bindings: Vec<(String, String, String)>,
) -> Result<Vec<UserRecord>, StorageError> {
    let mut roles: BTreeMap<String, BTreeMap<String, Role>> = BTreeMap::new();
    for (user_id, namespace, role) in bindings {
        let role = role.parse().map_err(StorageError::Corrupt)?;
        roles.entry(user_id).or_default().insert(namespace, role);
    }
    Ok(rows
        .into_iter()
        .map(|row| UserRecord {
            roles: roles.remove(&row.id).unwrap_or_default(),
            id: row.id,
            username: row.username,
            password_hash: row.password_hash,
            admin: row.is_admin,
            credentials_version: row.credentials_version,
            must_change_password: row.must_change_password,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
        .collect())
}

#[derive(sqlx::FromRow)]
pub struct ApiKeyRow {
    id: String,
    user_id: String,
    username: String,
    name: String,
    prefix: String,
    key_hash: String,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    created_at: i64,
}

pub const API_KEY_SELECT: &str = "SELECT api_keys.id, api_keys.user_id, users.username, \
     api_keys.name, api_keys.prefix, api_keys.key_hash, api_keys.expires_at, api_keys.revoked_at, \
     api_keys.created_at FROM api_keys JOIN users ON users.id = api_keys.user_id";

impl From<ApiKeyRow> for ApiKeyRecord {
    fn from(row: ApiKeyRow) -> ApiKeyRecord {
        ApiKeyRecord {
            id: row.id,
            user_id: row.user_id,
            username: row.username,
            name: row.name,
            prefix: row.prefix,
            key_hash: row.key_hash,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
            created_at: row.created_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub struct NamespaceRow {
    name: String,
    max_instances: Option<i64>,
    max_vcpus: Option<i64>,
    default_backend: Option<String>,
    created_at: i64,
    updated_at: i64,
    instances: i64,
    vcpus: i64,
}

impl From<NamespaceRow> for NamespaceRecord {
    fn from(row: NamespaceRow) -> NamespaceRecord {
        NamespaceRecord {
            name: row.name,
            max_instances: row.max_instances,
            max_vcpus: row.max_vcpus,
            // The column's CHECK admits backend names only.
            default_backend: row.default_backend.as_deref().and_then(Backend::parse),
            instances: row.instances,
            vcpus: row.vcpus,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub struct AuditRow {
    id: i64,
    at: i64,
    actor: String,
    action: String,
    target: String,
    namespace: Option<String>,
    old_value: Option<String>,
    new_value: Option<String>,
    request_id: Option<String>,
}

impl TryFrom<AuditRow> for AuditRecord {
    type Error = StorageError;

    fn try_from(row: AuditRow) -> Result<Self, Self::Error> {
        let parse = |value: Option<String>| {
            value
                .map(|text| serde_json::from_str(&text))
                .transpose()
                .map_err(|err| StorageError::Corrupt(format!("audit event {}: {err}", row.id)))
        };
        Ok(AuditRecord {
            old_value: parse(row.old_value)?,
            new_value: parse(row.new_value)?,
            id: row.id,
            at: row.at,
            actor: row.actor,
            action: row.action,
            target: row.target,
            namespace: row.namespace,
            request_id: row.request_id,
        })
    }
}

#[derive(sqlx::FromRow)]
pub struct SubscriptionRow {
    id: String,
    channel: String,
    namespace: Option<String>,
    target: String,
    events: String,
    secret: Option<String>,
    created_by: String,
    created_at: i64,
}

impl TryFrom<SubscriptionRow> for SubscriptionRecord {
    type Error = StorageError;

    fn try_from(row: SubscriptionRow) -> Result<Self, Self::Error> {
        Ok(SubscriptionRecord {
            channel: row.channel.parse().map_err(StorageError::Corrupt)?,
            events: serde_json::from_str(&row.events)
                .map_err(|err| StorageError::Corrupt(format!("events of {}: {err}", row.id)))?,
            id: row.id,
            namespace: row.namespace,
            target: row.target,
            secret: row.secret,
            created_by: row.created_by,
            created_at: row.created_at,
        })
    }
}

/// A delivery joined with its event's payload.
#[derive(sqlx::FromRow)]
pub struct DeliveryRow {
    id: String,
    event_id: String,
    channel: String,
    target: String,
    subscription_id: Option<String>,
    namespace: Option<String>,
    status: String,
    attempts: i64,
    next_attempt_at: i64,
    last_error: Option<String>,
    delivered_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
    payload: String,
}

impl TryFrom<DeliveryRow> for DeliveryRecord {
    type Error = StorageError;

    fn try_from(row: DeliveryRow) -> Result<Self, Self::Error> {
        Ok(DeliveryRecord {
            channel: row.channel.parse().map_err(StorageError::Corrupt)?,
            status: row.status.parse().map_err(StorageError::Corrupt)?,
            notification: serde_json::from_str(&row.payload)
                .map_err(|err| StorageError::Corrupt(format!("event {}: {err}", row.event_id)))?,
            id: row.id,
            event_id: row.event_id,
            target: row.target,
            subscription_id: row.subscription_id,
            namespace: row.namespace,
            attempts: row.attempts,
            next_attempt_at: row.next_attempt_at,
            last_error: row.last_error,
            delivered_at: row.delivered_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// A claimed delivery with its webhook's secret.
#[derive(sqlx::FromRow)]
pub struct ClaimedRow {
    #[sqlx(flatten)]
    delivery: DeliveryRow,
    secret: Option<String>,
}

impl TryFrom<ClaimedRow> for ClaimedDelivery {
    type Error = StorageError;

    fn try_from(row: ClaimedRow) -> Result<Self, Self::Error> {
        Ok(ClaimedDelivery { delivery: row.delivery.try_into()?, secret: row.secret })
    }
}
