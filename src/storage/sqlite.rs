//! SQLite, the embedded default: one file, WAL mode, migrations from `migrations/sqlite`.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use crate::domain::{Action, Backend, StateConflict};
use crate::domain::{EventType, JobKind, Notification, Role, subscribed};
use crate::storage::access_sql::access_store;
use crate::storage::identity_sql::{identity_store, namespace_value, user_value};
use crate::storage::notify_sql::{drift_notification, notified, notify_store, subscription_value};
use crate::storage::rows::{
    API_KEY_SELECT, ApiKeyRow, AuditRow, ClaimedRow, DeliveryRow, DriftRow, InstanceRow,
    JOB_COLUMNS, JobRow, NamespaceRow, OrphanRow, SubscriptionRow, USER_COLUMNS, UserRow, convert,
    with_roles,
};
use crate::storage::sql::{Dialect, sql_store};
use crate::storage::{
    Actor, Admission, ApiKeyRecord, AuditEntry, AuditFilter, AuditRecord, Channel, ClaimedDelivery,
    Counts, DeliveryFilter, DeliveryOutcome, DeliveryRecord, DriftRecord, IdempotencyKey,
    InstanceFilter, InstanceRecord, JobEvent, JobFilter, JobOutcome, JobRecord, KEY_PAIR_COLUMNS,
    KeyPairRecord, LockOutcome, Millis, NamespaceChange, NamespaceRecord, NewJob, Observation,
    OrphanRecord, PageRequest, QuotaExceeded, Reconciliation, SYSTEM_ACTOR, StorageError,
    SubscriptionRecord, UserChanges, UserRecord, UserWrite, now_millis, to_datetime,
};

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    pub async fn connect(url: &str) -> anyhow::Result<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)
            .with_context(|| format!("invalid SQLite URL '{url}'"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        if let Some(folder) = options.get_filename().parent()
            && !folder.as_os_str().is_empty()
        {
            std::fs::create_dir_all(folder)
                .with_context(|| format!("creating database folder {}", folder.display()))?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .with_context(|| format!("opening database {url}"))?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .context("applying database migrations")?;
        Ok(SqliteStore { pool })
    }
}

sql_store!(SqliteStore, Sqlite, Dialect::Sqlite);
identity_store!(SqliteStore, Sqlite, Dialect::Sqlite);
notify_store!(SqliteStore, Sqlite, Dialect::Sqlite);
access_store!(SqliteStore, Sqlite);
