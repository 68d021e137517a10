//! The SQL of users, API keys, namespaces and the audit log, instantiated per dialect by
//! `identity_store!` next to `sql_store!` (whose transaction helpers it shares, and which uses
//! `insert_audit` from here so that every change and its audit event commit together).

/// Implements the identity and audit operations for `$store` (a struct with a `pool` of `$db`).
macro_rules! identity_store {
    ($store:ident, $db:ident, $dialect:expr) => {
        impl $store {
            pub async fn bootstrap_admin(&self, user: &UserRecord) -> Result<bool, StorageError> {
                let mut tx = self.pool.begin().await?;
                let created = sqlx::query(
                    "INSERT INTO users (id, username, password_hash, is_admin, must_change_password, \
                     created_at, updated_at) \
                     SELECT $1, $2, $3, TRUE, $4, $5, $5 WHERE NOT EXISTS (SELECT 1 FROM users) \
                     ON CONFLICT (username) DO NOTHING",
                )
                .bind(&user.id)
                .bind(&user.username)
                .bind(&user.password_hash)
                .bind(user.must_change_password)
                .bind(user.created_at)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if created {
                    let entry = AuditEntry::new("user.create", &user.username)
                        .new_value(serde_json::json!({ "admin": true, "roles": {} }));
                    insert_audit(&mut tx, &Actor::system(), &entry).await?;
                }
                tx.commit().await?;
                Ok(created)
            }

            pub async fn setting_or_insert(&self, name: &str, value: &str) -> Result<String, StorageError> {
                sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                    .bind(name)
                    .bind(value)
                    .execute(&self.pool)
                    .await?;
                let (stored,): (String,) = sqlx::query_as("SELECT value FROM settings WHERE name = $1")
                    .bind(name)
                    .fetch_one(&self.pool)
                    .await?;
                Ok(stored)
            }

            pub async fn create_user(&self, user: &UserRecord, actor: &Actor) -> Result<UserWrite, StorageError> {
                let mut tx = self.pool.begin().await?;
                let inserted = sqlx::query(
                    "INSERT INTO users (id, username, password_hash, is_admin, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (username) DO NOTHING",
                )
                .bind(&user.id)
                .bind(&user.username)
                .bind(&user.password_hash)
                .bind(user.admin)
                .bind(user.created_at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if inserted != 1 {
                    tx.rollback().await?;
                    return Ok(UserWrite::UsernameTaken);
                }
                let unknown = write_roles(&mut tx, &user.id, &user.roles).await?;
                if !unknown.is_empty() {
                    tx.rollback().await?;
                    return Ok(UserWrite::UnknownNamespaces(unknown));
                }
                let entry = AuditEntry::new("user.create", &user.username)
                    .new_value(user_value(user.admin, &user.roles));
                insert_audit(&mut tx, actor, &entry).await?;
                tx.commit().await?;
                Ok(UserWrite::Done(user.clone()))
            }

            pub async fn update_user(
                &self,
                username: &str,
                changes: &UserChanges,
                actor: &Actor,
            ) -> Result<UserWrite, StorageError> {
                let mut tx = self.pool.begin().await?;
                if changes.admin == Some(false) {
                    lock_admins(&mut tx).await?;
                }
                let Some(before) = lock_user(&mut tx, username).await? else {
                    tx.rollback().await?;
                    return Ok(UserWrite::NotFound);
                };
                sqlx::query(
                    "UPDATE users SET password_hash = COALESCE($1, password_hash), \
                     credentials_version = credentials_version + \
                         CASE WHEN $1 IS NULL THEN 0 ELSE 1 END, \
                     must_change_password = must_change_password AND $1 IS NULL, \
                     is_admin = COALESCE($2, is_admin) WHERE id = $3",
                )
                .bind(&changes.password_hash)
                .bind(changes.admin)
                .bind(&before.id)
                .execute(&mut *tx)
                .await?;
                if let Some(roles) = &changes.roles {
                    let unknown = write_roles(&mut tx, &before.id, roles).await?;
                    if !unknown.is_empty() {
                        tx.rollback().await?;
                        return Ok(UserWrite::UnknownNamespaces(unknown));
                    }
                }
                if before.admin && changes.admin == Some(false) && !admin_remains(&mut tx).await? {
                    tx.rollback().await?;
                    return Ok(UserWrite::LastAdmin);
                }
                let admin = changes.admin.unwrap_or(before.admin);
                let roles = changes.roles.as_ref().unwrap_or(&before.roles);
                let mut new_value = user_value(admin, roles);
                if changes.password_hash.is_some() {
                    new_value["password"] = serde_json::json!("changed");
                }
                let entry = AuditEntry::new("user.update", username)
                    .old(user_value(before.admin, &before.roles))
                    .new_value(new_value);
                insert_audit(&mut tx, actor, &entry).await?;
                tx.commit().await?;
                match self.find_user("username", username).await? {
                    Some(user) => Ok(UserWrite::Done(user)),
                    None => Ok(UserWrite::NotFound),
                }
            }

            pub async fn delete_user(&self, username: &str, actor: &Actor) -> Result<UserWrite, StorageError> {
                let mut tx = self.pool.begin().await?;
                lock_admins(&mut tx).await?;
                let Some(before) = lock_user(&mut tx, username).await? else {
                    tx.rollback().await?;
                    return Ok(UserWrite::NotFound);
                };
                for table in ["api_keys", "role_bindings"] {
                    sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1"))
                        .bind(&before.id)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query("DELETE FROM users WHERE id = $1").bind(&before.id).execute(&mut *tx).await?;
                if before.admin && !admin_remains(&mut tx).await? {
                    tx.rollback().await?;
                    return Ok(UserWrite::LastAdmin);
                }
                let entry = AuditEntry::new("user.delete", username)
                    .old(user_value(before.admin, &before.roles));
                insert_audit(&mut tx, actor, &entry).await?;
                tx.commit().await?;
                Ok(UserWrite::Done(before))
            }

            pub async fn list_users(&self) -> Result<Vec<UserRecord>, StorageError> {
                let rows: Vec<UserRow> = sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY username"))
                    .fetch_all(&self.pool)
                    .await?;
                let bindings: Vec<(String, String, String)> =
                    sqlx::query_as("SELECT user_id, namespace, role FROM role_bindings")
                        .fetch_all(&self.pool)
                        .await?;
                with_roles(rows, bindings)
            }

            /// The user whose `column` (`id` or `username`) is `value`, with its roles, in one
            /// query (every authenticated request asks).
            pub async fn find_user(&self, column: &str, value: &str) -> Result<Option<UserRecord>, StorageError> {
                debug_assert!(column == "id" || column == "username");
                #[derive(sqlx::FromRow)]
                struct Row {
                    #[sqlx(flatten)]
                    user: UserRow,
                    namespace: Option<String>,
                    role: Option<String>,
                }
                let rows: Vec<Row> = sqlx::query_as(&format!(
                    "SELECT users.*, role_bindings.namespace, role_bindings.role FROM users \
                     LEFT JOIN role_bindings ON role_bindings.user_id = users.id WHERE users.{column} = $1"
                ))
                .bind(value)
                .fetch_all(&self.pool)
                .await?;
                let bindings: Vec<(String, String, String)> = rows
                    .iter()
                    .filter_map(|row| Some((row.user.id.clone(), row.namespace.clone()?, row.role.clone()?)))
                    .collect();
                let users: Vec<UserRow> = rows.into_iter().map(|row| row.user).take(1).collect();
                Ok(with_roles(users, bindings)?.pop())
            }

            pub async fn create_api_key(&self, key: &ApiKeyRecord, actor: &Actor) -> Result<(), StorageError> {
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO api_keys (id, user_id, name, prefix, key_hash, expires_at, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&key.id)
                .bind(&key.user_id)
                .bind(&key.name)
                .bind(&key.prefix)
                .bind(&key.key_hash)
                .bind(key.expires_at)
                .bind(key.created_at)
                .execute(&mut *tx)
                .await?;
                let entry = AuditEntry::new("api_key.create", &key.prefix).new_value(serde_json::json!({
                    "name": key.name,
                    "user": key.username,
                    "expires_at": key.expires_at.map(crate::storage::to_datetime),
                }));
                insert_audit(&mut tx, actor, &entry).await?;
                tx.commit().await?;
                Ok(())
            }

            pub async fn list_api_keys(&self, user_id: Option<&str>) -> Result<Vec<ApiKeyRecord>, StorageError> {
                let mut query = QueryBuilder::<$db>::new(API_KEY_SELECT);
                if let Some(user_id) = user_id {
                    query.push(" WHERE api_keys.user_id = ").push_bind(user_id);
                }
                query.push(" ORDER BY api_keys.id DESC");
                let rows: Vec<ApiKeyRow> = query.build_query_as().fetch_all(&self.pool).await?;
                Ok(rows.into_iter().map(ApiKeyRecord::from).collect())
            }

            pub async fn api_key_by_prefix(&self, prefix: &str) -> Result<Option<ApiKeyRecord>, StorageError> {
                let row: Option<ApiKeyRow> =
                    sqlx::query_as(&format!("{API_KEY_SELECT} WHERE api_keys.prefix = $1"))
                        .bind(prefix)
                        .fetch_optional(&self.pool)
                        .await?;
                Ok(row.map(ApiKeyRecord::from))
            }

            pub async fn revoke_api_key(
                &self,
                id: &str,
                user_id: Option<&str>,
                now: Millis,
                actor: &Actor,
            ) -> Result<Option<ApiKeyRecord>, StorageError> {
                let mut tx = self.pool.begin().await?;
                let mut update = QueryBuilder::<$db>::new("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ");
                update.push_bind(now).push(") WHERE id = ").push_bind(id);
                if let Some(user_id) = user_id {
                    update.push(" AND user_id = ").push_bind(user_id);
                }
                if update.build().execute(&mut *tx).await?.rows_affected() != 1 {
                    tx.rollback().await?;
                    return Ok(None);
                }
                let row: ApiKeyRow = sqlx::query_as(&format!("{API_KEY_SELECT} WHERE api_keys.id = $1"))
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                let key = ApiKeyRecord::from(row);
                let entry = AuditEntry::new("api_key.revoke", &key.prefix)
                    .new_value(serde_json::json!({ "name": key.name, "user": key.username }));
                insert_audit(&mut tx, actor, &entry).await?;
                tx.commit().await?;
                Ok(Some(key))
            }

            pub async fn create_namespace(&self, namespace: &NamespaceRecord, actor: &Actor) -> Result<bool, StorageError> {
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
                    .new_value(namespace_value(namespace.max_instances, namespace.max_vcpus, namespace.default_backend));
                insert_audit(&mut tx, actor, &entry).await?;
                tx.commit().await?;
                Ok(true)
            }

            pub async fn update_namespace(
                &self,
                name: &str,
                change: &NamespaceChange,
                actor: &Actor,
            ) -> Result<(), StorageError> {
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
                    return Ok(());
                };
                let old_backend = old_backend.as_deref().and_then(Backend::parse);
                let (max_instances, max_vcpus) = change.quota.unwrap_or((old_instances, old_vcpus));
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
                Ok(())
            }

            pub async fn namespace_default_backend(&self, name: &str) -> Result<Option<String>, StorageError> {
                let row: Option<(Option<String>,)> =
                    sqlx::query_as("SELECT default_backend FROM namespaces WHERE name = $1")
                        .bind(name)
                        .fetch_optional(&self.pool)
                        .await?;
                Ok(row.and_then(|(backend,)| backend))
            }

            pub async fn list_namespaces(&self, visible: Option<&[String]>) -> Result<Vec<NamespaceRecord>, StorageError> {
                if visible.is_some_and(|names| names.is_empty()) {
                    return Ok(Vec::new());
                }
                let mut query = QueryBuilder::<$db>::new(
                    "SELECT n.name, n.max_instances, n.max_vcpus, n.default_backend, n.created_at, n.updated_at, \
                     CAST(COALESCE(u.instances, 0) AS BIGINT) AS instances, \
                     CAST(COALESCE(u.vcpus, 0) AS BIGINT) AS vcpus \
                     FROM namespaces n LEFT JOIN (SELECT namespace, COUNT(*) AS instances, SUM(vcpus) AS vcpus \
                         FROM instances WHERE state NOT IN ('terminated', 'failed') GROUP BY namespace) u \
                     ON u.namespace = n.name",
                );
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

            pub async fn record_audit(&self, entries: &[AuditEntry], actor: &Actor) -> Result<(), StorageError> {
                let mut tx = self.pool.begin().await?;
                for entry in entries {
                    insert_audit(&mut tx, actor, entry).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            pub async fn audit_rows(
                &self,
                filter: &AuditFilter,
                offset: i64,
                limit: i64,
            ) -> Result<Vec<AuditRecord>, StorageError> {
                let mut query = QueryBuilder::<$db>::new(
                    "SELECT id, at, actor, action, target, namespace, old_value, new_value, request_id \
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

            pub async fn audit_total(&self, filter: &AuditFilter) -> Result<i64, StorageError> {
                let mut query = QueryBuilder::<$db>::new("SELECT COUNT(*) FROM audit_events WHERE 1 = 1");
                if !push_audit_filter(&mut query, filter) {
                    return Ok(0);
                }
                let (total,): (i64,) = query.build_query_as().fetch_one(&self.pool).await?;
                Ok(total)
            }

            /// The total of a filter that names namespaces only, from the kept counts.
            pub async fn audit_counted_total(&self, filter: &AuditFilter) -> Result<i64, StorageError> {
                let mut query = QueryBuilder::<$db>::new(
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
        fn push_audit_filter(query: &mut QueryBuilder<'_, $db>, filter: &AuditFilter) -> bool {
            for (column, value) in [
                ("namespace", &filter.namespace),
                ("actor", &filter.actor),
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
        async fn insert_audit(
            tx: &mut sqlx::Transaction<'_, $db>,
            actor: &Actor,
            entry: &AuditEntry,
        ) -> Result<(), StorageError> {
            insert_audits(tx, actor, std::slice::from_ref(entry)).await
        }

        /// Appends events to the audit log, many per statement, and keeps the counts per
        /// namespace.
        async fn insert_audits(
            tx: &mut sqlx::Transaction<'_, $db>,
            actor: &Actor,
            entries: &[AuditEntry],
        ) -> Result<(), StorageError> {
            let now = now_millis();
            for chunk in entries.chunks(100) {
                let mut insert = QueryBuilder::<$db>::new(
                    "INSERT INTO audit_events (at, actor, action, target, namespace, old_value, new_value, request_id) ",
                );
                insert.push_values(chunk, |mut row, entry| {
                    row.push_bind(now)
                        .push_bind(actor.name.clone())
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

        /// Locks a user row for a change (writing first, see `storage::sql`) and returns it as it
        /// was, with its roles.
        async fn lock_user(
            tx: &mut sqlx::Transaction<'_, $db>,
            username: &str,
        ) -> Result<Option<UserRecord>, StorageError> {
            let rows: Vec<UserRow> = sqlx::query_as(&format!(
                "UPDATE users SET updated_at = $1 WHERE username = $2 RETURNING {USER_COLUMNS}"
            ))
            .bind(now_millis())
            .bind(username)
            .fetch_all(&mut **tx)
            .await?;
            let Some(row) = rows.first() else { return Ok(None) };
            let bindings: Vec<(String, String, String)> =
                sqlx::query_as("SELECT user_id, namespace, role FROM role_bindings WHERE user_id = $1")
                    .bind(&row.id)
                    .fetch_all(&mut **tx)
                    .await?;
            Ok(with_roles(rows, bindings)?.pop())
        }

        /// Before a change that may remove an admin: locks every admin's row, in id order (so
        /// that two such changes cannot deadlock), so that two transactions removing the last
        /// two admins at once cannot both see the other one remain. SQLite needs no lock: its
        /// write transactions run one at a time.
        async fn lock_admins(tx: &mut sqlx::Transaction<'_, $db>) -> Result<(), StorageError> {
            if $dialect.lock_rows().is_empty() {
                return Ok(());
            }
            sqlx::query(&format!("SELECT id FROM users WHERE is_admin ORDER BY id{}", $dialect.lock_rows()))
                .fetch_all(&mut **tx)
                .await?;
            Ok(())
        }

        async fn admin_remains(tx: &mut sqlx::Transaction<'_, $db>) -> Result<bool, StorageError> {
            let (admins,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users WHERE is_admin")
                .fetch_one(&mut **tx)
                .await?;
            Ok(admins > 0)
        }

        /// Replaces a user's role bindings; the namespaces named that do not exist (and then
        /// the caller rolls back).
        async fn write_roles(
            tx: &mut sqlx::Transaction<'_, $db>,
            user_id: &str,
            roles: &std::collections::BTreeMap<String, Role>,
        ) -> Result<Vec<String>, StorageError> {
            sqlx::query("DELETE FROM role_bindings WHERE user_id = $1").bind(user_id).execute(&mut **tx).await?;
            if roles.is_empty() {
                return Ok(Vec::new());
            }
            let mut query = QueryBuilder::<$db>::new("SELECT name FROM namespaces WHERE name IN (");
            let mut list = query.separated(", ");
            for namespace in roles.keys() {
                list.push_bind(namespace);
            }
            query.push(")");
            let known: Vec<(String,)> = query.build_query_as().fetch_all(&mut **tx).await?;
            let unknown: Vec<String> = roles
                .keys()
                .filter(|namespace| !known.iter().any(|(name,)| name == *namespace))
                .cloned()
                .collect();
            if !unknown.is_empty() {
                return Ok(unknown);
            }
            for (namespace, role) in roles {
                sqlx::query("INSERT INTO role_bindings (user_id, namespace, role) VALUES ($1, $2, $3)")
                    .bind(user_id)
                    .bind(namespace)
                    .bind(role.as_str())
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(Vec::new())
        }
    };
}

pub(crate) use identity_store;

use crate::domain::Backend;

/// A user's admin flag and roles, as the audit log records them.
pub fn user_value(
    admin: bool,
    roles: &std::collections::BTreeMap<String, crate::domain::Role>,
) -> serde_json::Value {
    let roles: serde_json::Map<String, serde_json::Value> =
        roles.iter().map(|(ns, role)| (ns.clone(), role.as_str().into())).collect();
    serde_json::json!({ "admin": admin, "roles": roles })
}

/// A namespace's settings, as the audit log records them.
pub fn namespace_value(
    instances: Option<i64>,
    vcpus: Option<i64>,
    default_backend: Option<Backend>,
) -> serde_json::Value {
    serde_json::json!({
        "quota": { "instances": instances, "vcpus": vcpus },
        "default_backend": default_backend.map(Backend::as_str),
    })
}
