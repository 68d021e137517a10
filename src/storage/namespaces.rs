//! Namespaces: their quotas and default backend.

use super::sql::Sql;

use super::audit::insert_audit;
use super::instances::LIVE;
use super::{Actor, AuditEntry, Millis, StorageError, Store, now_millis};
use crate::domain::Backend;

/// A namespace, its quotas (`None`: no limit) and what it uses now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceRecord {
    pub name: String,
    pub max_instances: Option<i64>,
    pub max_vcpus: Option<i64>,
    /// The backend of create requests that name none; `None`: the server's default.
    pub default_backend: Option<Backend>,
    /// Instances that exist or are being created (not terminated, not failed).
    pub instances: i64,
    pub vcpus: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// What a namespace update changes; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceChange {
    /// Most instances; `Some(None)`: no limit.
    pub max_instances: Option<Option<i64>>,
    /// Most vCPUs; `Some(None)`: no limit.
    pub max_vcpus: Option<Option<i64>>,
    /// `Some(None)` returns the namespace to the server's default backend.
    pub default_backend: Option<Option<Backend>>,
}

#[derive(sqlx::FromRow)]
pub(super) struct NamespaceRow {
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
            default_backend: row
                .default_backend
                .as_deref()
                .and_then(|name| name.parse::<Backend>().ok()),
            instances: row.instances,
            vcpus: row.vcpus,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

impl Store {
    /// Creates a namespace; false if the name is taken.
    pub async fn create_namespace(
        &self,
        namespace: &NamespaceRecord,
        actor: &Actor,
    ) -> Result<bool, StorageError> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO namespaces (name, max_instances, max_vcpus, default_backend, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&namespace.name)
        .bind(namespace.max_instances)
        .bind(namespace.max_vcpus)
        .bind(namespace.default_backend.map(Backend::as_str))
        .bind(namespace.created_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        let entry = AuditEntry::new("namespace.create", &namespace.name)
            .namespace(&namespace.name)
            .new_value(namespace_value(
                namespace.max_instances,
                namespace.max_vcpus,
                namespace.default_backend,
            ));
        insert_audit(&mut tx, actor, &entry).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Changes a namespace's settings; the namespace after the change, or `None` if it does not
    /// exist.
    pub async fn update_namespace(
        &self,
        name: &str,
        change: &NamespaceChange,
        actor: &Actor,
    ) -> Result<Option<NamespaceRecord>, StorageError> {
        let mut tx = self.pool.begin().await?;
        // Touching the row first locks it, and answers the settings it had.
        let before: Option<(Option<i64>, Option<i64>, Option<String>)> = sqlx::query_as(
            "UPDATE namespaces SET updated_at = $1 WHERE name = $2 \
             RETURNING max_instances, max_vcpus, default_backend",
        )
        .bind(now_millis())
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((old_instances, old_vcpus, old_backend)) = before else {
            tx.rollback().await?;
            return Ok(None);
        };
        let old_backend = old_backend.as_deref().and_then(|name| name.parse::<Backend>().ok());
        let max_instances = change.max_instances.unwrap_or(old_instances);
        let max_vcpus = change.max_vcpus.unwrap_or(old_vcpus);
        let backend = change.default_backend.unwrap_or(old_backend);
        sqlx::query(
            "UPDATE namespaces SET max_instances = $1, max_vcpus = $2, default_backend = $3 \
             WHERE name = $4",
        )
        .bind(max_instances)
        .bind(max_vcpus)
        .bind(backend.map(Backend::as_str))
        .bind(name)
        .execute(&mut *tx)
        .await?;
        let entry = AuditEntry::new("namespace.update", name)
            .namespace(name)
            .old(namespace_value(old_instances, old_vcpus, old_backend))
            .new_value(namespace_value(max_instances, max_vcpus, backend));
        insert_audit(&mut tx, actor, &entry).await?;
        tx.commit().await?;
        self.find_namespace(name).await
    }

    /// The backend a namespace's create requests default to, if it sets one (and exists).
    pub async fn namespace_default_backend(
        &self,
        name: &str,
    ) -> Result<Option<Backend>, StorageError> {
        let name = self.default_backend_name(name).await?;
        // The column's CHECK admits backend names only.
        Ok(name.as_deref().and_then(|name| name.parse::<Backend>().ok()))
    }

    /// Namespaces with their use, by name: all, or only `visible` ones.
    pub async fn list_namespaces(
        &self,
        visible: Option<&[String]>,
    ) -> Result<Vec<NamespaceRecord>, StorageError> {
        if visible.is_some_and(|names| names.is_empty()) {
            return Ok(Vec::new());
        }
        let mut query = Sql::new(format!(
            "SELECT n.name, n.max_instances, n.max_vcpus, n.default_backend, n.created_at, n.updated_at, \
             CAST(COALESCE(u.instances, 0) AS BIGINT) AS instances, \
             CAST(COALESCE(u.vcpus, 0) AS BIGINT) AS vcpus \
             FROM namespaces n LEFT JOIN (SELECT namespace, COUNT(*) AS instances, SUM(vcpus) AS vcpus \
                 FROM instances WHERE {LIVE} GROUP BY namespace) u \
             ON u.namespace = n.name"
        ));
        if let Some(names) = visible {
            query.push(" WHERE n.name IN (");
            let mut list = query.separated(", ");
            for name in names {
                list.push_bind(name);
            }
            query.push(")");
        }
        query.push(" ORDER BY n.name");
        let rows: Vec<NamespaceRow> = query.build_query_as().fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(NamespaceRecord::from).collect())
    }

    pub async fn find_namespace(
        &self,
        name: &str,
    ) -> Result<Option<NamespaceRecord>, StorageError> {
        Ok(self.list_namespaces(Some(&[name.to_string()])).await?.pop())
    }

    async fn default_backend_name(&self, name: &str) -> Result<Option<String>, StorageError> {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT default_backend FROM namespaces WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|(backend,)| backend))
    }
}

/// A namespace's settings, as the audit log records them.
pub(super) fn namespace_value(
    instances: Option<i64>,
    vcpus: Option<i64>,
    default_backend: Option<Backend>,
) -> serde_json::Value {
    serde_json::json!({
        "quota": { "instances": instances, "vcpus": vcpus },
        "default_backend": default_backend.map(Backend::as_str),
    })
}
