//! The SQL of key pairs (public keys corral imports into EC2 for SSH access) and of Terraform
//! state (the documents and locks of Terraform's HTTP backend protocol, one row per workspace).
//! Instantiated per dialect by `access_store!` next to `sql_store!`, whose `begin_job` it uses
//! so that deleting a key pair stores the job that deletes it in the cloud atomically.

/// Implements key pair and Terraform state operations for `$store` (a struct with a `pool` of
/// `$db`).
macro_rules! access_store {
    ($store:ident, $db:ident) => {
        impl $store {
            /// Stores a key pair and audits it; false (nothing stored) when the name is taken.
            pub async fn create_key_pair(
                &self,
                pair: &KeyPairRecord,
                actor: &Actor,
            ) -> Result<bool, StorageError> {
                let mut tx = self.pool.begin().await?;
                let inserted = sqlx::query(
                    "INSERT INTO key_pairs (name, namespace, key_type, public_key, fingerprint, created_by, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING",
                )
                .bind(&pair.name)
                .bind(&pair.namespace)
                .bind(&pair.key_type)
                .bind(&pair.public_key)
                .bind(&pair.fingerprint)
                .bind(&pair.created_by)
                .bind(pair.created_at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if inserted != 1 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                let entry = AuditEntry::new("key_pair.create", &pair.name)
                    .namespace(&pair.namespace)
                    .new_value(serde_json::json!({
                        "key_type": pair.key_type,
                        "fingerprint": pair.fingerprint,
                    }));
                insert_audit(&mut tx, actor, &entry).await?;
                tx.commit().await?;
                Ok(true)
            }

            /// Every key pair, by name.
            pub async fn list_key_pairs(&self) -> Result<Vec<KeyPairRecord>, StorageError> {
                let rows: Vec<KeyPairRecord> = sqlx::query_as(&format!(
                    "SELECT {KEY_PAIR_COLUMNS} FROM key_pairs ORDER BY name"
                ))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows)
            }

            pub async fn find_key_pair(
                &self,
                name: &str,
            ) -> Result<Option<KeyPairRecord>, StorageError> {
                let row: Option<KeyPairRecord> = sqlx::query_as(&format!(
                    "SELECT {KEY_PAIR_COLUMNS} FROM key_pairs WHERE name = $1"
                ))
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row)
            }

            /// Forgets key pair `name` and stores `job`, which deletes it in the cloud, in one
            /// transaction; `None` when there is no such key pair.
            pub async fn delete_key_pair(
                &self,
                name: &str,
                job: &NewJob,
            ) -> Result<Option<Admission>, StorageError> {
                let mut tx = match begin_job(&self.pool, job, None).await? {
                    Ok(tx) => tx,
                    Err(known) => return Ok(Some(known)),
                };
                let deleted = sqlx::query("DELETE FROM key_pairs WHERE name = $1")
                    .bind(name)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if deleted != 1 {
                    tx.rollback().await?;
                    return Ok(None);
                }
                let mut entry = AuditEntry::new("key_pair.delete", name)
                    .new_value(serde_json::json!({ "job_id": job.id }));
                entry.namespace = job.namespace.clone();
                insert_audit(&mut tx, &job.actor, &entry).await?;
                tx.commit().await?;
                Ok(Some(Admission::Stored))
            }

            /// Which of the create jobs `job_ids` still have an instance that is not terminated
            /// or failed: their security groups are in use.
            pub async fn jobs_with_live_instances(
                &self,
                job_ids: &[String],
            ) -> Result<Vec<String>, StorageError> {
                if job_ids.is_empty() {
                    return Ok(Vec::new());
                }
                let mut query = QueryBuilder::<$db>::new(
                    "SELECT DISTINCT created_by_job FROM instances \
                     WHERE state NOT IN ('terminated', 'failed') AND created_by_job IN (",
                );
                let mut list = query.separated(", ");
                for id in job_ids {
                    list.push_bind(id);
                }
                query.push(")");
                let rows: Vec<(String,)> = query.build_query_as().fetch_all(&self.pool).await?;
                Ok(rows.into_iter().map(|(id,)| id).collect())
            }

            /// The state document of `workspace`, if one was written.
            pub async fn terraform_state(
                &self,
                workspace: &str,
            ) -> Result<Option<String>, StorageError> {
                let row: Option<(Option<String>,)> =
                    sqlx::query_as("SELECT state FROM terraform_states WHERE workspace = $1")
                        .bind(workspace)
                        .fetch_optional(&self.pool)
                        .await?;
                Ok(row.and_then(|(state,)| state))
            }

            /// Writes the state of `workspace` (`None` deletes it) unless another lock than
            /// `lock_id` holds the workspace.
            pub async fn write_terraform_state(
                &self,
                workspace: &str,
                state: Option<&str>,
                lock_id: Option<&str>,
            ) -> Result<LockOutcome, StorageError> {
                let mut tx = self.pool.begin().await?;
                ensure_state_row(&mut tx, workspace).await?;
                let written = sqlx::query(
                    "UPDATE terraform_states SET state = $2, updated_at = $3 \
                     WHERE workspace = $1 AND (lock_id IS NULL OR lock_id = $4)",
                )
                .bind(workspace)
                .bind(state)
                .bind(now_millis())
                .bind(lock_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                finish_guarded(tx, workspace, written == 1).await
            }

            /// Takes the lock of `workspace` for `lock_id`, recording Terraform's lock info and
            /// the corral job that runs Terraform (if any); `HeldBy` another holder otherwise.
            /// Taking a lock one already holds succeeds.
            pub async fn lock_terraform_state(
                &self,
                workspace: &str,
                lock_id: &str,
                info: &str,
                job_id: Option<&str>,
            ) -> Result<LockOutcome, StorageError> {
                let mut tx = self.pool.begin().await?;
                ensure_state_row(&mut tx, workspace).await?;
                let taken = sqlx::query(
                    "UPDATE terraform_states SET lock_id = $2, lock_info = $3, lock_job = $4 \
                     WHERE workspace = $1 AND (lock_id IS NULL OR lock_id = $2)",
                )
                .bind(workspace)
                .bind(lock_id)
                .bind(info)
                .bind(job_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                finish_guarded(tx, workspace, taken == 1).await
            }

            /// Releases the lock of `workspace` if `lock_id` holds it (any lock without an id:
            /// Terraform's `force-unlock` sends none); `HeldBy` the other holder otherwise.
            pub async fn unlock_terraform_state(
                &self,
                workspace: &str,
                lock_id: Option<&str>,
            ) -> Result<LockOutcome, StorageError> {
                let mut tx = self.pool.begin().await?;
                let released = sqlx::query(
                    "UPDATE terraform_states SET lock_id = NULL, lock_info = NULL, lock_job = NULL \
                     WHERE workspace = $1 AND ($2 IS NULL OR lock_id IS NULL OR lock_id = $2)",
                )
                .bind(workspace)
                .bind(lock_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                let outcome = if released == 1 {
                    LockOutcome::Done
                } else {
                    match lock_holder(&mut tx, workspace).await? {
                        Some(holder) => LockOutcome::HeldBy(Some(holder)),
                        None => LockOutcome::Done,
                    }
                };
                tx.commit().await?;
                Ok(outcome)
            }

            /// Releases a lock left on `workspace` by an earlier attempt of `job_id`: the job
            /// holds its lease now, so whatever run of Terraform took the lock has ended.
            pub async fn release_job_lock(
                &self,
                workspace: &str,
                job_id: &str,
            ) -> Result<bool, StorageError> {
                let released = sqlx::query(
                    "UPDATE terraform_states SET lock_id = NULL, lock_info = NULL, lock_job = NULL \
                     WHERE workspace = $1 AND lock_job = $2",
                )
                .bind(workspace)
                .bind(job_id)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(released == 1)
            }
        }

        /// Makes the row of `workspace` exist, so that a guarded update has one to change.
        async fn ensure_state_row(
            tx: &mut sqlx::Transaction<'_, $db>,
            workspace: &str,
        ) -> Result<(), StorageError> {
            sqlx::query(
                "INSERT INTO terraform_states (workspace, updated_at) VALUES ($1, $2) \
                 ON CONFLICT (workspace) DO NOTHING",
            )
            .bind(workspace)
            .bind(now_millis())
            .execute(&mut **tx)
            .await?;
            Ok(())
        }

        /// Commits an update that the lock allowed (`changed`); otherwise rolls it back and
        /// names the holder.
        async fn finish_guarded(
            mut tx: sqlx::Transaction<'_, $db>,
            workspace: &str,
            changed: bool,
        ) -> Result<LockOutcome, StorageError> {
            if changed {
                tx.commit().await?;
                return Ok(LockOutcome::Done);
            }
            let holder = lock_holder(&mut tx, workspace).await?;
            tx.rollback().await?;
            Ok(LockOutcome::HeldBy(holder))
        }

        /// Terraform's lock info of whoever holds `workspace`'s lock.
        async fn lock_holder(
            tx: &mut sqlx::Transaction<'_, $db>,
            workspace: &str,
        ) -> Result<Option<String>, StorageError> {
            let row: Option<(Option<String>,)> =
                sqlx::query_as("SELECT lock_info FROM terraform_states WHERE workspace = $1")
                    .bind(workspace)
                    .fetch_optional(&mut **tx)
                    .await?;
            Ok(row.and_then(|(info,)| info))
        }
    };
}

pub(crate) use access_store;
