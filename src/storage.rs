//! Persistence: the only module that contains SQL.
//!
//! `Store` is the one handle callers use. Behind it is one `sqlx::Any` pool, on SQLite (the
//! embedded default: one file, WAL mode, migrations from `migrations/sqlite`) or PostgreSQL
//! (several corral processes sharing one database: migrations from `migrations/postgres`,
//! claims with `FOR UPDATE SKIP LOCKED`, `LISTEN/NOTIFY` to wake workers and waiters in every
//! process). Each area owns its records, its rows, its `Store` methods and their SQL, in one
//! file: `jobs`, `instances`, `identity` (users and API keys), `namespaces`, `audit`,
//! `notify` (subscriptions and deliveries), `key_pairs` and `terraform_state`.
//!
//! SQL is written once for both databases: `$N` placeholders, and the few clauses where they
//! differ asked of `Dialect`. Columns are integers, text and booleans only (what `Any` carries);
//! times are Unix milliseconds so that both store and compare them the same way. Queries are
//! checked at run time (`query_as` + `FromRow`) and covered by the storage contract tests on
//! both databases. Write transactions write first (a conditional `UPDATE` or an `INSERT`) so
//! that SQLite takes its write lock at once instead of upgrading a read lock later, which could
//! fail with `SQLITE_BUSY` under contention.

mod audit;
mod identity;
mod instances;
mod jobs;
mod key_pairs;
mod namespaces;
mod notify;
mod sql;
mod terraform_state;

use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::any::AnyPoolOptions;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyConnection, AnyPool, Executor, PgPool};
use tokio::sync::mpsc;

pub use audit::*;
pub use identity::*;
pub use instances::*;
pub use jobs::*;
pub use key_pairs::*;
pub use namespaces::*;
pub use notify::*;
pub use terraform_state::*;

/// Channel on which a stored job is announced (payload: job id).
const JOB_QUEUED: &str = "corral_job_queued";
/// Channel on which a finished job is announced (payload: job id).
const JOB_FINISHED: &str = "corral_job_finished";

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// The database behind corral.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    /// PostgreSQL only: the connection that listens for other processes' notifications.
    listener: Option<PgPool>,
    /// Addresses every notification is mailed to (`notify.email`), besides subscriptions.
    recipients: std::sync::Arc<[String]>,
    /// SQLite only: the identity version this process last committed (`identity_version`).
    identity_seen: std::sync::Arc<AtomicI64>,
}

/// Which database is behind the store, for the few clauses the two write differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The dialect of `connection` (for helpers that are handed a transaction).
    fn of(connection: &AnyConnection) -> Dialect {
        if connection.backend_name().eq_ignore_ascii_case("postgresql") {
            Dialect::Postgres
        } else {
            Dialect::Sqlite
        }
    }

    /// Appended to the sub-select that picks a job to claim.
    fn row_lock(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// Appended to a `SELECT` whose rows must stay as read until the transaction ends. SQLite
    /// needs nothing: a write transaction holds the database's only write lock.
    fn lock_rows(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// Opens an `EXISTS` over the key/value pairs of `instances.tags`, ending with `tag.key = `.
    fn tag_filter(self) -> &'static str {
        match self {
            Dialect::Sqlite => {
                " AND EXISTS (SELECT 1 FROM json_each(instances.tags) AS tag WHERE tag.key = "
            }
            Dialect::Postgres => {
                " AND EXISTS (SELECT 1 FROM jsonb_each_text(instances.tags::jsonb) AS tag(key, value) \
                 WHERE tag.key = "
            }
        }
    }
}

/// Something another process did that this one may be waiting for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    JobQueued(String),
    JobFinished(String),
}

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

pub fn now_millis() -> Millis {
    Utc::now().timestamp_millis()
}

/// A new id for any record: time-ordered (UUIDv7), so that id order is creation order and
/// newest-first paging is `ORDER BY id DESC`.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{}@{}", &url[..scheme + 3], user, &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

pub fn to_datetime(millis: Millis) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(millis).unwrap_or_default()
}

#[derive(Debug, Clone)]
pub struct PageRequest {
    pub limit: i64,
    /// The id of the last item of the previous page.
    pub after: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The id of the last item, when more items follow.
    pub next_after: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` rows: the extra row only proves a next page exists.
    fn from_rows(mut rows: Vec<T>, limit: i64, id: impl Fn(&T) -> &str) -> Page<T> {
        let limit = limit as usize;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_after = if more { rows.last().map(|row| id(row).to_string()) } else { None };
        Page { items: rows, next_after }
    }
}

pub fn convert<R, T: TryFrom<R, Error = StorageError>>(
    rows: Vec<R>,
) -> Result<Vec<T>, StorageError> {
    rows.into_iter().map(T::try_from).collect()
}

impl Store {
    /// Opens the database at `url` (`sqlite://PATH`, created if needed, or
    /// `postgres://…`) and applies pending migrations.
    pub async fn connect(url: &str) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let store = if url.starts_with("sqlite:") {
            Store::connect_sqlite(url).await?
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Store::connect_postgres(url).await?
        } else {
            anyhow::bail!(
                "unsupported database URL '{}': expected sqlite://PATH or postgres://…",
                redact_url(url)
            );
        };
        Ok(store)
    }

    async fn connect_sqlite(url: &str) -> anyhow::Result<Store> {
        let options = SqliteConnectOptions::from_str(url)
            .with_context(|| format!("invalid SQLite URL '{url}'"))?
            .create_if_missing(true);
        if let Some(folder) = options.get_filename().parent()
            && !folder.as_os_str().is_empty()
        {
            std::fs::create_dir_all(folder)
                .with_context(|| format!("creating database folder {}", folder.display()))?;
        }
        // An in-memory database lives as long as its connection, and each connection has its
        // own: it gets one connection, kept open. A file is created if missing.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let any_url = if in_memory || url.contains("mode=") {
            url.to_string()
        } else {
            format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
        };
        let pool = if in_memory {
            AnyPoolOptions::new().max_connections(1).idle_timeout(None).max_lifetime(None)
        } else {
            AnyPoolOptions::new().max_connections(8)
        };
        // What a URL cannot say is set on every new connection, the wait first: a wait
        // instead of an error while another connection writes, write-ahead logging, syncs at
        // checkpoints only, foreign keys.
        let pool = pool
            .after_connect(|connection, _| {
                Box::pin(async move {
                    connection
                        .execute(
                            "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; \
                             PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
                        )
                        .await?;
                    Ok(())
                })
            })
            .connect(&any_url)
            .await
            .with_context(|| format!("opening database {url}"))?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .context("applying database migrations")?;
        let (version,): (i64,) =
            sqlx::query_as("SELECT version FROM identity_version").fetch_one(&pool).await?;
        Ok(Store {
            pool,
            dialect: Dialect::Sqlite,
            listener: None,
            recipients: [].into(),
            identity_seen: std::sync::Arc::new(AtomicI64::new(version)),
        })
    }

    async fn connect_postgres(url: &str) -> anyhow::Result<Store> {
        let pool = AnyPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .with_context(|| format!("connecting to {}", redact_url(url)))?;
        // sqlx holds an advisory lock while it applies migrations, so that replicas starting
        // together do not race.
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .context("applying database migrations")?;
        // `subscribe` holds this pool's one connection for as long as it listens.
        let listener = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy(url)?;
        Ok(Store {
            pool,
            dialect: Dialect::Postgres,
            listener: Some(listener),
            recipients: [].into(),
            identity_seen: Default::default(),
        })
    }

    /// The store, mailing every notification to `recipients` as well as to subscribers.
    /// A transaction that reads rows before it writes them. On SQLite it takes the write
    /// lock at its start (`BEGIN IMMEDIATE`, waiting its turn): a read-then-write transaction
    /// that took it only at its first write would be refused if another connection had
    /// written in between. On PostgreSQL its reads lock their rows (`Dialect::lock_rows`).
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StorageError> {
        Ok(match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres => self.pool.begin().await?,
        })
    }

    pub fn with_recipients(self, recipients: &[String]) -> Store {
        Store { recipients: recipients.into(), ..self }
    }

    /// Whether several processes may share this database.
    pub fn is_shared(&self) -> bool {
        self.dialect == Dialect::Postgres
    }

    /// Events from other processes sharing the database, forwarded as they come (reconnecting
    /// if the connection drops); `None` for SQLite, which one process owns.
    pub async fn subscribe(&self) -> anyhow::Result<Option<mpsc::Receiver<StoreEvent>>> {
        let Some(pool) = &self.listener else { return Ok(None) };
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen_all([JOB_QUEUED, JOB_FINISHED]).await?;
        let (sender, receiver) = mpsc::channel(1024);
        tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(notification) => {
                        let job_id = notification.payload().to_string();
                        let event = if notification.channel() == JOB_QUEUED {
                            StoreEvent::JobQueued(job_id)
                        } else {
                            StoreEvent::JobFinished(job_id)
                        };
                        if sender.send(event).await.is_err() {
                            return;
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "job notifications interrupted; reconnecting");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(Some(receiver))
    }

    /// A number that changes whenever a user, a role binding or an API key does, so that what
    /// was read of them may be kept while it stays the same. On SQLite, which one process
    /// owns, the number this process committed last, read without a query; on PostgreSQL,
    /// where other processes write too, the stored number (one primary-key read).
    pub async fn identity_version(&self) -> Result<i64, StorageError> {
        match self.dialect {
            Dialect::Sqlite => Ok(self.identity_seen.load(Ordering::Acquire)),
            Dialect::Postgres => {
                let (version,): (i64,) = sqlx::query_as("SELECT version FROM identity_version")
                    .fetch_one(&self.pool)
                    .await?;
                Ok(version)
            }
        }
    }

    pub async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Store, redact_url};

    #[tokio::test]
    async fn an_in_memory_database_and_a_path_with_a_colon_open_and_keep_what_they_hold() {
        let dir = tempfile::tempdir().unwrap();
        let file = format!("sqlite://{}/corral:test.db", dir.path().display());
        for url in ["sqlite::memory:", file.as_str()] {
            let store = Store::connect(url).await.unwrap();
            assert_eq!(store.setting_or_insert("k", "first").await.unwrap(), "first", "{url}");
            assert_eq!(store.setting_or_insert("k", "second").await.unwrap(), "first", "{url}");
        }
        assert!(dir.path().join("corral:test.db").exists());
    }

    #[test]
    fn passwords_never_reach_messages() {
        let cases = [
            ("postgres://corral:s3cret@db:5432/corral", "postgres://corral@db:5432/corral"),
            ("postgres://corral@db/corral", "postgres://corral@db/corral"),
            ("sqlite://./data/corral.db", "sqlite://./data/corral.db"),
        ];
        for (url, expected) in cases {
            assert_eq!(redact_url(url), expected);
        }
    }
}
