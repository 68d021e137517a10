//! SSH key pairs corral registered in the cloud, by name.

use super::audit::insert_audit;
use super::jobs::begin_job;
use super::{Actor, Admission, AuditEntry, Millis, NewJob, StorageError, Store};

/// An SSH key pair corral knows: its public half only. corral imports it into a region the
/// first time an instance there uses it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyPairRecord {
    pub name: String,
    pub namespace: String,
    /// `ssh-ed25519`, `ssh-rsa`, …
    pub key_type: String,
    /// OpenSSH format, one line.
    pub public_key: String,
    /// SHA256 fingerprint as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    pub created_by: String,
    pub created_at: Millis,
}

/// The columns `KeyPairRecord` is read from.
const KEY_PAIR_COLUMNS: &str =
    "name, namespace, key_type, public_key, fingerprint, created_by, created_at";

impl Store {
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
        let rows: Vec<KeyPairRecord> =
            sqlx::query_as(&format!("SELECT {KEY_PAIR_COLUMNS} FROM key_pairs ORDER BY name"))
                .fetch_all(&self.pool)
                .await?;
        Ok(rows)
    }

    pub async fn find_key_pair(&self, name: &str) -> Result<Option<KeyPairRecord>, StorageError> {
        let row: Option<KeyPairRecord> =
            sqlx::query_as(&format!("SELECT {KEY_PAIR_COLUMNS} FROM key_pairs WHERE name = $1"))
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
}
