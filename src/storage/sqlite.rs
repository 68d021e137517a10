//! SQLite, the embedded default: one file, WAL mode, migrations from `migrations/sqlite`.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use crate::domain::{Action, StateConflict};
use crate::storage::rows::{DriftRow, InstanceRow, JOB_COLUMNS, JobRow, OrphanRow, convert};
use crate::storage::sql::{Dialect, sql_store};
use crate::storage::{
    Admission, Counts, DriftRecord, IdempotencyKey, InstanceFilter, InstanceRecord, JobEvent,
    JobOutcome, JobRecord, JobStatus, Millis, NewJob, Observation, OrphanRecord, PageRequest,
    Reconciliation, StorageError, now_millis,
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
