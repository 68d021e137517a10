//! The SQL of every storage operation, written once and instantiated per dialect by
//! `sql_store!` (in `storage::sqlite` and `storage::postgres`).
//!
//! Queries use `$N` placeholders, which both SQLite and PostgreSQL accept, and SQL both dialects
//! share; the few places where they differ ask `Dialect`. Write transactions write first (a
//! conditional `UPDATE` or an `INSERT`) so that SQLite takes its write lock at once instead of
//! upgrading a read lock later, which could fail with `SQLITE_BUSY` under contention.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// Appended to the sub-select that picks a job to claim.
    pub fn row_lock(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// Appended to a `SELECT` whose rows must stay as read until the transaction ends. SQLite
    /// needs nothing: a write transaction holds the database's only write lock.
    pub fn lock_rows(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// Opens an `EXISTS` over the key/value pairs of `instances.tags`, ending with `tag.key = `.
    pub fn tag_filter(self) -> &'static str {
        match self {
            Dialect::Sqlite => {
                " AND EXISTS (SELECT 1 FROM json_each(instances.tags) AS tag WHERE tag.key = "
            }
            Dialect::Postgres => {
                " AND EXISTS (SELECT 1 FROM jsonb_each_text(instances.tags::jsonb) AS tag(key, value) \
                 WHERE tag.key = "
            }
        }
    }
}

/// Implements every storage operation for `$store` (a struct with a `pool` of database `$db`).
macro_rules! sql_store {
    ($store:ident, $db:ident, $dialect:expr) => {
        impl $store {
            pub async fn ping(&self) -> Result<(), StorageError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

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
                    let mut update = QueryBuilder::<$db>::new("UPDATE instances SET active_job_id = ");
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

            pub async fn find_idempotency_key(
                &self,
                key: &str,
                not_before: Millis,
            ) -> Result<Option<(String, String)>, StorageError> {
                let row: Option<(String, String)> = sqlx::query_as(
                    "SELECT fingerprint, job_id FROM idempotency_keys WHERE key = $1 AND created_at >= $2",
                )
                .bind(key)
                .bind(not_before)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row)
            }

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

            pub async fn live_instances(&self) -> Result<Vec<InstanceRecord>, StorageError> {
                let rows: Vec<InstanceRow> = sqlx::query_as(
                    "SELECT * FROM instances WHERE cloud_id IS NOT NULL AND state <> 'terminated' \
                     ORDER BY region, id",
                )
                .fetch_all(&self.pool)
                .await?;
                convert(rows)
            }

            pub async fn unfinished_job_ids(&self) -> Result<Vec<String>, StorageError> {
                let rows: Vec<(String,)> =
                    sqlx::query_as("SELECT id FROM jobs WHERE status IN ('queued', 'running')")
                        .fetch_all(&self.pool)
                        .await?;
                Ok(rows.into_iter().map(|(id,)| id).collect())
            }

            pub async fn known_cloud_ids(&self, cloud_ids: &[String]) -> Result<Vec<String>, StorageError> {
                let mut known = Vec::new();
                // Stay far below SQLite's limit on bound parameters.
                for chunk in cloud_ids.chunks(500) {
                    let mut query =
                        QueryBuilder::<$db>::new("SELECT cloud_id FROM instances WHERE cloud_id IN (");
                    let mut list = query.separated(", ");
                    for id in chunk {
                        list.push_bind(id);
                    }
                    query.push(")");
                    let rows: Vec<(String,)> = query.build_query_as().fetch_all(&self.pool).await?;
                    known.extend(rows.into_iter().map(|(id,)| id));
                }
                Ok(known)
            }

            pub async fn record_reconciliation(
                &self,
                reconciliation: &Reconciliation,
                recipients: &[String],
            ) -> Result<(), StorageError> {
                let now = now_millis();
                let mut tx = self.pool.begin().await?;
                for seen in &reconciliation.observations {
                    update_observed(&mut tx, seen, now).await?;
                }
                for id in &reconciliation.missing {
                    let before: Option<(String, String)> = sqlx::query_as(
                        "UPDATE instances SET updated_at = $1 WHERE id = $2 AND state <> 'missing' \
                         RETURNING namespace, state",
                    )
                    .bind(now)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some((namespace, old_state)) = before else { continue };
                    sqlx::query("UPDATE instances SET state = 'missing', public_ip = NULL WHERE id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    let entry = AuditEntry::new("instance.state", id)
                        .namespace(&namespace)
                        .old(serde_json::json!({ "state": old_state }))
                        .new_value(serde_json::json!({ "state": "missing" }));
                    insert_audit(&mut tx, &Actor::system(), &entry).await?;
                }
                for drift in &reconciliation.drift {
                    sqlx::query(
                        "INSERT INTO drift_events (id, instance_id, at, field, old_value, new_value) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(crate::storage::new_id())
                    .bind(&drift.instance_id)
                    .bind(now)
                    .bind(&drift.field)
                    .bind(&drift.old_value)
                    .bind(&drift.new_value)
                    .execute(&mut *tx)
                    .await?;
                    let row: InstanceRow = sqlx::query_as("SELECT * FROM instances WHERE id = $1")
                        .bind(&drift.instance_id)
                        .fetch_one(&mut *tx)
                        .await?;
                    let instance = InstanceRecord::try_from(row)?;
                    let entry = AuditEntry::new("instance.drift", &drift.instance_id)
                        .namespace(&instance.namespace)
                        .old(serde_json::json!({ &drift.field: drift.old_value }))
                        .new_value(serde_json::json!({ &drift.field: drift.new_value }));
                    insert_audit(&mut tx, &Actor::system(), &entry).await?;
                    let notification = drift_notification(&instance, drift, now);
                    insert_notification(&mut tx, EventType::InstanceDrifted, &notification, recipients)
                        .await?;
                }
                if let Some((region, orphans)) = &reconciliation.orphans {
                    let mut keep = Vec::new();
                    for orphan in orphans {
                        keep.push(orphan.cloud_id.clone());
                        sqlx::query(
                            "INSERT INTO orphans (cloud_id, region, state, ami, instance_type, public_ip, \
                             private_ip, tags, first_seen, last_seen) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                             ON CONFLICT (cloud_id) DO UPDATE SET state = excluded.state, \
                             public_ip = excluded.public_ip, private_ip = excluded.private_ip, \
                             tags = excluded.tags, last_seen = excluded.last_seen",
                        )
                        .bind(&orphan.cloud_id)
                        .bind(region)
                        .bind(orphan.state.as_str())
                        .bind(&orphan.ami)
                        .bind(&orphan.instance_type)
                        .bind(&orphan.public_ip)
                        .bind(&orphan.private_ip)
                        .bind(serde_json::to_string(&orphan.tags).expect("tags serialize"))
                        .bind(now)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    }
                    let mut delete = QueryBuilder::<$db>::new("DELETE FROM orphans WHERE region = ");
                    delete.push_bind(region);
                    if !keep.is_empty() {
                        delete.push(" AND cloud_id NOT IN (");
                        let mut list = delete.separated(", ");
                        for id in &keep {
                            list.push_bind(id);
                        }
                        delete.push(")");
                    }
                    delete.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            pub async fn list_orphans(&self) -> Result<Vec<OrphanRecord>, StorageError> {
                let rows: Vec<OrphanRow> =
                    sqlx::query_as("SELECT * FROM orphans ORDER BY region, cloud_id")
                        .fetch_all(&self.pool)
                        .await?;
                convert(rows)
            }

            pub async fn adopt_orphan(
                &self,
                cloud_id: &str,
                instance: &InstanceRecord,
                actor: &Actor,
            ) -> Result<Option<InstanceRecord>, StorageError> {
                let mut tx = self.pool.begin().await?;
                let deleted = sqlx::query("DELETE FROM orphans WHERE cloud_id = $1")
                    .bind(cloud_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if deleted != 1 {
                    tx.rollback().await?;
                    return Ok(None);
                }
                // The namespace exists: the admin chose it (namespaces are never deleted).
                insert_instance(&mut tx, instance).await?;
                let entry = AuditEntry::new("orphan.adopt", &instance.id)
                    .namespace(&instance.namespace)
                    .new_value(serde_json::json!({ "cloud_id": cloud_id, "name": instance.name }));
                insert_audit(&mut tx, actor, &entry).await?;
                tx.commit().await?;
                Ok(Some(instance.clone()))
            }

            pub async fn drift_of(&self, instance_id: &str) -> Result<Vec<DriftRecord>, StorageError> {
                let rows: Vec<DriftRow> = sqlx::query_as(
                    "SELECT id, instance_id, at, field, old_value, new_value FROM drift_events \
                         WHERE instance_id = $1 ORDER BY id DESC",
                )
                .bind(instance_id)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(DriftRecord::from).collect())
            }

            pub async fn find_instances(
                &self,
                ids: &[String],
            ) -> Result<Vec<InstanceRecord>, StorageError> {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let mut query = QueryBuilder::<$db>::new("SELECT * FROM instances WHERE id IN (");
                let mut list = query.separated(", ");
                for id in ids {
                    list.push_bind(id);
                }
                query.push(") OR cloud_id IN (");
                let mut list = query.separated(", ");
                for id in ids {
                    list.push_bind(id);
                }
                query.push(") ORDER BY id");
                let rows: Vec<InstanceRow> = query.build_query_as().fetch_all(&self.pool).await?;
                convert(rows)
            }

            pub async fn list_instances(
                &self,
                filter: &InstanceFilter,
                page: &PageRequest,
            ) -> Result<Vec<InstanceRecord>, StorageError> {
                let mut query = QueryBuilder::<$db>::new("SELECT * FROM instances WHERE 1 = 1");
                if let Some(visible) = &filter.visible {
                    if visible.is_empty() {
                        return Ok(Vec::new());
                    }
                    query.push(" AND namespace IN (");
                    let mut list = query.separated(", ");
                    for name in visible {
                        list.push_bind(name);
                    }
                    query.push(")");
                }
                if let Some(state) = filter.state {
                    query.push(" AND state = ").push_bind(state.as_str());
                }
                if let Some(namespace) = &filter.namespace {
                    query.push(" AND namespace = ").push_bind(namespace);
                }
                if let Some(name) = &filter.name {
                    query.push(" AND name = ").push_bind(name);
                }
                for (key, value) in &filter.tags {
                    query.push(
                        $dialect.tag_filter(),
                    );
                    query.push_bind(key).push(" AND tag.value = ").push_bind(value).push(")");
                }
                if let Some(after) = &page.after {
                    query.push(" AND id < ").push_bind(after);
                }
                query.push(" ORDER BY id DESC LIMIT ").push_bind(page.limit + 1);
                let rows: Vec<InstanceRow> = query.build_query_as().fetch_all(&self.pool).await?;
                convert(rows)
            }

            pub async fn get_job(&self, id: &str) -> Result<Option<JobRecord>, StorageError> {
                let row: Option<JobRow> =
                    sqlx::query_as(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?;
                row.map(JobRecord::try_from).transpose()
            }

            pub async fn list_jobs(
                &self,
                filter: &JobFilter,
                page: &PageRequest,
            ) -> Result<Vec<JobRecord>, StorageError> {
                let mut query =
                    QueryBuilder::<$db>::new(format!("SELECT {JOB_COLUMNS} FROM jobs WHERE 1 = 1"));
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

            pub async fn instances_of_jobs(
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
                let mut query = QueryBuilder::<$db>::new(
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

            pub async fn claim_job(
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
                let lock = match $dialect {
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

            pub async fn finish_job(
                &self,
                job_id: &str,
                worker: &str,
                outcome: &JobOutcome,
                attempt: i64,
                events: &[(&str, String)],
                recipients: &[String],
            ) -> Result<bool, StorageError> {
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
                    if $dialect == Dialect::Postgres {
                        sqlx::query("SELECT pg_notify('corral_job_finished', $1)")
                            .bind(job_id)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                tx.commit().await?;
                Ok(true)
            }

            pub async fn record_observations(
                &self,
                observations: &[Observation],
            ) -> Result<(), StorageError> {
                if observations.is_empty() {
                    return Ok(());
                }
                let now = now_millis();
                let mut tx = self.pool.begin().await?;
                for seen in observations {
                    update_observed(&mut tx, seen, now).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            pub async fn record_vcpus(&self, job_id: &str, vcpus: i64) -> Result<(), StorageError> {
                sqlx::query("UPDATE instances SET vcpus = $1 WHERE created_by_job = $2 AND vcpus <> $1")
                    .bind(vcpus)
                    .bind(job_id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            pub async fn mark_launch_started(
                &self,
                job_id: &str,
                worker: &str,
                now: Millis,
            ) -> Result<bool, StorageError> {
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

            pub async fn try_lease(
                &self,
                name: &str,
                holder: &str,
                now: Millis,
                until: Millis,
            ) -> Result<bool, StorageError> {
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

            pub async fn update_instance(
                &self,
                job: &NewJob,
                instance_id: &str,
                name: &str,
                tags: &std::collections::BTreeMap<String, String>,
            ) -> Result<Result<InstanceRecord, Admission>, StorageError> {
                let mut tx = match begin_job(&self.pool, job, None).await? {
                    Ok(tx) => tx,
                    Err(known) => return Ok(Err(known)),
                };
                let taken: Option<InstanceRow> = sqlx::query_as(
                    "UPDATE instances SET active_job_id = $1, updated_at = $2 \
                     WHERE id = $3 AND active_job_id IS NULL AND cloud_id IS NOT NULL \
                     AND state IN ('pending', 'running', 'stopping', 'stopped') RETURNING *",
                )
                .bind(&job.id)
                .bind(now_millis())
                .bind(instance_id)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(before) = taken else {
                    tx.rollback().await?;
                    let rows: Vec<InstanceRow> = select_by_ids(&[instance_id.to_string()])
                        .build_query_as()
                        .fetch_all(&self.pool)
                        .await?;
                    let conflicts = convert::<_, InstanceRecord>(rows)?
                        .into_iter()
                        .map(|instance| StateConflict {
                            reason: match &instance.active_job_id {
                                Some(busy) => format!("busy with job {busy}; retry when it has finished"),
                                None => format!(
                                    "the instance is {}; name and tags change only on an instance that \
                                     exists in the cloud",
                                    instance.state
                                ),
                            },
                            instance_id: instance.id,
                        })
                        .collect();
                    return Ok(Err(Admission::Conflicts(conflicts)));
                };
                let before = InstanceRecord::try_from(before)?;
                sqlx::query("UPDATE instances SET name = $1, tags = $2 WHERE id = $3")
                    .bind(name)
                    .bind(serde_json::to_string(tags).expect("tags serialize"))
                    .bind(instance_id)
                    .execute(&mut *tx)
                    .await?;
                link_instance(&mut tx, &job.id, instance_id).await?;
                let entry = AuditEntry::new(job.kind.audit_action(), instance_id)
                    .namespace(&before.namespace)
                    .old(serde_json::json!({ "name": before.name, "tags": before.tags }))
                    .new_value(serde_json::json!({ "name": name, "tags": tags, "job_id": job.id }));
                insert_audit(&mut tx, &job.actor, &entry).await?;
                tx.commit().await?;
                Ok(Ok(before))
            }

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
                let mut take = QueryBuilder::<$db>::new("UPDATE instances SET active_job_id = ");
                take.push_bind(&job.id).push(", updated_at = ").push_bind(now);
                take.push(" WHERE namespace = ").push_bind(namespace);
                take.push(" AND active_job_id IS NULL AND state IN (");
                let mut states = take.separated(", ");
                for state in Action::Terminate.allowed_from() {
                    states.push_bind(state.as_str());
                }
                take.push(") RETURNING id");
                let taken: Vec<(String,)> = take.build_query_as().fetch_all(&mut *tx).await?;
                let busy: Vec<(String, String)> = sqlx::query_as(
                    "SELECT id, active_job_id FROM instances WHERE namespace = $1 \
                     AND active_job_id IS NOT NULL AND active_job_id <> $2 \
                     AND state NOT IN ('terminated', 'failed') ORDER BY id",
                )
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

            pub async fn counts(&self) -> Result<Counts, StorageError> {
                let instances: Vec<(String, i64)> =
                    sqlx::query_as("SELECT state, COUNT(*) FROM instances GROUP BY state")
                        .fetch_all(&self.pool)
                        .await?;
                let jobs: Vec<(String, i64)> =
                    sqlx::query_as("SELECT status, COUNT(*) FROM jobs GROUP BY status")
                        .fetch_all(&self.pool)
                        .await?;
                Ok(Counts {
                    instances_by_state: instances.into_iter().collect(),
                    jobs_by_status: jobs.into_iter().collect(),
                })
            }
        }

        /// Checks that `instances` fit the quotas of `namespace`, counting what the namespace
        /// holds and is creating now; `Some` says why not. Locks the namespace row first, so
        /// that concurrent requests are admitted one after the other.
        async fn admit_to_namespace(
            tx: &mut sqlx::Transaction<'_, $db>,
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
            if max_instances.is_none() && max_vcpus.is_none() {
                return Ok(None);
            }
            let (used_instances, used_vcpus): (i64, i64) = sqlx::query_as(
                "SELECT COUNT(*), CAST(COALESCE(SUM(vcpus), 0) AS BIGINT) FROM instances \
                 WHERE namespace = $1 AND state NOT IN ('terminated', 'failed')",
            )
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

        /// Audits a request that stored `job` for `instance_ids`: one event per instance, or one
        /// for the job when it names none. Jobs corral stores on its own are not requests.
        async fn audit_job_request(
            tx: &mut sqlx::Transaction<'_, $db>,
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
                let mut query =
                    QueryBuilder::<$db>::new("SELECT id, namespace FROM instances WHERE id IN (");
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

        fn select_by_ids(ids: &[String]) -> QueryBuilder<'_, $db> {
            let mut query = QueryBuilder::<$db>::new("SELECT * FROM instances WHERE id IN (");
            let mut list = query.separated(", ");
            for id in ids {
                list.push_bind(id);
            }
            query.push(") ORDER BY id");
            query
        }

        async fn insert_instance(
            tx: &mut sqlx::Transaction<'_, $db>,
            instance: &InstanceRecord,
        ) -> Result<(), StorageError> {
            let tags = serde_json::to_string(&instance.tags).expect("tags serialize");
            sqlx::query(
                "INSERT INTO instances (id, cloud_id, name, namespace, region, ami, instance_type, \
                     storage_gb, state, public_ip, private_ip, key_name, tags, backend, launch_index, \
                     created_by_job, active_job_id, vcpus, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)",
            )
            .bind(&instance.id)
            .bind(&instance.cloud_id)
            .bind(&instance.name)
            .bind(&instance.namespace)
            .bind(&instance.region)
            .bind(&instance.ami)
            .bind(&instance.instance_type)
            .bind(instance.storage_gb)
            .bind(instance.state.as_str())
            .bind(&instance.public_ip)
            .bind(&instance.private_ip)
            .bind(&instance.key_name)
            .bind(tags)
            .bind(&instance.backend)
            .bind(instance.launch_index)
            .bind(&instance.created_by_job)
            .bind(&instance.active_job_id)
            .bind(instance.vcpus)
            .bind(instance.created_at)
            .bind(instance.updated_at)
            .execute(&mut **tx)
            .await?;
            Ok(())
        }

        async fn update_observed(
            tx: &mut sqlx::Transaction<'_, $db>,
            seen: &Observation,
            now: Millis,
        ) -> Result<(), StorageError> {
            // Writes first, returning the row as it was, so that a state change is audited with
            // the state it left.
            let before: Option<(String, String)> = sqlx::query_as(
                "UPDATE instances SET updated_at = $5 \
                 WHERE id = $6 AND (cloud_id IS DISTINCT FROM $1 OR state <> $2 \
                                    OR public_ip IS DISTINCT FROM $3 OR private_ip IS DISTINCT FROM $4) \
                 RETURNING namespace, state",
            )
            .bind(&seen.cloud_id)
            .bind(seen.state.as_str())
            .bind(&seen.public_ip)
            .bind(&seen.private_ip)
            .bind(now)
            .bind(&seen.instance_id)
            .fetch_optional(&mut **tx)
            .await?;
            let Some((namespace, old_state)) = before else { return Ok(()) };
            sqlx::query(
                "UPDATE instances SET cloud_id = $1, state = $2, public_ip = $3, private_ip = $4 WHERE id = $5",
            )
            .bind(&seen.cloud_id)
            .bind(seen.state.as_str())
            .bind(&seen.public_ip)
            .bind(&seen.private_ip)
            .bind(&seen.instance_id)
            .execute(&mut **tx)
            .await?;
            if old_state != seen.state.as_str() {
                let entry = AuditEntry::new("instance.state", &seen.instance_id)
                    .namespace(&namespace)
                    .old(serde_json::json!({ "state": old_state }))
                    .new_value(serde_json::json!({
                        "state": seen.state.as_str(),
                        "cloud_id": seen.cloud_id,
                        "public_ip": seen.public_ip,
                        "private_ip": seen.private_ip,
                    }));
                insert_audit(tx, &Actor::system(), &entry).await?;
            }
            Ok(())
        }

        /// Records `key` for `job_id`, or returns what an earlier use of the key means. An expired key
        /// is replaced.
        async fn claim_idempotency_key(
            tx: &mut sqlx::Transaction<'_, $db>,
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

        /// Of `instance_ids`, those a queued refresh job will refresh, and the newest such job.
        /// The instance rows are locked first, so that two requests cannot both see none.
        async fn pending_refreshes(
            tx: &mut sqlx::Transaction<'_, $db>,
            instance_ids: &[String],
        ) -> Result<(Vec<String>, Option<String>), StorageError> {
            let mut lock = select_by_ids(instance_ids);
            lock.push($dialect.lock_rows());
            let _: Vec<InstanceRow> = lock.build_query_as().fetch_all(&mut **tx).await?;
            let mut query = QueryBuilder::<$db>::new(
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

        async fn insert_job(
            tx: &mut sqlx::Transaction<'_, $db>,
            job: &NewJob,
        ) -> Result<(), StorageError> {
            let now = now_millis();
            sqlx::query(
                "INSERT INTO jobs (id, kind, status, payload, attempts, max_attempts, run_at, \
                 created_at, updated_at, actor, user_id, namespace) \
                 VALUES ($1, $2, 'queued', $3, 0, $4, $5, $5, $5, $6, $7, $8)",
            )
            .bind(&job.id)
            .bind(job.kind.as_str())
            .bind(job.payload.to_string())
            .bind(job.max_attempts)
            .bind(now)
            .bind(&job.actor.name)
            .bind(&job.actor.user_id)
            .bind(&job.namespace)
            .execute(&mut **tx)
            .await?;
            if $dialect == Dialect::Postgres {
                // Delivered to every listening process when the transaction commits.
                sqlx::query("SELECT pg_notify('corral_job_queued', $1)")
                    .bind(&job.id)
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(())
        }

        /// Opens the transaction that stores `job`: the job first (the key refers to it), then
        /// `key`. A key seen before rolls everything back and says what it means instead.
        async fn begin_job<'a>(
            pool: &'a sqlx::Pool<$db>,
            job: &NewJob,
            key: Option<&IdempotencyKey>,
        ) -> Result<Result<sqlx::Transaction<'a, $db>, Admission>, StorageError> {
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

        async fn insert_job_event(
            tx: &mut sqlx::Transaction<'_, $db>,
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

        async fn link_instance(
            tx: &mut sqlx::Transaction<'_, $db>,
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
    };
}

pub(crate) use sql_store;
