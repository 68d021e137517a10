//! Instances as corral records them: what jobs launch, what reconciliation observes (state,
//! drift, orphans found in the cloud), lists and counts.

use std::collections::BTreeMap;

use sqlx::{Any, Transaction};

use super::sql::Sql;

use super::audit::{insert_audit, insert_audits};
use super::jobs::{begin_job, link_instance};
use super::notify::{drift_notification, insert_notification};
use super::{
    Actor, Admission, AuditEntry, Dialect, Millis, NewJob, Page, PageRequest, StorageError, Store,
    convert, new_id, now_millis,
};
use crate::domain::{Backend, EventType, InstanceState, JobKind, StateConflict, UnknownBackend};

/// The condition of a live instance: one that exists in the cloud or is being created (not
/// terminated, not failed). Names are unique among the live instances of a namespace.
pub(super) const LIVE: &str = "state NOT IN ('terminated', 'failed')";

/// The condition of an instance that holds its name (`InstanceState::holds_name`).
pub(super) const HOLDS_NAME: &str = "state NOT IN ('terminated', 'failed', 'missing')";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    pub id: String,
    pub cloud_id: Option<String>,
    pub name: String,
    pub namespace: String,
    pub region: String,
    pub ami: String,
    pub instance_type: String,
    pub storage_gb: i64,
    pub state: InstanceState,
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
    pub key_name: Option<String>,
    pub tags: BTreeMap<String, String>,
    /// Ids of the security groups attached, as the cloud last reported them; `None` until an
    /// observation has told them.
    pub security_groups: Option<Vec<String>>,
    /// The user to log in as, which the AMI implies (`domain::login_user`); `None` until the
    /// create job has described the AMI.
    pub login_user: Option<String>,
    pub backend: Backend,
    pub launch_index: i64,
    pub created_by_job: String,
    pub active_job_id: Option<String>,
    /// vCPUs of the instance type, counted against the namespace's quota.
    pub vcpus: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl InstanceRecord {
    /// The record of an instance `job_id` is about to create: `provisioning`, owned by the job.
    pub fn desired(
        spec: &crate::domain::LaunchSpec,
        job_id: &str,
        launch_index: usize,
        vcpus: i64,
        now: Millis,
    ) -> InstanceRecord {
        InstanceRecord {
            id: new_id(),
            cloud_id: None,
            name: spec.names[launch_index].clone(),
            namespace: spec.namespace.clone(),
            region: spec.region.clone(),
            ami: spec.ami.clone(),
            instance_type: spec.instance_type.clone(),
            storage_gb: spec.storage_gb,
            state: InstanceState::Provisioning,
            public_ip: None,
            private_ip: None,
            key_name: spec.key_name.clone(),
            tags: spec.tags.clone(),
            security_groups: None,
            login_user: None,
            backend: Backend::Aws,
            launch_index: launch_index as i64,
            created_by_job: job_id.to_string(),
            active_job_id: Some(job_id.to_string()),
            vcpus,
            created_at: now,
            updated_at: now,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct InstanceFilter {
    /// Only these namespaces (what the caller may see); `None` for all.
    pub visible: Option<Vec<String>>,
    pub state: Option<InstanceState>,
    /// Without a `state`, whether terminated and failed instances are listed too.
    pub ended_too: bool,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub tags: Vec<(String, String)>,
}

/// What the cloud reported about one stored instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub instance_id: String,
    pub cloud_id: String,
    pub state: InstanceState,
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
    /// What else the cloud reported of it; `None` when only state and addresses were seen.
    pub attributes: Option<ObservedAttributes>,
    /// The observer knows that the record's attributes are not the cloud's (a tag job that
    /// failed): they are overwritten with the observed ones, without drift.
    pub authoritative: bool,
}

/// The attributes of an instance corral manages besides its state, as the cloud reported them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedAttributes {
    /// The `Name` tag.
    pub name: Option<String>,
    pub instance_type: Option<String>,
    /// vCPUs of `instance_type`, when the catalog told them.
    pub vcpus: Option<i64>,
    pub key_name: Option<String>,
    /// Every tag but `Name` and those of corral (`corral:`) and of AWS (`aws:`).
    pub tags: BTreeMap<String, String>,
    /// Sorted.
    pub security_groups: Vec<String>,
    /// Size of the root volume, when it was looked up.
    pub storage_gb: Option<i64>,
}

impl ObservedAttributes {
    /// Makes `record` say what the cloud reported and answers each change as drift: field
    /// (`instance_type`, `name`, `key_name`, `tags.<key>`, `security_groups`, `storage_gb`),
    /// old and new value.
    fn apply_to(&self, record: &mut InstanceRecord) -> Vec<Drift> {
        let mut changes: Vec<(String, Option<String>, Option<String>)> = Vec::new();
        if let Some(instance_type) = &self.instance_type
            && *instance_type != record.instance_type
        {
            let old = std::mem::replace(&mut record.instance_type, instance_type.clone());
            changes.push(("instance_type".into(), Some(old), Some(instance_type.clone())));
            if let Some(vcpus) = self.vcpus {
                record.vcpus = vcpus;
            }
        }
        // 0 vCPUs or GiB is what an adopted instance's record says while they are unknown.
        if record.vcpus == 0
            && let Some(vcpus) = self.vcpus
        {
            record.vcpus = vcpus;
        }
        if record.storage_gb == 0
            && let Some(storage_gb) = self.storage_gb
        {
            record.storage_gb = storage_gb;
        }
        // A name corral could not be asked for (a Name tag set in the console to anything EC2
        // takes) is drift, but the record keeps a name that lookups and exports can use.
        if let Some(name) = &self.name
            && *name != record.name
            && !crate::domain::is_valid_instance_name(name)
        {
            changes.push(("name".into(), Some(record.name.clone()), Some(name.clone())));
        } else if let Some(name) = &self.name
            && *name != record.name
        {
            let old = std::mem::replace(&mut record.name, name.clone());
            changes.push(("name".into(), Some(old), Some(name.clone())));
        }
        if self.key_name != record.key_name {
            let old = std::mem::replace(&mut record.key_name, self.key_name.clone());
            changes.push(("key_name".into(), old, self.key_name.clone()));
        }
        let keys: std::collections::BTreeSet<&String> =
            record.tags.keys().chain(self.tags.keys()).collect();
        for key in keys {
            let (old, new) = (record.tags.get(key), self.tags.get(key));
            if old != new {
                changes.push((format!("tags.{key}"), old.cloned(), new.cloned()));
            }
        }
        record.tags = self.tags.clone();
        if record.security_groups.as_ref() != Some(&self.security_groups) {
            let old = record.security_groups.replace(self.security_groups.clone());
            changes.push((
                "security_groups".into(),
                old.map(|groups| groups.join(", ")),
                Some(self.security_groups.join(", ")),
            ));
        }
        if let Some(storage_gb) = self.storage_gb
            && storage_gb != record.storage_gb
        {
            let old = std::mem::replace(&mut record.storage_gb, storage_gb);
            changes.push((
                "storage_gb".into(),
                Some(old.to_string()),
                Some(storage_gb.to_string()),
            ));
        }
        changes
            .into_iter()
            .map(|(field, old_value, new_value)| Drift {
                instance_id: record.id.clone(),
                field,
                old_value,
                new_value,
            })
            .collect()
    }

    /// Fills what `record` did not know, at the first observation of its instance: its
    /// security groups, and the storage, key and vCPUs of an adopted instance. No drift: there
    /// was nothing to differ from.
    fn fill_unknown(&self, record: &mut InstanceRecord) {
        record.security_groups = Some(self.security_groups.clone());
        if record.storage_gb == 0
            && let Some(storage_gb) = self.storage_gb
        {
            record.storage_gb = storage_gb;
        }
        if record.key_name.is_none() {
            record.key_name = self.key_name.clone();
        }
        if record.vcpus == 0
            && let Some(vcpus) = self.vcpus
        {
            record.vcpus = vcpus;
        }
    }
}

/// A change the reconciler found that corral did not make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub instance_id: String,
    pub field: String,
    pub old_value: Option<String>,
    pub new_value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftRecord {
    pub id: String,
    pub instance_id: String,
    pub at: Millis,
    pub field: String,
    pub old_value: Option<String>,
    pub new_value: Option<String>,
}

/// An instance tagged by corral that corral has no record of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanRecord {
    pub cloud_id: String,
    pub region: String,
    pub state: InstanceState,
    pub ami: Option<String>,
    pub instance_type: Option<String>,
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub first_seen: Millis,
    pub last_seen: Millis,
}

/// Everything one reconcile pass over one region found, written at once.
#[derive(Debug, Clone, Default)]
pub struct Reconciliation {
    /// When the cloud was asked: an instance whose record changed since (a job was admitted or
    /// finished, a job observed it) is left for the next pass, which will see what that change
    /// did, instead of being judged on what the cloud said before it. `None`: no such guard.
    pub observed_at: Option<Millis>,
    pub observations: Vec<Observation>,
    /// Instances corral knows that the cloud does not.
    pub missing: Vec<String>,
    /// The orphans of the region, replacing those recorded before; `None` leaves them as they
    /// are (a refresh of single instances does not scan for orphans).
    pub orphans: Option<(String, Vec<OrphanRecord>)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub instances_by_state: BTreeMap<String, i64>,
    pub jobs_by_status: BTreeMap<String, i64>,
}

#[derive(sqlx::FromRow)]
pub(super) struct InstanceRow {
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
    security_groups: Option<String>,
    login_user: Option<String>,
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
            security_groups: row
                .security_groups
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|err| {
                StorageError::Corrupt(format!("security groups of {}: {err}", row.id))
            })?,
            backend: row.backend.parse().map_err(|err: UnknownBackend| {
                StorageError::Corrupt(format!("backend of {}: {err}", row.id))
            })?,
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
            login_user: row.login_user,
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
pub(super) struct DriftRow {
    id: String,
    instance_id: String,
    at: i64,
    field: String,
    old_value: Option<String>,
    new_value: Option<String>,
}

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
pub(super) struct OrphanRow {
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

impl Store {
    /// Instances with a cloud id that are not terminated, grouped by region.
    pub async fn live_instances(
        &self,
    ) -> Result<BTreeMap<String, Vec<InstanceRecord>>, StorageError> {
        let mut by_region: BTreeMap<String, Vec<InstanceRecord>> = BTreeMap::new();
        for instance in self.all_live_instances().await? {
            by_region.entry(instance.region.clone()).or_default().push(instance);
        }
        Ok(by_region)
    }

    /// Which of `cloud_ids` corral has a record of, in any state.
    pub async fn known_cloud_ids(&self, cloud_ids: &[String]) -> Result<Vec<String>, StorageError> {
        let mut known = Vec::new();
        // Stay far below SQLite's limit on bound parameters.
        for chunk in cloud_ids.chunks(500) {
            let mut query = Sql::new("SELECT cloud_id FROM instances WHERE cloud_id IN (");
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

    /// Writes what a reconcile pass over one region found, in one transaction, and answers the
    /// drift it recorded: the state changes of instances no job owns. Whether a job owns an
    /// instance, and the state it left, are read here, as the change is written, not when the
    /// pass read its instances before asking the cloud: a job may have started or finished in
    /// between, and its own changes are no drift while a change behind its back after it
    /// finished is.
    pub async fn record_reconciliation(
        &self,
        reconciliation: &Reconciliation,
    ) -> Result<Vec<Drift>, StorageError> {
        let recipients = &self.recipients;
        let now = now_millis();
        let mut tx = self.begin_write().await?;
        let mut drifts = Vec::new();
        // Rows are locked in one order by every writer, so that two cannot wait on each other.
        let mut observations: Vec<&Observation> = reconciliation.observations.iter().collect();
        observations.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        for seen in observations {
            let since = reconciliation.observed_at;
            drifts.extend(update_observed(&mut tx, seen, since, now).await?);
        }
        for id in &reconciliation.missing {
            let before: Option<(String, String, Option<String>)> = sqlx::query_as(
                "UPDATE instances SET updated_at = $1 WHERE id = $2 AND state <> 'missing' \
                 RETURNING namespace, state, active_job_id",
            )
            .bind(now)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((namespace, old_state, owner)) = before else { continue };
            if owner.is_none() {
                drifts.push(state_drift(id, &old_state, InstanceState::Missing));
            }
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
        for drift in &drifts {
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
        }
        // One event per instance for everything a pass found changed on it: people are told
        // once about a retagging, not once per tag.
        let mut by_instance: BTreeMap<&str, Vec<&Drift>> = BTreeMap::new();
        for drift in &drifts {
            by_instance.entry(drift.instance_id.as_str()).or_default().push(drift);
        }
        for (instance_id, changes) in by_instance {
            let row: InstanceRow = sqlx::query_as("SELECT * FROM instances WHERE id = $1")
                .bind(instance_id)
                .fetch_one(&mut *tx)
                .await?;
            let instance = InstanceRecord::try_from(row)?;
            let entries: Vec<AuditEntry> = changes
                .iter()
                .map(|drift| {
                    AuditEntry::new("instance.drift", instance_id)
                        .namespace(&instance.namespace)
                        .old(serde_json::json!({ &drift.field: drift.old_value }))
                        .new_value(serde_json::json!({ &drift.field: drift.new_value }))
                })
                .collect();
            insert_audits(&mut tx, &Actor::system(), &entries).await?;
            let notification = drift_notification(&instance, &changes, now);
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
            let mut delete = Sql::new("DELETE FROM orphans WHERE region = ");
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
        Ok(drifts)
    }

    pub async fn list_orphans(&self) -> Result<Vec<OrphanRecord>, StorageError> {
        let rows: Vec<OrphanRow> =
            sqlx::query_as("SELECT * FROM orphans ORDER BY region, cloud_id")
                .fetch_all(&self.pool)
                .await?;
        convert(rows)
    }

    /// Turns an orphan into an instance record, atomically; `None` if it is no longer an orphan.
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

    /// Drift found on an instance, newest first.
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

    /// The instances `references` may name: by corral id, by cloud id, or, among live
    /// instances, by name (which may name several, in different namespaces). Who may see which
    /// is the caller's to judge.
    pub async fn find_instances(
        &self,
        references: &[String],
    ) -> Result<Vec<InstanceRecord>, StorageError> {
        let mut found = Vec::new();
        for chunk in references.chunks(300) {
            let mut query = Sql::new("SELECT * FROM instances WHERE id IN (");
            let mut list = query.separated(", ");
            for reference in chunk {
                list.push_bind(reference);
            }
            query.push(") OR cloud_id IN (");
            let mut list = query.separated(", ");
            for reference in chunk {
                list.push_bind(reference);
            }
            query.push(format!(") OR ({HOLDS_NAME} AND name IN ("));
            let mut list = query.separated(", ");
            for reference in chunk {
                list.push_bind(reference);
            }
            query.push(")) ORDER BY id");
            let rows: Vec<InstanceRow> = query.build_query_as().fetch_all(&self.pool).await?;
            found.extend(convert::<_, InstanceRecord>(rows)?);
        }
        found.sort_by(|a, b| a.id.cmp(&b.id));
        found.dedup_by(|a, b| a.id == b.id);
        Ok(found)
    }

    /// Whether an instance of `namespace` holds `name` (`HOLDS_NAME`).
    pub async fn name_held(&self, namespace: &str, name: &str) -> Result<bool, StorageError> {
        let held: Option<(String,)> = sqlx::query_as(&format!(
            "SELECT id FROM instances WHERE {HOLDS_NAME} AND namespace = $1 AND name = $2 LIMIT 1"
        ))
        .bind(namespace)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(held.is_some())
    }

    /// The highest `n` (of at most nine digits) of the instances of `namespace` holding a name
    /// `<prefix>-<n>`, 0 if none.
    pub async fn highest_number(&self, namespace: &str, prefix: &str) -> Result<u64, StorageError> {
        let stem = format!("{prefix}-");
        let rows: Vec<(String,)> = sqlx::query_as(&format!(
            "SELECT name FROM instances WHERE {HOLDS_NAME} AND namespace = $1 \
             AND substr(name, 1, CAST($2 AS INTEGER)) = $3"
        ))
        .bind(namespace)
        .bind(stem.chars().count() as i64)
        .bind(&stem)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|(name,)| &name[stem.len()..])
            // A number past nine digits was not counted up to: it does not hold the rest back.
            .filter(|number| number.len() <= 9 && number.bytes().all(|b| b.is_ascii_digit()))
            .filter_map(|number| number.parse::<u64>().ok())
            .max()
            .unwrap_or(0))
    }

    pub async fn list_instances(
        &self,
        filter: &InstanceFilter,
        page: &PageRequest,
    ) -> Result<Page<InstanceRecord>, StorageError> {
        let rows = self.instance_page_rows(filter, page).await?;
        Ok(Page::from_rows(rows, page.limit, |row| &row.id))
    }

    /// Records what the cloud reported, including cloud ids of newly launched instances.
    pub async fn record_observations(
        &self,
        observations: &[Observation],
    ) -> Result<(), StorageError> {
        if observations.is_empty() {
            return Ok(());
        }
        let now = now_millis();
        let mut tx = self.begin_write().await?;
        let mut observations: Vec<&Observation> = observations.iter().collect();
        observations.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        for seen in observations {
            // A job records what it observed of its own instances: no drift, it owns them.
            update_observed(&mut tx, seen, None, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Changes name and tags of an idle instance and stores the job that applies them in the
    /// cloud; the instance before the change, or why it could not change. `read` is the
    /// instance as the change was made from (merged onto): if its name or tags changed since,
    /// nothing is written, so that a change made meanwhile is never lost.
    pub async fn update_instance(
        &self,
        job: &NewJob,
        read: &InstanceRecord,
        name: &str,
        tags: &std::collections::BTreeMap<String, String>,
    ) -> Result<Result<InstanceRecord, Admission>, StorageError> {
        let instance_id = read.id.as_str();
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
        if before.name != read.name || before.tags != read.tags {
            tx.rollback().await?;
            return Ok(Err(Admission::Conflicts(vec![StateConflict {
                instance_id: before.id,
                reason: "its name or tags changed while this request was made; retry".to_string(),
            }])));
        }
        if name != before.name {
            // The namespace's row lock orders this rename with the creates of the namespace.
            sqlx::query("UPDATE namespaces SET updated_at = updated_at WHERE name = $1")
                .bind(&before.namespace)
                .execute(&mut *tx)
                .await?;
            let taken = super::jobs::live_names_taken(&mut tx, &before.namespace, &[name]).await?;
            if !taken.is_empty() {
                tx.rollback().await?;
                return Ok(Err(Admission::NamesTaken {
                    namespace: before.namespace,
                    names: taken,
                }));
            }
        }
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

    /// Which of the create jobs `job_ids` still have an instance that is not terminated or
    /// failed.
    pub async fn jobs_with_live_instances(
        &self,
        job_ids: &[String],
    ) -> Result<Vec<String>, StorageError> {
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut query = Sql::new(format!(
            "SELECT DISTINCT created_by_job FROM instances WHERE {LIVE} AND created_by_job IN ("
        ));
        let mut list = query.separated(", ");
        for id in job_ids {
            list.push_bind(id);
        }
        query.push(")");
        let rows: Vec<(String,)> = query.build_query_as().fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    async fn all_live_instances(&self) -> Result<Vec<InstanceRecord>, StorageError> {
        let rows: Vec<InstanceRow> = sqlx::query_as(
            "SELECT * FROM instances WHERE cloud_id IS NOT NULL AND state <> 'terminated' \
             ORDER BY region, id",
        )
        .fetch_all(&self.pool)
        .await?;
        convert(rows)
    }

    async fn instance_page_rows(
        &self,
        filter: &InstanceFilter,
        page: &PageRequest,
    ) -> Result<Vec<InstanceRecord>, StorageError> {
        let mut query = Sql::new("SELECT * FROM instances WHERE 1 = 1");
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
        match filter.state {
            Some(state) => {
                query.push(" AND state = ").push_bind(state.as_str());
            }
            None if !filter.ended_too => {
                query.push(format!(" AND {LIVE}"));
            }
            None => {}
        }
        if let Some(namespace) = &filter.namespace {
            query.push(" AND namespace = ").push_bind(namespace);
        }
        if let Some(name) = &filter.name {
            query.push(" AND name = ").push_bind(name);
        }
        for (key, value) in &filter.tags {
            query.push(self.dialect.tag_filter());
            query.push_bind(key).push(" AND tag.value = ").push_bind(value).push(")");
        }
        if let Some(after) = &page.after {
            query.push(" AND id < ").push_bind(after);
        }
        query.push(" ORDER BY id DESC LIMIT ").push_bind(page.limit + 1);
        let rows: Vec<InstanceRow> = query.build_query_as().fetch_all(&self.pool).await?;
        convert(rows)
    }
}

pub(super) fn select_by_ids(ids: &[String]) -> Sql<'_> {
    let mut query = Sql::new("SELECT * FROM instances WHERE id IN (");
    let mut list = query.separated(", ");
    for id in ids {
        list.push_bind(id);
    }
    query.push(") ORDER BY id");
    query
}

pub(super) async fn insert_instance(
    tx: &mut Transaction<'_, Any>,
    instance: &InstanceRecord,
) -> Result<(), StorageError> {
    let tags = serde_json::to_string(&instance.tags).expect("tags serialize");
    sqlx::query(
        "INSERT INTO instances (id, cloud_id, name, namespace, region, ami, instance_type, \
             storage_gb, state, public_ip, private_ip, key_name, tags, backend, launch_index, \
             created_by_job, active_job_id, vcpus, created_at, updated_at, security_groups, \
             login_user) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)",
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
    .bind(instance.backend.as_str())
    .bind(instance.launch_index)
    .bind(&instance.created_by_job)
    .bind(&instance.active_job_id)
    .bind(instance.vcpus)
    .bind(instance.created_at)
    .bind(instance.updated_at)
    .bind(instance.security_groups.as_ref().map(|groups| serde_json::to_string(groups).expect("ids serialize")))
    .bind(&instance.login_user)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes what the cloud reported of one instance and answers the drift it found: changes of
/// state and of the attributes corral manages (`ObservedAttributes::apply_to`) that no job
/// owning the instance made. An instance a job owns takes its state and addresses from the
/// observation but keeps its attributes, which the job may be changing. The first observation
/// of an instance fills what its record did not know (`ObservedAttributes::fill_unknown`).
/// The row is read locked (the transaction is a `Store::begin_write`), so that the state it
/// is judged against is the one it leaves.
pub(super) async fn update_observed(
    tx: &mut Transaction<'_, Any>,
    seen: &Observation,
    observed_at: Option<Millis>,
    now: Millis,
) -> Result<Vec<Drift>, StorageError> {
    let select = format!("SELECT * FROM instances WHERE id = $1{}", Dialect::of(tx).lock_rows());
    let row: Option<InstanceRow> =
        sqlx::query_as(&select).bind(&seen.instance_id).fetch_optional(&mut **tx).await?;
    let Some(row) = row else { return Ok(Vec::new()) };
    let before = InstanceRecord::try_from(row)?;
    if observed_at.is_some_and(|at| before.updated_at >= at) {
        return Ok(Vec::new());
    }
    let owned = before.active_job_id.is_some();
    let mut after = InstanceRecord {
        cloud_id: Some(seen.cloud_id.clone()),
        state: seen.state,
        public_ip: seen.public_ip.clone(),
        private_ip: seen.private_ip.clone(),
        ..before.clone()
    };
    let mut drifts = Vec::new();
    if before.state != seen.state && !owned {
        drifts.push(state_drift(&seen.instance_id, before.state.as_str(), seen.state));
    }
    // An instance on its way out has no network interfaces to report groups of.
    let gone = matches!(seen.state, InstanceState::ShuttingDown | InstanceState::Terminated);
    match &seen.attributes {
        Some(cloud) if seen.authoritative => {
            cloud.apply_to(&mut after);
        }
        Some(cloud) if before.security_groups.is_none() => cloud.fill_unknown(&mut after),
        Some(_) if gone => {}
        // Nobody changes it: what changed, changed behind corral's back.
        Some(cloud) if !owned => drifts.extend(cloud.apply_to(&mut after)),
        Some(cloud) => {
            // A job owns it: what changed is the job's doing (a Terraform run applying its
            // configuration), or nothing, except for a tag job, which is making the name and
            // tags the record already says true.
            let owner = before.active_job_id.as_deref().unwrap_or_default();
            let kind: Option<(String,)> = sqlx::query_as("SELECT kind FROM jobs WHERE id = $1")
                .bind(owner)
                .fetch_optional(&mut **tx)
                .await?;
            if kind.is_none_or(|(kind,)| kind != JobKind::TagInstances.as_str()) {
                cloud.apply_to(&mut after);
            }
        }
        None => {}
    }
    if after.name != before.name {
        // A name another instance of the namespace holds stays that one's; this one keeps its
        // own (the change is drift all the same). The namespace's row lock orders this with
        // its creates and renames.
        sqlx::query("UPDATE namespaces SET updated_at = updated_at WHERE name = $1")
            .bind(&after.namespace)
            .execute(&mut **tx)
            .await?;
        let others: Vec<(String,)> = sqlx::query_as(&format!(
            "SELECT id FROM instances WHERE {HOLDS_NAME} AND namespace = $1 AND name = $2 \
             AND id <> $3"
        ))
        .bind(&after.namespace)
        .bind(&after.name)
        .bind(&after.id)
        .fetch_all(&mut **tx)
        .await?;
        if !others.is_empty() {
            after.name = before.name.clone();
        }
    }
    if after.name == before.name && drifts.iter().any(|drift| drift.field == "name") {
        // A cloud name the record did not take is told once, not at every pass.
        let last: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT new_value FROM drift_events WHERE instance_id = $1 AND field = 'name' \
             ORDER BY at DESC, id DESC LIMIT 1",
        )
        .bind(&after.id)
        .fetch_optional(&mut **tx)
        .await?;
        let told = last.map(|(value,)| value);
        drifts.retain(|drift| drift.field != "name" || Some(&drift.new_value) != told.as_ref());
    }
    if after == before {
        return Ok(drifts);
    }
    sqlx::query(
        "UPDATE instances SET cloud_id = $1, state = $2, public_ip = $3, private_ip = $4, \
         name = $5, instance_type = $6, vcpus = $7, key_name = $8, tags = $9, \
         security_groups = $10, storage_gb = $11, updated_at = $12 WHERE id = $13",
    )
    .bind(&after.cloud_id)
    .bind(after.state.as_str())
    .bind(&after.public_ip)
    .bind(&after.private_ip)
    .bind(&after.name)
    .bind(&after.instance_type)
    .bind(after.vcpus)
    .bind(&after.key_name)
    .bind(serde_json::to_string(&after.tags).expect("tags serialize"))
    .bind(
        after
            .security_groups
            .as_ref()
            .map(|groups| serde_json::to_string(groups).expect("ids serialize")),
    )
    .bind(after.storage_gb)
    .bind(now)
    .bind(&after.id)
    .execute(&mut **tx)
    .await?;
    if before.state != seen.state {
        let entry = AuditEntry::new("instance.state", &seen.instance_id)
            .namespace(&before.namespace)
            .old(serde_json::json!({ "state": before.state.as_str() }))
            .new_value(serde_json::json!({
                "state": seen.state.as_str(),
                "cloud_id": seen.cloud_id,
                "public_ip": seen.public_ip,
                "private_ip": seen.private_ip,
            }));
        insert_audit(tx, &Actor::system(), &entry).await?;
    }
    Ok(drifts)
}

fn state_drift(instance_id: &str, old_state: &str, new_state: InstanceState) -> Drift {
    Drift {
        instance_id: instance_id.to_string(),
        field: "state".to_string(),
        old_value: Some(old_state.to_string()),
        new_value: Some(new_state.to_string()),
    }
}
