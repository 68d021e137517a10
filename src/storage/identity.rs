//! Identity: users with their roles per namespace, API keys, the first admin, and the
//! settings row that holds the signing secret.

use std::collections::BTreeMap;

use sqlx::{Any, Transaction};

use super::sql::Sql;

use super::audit::insert_audit;
use super::{Actor, AuditEntry, Dialect, Millis, StorageError, Store, now_millis};
use crate::domain::Role;

/// A user, with its roles per namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: String,
    pub username: String,
    /// Argon2id in PHC string format; never leaves the server.
    pub password_hash: String,
    pub admin: bool,
    pub roles: BTreeMap<String, Role>,
    /// Raised by every password change; tokens issued under another value are refused.
    pub credentials_version: i64,
    /// The password was generated: the user must choose one before doing anything else.
    pub must_change_password: bool,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// Changes to a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserChanges {
    /// A new password: raises the user's credentials version, which ends their tokens.
    pub password_hash: Option<String>,
    pub admin: Option<bool>,
    /// Roles to give (`Some`) or take away (`None`), per namespace; the others stay.
    pub roles: BTreeMap<String, Option<Role>>,
}

/// What became of a request to write a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserWrite {
    Done(UserRecord),
    UsernameTaken,
    NotFound,
    /// Roles name namespaces that do not exist; nothing was stored.
    UnknownNamespaces(Vec<String>),
    /// Roles to take away name namespaces the user holds no role in; nothing was stored.
    NoRoleToRemove(Vec<String>),
    /// The change would leave corral without an admin; nothing was stored.
    LastAdmin,
}

/// An API key. Only a hash of the key is stored; the prefix identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub user_id: String,
    /// The owner's username (read only).
    pub username: String,
    pub name: String,
    pub prefix: String,
    /// Hex SHA-256 of the whole key.
    pub key_hash: String,
    pub expires_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
    pub created_at: Millis,
}

#[derive(sqlx::FromRow)]
pub(super) struct UserRow {
    pub id: String,
    username: String,
    password_hash: String,
    is_admin: i64,
    credentials_version: i64,
    must_change_password: i64,
    created_at: i64,
    updated_at: i64,
}

/// The booleans are read as integers: `Any` cannot map a column SQLite declares `BOOLEAN`.
pub(super) const USER_COLUMNS: &str = "id, username, password_hash, \
     CASE WHEN is_admin THEN 1 ELSE 0 END AS is_admin, credentials_version, \
     CASE WHEN must_change_password THEN 1 ELSE 0 END AS must_change_password, \
     created_at, updated_at";

/// Users with their roles, from `(user_id, namespace, role)` bindings.
pub(super) fn with_roles(
    rows: Vec<UserRow>,
    bindings: Vec<(String, String, String)>,
) -> Result<Vec<UserRecord>, StorageError> {
    let mut roles: BTreeMap<String, BTreeMap<String, Role>> = BTreeMap::new();
    for (user_id, namespace, role) in bindings {
        let role = role.parse().map_err(StorageError::Corrupt)?;
        roles.entry(user_id).or_default().insert(namespace, role);
    }
    Ok(rows
        .into_iter()
        .map(|row| UserRecord {
            roles: roles.remove(&row.id).unwrap_or_default(),
            id: row.id,
            username: row.username,
            password_hash: row.password_hash,
            admin: row.is_admin != 0,
            credentials_version: row.credentials_version,
            must_change_password: row.must_change_password != 0,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
        .collect())
}

#[derive(sqlx::FromRow)]
pub(super) struct ApiKeyRow {
    id: String,
    user_id: String,
    username: String,
    name: String,
    prefix: String,
    key_hash: String,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    created_at: i64,
}

pub(super) const API_KEY_SELECT: &str = "SELECT api_keys.id, api_keys.user_id, users.username, \
     api_keys.name, api_keys.prefix, api_keys.key_hash, api_keys.expires_at, api_keys.revoked_at, \
     api_keys.created_at FROM api_keys JOIN users ON users.id = api_keys.user_id";

impl From<ApiKeyRow> for ApiKeyRecord {
    fn from(row: ApiKeyRow) -> ApiKeyRecord {
        ApiKeyRecord {
            id: row.id,
            user_id: row.user_id,
            username: row.username,
            name: row.name,
            prefix: row.prefix,
            key_hash: row.key_hash,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
            created_at: row.created_at,
        }
    }
}

impl Store {
    /// Commits `tx`, which changed users, role bindings or API keys, raising the identity
    /// version in it (last, so that no transaction waits for another while holding its row).
    async fn commit_identity(&self, mut tx: Transaction<'_, Any>) -> Result<(), StorageError> {
        let (version,): (i64,) = sqlx::query_as(
            "UPDATE identity_version SET version = version + 1 WHERE id = 1 RETURNING version",
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        self.identity_seen.fetch_max(version, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    /// Creates `user` as the first admin, unless any user exists; true if it was created.
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
            // The `default` namespace comes with the schema, before any clock reading; it
            // dates from the first admin, made at the first start.
            sqlx::query(
                "UPDATE namespaces SET created_at = $1, updated_at = $1 \
                 WHERE name = 'default' AND created_at = 0",
            )
            .bind(user.created_at)
            .execute(&mut *tx)
            .await?;
        }
        self.commit_identity(tx).await?;
        Ok(created)
    }

    /// The value of setting `name`, storing `value` first if it has none, so that every
    /// process sharing the database agrees on it.
    pub async fn setting_or_insert(&self, name: &str, value: &str) -> Result<String, StorageError> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
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

    pub async fn create_user(
        &self,
        user: &UserRecord,
        actor: &Actor,
    ) -> Result<UserWrite, StorageError> {
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
        self.commit_identity(tx).await?;
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
        let missing: Vec<String> = changes
            .roles
            .iter()
            .filter(|(namespace, role)| role.is_none() && !before.roles.contains_key(*namespace))
            .map(|(namespace, _)| namespace.clone())
            .collect();
        if !missing.is_empty() {
            tx.rollback().await?;
            return Ok(UserWrite::NoRoleToRemove(missing));
        }
        let mut roles = before.roles.clone();
        crate::domain::merge(&mut roles, changes.roles.clone());
        if !changes.roles.is_empty() {
            let unknown = write_roles(&mut tx, &before.id, &roles).await?;
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
        let mut new_value = user_value(admin, &roles);
        if changes.password_hash.is_some() {
            new_value["password"] = serde_json::json!("changed");
        }
        let entry = AuditEntry::new("user.update", username)
            .old(user_value(before.admin, &before.roles))
            .new_value(new_value);
        insert_audit(&mut tx, actor, &entry).await?;
        self.commit_identity(tx).await?;
        match self.find_user("username", username).await? {
            Some(user) => Ok(UserWrite::Done(user)),
            None => Ok(UserWrite::NotFound),
        }
    }

    /// Deletes a user with its role bindings and API keys.
    pub async fn delete_user(
        &self,
        username: &str,
        actor: &Actor,
    ) -> Result<UserWrite, StorageError> {
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
        let entry =
            AuditEntry::new("user.delete", username).old(user_value(before.admin, &before.roles));
        insert_audit(&mut tx, actor, &entry).await?;
        self.commit_identity(tx).await?;
        Ok(UserWrite::Done(before))
    }

    pub async fn list_users(&self) -> Result<Vec<UserRecord>, StorageError> {
        let rows: Vec<UserRow> =
            sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY username"))
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
    async fn find_user(
        &self,
        column: &str,
        value: &str,
    ) -> Result<Option<UserRecord>, StorageError> {
        debug_assert!(column == "id" || column == "username");
        #[derive(sqlx::FromRow)]
        struct Row {
            #[sqlx(flatten)]
            user: UserRow,
            namespace: Option<String>,
            role: Option<String>,
        }
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {USER_COLUMNS}, role_bindings.namespace, role_bindings.role FROM users \
             LEFT JOIN role_bindings ON role_bindings.user_id = users.id WHERE users.{column} = $1"
        ))
        .bind(value)
        .fetch_all(&self.pool)
        .await?;
        let bindings: Vec<(String, String, String)> = rows
            .iter()
            .filter_map(|row| {
                Some((row.user.id.clone(), row.namespace.clone()?, row.role.clone()?))
            })
            .collect();
        let users: Vec<UserRow> = rows.into_iter().map(|row| row.user).take(1).collect();
        Ok(with_roles(users, bindings)?.pop())
    }

    pub async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StorageError> {
        self.find_user("username", username).await
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<UserRecord>, StorageError> {
        self.find_user("id", id).await
    }

    pub async fn create_api_key(
        &self,
        key: &ApiKeyRecord,
        actor: &Actor,
    ) -> Result<(), StorageError> {
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
        self.commit_identity(tx).await?;
        Ok(())
    }

    /// API keys, newest first: of one user, or of everyone.
    pub async fn list_api_keys(
        &self,
        user_id: Option<&str>,
    ) -> Result<Vec<ApiKeyRecord>, StorageError> {
        let mut query = Sql::new(API_KEY_SELECT);
        if let Some(user_id) = user_id {
            query.push(" WHERE api_keys.user_id = ").push_bind(user_id);
        }
        query.push(" ORDER BY api_keys.id DESC");
        let rows: Vec<ApiKeyRow> = query.build_query_as().fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(ApiKeyRecord::from).collect())
    }

    pub async fn api_key_by_prefix(
        &self,
        prefix: &str,
    ) -> Result<Option<ApiKeyRecord>, StorageError> {
        let row: Option<ApiKeyRow> =
            sqlx::query_as(&format!("{API_KEY_SELECT} WHERE api_keys.prefix = $1"))
                .bind(prefix)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(ApiKeyRecord::from))
    }

    /// Revokes key `id` (of `user_id` only, when given); the key as it was, or `None` if there
    /// is no such key.
    pub async fn revoke_api_key(
        &self,
        id: &str,
        user_id: Option<&str>,
        actor: &Actor,
    ) -> Result<Option<ApiKeyRecord>, StorageError> {
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        let mut update = Sql::new("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ");
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
        self.commit_identity(tx).await?;
        Ok(Some(key))
    }
}

/// Locks a user row for a change (writing first, see `storage::sql`) and returns it as it
/// was, with its roles.
pub(super) async fn lock_user(
    tx: &mut Transaction<'_, Any>,
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
pub(super) async fn lock_admins(tx: &mut Transaction<'_, Any>) -> Result<(), StorageError> {
    let lock = Dialect::of(tx).lock_rows();
    if lock.is_empty() {
        return Ok(());
    }
    sqlx::query(&format!("SELECT id FROM users WHERE is_admin ORDER BY id{lock}"))
        .fetch_all(&mut **tx)
        .await?;
    Ok(())
}

pub(super) async fn admin_remains(tx: &mut Transaction<'_, Any>) -> Result<bool, StorageError> {
    let (admins,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM users WHERE is_admin").fetch_one(&mut **tx).await?;
    Ok(admins > 0)
}

/// Replaces a user's role bindings; the namespaces named that do not exist (and then
/// the caller rolls back).
pub(super) async fn write_roles(
    tx: &mut Transaction<'_, Any>,
    user_id: &str,
    roles: &std::collections::BTreeMap<String, Role>,
) -> Result<Vec<String>, StorageError> {
    sqlx::query("DELETE FROM role_bindings WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    if roles.is_empty() {
        return Ok(Vec::new());
    }
    let mut query = Sql::new("SELECT name FROM namespaces WHERE name IN (");
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

/// A user's admin flag and roles, as the audit log records them.
pub(super) fn user_value(
    admin: bool,
    roles: &std::collections::BTreeMap<String, crate::domain::Role>,
) -> serde_json::Value {
    let roles: serde_json::Map<String, serde_json::Value> =
        roles.iter().map(|(ns, role)| (ns.clone(), role.as_str().into())).collect();
    serde_json::json!({ "admin": admin, "roles": roles })
}
