//! Jobs: the durable queue (claims under a lease, guarded completion, retries, transient
//! failures), each job's history, idempotency keys, and named leases (one reconcile pass per
//! interval across processes).

use std::collections::BTreeMap;

use sqlx::{Any, Transaction};

use super::sql::Sql;

use super::audit::{insert_audit, insert_audits};
use super::instances::{HOLDS_NAME, InstanceRow, LIVE, insert_instance, select_by_ids};
use super::notify::notify_job_finished;
use super::{
    Actor, AuditEntry, Dialect, InstanceRecord, Millis, Page, PageRequest, SYSTEM_ACTOR,
    StorageError, Store, convert, now_millis,
};
use crate::domain::{Action, JobKind, JobStatus, StateConflict};

/// How long an `Idempotency-Key` is remembered.
pub const IDEMPOTENCY_KEY_TTL_MS: Millis = 24 * 3600 * 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    pub id: String,
    pub kind: JobKind,
    pub status: JobStatus,
    pub payload: serde_json::Value,
    pub attempts: i64,
    pub max_attempts: i64,
    pub run_at: Millis,
    pub error: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    /// When a create job first called the cloud to launch; `None` means nothing was launched.
    pub launch_started_at: Option<Millis>,
    /// Transient failures in a row (throttling, 5xx, connection errors, timeouts); they do not
    /// count against `max_attempts`.
    pub transient_failures: i64,
    /// When the first of those transient failures happened, moved later by the time the job
    /// then waited past its due time; `None` after any other outcome.
    pub transient_since: Option<Millis>,
    /// Who asked for the job.
    pub actor: String,
    /// Which of their credentials asked (`Actor::credential`).
    pub credential: Option<String>,
    /// The id of the user who asked for the job; `None` for corral's own jobs.
    pub user_id: Option<String>,
    /// The namespace the job works in; `None` when it spans several, or none.
    pub namespace: Option<String>,
}

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    /// Only jobs in these namespaces, or asked for by the user of id `own`; `None` for all.
    pub visible: Option<(Vec<String>, String)>,
}

/// A job with the instances it touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobView {
    pub job: JobRecord,
    pub instances: Vec<InstanceRecord>,
}

#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub kind: JobKind,
    pub payload: serde_json::Value,
    pub max_attempts: i64,
    /// Who asked for the job; the audit log records the request under this name.
    pub actor: Actor,
    /// The namespace the job works in; `None` when it spans several, or none.
    pub namespace: Option<String>,
}

/// How an attempt of a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    Succeeded,
    /// Parked for good; instances that never launched are marked `failed`.
    Failed {
        error: String,
    },
    /// Queued again to run at `run_at`.
    Retry {
        error: String,
        run_at: Millis,
    },
    /// Queued again to run at `run_at` without counting the attempt: it did not fail (a
    /// shutdown, or a job waiting for another). The job keeps the error it had; a run of
    /// transient failures ends.
    HandBack {
        reason: String,
        run_at: Millis,
    },
    /// Queued again to run at `run_at` after a transient failure: the attempt is not counted,
    /// the job's run of transient failures grows by one (and starts now if it had none).
    Transient {
        error: String,
        run_at: Millis,
    },
}

/// One step, error or outcome in the life of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEvent {
    pub seq: i64,
    pub at: Millis,
    pub attempt: i64,
    /// `step`, `error` or `outcome`.
    pub kind: String,
    pub message: String,
}

/// A client's `Idempotency-Key` and the fingerprint of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    pub fingerprint: String,
}

/// What happened to a request that asked to store a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Stored,
    /// The idempotency key was seen before with the same request: this is its job.
    Replay {
        job_id: String,
    },
    /// The idempotency key was seen before with a different request.
    KeyMismatch,
    /// Some instances cannot take the action now; nothing was stored.
    Conflicts(Vec<StateConflict>),
    /// The namespace named does not exist; nothing was stored.
    UnknownNamespace(String),
    /// Admitting the request would exceed a quota of its namespace; nothing was stored.
    OverQuota(QuotaExceeded),
    /// Live instances of the namespace have these names already; nothing was stored.
    NamesTaken {
        namespace: String,
        names: Vec<String>,
    },
}

/// Which quota a request would exceed, its limit and the use before the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaExceeded {
    pub namespace: String,
    /// `instances` or `vcpus`.
    pub quota: &'static str,
    pub limit: i64,
    pub used: i64,
    pub requested: i64,
}

#[derive(sqlx::FromRow)]
pub(super) struct JobRow {
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
    credential: Option<String>,
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
            credential: row.credential,
            user_id: row.user_id,
            namespace: row.namespace,
        })
    }
}

pub(super) const JOB_COLUMNS: &str = "id, kind, status, payload, attempts, max_attempts, run_at, error, \
                               created_at, updated_at, started_at, finished_at, launch_started_at, actor, \
                               credential, user_id, namespace, transient_failures, transient_since";

impl Store {
    /// Stores the desired instances and the job that creates them, atomically, unless `key`
    /// was used before.
    pub async fn insert_create_job(
        &self,
        job: &NewJob,
        instances: &[InstanceRecord],
        key: Option<&IdempotencyKey>,
    ) -> Result<Admission, StorageError> {
        let mut tx = match begin_job(&self.pool, job, key).await? {
            Ok(tx) => tx,
            Err(known) => return Ok(known),
        };
        if let Some(namespace) = &job.namespace
            && let Some(refused) = admit_to_namespace(&mut tx, namespace, instances).await?
        {
            tx.rollback().await?;
            return Ok(refused);
        }
        for instance in instances {
            insert_instance(&mut tx, instance).await?;
            link_instance(&mut tx, &job.id, &instance.id).await?;
            let entry = AuditEntry::new(job.kind.audit_action(), &instance.id)
                .namespace(&instance.namespace)
                .new_value(serde_json::json!({
                    "job_id": job.id,
                    "name": instance.name,
                    "region": instance.region,
                    "ami": instance.ami,
                    "instance_type": instance.instance_type,
                    "storage_gb": instance.storage_gb,
                }));
            insert_audit(&mut tx, &job.actor, &entry).await?;
        }
        tx.commit().await?;
        Ok(Admission::Stored)
    }

    /// Stores a job for `instance_ids`. With `action`, only if every instance is idle and in a
    /// state the action is allowed from, and the job then owns them until it ends; otherwise
    /// nothing is stored and the conflicts are returned, per instance. Without `action` (a
    /// refresh) the instances are linked to the job but not owned by it.
    pub async fn insert_instances_job(
        &self,
        job: &NewJob,
        action: Option<Action>,
        instance_ids: &[String],
        key: Option<&IdempotencyKey>,
    ) -> Result<Admission, StorageError> {
        let mut tx = match begin_job(&self.pool, job, key).await? {
            Ok(tx) => tx,
            Err(known) => return Ok(known),
        };
        if let Some(action) = action {
            // Only idle instances in an allowed state are taken, so that two concurrent
            // requests cannot both act on one instance.
            let mut update = Sql::new("UPDATE instances SET active_job_id = ");
            update.push_bind(&job.id).push(", updated_at = ").push_bind(now_millis());
            update.push(" WHERE active_job_id IS NULL AND state IN (");
            let mut states = update.separated(", ");
            for state in action.allowed_from() {
                states.push_bind(state.as_str());
            }
            update.push(") AND id IN (");
            let mut ids = update.separated(", ");
            for id in instance_ids {
                ids.push_bind(id);
            }
            update.push(")");
            let taken = update.build().execute(&mut *tx).await?.rows_affected();
            if taken as usize != instance_ids.len() {
                tx.rollback().await?;
                let rows: Vec<InstanceRow> =
                    select_by_ids(instance_ids).build_query_as().fetch_all(&self.pool).await?;
                let conflicts = convert::<_, InstanceRecord>(rows)?
                    .into_iter()
                    .filter_map(|instance| {
                        let reason = match &instance.active_job_id {
                            Some(busy) => {
                                format!("busy with job {busy}; retry when it has finished")
                            }
                            None => action.conflict(instance.state)?,
                        };
                        Some(StateConflict { instance_id: instance.id, reason })
                    })
                    .collect();
                return Ok(Admission::Conflicts(conflicts));
            }
        }
        let mut instance_ids = instance_ids.to_vec();
        if job.kind == JobKind::RefreshInstances {
            // One pending refresh per instance at most: those already waiting for one
            // are left to it, and a request whose every instance is waiting gets that
            // job back.
            let (waiting, pending) = pending_refreshes(&mut tx, &instance_ids).await?;
            instance_ids.retain(|id| !waiting.contains(id));
            if instance_ids.is_empty()
                && let Some(job_id) = pending
            {
                tx.rollback().await?;
                return Ok(Admission::Replay { job_id });
            }
        }
        for id in &instance_ids {
            link_instance(&mut tx, &job.id, id).await?;
        }
        audit_job_request(&mut tx, job, &instance_ids).await?;
        tx.commit().await?;
        Ok(Admission::Stored)
    }

    /// The fingerprint and job of an unexpired idempotency key.
    pub async fn find_idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<(String, String)>, StorageError> {
        let not_before = now_millis() - IDEMPOTENCY_KEY_TTL_MS;
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT fingerprint, job_id FROM idempotency_keys WHERE key = $1 AND created_at >= $2",
        )
        .bind(key)
        .bind(not_before)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row)
    }

    /// Appends to a job's history.
    pub async fn append_job_event(
        &self,
        job_id: &str,
        attempt: i64,
        kind: &str,
        message: &str,
    ) -> Result<(), StorageError> {
        let mut tx = self.pool.begin().await?;
        insert_job_event(&mut tx, job_id, attempt, kind, message).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A job's history after event `after` (0 for all of it).
    pub async fn job_events(
        &self,
        job_id: &str,
        after: i64,
    ) -> Result<Vec<JobEvent>, StorageError> {
        let rows: Vec<(i64, i64, i64, String, String)> = sqlx::query_as(
            "SELECT seq, at, attempt, kind, message FROM job_events \
             WHERE job_id = $1 AND seq > $2 ORDER BY seq",
        )
        .bind(job_id)
        .bind(after)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(seq, at, attempt, kind, message)| JobEvent { seq, at, attempt, kind, message })
            .collect())
    }

    /// Ids of jobs that are queued or running.
    pub async fn unfinished_job_ids(&self) -> Result<Vec<String>, StorageError> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM jobs WHERE status IN ('queued', 'running')")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    pub async fn get_job(&self, id: &str) -> Result<Option<JobView>, StorageError> {
        let Some(job) = self.job_record(id).await? else { return Ok(None) };
        let mut views = self.with_instances(vec![job]).await?;
        Ok(views.pop())
    }

    pub async fn list_jobs(
        &self,
        filter: &JobFilter,
        page: &PageRequest,
    ) -> Result<Page<JobView>, StorageError> {
        let rows = self.job_page_rows(filter, page).await?;
        let Page { items, next_after } = Page::from_rows(rows, page.limit, |row| &row.id);
        Ok(Page { items: self.with_instances(items).await?, next_after })
    }

    /// Claims the next due job, or a running job whose lease expired, for `worker`.
    pub async fn claim_job(
        &self,
        worker: &str,
        lease_until: Millis,
    ) -> Result<Option<JobView>, StorageError> {
        let Some(job) = self.claim_job_record(worker, now_millis(), lease_until).await? else {
            return Ok(None);
        };
        Ok(self.with_instances(vec![job]).await?.pop())
    }

    /// Attaches to each job its instances, in one query for all the jobs.
    async fn with_instances(&self, jobs: Vec<JobRecord>) -> Result<Vec<JobView>, StorageError> {
        let job_ids: Vec<String> = jobs.iter().map(|job| job.id.clone()).collect();
        let mut by_job: BTreeMap<String, Vec<InstanceRecord>> = BTreeMap::new();
        for (job_id, instance) in self.instances_of_jobs(&job_ids).await? {
            by_job.entry(job_id).or_default().push(instance);
        }
        Ok(jobs
            .into_iter()
            .map(|job| {
                let instances = by_job.remove(&job.id).unwrap_or_default();
                JobView { job, instances }
            })
            .collect())
    }

    async fn instances_of_jobs(
        &self,
        job_ids: &[String],
    ) -> Result<Vec<(String, InstanceRecord)>, StorageError> {
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        #[derive(sqlx::FromRow)]
        struct Row {
            job_id: String,
            #[sqlx(flatten)]
            instance: InstanceRow,
        }
        let mut query = Sql::new(
            "SELECT job_instances.job_id, instances.* FROM job_instances \
             JOIN instances ON instances.id = job_instances.instance_id \
             WHERE job_instances.job_id IN (",
        );
        let mut list = query.separated(", ");
        for id in job_ids {
            list.push_bind(id);
        }
        query.push(") ORDER BY instances.launch_index, instances.id");
        let rows: Vec<Row> = query.build_query_as().fetch_all(&self.pool).await?;
        rows.into_iter()
            .map(|row| Ok((row.job_id, InstanceRecord::try_from(row.instance)?)))
            .collect()
    }

    /// Extends the lease of a job `worker` holds; false when the lease was lost.
    pub async fn renew_lease(
        &self,
        job_id: &str,
        worker: &str,
        lease_until: Millis,
    ) -> Result<bool, StorageError> {
        let result = sqlx::query(
            "UPDATE jobs SET lease_expires_at = $1 \
             WHERE id = $2 AND locked_by = $3 AND status = 'running'",
        )
        .bind(lease_until)
        .bind(job_id)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Ends an attempt of a job `worker` holds and appends `events` (kind, message) to its
    /// history, atomically; false (and no change) when the lease was lost.
    pub async fn finish_job(
        &self,
        job_id: &str,
        worker: &str,
        outcome: &JobOutcome,
        attempt: i64,
        events: &[(&str, String)],
    ) -> Result<bool, StorageError> {
        let recipients = &self.recipients;
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        let (status, error, run_at, finished_at) = match outcome {
            JobOutcome::Succeeded => ("succeeded", None, None, Some(now)),
            JobOutcome::Failed { error } => ("failed", Some(error.as_str()), None, Some(now)),
            JobOutcome::Retry { error, run_at } => {
                ("queued", Some(error.as_str()), Some(*run_at), None)
            }
            JobOutcome::HandBack { run_at, .. } => ("queued", None, Some(*run_at), None),
            JobOutcome::Transient { error, run_at } => {
                ("queued", Some(error.as_str()), Some(*run_at), None)
            }
        };
        // A handed-back or transiently failed attempt gives back the attempt its claim
        // counted. A transient failure extends the job's run of them; any other outcome,
        // a hand-back included, ends it.
        let (keep_error, uncounted, transient) = match outcome {
            JobOutcome::HandBack { .. } => (1i64, 1i64, 0i64),
            JobOutcome::Transient { .. } => (0, 1, 1),
            _ => (0, 0, 0),
        };
        let result = sqlx::query(
            "UPDATE jobs SET status = $1, \
             error = CASE WHEN $8 = 1 THEN error ELSE $2 END, \
             attempts = attempts - $9, run_at = COALESCE($3, run_at), \
             transient_failures = CASE WHEN $10 = 1 THEN transient_failures + 1 ELSE 0 END, \
             transient_since = CASE WHEN $10 = 1 THEN COALESCE(transient_since, $5) \
                 ELSE NULL END, \
             finished_at = $4, locked_by = NULL, lease_expires_at = NULL, updated_at = $5 \
             WHERE id = $6 AND locked_by = $7 AND status = 'running'",
        )
        .bind(status)
        .bind(error)
        .bind(run_at)
        .bind(finished_at)
        .bind(now)
        .bind(job_id)
        .bind(worker)
        .bind(keep_error)
        .bind(uncounted)
        .bind(transient)
        .execute(&mut *tx)
        .await?;
        if result.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        for (kind, message) in events {
            insert_job_event(&mut tx, job_id, attempt, kind, message).await?;
        }
        if finished_at.is_some() {
            if matches!(outcome, JobOutcome::Failed { .. }) {
                // Instances this job was creating that never reached the cloud did not launch.
                let failed: Vec<(String, String, String)> = sqlx::query_as(
                    "UPDATE instances SET updated_at = $1 \
                     WHERE created_by_job = $2 AND cloud_id IS NULL AND state <> 'failed' \
                     RETURNING id, namespace, state",
                )
                .bind(now)
                .bind(job_id)
                .fetch_all(&mut *tx)
                .await?;
                for (id, namespace, old_state) in failed {
                    sqlx::query("UPDATE instances SET state = 'failed' WHERE id = $1")
                        .bind(&id)
                        .execute(&mut *tx)
                        .await?;
                    let entry = AuditEntry::new("instance.state", &id)
                        .namespace(&namespace)
                        .old(serde_json::json!({ "state": old_state }))
                        .new_value(serde_json::json!({ "state": "failed" }));
                    insert_audit(&mut tx, &Actor::system(), &entry).await?;
                }
            }
            sqlx::query(
                "UPDATE instances SET active_job_id = NULL, updated_at = $1 WHERE active_job_id = $2",
            )
            .bind(now)
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
            notify_job_finished(&mut tx, job_id, error, recipients).await?;
            if self.dialect == Dialect::Postgres {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(super::JOB_FINISHED)
                    .bind(job_id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Records, before the call, that a create job `worker` holds is about to launch.
    pub async fn mark_launch_started(
        &self,
        job_id: &str,
        worker: &str,
    ) -> Result<bool, StorageError> {
        let now = now_millis();
        let marked = sqlx::query(
            "UPDATE jobs SET launch_started_at = COALESCE(launch_started_at, $1) \
             WHERE id = $2 AND locked_by = $3 AND status = 'running'",
        )
        .bind(now)
        .bind(job_id)
        .bind(worker)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(marked == 1)
    }

    /// Records what a create job learnt of its instances from the cloud: the vCPUs of their
    /// type, and the user their AMI is logged in to as.
    pub async fn record_launch_facts(
        &self,
        job_id: &str,
        vcpus: i64,
        login_user: &str,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE instances SET vcpus = $1, login_user = $2 WHERE created_by_job = $3 \
             AND (vcpus <> $1 OR login_user IS DISTINCT FROM $2)",
        )
        .bind(vcpus)
        .bind(login_user)
        .bind(job_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Stores a job that terminates every instance of `namespace` that is not terminated yet;
    /// a namespace with nothing to terminate gets a job that has already succeeded.
    pub async fn insert_namespace_terminate_job(
        &self,
        job: &NewJob,
        namespace: &str,
    ) -> Result<Admission, StorageError> {
        let mut tx = match begin_job(&self.pool, job, None).await? {
            Ok(tx) => tx,
            Err(known) => return Ok(known),
        };
        let now = now_millis();
        let mut take = Sql::new("UPDATE instances SET active_job_id = ");
        take.push_bind(&job.id).push(", updated_at = ").push_bind(now);
        take.push(" WHERE namespace = ").push_bind(namespace);
        take.push(" AND active_job_id IS NULL AND state IN (");
        let mut states = take.separated(", ");
        for state in Action::Terminate.allowed_from() {
            states.push_bind(state.as_str());
        }
        take.push(") RETURNING id");
        let taken: Vec<(String,)> = take.build_query_as().fetch_all(&mut *tx).await?;
        let busy: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT id, active_job_id FROM instances WHERE namespace = $1 \
             AND active_job_id IS NOT NULL AND active_job_id <> $2 AND {LIVE} ORDER BY id"
        ))
        .bind(namespace)
        .bind(&job.id)
        .fetch_all(&mut *tx)
        .await?;
        if !busy.is_empty() {
            tx.rollback().await?;
            let conflicts = busy
                .into_iter()
                .map(|(instance_id, busy)| StateConflict {
                    instance_id,
                    reason: format!("busy with job {busy}; retry when it has finished"),
                })
                .collect();
            return Ok(Admission::Conflicts(conflicts));
        }
        let ids: Vec<String> = taken.into_iter().map(|(id,)| id).collect();
        for id in &ids {
            link_instance(&mut tx, &job.id, id).await?;
        }
        let entry = AuditEntry::new("namespace.terminate", namespace)
            .namespace(namespace)
            .new_value(serde_json::json!({ "job_id": job.id, "instances": ids.len() }));
        insert_audit(&mut tx, &job.actor, &entry).await?;
        audit_job_request(&mut tx, job, &ids).await?;
        if ids.is_empty() {
            sqlx::query(
                "UPDATE jobs SET status = 'succeeded', started_at = $1, finished_at = $1 WHERE id = $2",
            )
            .bind(now)
            .bind(&job.id)
            .execute(&mut *tx)
            .await?;
            let message = format!("namespace {namespace} has no instances to terminate");
            insert_job_event(&mut tx, &job.id, 0, "outcome", &message).await?;
        }
        tx.commit().await?;
        Ok(Admission::Stored)
    }

    /// Takes or renews the lease `name` for `holder` until `until`; false while another holder
    /// has it.
    pub async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        until: Millis,
    ) -> Result<bool, StorageError> {
        let now = now_millis();
        let taken = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
             expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at < $4",
        )
        .bind(name)
        .bind(holder)
        .bind(until)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(taken == 1)
    }

    /// Gives lease `name` up, if `holder` holds it, so that another process may take it at its next
    /// try.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StorageError> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The payloads of the jobs with these ids, by id, in one query per 500 ids; unknown ids
    /// are left out.
    pub async fn job_payloads(
        &self,
        ids: &[String],
    ) -> Result<std::collections::HashMap<String, serde_json::Value>, StorageError> {
        let mut payloads = std::collections::HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let mut query = Sql::new("SELECT id, payload FROM jobs WHERE id IN (");
            let mut list = query.separated(", ");
            for id in chunk {
                list.push_bind(id);
            }
            query.push(")");
            let rows: Vec<(String, String)> = query.build_query_as().fetch_all(&self.pool).await?;
            for (id, payload) in rows {
                let payload = serde_json::from_str(&payload)
                    .map_err(|err| StorageError::Corrupt(format!("payload of {id}: {err}")))?;
                payloads.insert(id, payload);
            }
        }
        Ok(payloads)
    }

    async fn job_record(&self, id: &str) -> Result<Option<JobRecord>, StorageError> {
        let row: Option<JobRow> =
            sqlx::query_as(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(JobRecord::try_from).transpose()
    }

    async fn job_page_rows(
        &self,
        filter: &JobFilter,
        page: &PageRequest,
    ) -> Result<Vec<JobRecord>, StorageError> {
        let mut query = Sql::new(format!("SELECT {JOB_COLUMNS} FROM jobs WHERE 1 = 1"));
        if let Some(status) = filter.status {
            query.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some((namespaces, own)) = &filter.visible {
            query.push(" AND (user_id = ").push_bind(own);
            if !namespaces.is_empty() {
                query.push(" OR namespace IN (");
                let mut list = query.separated(", ");
                for name in namespaces {
                    list.push_bind(name);
                }
                query.push(")");
            }
            query.push(")");
        }
        if let Some(after) = &page.after {
            query.push(" AND id < ").push_bind(after);
        }
        query.push(" ORDER BY id DESC LIMIT ").push_bind(page.limit + 1);
        let rows: Vec<JobRow> = query.build_query_as().fetch_all(&self.pool).await?;
        convert(rows)
    }

    async fn claim_job_record(
        &self,
        worker: &str,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Option<JobRecord>, StorageError> {
        // One statement. SQLite runs it under its single write lock; PostgreSQL locks the row it
        // picks and skips rows other workers have locked. Either way no two workers claim a row.
        // Fair between namespaces: the due job of the namespace with the fewest jobs
        // running goes first, so that no namespace waits behind another's backlog; within
        // a namespace, the oldest due job. The running jobs are counted once, from the
        // short `running` range of `jobs_due`. A job in a run of transient failures has
        // the time it waited past its due time (corral down, other jobs first) added to
        // the start of that run: the transient budget counts time spent failing only.
        let lock = match self.dialect {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE OF due SKIP LOCKED",
        };
        let row: Option<JobRow> = sqlx::query_as(&format!(
            "WITH busy AS (SELECT namespace, COUNT(*) AS running FROM jobs \
                 WHERE status = 'running' AND lease_expires_at >= $3 GROUP BY namespace) \
             UPDATE jobs SET status = 'running', locked_by = $1, lease_expires_at = $2, \
             attempts = attempts + 1, started_at = COALESCE(started_at, $3), updated_at = $3, \
             transient_since = CASE WHEN transient_since IS NOT NULL AND run_at < $3 \
                 THEN transient_since + ($3 - run_at) ELSE transient_since END \
             WHERE id = (SELECT due.id FROM jobs due \
                 LEFT JOIN busy ON busy.namespace IS NOT DISTINCT FROM due.namespace \
                 WHERE (due.status = 'queued' AND due.run_at <= $3) \
                    OR (due.status = 'running' AND due.lease_expires_at < $3) \
                 ORDER BY COALESCE(busy.running, 0), due.run_at, due.id \
                 LIMIT 1{lock}) \
             RETURNING {JOB_COLUMNS}"
        ))
        .bind(worker)
        .bind(lease_until)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.map(JobRecord::try_from).transpose()
    }
}

/// Opens the transaction that stores `job`: the job first (the key refers to it), then
/// `key`. A key seen before rolls everything back and says what it means instead.
pub(super) async fn begin_job<'a>(
    pool: &'a sqlx::Pool<Any>,
    job: &NewJob,
    key: Option<&IdempotencyKey>,
) -> Result<Result<Transaction<'a, Any>, Admission>, StorageError> {
    let mut tx = pool.begin().await?;
    insert_job(&mut tx, job).await?;
    if let Some(key) = key
        && let Some(known) = claim_idempotency_key(&mut tx, key, &job.id).await?
    {
        tx.rollback().await?;
        return Ok(Err(known));
    }
    Ok(Ok(tx))
}

pub(super) async fn insert_job(
    tx: &mut Transaction<'_, Any>,
    job: &NewJob,
) -> Result<(), StorageError> {
    let now = now_millis();
    sqlx::query(
        "INSERT INTO jobs (id, kind, status, payload, attempts, max_attempts, run_at, \
         created_at, updated_at, actor, user_id, namespace, credential) \
         VALUES ($1, $2, 'queued', $3, 0, $4, $5, $5, $5, $6, $7, $8, $9)",
    )
    .bind(&job.id)
    .bind(job.kind.as_str())
    .bind(job.payload.to_string())
    .bind(job.max_attempts)
    .bind(now)
    .bind(&job.actor.name)
    .bind(&job.actor.user_id)
    .bind(&job.namespace)
    .bind(&job.actor.credential)
    .execute(&mut **tx)
    .await?;
    if Dialect::of(tx) == Dialect::Postgres {
        // Delivered to every listening process when the transaction commits.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(super::JOB_QUEUED)
            .bind(&job.id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

pub(super) async fn insert_job_event(
    tx: &mut Transaction<'_, Any>,
    job_id: &str,
    attempt: i64,
    kind: &str,
    message: &str,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO job_events (job_id, seq, at, attempt, kind, message) \
         SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5 FROM job_events WHERE job_id = $1",
    )
    .bind(job_id)
    .bind(now_millis())
    .bind(attempt)
    .bind(kind)
    .bind(message)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records `key` for `job_id`, or returns what an earlier use of the key means. An expired key
/// is replaced.
pub(super) async fn claim_idempotency_key(
    tx: &mut Transaction<'_, Any>,
    key: &IdempotencyKey,
    job_id: &str,
) -> Result<Option<Admission>, StorageError> {
    let now = now_millis();
    sqlx::query("DELETE FROM idempotency_keys WHERE key = $1 AND created_at < $2")
        .bind(&key.key)
        .bind(now - crate::storage::IDEMPOTENCY_KEY_TTL_MS)
        .execute(&mut **tx)
        .await?;
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (key, fingerprint, job_id, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(&key.key)
    .bind(&key.fingerprint)
    .bind(job_id)
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(None);
    }
    let (fingerprint, job_id): (String, String) =
        sqlx::query_as("SELECT fingerprint, job_id FROM idempotency_keys WHERE key = $1")
            .bind(&key.key)
            .fetch_one(&mut **tx)
            .await?;
    Ok(Some(if fingerprint == key.fingerprint {
        Admission::Replay { job_id }
    } else {
        Admission::KeyMismatch
    }))
}

pub(super) async fn link_instance(
    tx: &mut Transaction<'_, Any>,
    job_id: &str,
    instance_id: &str,
) -> Result<(), StorageError> {
    sqlx::query("INSERT INTO job_instances (job_id, instance_id) VALUES ($1, $2)")
        .bind(job_id)
        .bind(instance_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Checks that `instances` fit the quotas of `namespace`, counting what the namespace
/// holds and is creating now; `Some` says why not. Locks the namespace row first, so
/// that concurrent requests are admitted one after the other.
pub(super) async fn admit_to_namespace(
    tx: &mut Transaction<'_, Any>,
    namespace: &str,
    instances: &[InstanceRecord],
) -> Result<Option<Admission>, StorageError> {
    let quota: Option<(Option<i64>, Option<i64>)> = sqlx::query_as(
        "UPDATE namespaces SET updated_at = updated_at WHERE name = $1 \
         RETURNING max_instances, max_vcpus",
    )
    .bind(namespace)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((max_instances, max_vcpus)) = quota else {
        return Ok(Some(Admission::UnknownNamespace(namespace.to_string())));
    };
    let names: Vec<&str> = instances.iter().map(|instance| instance.name.as_str()).collect();
    let taken = live_names_taken(tx, namespace, &names).await?;
    if !taken.is_empty() {
        return Ok(Some(Admission::NamesTaken { namespace: namespace.to_string(), names: taken }));
    }
    if max_instances.is_none() && max_vcpus.is_none() {
        return Ok(None);
    }
    let (used_instances, used_vcpus): (i64, i64) = sqlx::query_as(&format!(
        "SELECT COUNT(*), CAST(COALESCE(SUM(vcpus), 0) AS BIGINT) FROM instances \
         WHERE namespace = $1 AND {LIVE}"
    ))
    .bind(namespace)
    .fetch_one(&mut **tx)
    .await?;
    let requested_vcpus: i64 = instances.iter().map(|instance| instance.vcpus).sum();
    for (quota, limit, used, requested) in [
        ("instances", max_instances, used_instances, instances.len() as i64),
        ("vcpus", max_vcpus, used_vcpus, requested_vcpus),
    ] {
        if let Some(limit) = limit
            && used + requested > limit
        {
            return Ok(Some(Admission::OverQuota(QuotaExceeded {
                namespace: namespace.to_string(),
                quota,
                limit,
                used,
                requested,
            })));
        }
    }
    Ok(None)
}

/// Which of `names` instances of `namespace` hold already (`HOLDS_NAME`), sorted.
pub(super) async fn live_names_taken(
    tx: &mut Transaction<'_, Any>,
    namespace: &str,
    names: &[&str],
) -> Result<Vec<String>, StorageError> {
    let mut taken = Vec::new();
    for chunk in names.chunks(500) {
        let mut query =
            Sql::new(format!("SELECT name FROM instances WHERE {HOLDS_NAME} AND namespace = "));
        query.push_bind(namespace).push(" AND name IN (");
        let mut list = query.separated(", ");
        for name in chunk {
            list.push_bind(*name);
        }
        query.push(")");
        let rows: Vec<(String,)> = query.build_query_as().fetch_all(&mut **tx).await?;
        taken.extend(rows.into_iter().map(|(name,)| name));
    }
    taken.sort();
    taken.dedup();
    Ok(taken)
}

/// Audits a request that stored `job` for `instance_ids`: one event per instance, or one
/// for the job when it names none. Jobs corral stores on its own are not requests.
pub(super) async fn audit_job_request(
    tx: &mut Transaction<'_, Any>,
    job: &NewJob,
    instance_ids: &[String],
) -> Result<(), StorageError> {
    if job.actor.name == SYSTEM_ACTOR {
        return Ok(());
    }
    let job_value = serde_json::json!({ "job_id": job.id });
    if instance_ids.is_empty() {
        let mut entry = AuditEntry::new(job.kind.audit_action(), &job.id).new_value(job_value);
        entry.namespace = job.namespace.clone();
        return insert_audit(tx, &job.actor, &entry).await;
    }
    for chunk in instance_ids.chunks(500) {
        let mut query = Sql::new("SELECT id, namespace FROM instances WHERE id IN (");
        let mut list = query.separated(", ");
        for id in chunk {
            list.push_bind(id);
        }
        query.push(") ORDER BY id");
        let rows: Vec<(String, String)> = query.build_query_as().fetch_all(&mut **tx).await?;
        let entries: Vec<AuditEntry> = rows
            .iter()
            .map(|(id, namespace)| {
                AuditEntry::new(job.kind.audit_action(), id)
                    .namespace(namespace)
                    .new_value(job_value.clone())
            })
            .collect();
        insert_audits(tx, &job.actor, &entries).await?;
    }
    Ok(())
}

/// Of `instance_ids`, those a queued refresh job will refresh, and the newest such job.
/// The instance rows are locked first, so that two requests cannot both see none.
pub(super) async fn pending_refreshes(
    tx: &mut Transaction<'_, Any>,
    instance_ids: &[String],
) -> Result<(Vec<String>, Option<String>), StorageError> {
    let mut lock = select_by_ids(instance_ids);
    lock.push(Dialect::of(tx).lock_rows());
    let _: Vec<InstanceRow> = lock.build_query_as().fetch_all(&mut **tx).await?;
    let mut query = Sql::new(
        "SELECT job_instances.instance_id, jobs.id FROM job_instances \
         JOIN jobs ON jobs.id = job_instances.job_id \
         WHERE jobs.kind = 'refresh_instances' AND jobs.status = 'queued' \
         AND job_instances.instance_id IN (",
    );
    let mut ids = query.separated(", ");
    for id in instance_ids {
        ids.push_bind(id);
    }
    query.push(") ORDER BY jobs.id DESC");
    let rows: Vec<(String, String)> = query.build_query_as().fetch_all(&mut **tx).await?;
    let newest = rows.first().map(|(_, job_id)| job_id.clone());
    Ok((rows.into_iter().map(|(instance, _)| instance).collect(), newest))
}
