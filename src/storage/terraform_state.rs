//! Terraform's state per workspace and its lock, as the HTTP backend of `terraform` runs reads
//! and writes them (`api::terraform_state`).

use sqlx::{Any, Transaction};

use super::{StorageError, Store, now_millis};

/// How a Terraform state write or lock request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockOutcome {
    Done,
    /// Another lock holds the workspace: Terraform's lock info of the holder, as it sent it.
    HeldBy(Option<String>),
}

impl Store {
    /// The state document of `workspace`, if one was written.
    pub async fn terraform_state(&self, workspace: &str) -> Result<Option<String>, StorageError> {
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
pub(super) async fn ensure_state_row(
    tx: &mut Transaction<'_, Any>,
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
pub(super) async fn finish_guarded(
    mut tx: Transaction<'_, Any>,
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
pub(super) async fn lock_holder(
    tx: &mut Transaction<'_, Any>,
    workspace: &str,
) -> Result<Option<String>, StorageError> {
    let row: Option<(Option<String>,)> =
        sqlx::query_as("SELECT lock_info FROM terraform_states WHERE workspace = $1")
            .bind(workspace)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(row.and_then(|(info,)| info))
}
