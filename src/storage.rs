//! Persistence: the only module that contains SQL.
//!
//! `Store` is the one handle callers use; it hides which database is behind it. Today that is
//! SQLite (`storage::sqlite`), embedded and the default; a PostgreSQL arm slots in behind the
//! same methods. Queries are checked at run time (`query_as` + `FromRow`) and covered by the
//! integration suite. Times are stored as Unix milliseconds so that both dialects store and
//! compare them the same way.

mod access_sql;
mod identity_sql;
mod notify_sql;
mod postgres;
mod rows;
mod sql;
mod sqlite;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::domain::{Action, Backend, InstanceState, JobKind, JobStatus, Role, StateConflict};

/// How long an `Idempotency-Key` is remembered.
pub const IDEMPOTENCY_KEY_TTL_MS: Millis = 24 * 3600 * 1000;

use postgres::PgStore;
use sqlite::SqliteStore;

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
    database: Database,
    /// Addresses every notification is mailed to (`notify.email`), besides subscriptions.
    recipients: std::sync::Arc<[String]>,
}

#[derive(Clone)]
enum Database {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Calls the same method on whichever database is behind the store.
macro_rules! dispatch {
    ($store:expr, $method:ident($($arg:expr),*)) => {
        match &$store.database {
            Database::Sqlite(db) => db.$method($($arg),*).await,
            Database::Postgres(db) => db.$method($($arg),*).await,
        }
    };
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
    pub backend: String,
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
            backend: "aws".to_string(),
            launch_index: launch_index as i64,
            created_by_job: job_id.to_string(),
            active_job_id: Some(job_id.to_string()),
            vcpus,
            created_at: now,
            updated_at: now,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    pub id: String,
    pub kind: JobKind,
    pub status: JobStatus,
    pub payload: serde_json::Value,
    pub attempts: i64,
    pub max_attempts: i64,
    pub run_at: Millis,
    pub error: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    /// When a create job first called the cloud to launch; `None` means nothing was launched.
    pub launch_started_at: Option<Millis>,
    /// Transient failures in a row (throttling, 5xx, connection errors, timeouts); they do not
    /// count against `max_attempts`.
    pub transient_failures: i64,
    /// When the first of those transient failures happened, moved later by the time the job
    /// then waited past its due time; `None` after any other outcome.
    pub transient_since: Option<Millis>,
    /// Who asked for the job.
    pub actor: String,
    /// The id of the user who asked for the job; `None` for corral's own jobs.
    pub user_id: Option<String>,
    /// The namespace the job works in; `None` when it spans several, or none.
    pub namespace: Option<String>,
}

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    /// Only jobs in these namespaces, or asked for by the user of id `own`; `None` for all.
    pub visible: Option<(Vec<String>, String)>,
}

/// A job with the instances it touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobView {
    pub job: JobRecord,
    pub instances: Vec<InstanceRecord>,
}

#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub kind: JobKind,
    pub payload: serde_json::Value,
    pub max_attempts: i64,
    /// Who asked for the job; the audit log records the request under this name.
    pub actor: Actor,
    /// The namespace the job works in; `None` when it spans several, or none.
    pub namespace: Option<String>,
}

/// Who a change is made for: an audit log actor (username, API key prefix, or `system`) and
/// the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    /// The user behind the name; `None` for corral itself.
    pub user_id: Option<String>,
    pub request_id: Option<String>,
}

impl Actor {
    /// corral itself: workers, the reconciler, start-up.
    pub fn system() -> Actor {
        Actor { name: SYSTEM_ACTOR.to_string(), user_id: None, request_id: None }
    }
}

/// The audit log's actor for what corral does on its own.
pub const SYSTEM_ACTOR: &str = "system";

/// What the cloud reported about one stored instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub instance_id: String,
    pub cloud_id: String,
    pub state: InstanceState,
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
}

/// How an attempt of a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    Succeeded,
    /// Parked for good; instances that never launched are marked `failed`.
    Failed {
        error: String,
    },
    /// Queued again to run at `run_at`.
    Retry {
        error: String,
        run_at: Millis,
    },
    /// Queued again to run at `run_at` without counting the attempt: it did not fail (a
    /// shutdown, or a job waiting for another). The job keeps the error it had; a run of
    /// transient failures ends.
    HandBack {
        reason: String,
        run_at: Millis,
    },
    /// Queued again to run at `run_at` after a transient failure: the attempt is not counted,
    /// the job's run of transient failures grows by one (and starts now if it had none).
    Transient {
        error: String,
        run_at: Millis,
    },
}

/// One step, error or outcome in the life of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEvent {
    pub seq: i64,
    pub at: Millis,
    pub attempt: i64,
    /// `step`, `error` or `outcome`.
    pub kind: String,
    pub message: String,
}

/// A client's `Idempotency-Key` and the fingerprint of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    pub fingerprint: String,
}

/// What happened to a request that asked to store a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Stored,
    /// The idempotency key was seen before with the same request: this is its job.
    Replay {
        job_id: String,
    },
    /// The idempotency key was seen before with a different request.
    KeyMismatch,
    /// Some instances cannot take the action now; nothing was stored.
    Conflicts(Vec<StateConflict>),
    /// The namespace named does not exist; nothing was stored.
    UnknownNamespace(String),
    /// Admitting the request would exceed a quota of its namespace; nothing was stored.
    OverQuota(QuotaExceeded),
}

/// Which quota a request would exceed, its limit and the use before the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaExceeded {
    pub namespace: String,
    /// `instances` or `vcpus`.
    pub quota: &'static str,
    pub limit: i64,
    pub used: i64,
    pub requested: i64,
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
    pub observations: Vec<Observation>,
    pub drift: Vec<Drift>,
    /// Instances corral knows that the cloud does not.
    pub missing: Vec<String>,
    /// The orphans of the region, replacing those recorded before; `None` leaves them as they
    /// are (a refresh of single instances does not scan for orphans).
    pub orphans: Option<(String, Vec<OrphanRecord>)>,
}

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
    /// Replaces every role binding of the user.
    pub roles: Option<BTreeMap<String, Role>>,
}

/// What became of a request to write a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserWrite {
    Done(UserRecord),
    UsernameTaken,
    NotFound,
    /// Roles name namespaces that do not exist; nothing was stored.
    UnknownNamespaces(Vec<String>),
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
    /// Both quotas: most instances, most vCPUs (`None`: no limit).
    pub quota: Option<(Option<i64>, Option<i64>)>,
    /// `Some(None)` returns the namespace to the server's default backend.
    pub default_backend: Option<Option<Backend>>,
}

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

/// Where notifications go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Email,
    Webhook,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Webhook => "webhook",
        }
    }

    /// The audit log's action for `verb` (`create`, `delete`) on a subscription of this channel.
    pub fn audit_action(self, verb: &str) -> &'static str {
        match (self, verb) {
            (Channel::Email, "create") => "email_subscription.create",
            (Channel::Email, _) => "email_subscription.delete",
            (Channel::Webhook, "create") => "webhook.create",
            (Channel::Webhook, _) => "webhook.delete",
        }
    }
}

impl std::str::FromStr for Channel {
    type Err = String;

    fn from_str(value: &str) -> Result<Channel, String> {
        match value {
            "email" => Ok(Channel::Email),
            "webhook" => Ok(Channel::Webhook),
            other => Err(format!("unknown notification channel '{other}'")),
        }
    }
}

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
pub(crate) const KEY_PAIR_COLUMNS: &str =
    "name, namespace, key_type, public_key, fingerprint, created_by, created_at";

/// How a Terraform state write or lock request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockOutcome {
    Done,
    /// Another lock holds the workspace: Terraform's lock info of the holder, as it sent it.
    HeldBy(Option<String>),
}

/// Who wants which events: a webhook (URL and signing secret) or an email address, for one
/// namespace or, with `namespace` `None`, for all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRecord {
    pub id: String,
    pub channel: Channel,
    pub namespace: Option<String>,
    /// The webhook URL or the email address.
    pub target: String,
    /// Event types wanted; empty means all.
    pub events: Vec<String>,
    /// The webhook's signing secret; never leaves the server after creation.
    pub secret: Option<String>,
    pub created_by: String,
    pub created_at: Millis,
}

/// How storing a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionAdmission {
    Created,
    /// Its namespace does not exist; nothing was stored.
    UnknownNamespace,
    /// Its namespace already holds `held` subscriptions (webhooks and email subscriptions
    /// together), not fewer than `max` (`notify.max_subscriptions_per_namespace`); nothing
    /// was stored.
    OverCap {
        held: i64,
        max: u32,
    },
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    /// Gave up after the configured attempts; can be retried by hand.
    Dead,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        }
    }
}

impl std::str::FromStr for DeliveryStatus {
    type Err = String;

    fn from_str(value: &str) -> Result<DeliveryStatus, String> {
        match value {
            "pending" => Ok(DeliveryStatus::Pending),
            "delivered" => Ok(DeliveryStatus::Delivered),
            "dead" => Ok(DeliveryStatus::Dead),
            other => {
                Err(format!("unknown delivery status '{other}'; allowed: pending, delivered, dead"))
            }
        }
    }
}

/// One notification to one receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// Stable across attempts: the email's Message-ID and the webhook's `X-Corral-Delivery`.
    pub id: String,
    pub event_id: String,
    pub channel: Channel,
    /// The email address or webhook URL.
    pub target: String,
    /// The subscription it was made for; `None` for the configured `notify.email` addresses.
    pub subscription_id: Option<String>,
    /// Who may see and retry it: its subscription's namespace, not its event's. `None` for the
    /// deliveries of global subscriptions and of the configured addresses, which are the
    /// admins' alone (a global webhook's URL is often a secret of its own).
    pub namespace: Option<String>,
    pub status: DeliveryStatus,
    pub attempts: i64,
    pub next_attempt_at: Millis,
    pub last_error: Option<String>,
    pub delivered_at: Option<Millis>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub notification: crate::domain::Notification,
}

/// A delivery a worker holds, with what it needs to send it.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub delivery: DeliveryRecord,
    /// The webhook's signing secret; `None` for email, or when the subscription is gone.
    pub secret: Option<String>,
}

/// How an attempt to deliver ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    Retry { error: String, at: Millis },
    Dead { error: String },
}

#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    /// Only the deliveries that belong to these namespaces (of their subscriptions), never
    /// those without one (global subscriptions, configured addresses); `None` for all.
    pub visible: Option<Vec<String>>,
    pub status: Option<DeliveryStatus>,
    pub event_id: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct InstanceFilter {
    /// Only these namespaces (what the caller may see); `None` for all.
    pub visible: Option<Vec<String>>,
    pub state: Option<InstanceState>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub tags: Vec<(String, String)>,
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

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub instances_by_state: BTreeMap<String, i64>,
    pub jobs_by_status: BTreeMap<String, i64>,
}

impl Store {
    /// Opens the database at `url` (`sqlite://PATH`, created if needed, or
    /// `postgres://…`) and applies pending migrations.
    pub async fn connect(url: &str) -> anyhow::Result<Store> {
        let database = if url.starts_with("sqlite:") {
            Database::Sqlite(SqliteStore::connect(url).await?)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Database::Postgres(PgStore::connect(url).await?)
        } else {
            anyhow::bail!(
                "unsupported database URL '{}': expected sqlite://PATH or postgres://…",
                redact_url(url)
            );
        };
        Ok(Store { database, recipients: std::sync::Arc::from([]) })
    }

    /// The store, mailing every notification to `recipients` as well as to subscribers.
    pub fn with_recipients(self, recipients: &[String]) -> Store {
        Store { recipients: recipients.into(), ..self }
    }

    /// Whether several processes may share this database.
    pub fn is_shared(&self) -> bool {
        matches!(self.database, Database::Postgres(_))
    }

    /// Events from other processes sharing the database; `None` for SQLite, which one process
    /// owns.
    pub async fn subscribe(
        &self,
    ) -> anyhow::Result<Option<tokio::sync::mpsc::Receiver<StoreEvent>>> {
        match &self.database {
            Database::Sqlite(_) => Ok(None),
            Database::Postgres(db) => Ok(Some(db.subscribe().await?)),
        }
    }

    /// Takes or renews the lease `name` for `holder` until `until`; false while another holder
    /// has it.
    pub async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        until: Millis,
    ) -> Result<bool, StorageError> {
        dispatch!(self, try_lease(name, holder, now_millis(), until))
    }

    pub async fn ping(&self) -> Result<(), StorageError> {
        dispatch!(self, ping())
    }

    /// Stores the desired instances and the job that creates them, atomically, unless `key`
    /// was used before.
    pub async fn insert_create_job(
        &self,
        job: &NewJob,
        instances: &[InstanceRecord],
        key: Option<&IdempotencyKey>,
    ) -> Result<Admission, StorageError> {
        dispatch!(self, insert_create_job(job, instances, key))
    }

    /// Stores a job for `instance_ids`. With `action`, only if every instance is idle and in a
    /// state the action is allowed from, and the job then owns them until it ends; otherwise
    /// nothing is stored and the conflicts are returned, per instance. Without `action` (a
    /// refresh) the instances are linked to the job but not owned by it.
    pub async fn insert_instances_job(
        &self,
        job: &NewJob,
        action: Option<Action>,
        instance_ids: &[String],
        key: Option<&IdempotencyKey>,
    ) -> Result<Admission, StorageError> {
        dispatch!(self, insert_instances_job(job, action, instance_ids, key))
    }

    /// The fingerprint and job of an unexpired idempotency key.
    pub async fn find_idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<(String, String)>, StorageError> {
        dispatch!(self, find_idempotency_key(key, now_millis() - IDEMPOTENCY_KEY_TTL_MS))
    }

    /// Appends to a job's history.
    pub async fn append_job_event(
        &self,
        job_id: &str,
        attempt: i64,
        kind: &str,
        message: &str,
    ) -> Result<(), StorageError> {
        dispatch!(self, append_job_event(job_id, attempt, kind, message))
    }

    /// A job's history after event `after` (0 for all of it).
    pub async fn job_events(
        &self,
        job_id: &str,
        after: i64,
    ) -> Result<Vec<JobEvent>, StorageError> {
        dispatch!(self, job_events(job_id, after))
    }

    /// Instances with a cloud id that are not terminated, grouped by region.
    pub async fn live_instances(
        &self,
    ) -> Result<BTreeMap<String, Vec<InstanceRecord>>, StorageError> {
        let mut by_region: BTreeMap<String, Vec<InstanceRecord>> = BTreeMap::new();
        for instance in dispatch!(self, live_instances())? {
            by_region.entry(instance.region.clone()).or_default().push(instance);
        }
        Ok(by_region)
    }

    /// Ids of jobs that are queued or running.
    pub async fn unfinished_job_ids(&self) -> Result<Vec<String>, StorageError> {
        dispatch!(self, unfinished_job_ids())
    }

    /// Which of `cloud_ids` corral has a record of, in any state.
    pub async fn known_cloud_ids(&self, cloud_ids: &[String]) -> Result<Vec<String>, StorageError> {
        dispatch!(self, known_cloud_ids(cloud_ids))
    }

    pub async fn record_reconciliation(
        &self,
        reconciliation: &Reconciliation,
    ) -> Result<(), StorageError> {
        dispatch!(self, record_reconciliation(reconciliation, &self.recipients))
    }

    pub async fn list_orphans(&self) -> Result<Vec<OrphanRecord>, StorageError> {
        dispatch!(self, list_orphans())
    }

    /// Turns an orphan into an instance record, atomically; `None` if it is no longer an orphan.
    pub async fn adopt_orphan(
        &self,
        cloud_id: &str,
        instance: &InstanceRecord,
        actor: &Actor,
    ) -> Result<Option<InstanceRecord>, StorageError> {
        dispatch!(self, adopt_orphan(cloud_id, instance, actor))
    }

    /// Drift found on an instance, newest first.
    pub async fn drift_of(&self, instance_id: &str) -> Result<Vec<DriftRecord>, StorageError> {
        dispatch!(self, drift_of(instance_id))
    }

    /// Looks an instance up by corral id or cloud id.
    pub async fn find_instance(&self, id: &str) -> Result<Option<InstanceRecord>, StorageError> {
        Ok(self.find_instances(&[id.to_string()]).await?.pop())
    }

    /// Looks instances up by corral id or cloud id; unknown ids are left out.
    pub async fn find_instances(
        &self,
        ids: &[String],
    ) -> Result<Vec<InstanceRecord>, StorageError> {
        dispatch!(self, find_instances(ids))
    }

    pub async fn list_instances(
        &self,
        filter: &InstanceFilter,
        page: &PageRequest,
    ) -> Result<Page<InstanceRecord>, StorageError> {
        let rows = dispatch!(self, list_instances(filter, page))?;
        Ok(Page::from_rows(rows, page.limit, |row| &row.id))
    }

    pub async fn get_job(&self, id: &str) -> Result<Option<JobView>, StorageError> {
        let Some(job) = dispatch!(self, get_job(id))? else { return Ok(None) };
        let mut views = self.with_instances(vec![job]).await?;
        Ok(views.pop())
    }

    pub async fn list_jobs(
        &self,
        filter: &JobFilter,
        page: &PageRequest,
    ) -> Result<Page<JobView>, StorageError> {
        let rows = dispatch!(self, list_jobs(filter, page))?;
        let Page { items, next_after } = Page::from_rows(rows, page.limit, |row| &row.id);
        Ok(Page { items: self.with_instances(items).await?, next_after })
    }

    /// Attaches to each job its instances, in one query for all the jobs.
    async fn with_instances(&self, jobs: Vec<JobRecord>) -> Result<Vec<JobView>, StorageError> {
        let job_ids: Vec<String> = jobs.iter().map(|job| job.id.clone()).collect();
        let mut by_job: BTreeMap<String, Vec<InstanceRecord>> = BTreeMap::new();
        for (job_id, instance) in dispatch!(self, instances_of_jobs(&job_ids))? {
            by_job.entry(job_id).or_default().push(instance);
        }
        Ok(jobs
            .into_iter()
            .map(|job| {
                let instances = by_job.remove(&job.id).unwrap_or_default();
                JobView { job, instances }
            })
            .collect())
    }

    /// Claims the next due job, or a running job whose lease expired, for `worker`.
    pub async fn claim_job(
        &self,
        worker: &str,
        lease_until: Millis,
    ) -> Result<Option<JobView>, StorageError> {
        let Some(job) = dispatch!(self, claim_job(worker, now_millis(), lease_until))? else {
            return Ok(None);
        };
        Ok(self.with_instances(vec![job]).await?.pop())
    }

    /// Extends the lease of a job `worker` holds; false when the lease was lost.
    pub async fn renew_lease(
        &self,
        job_id: &str,
        worker: &str,
        lease_until: Millis,
    ) -> Result<bool, StorageError> {
        dispatch!(self, renew_lease(job_id, worker, lease_until))
    }

    /// Records, before the call, that a create job `worker` holds is about to launch.
    pub async fn mark_launch_started(
        &self,
        job_id: &str,
        worker: &str,
    ) -> Result<bool, StorageError> {
        dispatch!(self, mark_launch_started(job_id, worker, now_millis()))
    }

    /// Ends an attempt of a job `worker` holds and appends `events` (kind, message) to its
    /// history, atomically; false (and no change) when the lease was lost.
    pub async fn finish_job(
        &self,
        job_id: &str,
        worker: &str,
        outcome: &JobOutcome,
        attempt: i64,
        events: &[(&str, String)],
    ) -> Result<bool, StorageError> {
        dispatch!(self, finish_job(job_id, worker, outcome, attempt, events, &self.recipients))
    }

    /// Records the vCPUs of the instances a create job launches.
    pub async fn record_vcpus(&self, job_id: &str, vcpus: i64) -> Result<(), StorageError> {
        dispatch!(self, record_vcpus(job_id, vcpus))
    }

    /// Records what the cloud reported, including cloud ids of newly launched instances.
    pub async fn record_observations(
        &self,
        observations: &[Observation],
    ) -> Result<(), StorageError> {
        dispatch!(self, record_observations(observations))
    }

    pub async fn counts(&self) -> Result<Counts, StorageError> {
        dispatch!(self, counts())
    }

    /// Creates `user` as the first admin, unless any user exists; true if it was created.
    pub async fn bootstrap_admin(&self, user: &UserRecord) -> Result<bool, StorageError> {
        dispatch!(self, bootstrap_admin(user))
    }

    /// The value of setting `name`, storing `value` first if it has none, so that every
    /// process sharing the database agrees on it.
    pub async fn setting_or_insert(&self, name: &str, value: &str) -> Result<String, StorageError> {
        dispatch!(self, setting_or_insert(name, value))
    }

    pub async fn create_user(
        &self,
        user: &UserRecord,
        actor: &Actor,
    ) -> Result<UserWrite, StorageError> {
        dispatch!(self, create_user(user, actor))
    }

    pub async fn update_user(
        &self,
        username: &str,
        changes: &UserChanges,
        actor: &Actor,
    ) -> Result<UserWrite, StorageError> {
        dispatch!(self, update_user(username, changes, actor))
    }

    /// Deletes a user with its role bindings and API keys.
    pub async fn delete_user(
        &self,
        username: &str,
        actor: &Actor,
    ) -> Result<UserWrite, StorageError> {
        dispatch!(self, delete_user(username, actor))
    }

    pub async fn list_users(&self) -> Result<Vec<UserRecord>, StorageError> {
        dispatch!(self, list_users())
    }

    pub async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StorageError> {
        dispatch!(self, find_user("username", username))
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<UserRecord>, StorageError> {
        dispatch!(self, find_user("id", id))
    }

    pub async fn create_api_key(
        &self,
        key: &ApiKeyRecord,
        actor: &Actor,
    ) -> Result<(), StorageError> {
        dispatch!(self, create_api_key(key, actor))
    }

    /// API keys, newest first: of one user, or of everyone.
    pub async fn list_api_keys(
        &self,
        user_id: Option<&str>,
    ) -> Result<Vec<ApiKeyRecord>, StorageError> {
        dispatch!(self, list_api_keys(user_id))
    }

    pub async fn api_key_by_prefix(
        &self,
        prefix: &str,
    ) -> Result<Option<ApiKeyRecord>, StorageError> {
        dispatch!(self, api_key_by_prefix(prefix))
    }

    /// Revokes key `id` (of `user_id` only, when given); the key as it was, or `None` if there
    /// is no such key.
    pub async fn revoke_api_key(
        &self,
        id: &str,
        user_id: Option<&str>,
        actor: &Actor,
    ) -> Result<Option<ApiKeyRecord>, StorageError> {
        dispatch!(self, revoke_api_key(id, user_id, now_millis(), actor))
    }

    /// Creates a namespace; false if the name is taken.
    pub async fn create_namespace(
        &self,
        namespace: &NamespaceRecord,
        actor: &Actor,
    ) -> Result<bool, StorageError> {
        dispatch!(self, create_namespace(namespace, actor))
    }

    /// Changes a namespace's settings; the namespace after the change, or `None` if it does not
    /// exist.
    pub async fn update_namespace(
        &self,
        name: &str,
        change: &NamespaceChange,
        actor: &Actor,
    ) -> Result<Option<NamespaceRecord>, StorageError> {
        dispatch!(self, update_namespace(name, change, actor))?;
        self.find_namespace(name).await
    }

    /// The backend a namespace's create requests default to, if it sets one (and exists).
    pub async fn namespace_default_backend(
        &self,
        name: &str,
    ) -> Result<Option<Backend>, StorageError> {
        let name = dispatch!(self, namespace_default_backend(name))?;
        // The column's CHECK admits backend names only.
        Ok(name.as_deref().and_then(Backend::parse))
    }

    /// Namespaces with their use, by name: all, or only `visible` ones.
    pub async fn list_namespaces(
        &self,
        visible: Option<&[String]>,
    ) -> Result<Vec<NamespaceRecord>, StorageError> {
        dispatch!(self, list_namespaces(visible))
    }

    pub async fn find_namespace(
        &self,
        name: &str,
    ) -> Result<Option<NamespaceRecord>, StorageError> {
        Ok(self.list_namespaces(Some(&[name.to_string()])).await?.pop())
    }

    /// Records events that no other change carries.
    pub async fn record_audit(
        &self,
        entries: &[AuditEntry],
        actor: &Actor,
    ) -> Result<(), StorageError> {
        dispatch!(self, record_audit(entries, actor))
    }

    /// One page of the audit log, newest first, and how many events match in all.
    pub async fn audit_page(
        &self,
        filter: &AuditFilter,
        page: i64,
        limit: i64,
    ) -> Result<(Vec<AuditRecord>, i64), StorageError> {
        let rows = dispatch!(self, audit_rows(filter, (page - 1) * limit, limit))?;
        let total = if filter.counted() {
            dispatch!(self, audit_counted_total(filter))?
        } else {
            dispatch!(self, audit_total(filter))?
        };
        Ok((rows, total))
    }

    /// Changes name and tags of an idle instance and stores the job that applies them in the
    /// cloud; the instance before the change, or why it could not change.
    pub async fn update_instance(
        &self,
        job: &NewJob,
        instance_id: &str,
        name: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<Result<InstanceRecord, Admission>, StorageError> {
        dispatch!(self, update_instance(job, instance_id, name, tags))
    }

    /// Stores a job that terminates every instance of `namespace` that is not terminated yet;
    /// a namespace with nothing to terminate gets a job that has already succeeded.
    pub async fn insert_namespace_terminate_job(
        &self,
        job: &NewJob,
        namespace: &str,
    ) -> Result<Admission, StorageError> {
        dispatch!(self, insert_namespace_terminate_job(job, namespace))
    }

    /// Stores a subscription unless its namespace does not exist or already holds
    /// `max_per_namespace` subscriptions (webhooks and email together; global ones are not
    /// capped), counted after locking the namespace row so that concurrent creates are
    /// admitted one after the other.
    pub async fn create_subscription(
        &self,
        subscription: &SubscriptionRecord,
        max_per_namespace: u32,
        actor: &Actor,
    ) -> Result<SubscriptionAdmission, StorageError> {
        dispatch!(self, create_subscription(subscription, max_per_namespace, actor))
    }

    pub async fn list_subscriptions(
        &self,
        channel: Channel,
        visible: Option<&[String]>,
    ) -> Result<Vec<SubscriptionRecord>, StorageError> {
        dispatch!(self, list_subscriptions(channel, visible))
    }

    pub async fn find_subscription(
        &self,
        id: &str,
    ) -> Result<Option<SubscriptionRecord>, StorageError> {
        dispatch!(self, find_subscription(id))
    }

    pub async fn delete_subscription(
        &self,
        subscription: &SubscriptionRecord,
        actor: &Actor,
    ) -> Result<bool, StorageError> {
        dispatch!(self, delete_subscription(subscription, actor))
    }

    /// Claims up to `limit` due deliveries for `worker` until `lease_until`.
    pub async fn claim_deliveries(
        &self,
        worker: &str,
        lease_until: Millis,
        limit: i64,
    ) -> Result<Vec<ClaimedDelivery>, StorageError> {
        dispatch!(self, claim_deliveries(worker, now_millis(), lease_until, limit))
    }

    pub async fn finish_delivery(
        &self,
        id: &str,
        worker: &str,
        outcome: &DeliveryOutcome,
    ) -> Result<bool, StorageError> {
        dispatch!(self, finish_delivery(id, worker, outcome))
    }

    pub async fn list_deliveries(
        &self,
        filter: &DeliveryFilter,
        page: &PageRequest,
    ) -> Result<Page<DeliveryRecord>, StorageError> {
        let rows = dispatch!(self, list_deliveries(filter, page))?;
        Ok(Page::from_rows(rows, page.limit, |row| &row.id))
    }

    pub async fn find_delivery(&self, id: &str) -> Result<Option<DeliveryRecord>, StorageError> {
        dispatch!(self, find_delivery(id))
    }

    /// Queues a dead delivery again with fresh attempts; false unless it was dead.
    pub async fn retry_delivery(
        &self,
        delivery: &DeliveryRecord,
        actor: &Actor,
    ) -> Result<bool, StorageError> {
        dispatch!(self, retry_delivery(delivery, actor))
    }

    pub async fn create_key_pair(
        &self,
        pair: &KeyPairRecord,
        actor: &Actor,
    ) -> Result<bool, StorageError> {
        dispatch!(self, create_key_pair(pair, actor))
    }

    pub async fn list_key_pairs(&self) -> Result<Vec<KeyPairRecord>, StorageError> {
        dispatch!(self, list_key_pairs())
    }

    pub async fn find_key_pair(&self, name: &str) -> Result<Option<KeyPairRecord>, StorageError> {
        dispatch!(self, find_key_pair(name))
    }

    pub async fn delete_key_pair(
        &self,
        name: &str,
        job: &NewJob,
    ) -> Result<Option<Admission>, StorageError> {
        dispatch!(self, delete_key_pair(name, job))
    }

    /// Which of the create jobs `job_ids` still have an instance that is not terminated or
    /// failed.
    pub async fn jobs_with_live_instances(
        &self,
        job_ids: &[String],
    ) -> Result<Vec<String>, StorageError> {
        dispatch!(self, jobs_with_live_instances(job_ids))
    }

    pub async fn terraform_state(&self, workspace: &str) -> Result<Option<String>, StorageError> {
        dispatch!(self, terraform_state(workspace))
    }

    pub async fn write_terraform_state(
        &self,
        workspace: &str,
        state: Option<&str>,
        lock_id: Option<&str>,
    ) -> Result<LockOutcome, StorageError> {
        dispatch!(self, write_terraform_state(workspace, state, lock_id))
    }

    pub async fn lock_terraform_state(
        &self,
        workspace: &str,
        lock_id: &str,
        info: &str,
        job_id: Option<&str>,
    ) -> Result<LockOutcome, StorageError> {
        dispatch!(self, lock_terraform_state(workspace, lock_id, info, job_id))
    }

    pub async fn unlock_terraform_state(
        &self,
        workspace: &str,
        lock_id: Option<&str>,
    ) -> Result<LockOutcome, StorageError> {
        dispatch!(self, unlock_terraform_state(workspace, lock_id))
    }

    pub async fn release_job_lock(
        &self,
        workspace: &str,
        job_id: &str,
    ) -> Result<bool, StorageError> {
        dispatch!(self, release_job_lock(workspace, job_id))
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

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
