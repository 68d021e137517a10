//! Row types shared by both dialects, and their conversion into storage records.

use crate::storage::{DriftRecord, InstanceRecord, JobRecord, OrphanRecord, StorageError};

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
                               created_at, updated_at, started_at, finished_at, launch_started_at";

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
