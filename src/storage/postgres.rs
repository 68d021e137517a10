//! PostgreSQL, for several corral processes sharing one database: migrations from
//! `migrations/postgres` (sqlx holds an advisory lock while it applies them, so replicas starting
//! together do not race), claims with `FOR UPDATE SKIP LOCKED`, and `LISTEN/NOTIFY` to wake
//! workers and waiters in every process.

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgPool, Postgres, QueryBuilder};
use tokio::sync::mpsc;

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
    StoreEvent, SubscriptionRecord, UserChanges, UserRecord, UserWrite, now_millis, redact_url,
    to_datetime,
};

/// Channel on which a stored job is announced (payload: job id).
pub const JOB_QUEUED: &str = "corral_job_queued";
/// Channel on which a finished job is announced (payload: job id).
pub const JOB_FINISHED: &str = "corral_job_finished";

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn connect(url: &str) -> anyhow::Result<PgStore> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .with_context(|| format!("connecting to {}", redact_url(url)))?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .context("applying database migrations")?;
        Ok(PgStore { pool })
    }

    /// Forwards job notifications from every process; reconnects if the connection drops.
    pub async fn subscribe(&self) -> anyhow::Result<mpsc::Receiver<StoreEvent>> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
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
        Ok(receiver)
    }
}

sql_store!(PgStore, Postgres, Dialect::Postgres);
identity_store!(PgStore, Postgres, Dialect::Postgres);
notify_store!(PgStore, Postgres, Dialect::Postgres);
access_store!(PgStore, Postgres);
