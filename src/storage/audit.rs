//! The audit log: who did what to which target, written in the transaction of the change
//! it records, and read back filtered and paged.

use sqlx::{Any, Transaction};

use super::sql::Sql;

use super::{Millis, StorageError, Store, convert, now_millis};

/// Who a change is made for: an audit log actor (username, API key prefix, or `system`) and
/// the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    /// The user behind the name; `None` for corral itself.
    pub user_id: Option<String>,
    /// Which of the user's credentials acted (`Principal::credential_name`); `None` for corral
    /// itself.
    pub credential: Option<String>,
    pub request_id: Option<String>,
}

impl Actor {
    /// corral itself: workers, the reconciler, start-up.
    pub fn system() -> Actor {
        Actor { name: SYSTEM_ACTOR.to_string(), user_id: None, credential: None, request_id: None }
    }
}

/// The audit log's actor for what corral does on its own.
pub const SYSTEM_ACTOR: &str = "system";

/// One event for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub action: String,
    pub target: String,
    pub namespace: Option<String>,
    pub old_value: Option<serde_json::Value>,
    pub new_value: Option<serde_json::Value>,
}

impl AuditEntry {
    pub fn new(action: &str, target: &str) -> AuditEntry {
        AuditEntry {
            action: action.to_string(),
            target: target.to_string(),
            namespace: None,
            old_value: None,
            new_value: None,
        }
    }

    pub fn namespace(mut self, namespace: &str) -> AuditEntry {
        self.namespace = Some(namespace.to_string());
        self
    }

    pub fn old(mut self, value: serde_json::Value) -> AuditEntry {
        self.old_value = Some(value);
        self
    }

    pub fn new_value(mut self, value: serde_json::Value) -> AuditEntry {
        self.new_value = Some(value);
        self
    }
}

/// A stored audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: i64,
    pub at: Millis,
    pub actor: String,
    /// Which of the actor's credentials acted.
    pub credential: Option<String>,
    pub action: String,
    pub target: String,
    pub namespace: Option<String>,
    pub old_value: Option<serde_json::Value>,
    pub new_value: Option<serde_json::Value>,
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only events of these namespaces (what the caller may see); `None` for all events.
    pub visible: Option<Vec<String>>,
    pub namespace: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    /// Only events older than this id (keyset paging): narrows the rows, not the total.
    pub before: Option<i64>,
}

impl AuditFilter {
    /// Whether only namespaces narrow the events, so that the kept counts give the total.
    fn counted(&self) -> bool {
        self.actor.is_none() && self.action.is_none() && self.target.is_none()
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct AuditRow {
    id: i64,
    at: i64,
    actor: String,
    credential: Option<String>,
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
            credential: row.credential,
            action: row.action,
            target: row.target,
            namespace: row.namespace,
            request_id: row.request_id,
        })
    }
}

impl Store {
    /// Records events that no other change carries.
    pub async fn record_audit(
        &self,
        entries: &[AuditEntry],
        actor: &Actor,
    ) -> Result<(), StorageError> {
        let mut tx = self.pool.begin().await?;
        for entry in entries {
            insert_audit(&mut tx, actor, entry).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// One page of the audit log, newest first, and how many events match in all.
    pub async fn audit_page(
        &self,
        filter: &AuditFilter,
        page: i64,
        limit: i64,
    ) -> Result<(Vec<AuditRecord>, i64), StorageError> {
        let rows = self.audit_rows(filter, (page - 1) * limit, limit).await?;
        let total = if filter.counted() {
            self.audit_counted_total(filter).await?
        } else {
            self.audit_total(filter).await?
        };
        Ok((rows, total))
    }

    async fn audit_rows(
        &self,
        filter: &AuditFilter,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StorageError> {
        let mut query = Sql::new(
            "SELECT id, at, actor, credential, action, target, namespace, old_value, new_value, request_id \
             FROM audit_events WHERE 1 = 1",
        );
        if !push_audit_filter(&mut query, filter) {
            return Ok(Vec::new());
        }
        // Not in `push_audit_filter`: the total counts every page, not those after a
        // cursor.
        if let Some(before) = filter.before {
            query.push(" AND id < ").push_bind(before);
        }
        query.push(" ORDER BY id DESC LIMIT ").push_bind(limit).push(" OFFSET ").push_bind(offset);
        let rows: Vec<AuditRow> = query.build_query_as().fetch_all(&self.pool).await?;
        convert(rows)
    }

    async fn audit_total(&self, filter: &AuditFilter) -> Result<i64, StorageError> {
        let mut query = Sql::new("SELECT COUNT(*) FROM audit_events WHERE 1 = 1");
        if !push_audit_filter(&mut query, filter) {
            return Ok(0);
        }
        let (total,): (i64,) = query.build_query_as().fetch_one(&self.pool).await?;
        Ok(total)
    }

    /// The total of a filter that names namespaces only, from the kept counts.
    async fn audit_counted_total(&self, filter: &AuditFilter) -> Result<i64, StorageError> {
        let mut query = Sql::new(
            "SELECT CAST(COALESCE(SUM(total), 0) AS BIGINT) FROM audit_counts WHERE 1 = 1",
        );
        if let Some(namespace) = &filter.namespace {
            query.push(" AND namespace = ").push_bind(namespace);
        }
        if let Some(visible) = &filter.visible {
            if visible.is_empty() {
                return Ok(0);
            }
            query.push(" AND namespace IN (");
            let mut list = query.separated(", ");
            for name in visible {
                list.push_bind(name);
            }
            query.push(")");
        }
        let (total,): (i64,) = query.build_query_as().fetch_one(&self.pool).await?;
        Ok(total)
    }
}

/// Narrows an audit query to `filter`; false when nothing can match.
pub(super) fn push_audit_filter(query: &mut Sql<'_>, filter: &AuditFilter) -> bool {
    // An API key's prefix names the credential that acted, as actors did before they were
    // people (rows of keys whose user is gone still do): `actor=crl_…` finds what that key did.
    if let Some(prefix) = filter.actor.as_ref().filter(|actor| actor.starts_with("crl_")) {
        query.push(" AND (credential = ").push_bind(prefix.clone());
        query.push(" OR actor = ").push_bind(prefix.clone()).push(")");
    }
    let actor = filter.actor.clone().filter(|actor| !actor.starts_with("crl_"));
    for (column, value) in [
        ("namespace", &filter.namespace),
        ("actor", &actor),
        ("action", &filter.action),
        ("target", &filter.target),
    ] {
        if let Some(value) = value {
            query.push(format!(" AND {column} = ")).push_bind(value.clone());
        }
    }
    if let Some(visible) = &filter.visible {
        if visible.is_empty() {
            return false;
        }
        query.push(" AND namespace IN (");
        let mut list = query.separated(", ");
        for name in visible {
            list.push_bind(name.clone());
        }
        query.push(")");
    }
    true
}

/// Appends an event to the audit log, in the transaction of the change it records.
pub(super) async fn insert_audit(
    tx: &mut Transaction<'_, Any>,
    actor: &Actor,
    entry: &AuditEntry,
) -> Result<(), StorageError> {
    insert_audits(tx, actor, std::slice::from_ref(entry)).await
}

/// Appends events to the audit log, many per statement, and keeps the counts per
/// namespace.
pub(super) async fn insert_audits(
    tx: &mut Transaction<'_, Any>,
    actor: &Actor,
    entries: &[AuditEntry],
) -> Result<(), StorageError> {
    let now = now_millis();
    for chunk in entries.chunks(100) {
        let mut insert = Sql::new(
            "INSERT INTO audit_events (at, actor, credential, action, target, namespace, old_value, \
             new_value, request_id) ",
        );
        insert.push_values(chunk, |mut row, entry| {
            row.push_bind(now)
                .push_bind(actor.name.clone())
                .push_bind(actor.credential.clone())
                .push_bind(entry.action.clone())
                .push_bind(entry.target.clone())
                .push_bind(entry.namespace.clone())
                .push_bind(entry.old_value.as_ref().map(|value| value.to_string()))
                .push_bind(entry.new_value.as_ref().map(|value| value.to_string()))
                .push_bind(actor.request_id.clone());
        });
        insert.build().execute(&mut **tx).await?;
    }
    let mut per_namespace: std::collections::BTreeMap<&str, i64> = Default::default();
    for entry in entries {
        *per_namespace.entry(entry.namespace.as_deref().unwrap_or("")).or_default() += 1;
    }
    for (namespace, added) in per_namespace {
        sqlx::query(
            "INSERT INTO audit_counts (namespace, total) VALUES ($1, $2) \
             ON CONFLICT (namespace) DO UPDATE SET total = audit_counts.total + excluded.total",
        )
        .bind(namespace)
        .bind(added)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
