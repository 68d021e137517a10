//! Notifications: subscriptions (webhooks and email addresses, per namespace or for all),
//! and the outbox of deliveries, written in the transaction of the event they announce and
//! claimed by the notifier.

use sqlx::{Any, Transaction};

use super::sql::Sql;

use super::audit::insert_audit;
use super::instances::InstanceRow;
use super::{
    Actor, AuditEntry, InstanceRecord, Millis, Page, PageRequest, StorageError, Store, convert,
    now_millis, to_datetime,
};
use crate::domain::{EventType, JobKind, Notification, NotifiedInstance, subscribed};

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
    /// Empty: every event.
    pub events: Vec<EventType>,
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
    pub const ALL: [DeliveryStatus; 3] =
        [DeliveryStatus::Pending, DeliveryStatus::Delivered, DeliveryStatus::Dead];

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

#[derive(sqlx::FromRow)]
pub(super) struct SubscriptionRow {
    id: String,
    channel: String,
    namespace: Option<String>,
    target: String,
    events: String,
    secret: Option<String>,
    created_by: String,
    created_at: i64,
}

impl TryFrom<SubscriptionRow> for SubscriptionRecord {
    type Error = StorageError;

    fn try_from(row: SubscriptionRow) -> Result<Self, Self::Error> {
        Ok(SubscriptionRecord {
            channel: row.channel.parse().map_err(StorageError::Corrupt)?,
            events: serde_json::from_str::<Vec<String>>(&row.events)
                .map_err(|err| err.to_string())
                .and_then(|names| names.iter().map(|name| name.parse()).collect())
                .map_err(|err| StorageError::Corrupt(format!("events of {}: {err}", row.id)))?,
            id: row.id,
            namespace: row.namespace,
            target: row.target,
            secret: row.secret,
            created_by: row.created_by,
            created_at: row.created_at,
        })
    }
}

/// A delivery joined with its event's payload.
#[derive(sqlx::FromRow)]
pub(super) struct DeliveryRow {
    id: String,
    event_id: String,
    channel: String,
    target: String,
    subscription_id: Option<String>,
    namespace: Option<String>,
    status: String,
    attempts: i64,
    next_attempt_at: i64,
    last_error: Option<String>,
    delivered_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
    payload: String,
}

impl TryFrom<DeliveryRow> for DeliveryRecord {
    type Error = StorageError;

    fn try_from(row: DeliveryRow) -> Result<Self, Self::Error> {
        Ok(DeliveryRecord {
            channel: row.channel.parse().map_err(StorageError::Corrupt)?,
            status: row.status.parse().map_err(StorageError::Corrupt)?,
            notification: serde_json::from_str(&row.payload)
                .map_err(|err| StorageError::Corrupt(format!("event {}: {err}", row.event_id)))?,
            id: row.id,
            event_id: row.event_id,
            target: row.target,
            subscription_id: row.subscription_id,
            namespace: row.namespace,
            attempts: row.attempts,
            next_attempt_at: row.next_attempt_at,
            last_error: row.last_error,
            delivered_at: row.delivered_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// A claimed delivery with its webhook's secret.
#[derive(sqlx::FromRow)]
pub(super) struct ClaimedRow {
    #[sqlx(flatten)]
    delivery: DeliveryRow,
    secret: Option<String>,
}

impl TryFrom<ClaimedRow> for ClaimedDelivery {
    type Error = StorageError;

    fn try_from(row: ClaimedRow) -> Result<Self, Self::Error> {
        Ok(ClaimedDelivery { delivery: row.delivery.try_into()?, secret: row.secret })
    }
}

impl Store {
    /// Stores a subscription unless its namespace does not exist or already holds
    /// `max_per_namespace` subscriptions (webhooks and email together; global ones are not
    /// capped), counted after locking the namespace row so that concurrent creates are
    /// admitted one after the other.
    pub async fn create_subscription(
        &self,
        subscription: &SubscriptionRecord,
        max_per_namespace: u32,
        actor: &Actor,
    ) -> Result<crate::storage::SubscriptionAdmission, StorageError> {
        use crate::storage::SubscriptionAdmission;
        let mut tx = self.pool.begin().await?;
        if let Some(namespace) = &subscription.namespace {
            let locked =
                sqlx::query("UPDATE namespaces SET updated_at = updated_at WHERE name = $1")
                    .bind(namespace)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            if locked != 1 {
                tx.rollback().await?;
                return Ok(SubscriptionAdmission::UnknownNamespace);
            }
            let (held,): (i64,) =
                sqlx::query_as("SELECT COUNT(*) FROM subscriptions WHERE namespace = $1")
                    .bind(namespace)
                    .fetch_one(&mut *tx)
                    .await?;
            if held >= i64::from(max_per_namespace) {
                tx.rollback().await?;
                return Ok(SubscriptionAdmission::OverCap { held, max: max_per_namespace });
            }
        }
        sqlx::query(
            "INSERT INTO subscriptions (id, channel, namespace, target, events, secret, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&subscription.id)
        .bind(subscription.channel.as_str())
        .bind(&subscription.namespace)
        .bind(&subscription.target)
        .bind(serde_json::to_string(&event_names(&subscription.events)).expect("names serialize"))
        .bind(&subscription.secret)
        .bind(&subscription.created_by)
        .bind(subscription.created_at)
        .execute(&mut *tx)
        .await?;
        let mut entry =
            AuditEntry::new(subscription.channel.audit_action("create"), &subscription.id)
                .new_value(subscription_value(subscription));
        entry.namespace = subscription.namespace.clone();
        insert_audit(&mut tx, actor, &entry).await?;
        tx.commit().await?;
        Ok(SubscriptionAdmission::Created)
    }

    /// Subscriptions of a channel, oldest first: all, or those of `visible` namespaces.
    pub async fn list_subscriptions(
        &self,
        channel: Channel,
        visible: Option<&[String]>,
    ) -> Result<Vec<SubscriptionRecord>, StorageError> {
        let mut query = Sql::new(
            "SELECT id, channel, namespace, target, events, secret, created_by, created_at \
             FROM subscriptions WHERE channel = ",
        );
        query.push_bind(channel.as_str());
        if let Some(names) = visible {
            if names.is_empty() {
                return Ok(Vec::new());
            }
            query.push(" AND namespace IN (");
            let mut list = query.separated(", ");
            for name in names {
                list.push_bind(name);
            }
            query.push(")");
        }
        query.push(" ORDER BY id");
        let rows: Vec<SubscriptionRow> = query.build_query_as().fetch_all(&self.pool).await?;
        convert(rows)
    }

    pub async fn find_subscription(
        &self,
        id: &str,
    ) -> Result<Option<SubscriptionRecord>, StorageError> {
        let row: Option<SubscriptionRow> = sqlx::query_as(
            "SELECT id, channel, namespace, target, events, secret, created_by, created_at \
             FROM subscriptions WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(SubscriptionRecord::try_from).transpose()
    }

    /// Deletes a subscription; its deliveries still pending are parked as dead, since
    /// nobody wants them any more. False when there was no such subscription.
    pub async fn delete_subscription(
        &self,
        subscription: &SubscriptionRecord,
        actor: &Actor,
    ) -> Result<bool, StorageError> {
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query("DELETE FROM subscriptions WHERE id = $1")
            .bind(&subscription.id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "UPDATE deliveries SET status = 'dead', last_error = 'the subscription was deleted', \
             locked_by = NULL, lease_expires_at = NULL, updated_at = $1 \
             WHERE subscription_id = $2 AND status = 'pending'",
        )
        .bind(now)
        .bind(&subscription.id)
        .execute(&mut *tx)
        .await?;
        let mut entry =
            AuditEntry::new(subscription.channel.audit_action("delete"), &subscription.id)
                .old(subscription_value(subscription));
        entry.namespace = subscription.namespace.clone();
        insert_audit(&mut tx, actor, &entry).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Claims up to `limit` due deliveries for `worker` until `lease_until`.
    pub async fn claim_deliveries(
        &self,
        worker: &str,
        lease_until: Millis,
        limit: i64,
    ) -> Result<Vec<ClaimedDelivery>, StorageError> {
        let now = now_millis();
        // A read first, so that idle workers polling never take SQLite's write lock.
        let due: Option<(String,)> = sqlx::query_as(
            "SELECT id FROM deliveries WHERE status = 'pending' AND next_attempt_at <= $1 \
             AND (lease_expires_at IS NULL OR lease_expires_at < $1) LIMIT 1",
        )
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        if due.is_none() {
            return Ok(Vec::new());
        }
        let claimed: Vec<(String,)> = sqlx::query_as(&format!(
            "UPDATE deliveries SET locked_by = $1, lease_expires_at = $2, attempts = attempts + 1, \
             updated_at = $3 \
             WHERE id IN (SELECT id FROM deliveries WHERE status = 'pending' AND next_attempt_at <= $3 \
                          AND (lease_expires_at IS NULL OR lease_expires_at < $3) \
                          ORDER BY next_attempt_at LIMIT $4{}) \
             RETURNING id",
            self.dialect.row_lock()
        ))
        .bind(worker)
        .bind(lease_until)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let mut query = Sql::new(
            "SELECT deliveries.*, notification_events.payload, subscriptions.secret \
             FROM deliveries JOIN notification_events ON notification_events.id = deliveries.event_id \
             LEFT JOIN subscriptions ON subscriptions.id = deliveries.subscription_id \
             WHERE deliveries.id IN (",
        );
        let mut list = query.separated(", ");
        for (id,) in &claimed {
            list.push_bind(id);
        }
        query.push(")");
        let rows: Vec<ClaimedRow> = query.build_query_as().fetch_all(&self.pool).await?;
        convert(rows)
    }

    /// Records how an attempt went, if `worker` still holds the delivery.
    pub async fn finish_delivery(
        &self,
        id: &str,
        worker: &str,
        outcome: &DeliveryOutcome,
    ) -> Result<bool, StorageError> {
        let now = now_millis();
        let (status, error, next_attempt_at, delivered_at) = match outcome {
            DeliveryOutcome::Delivered => ("delivered", None, None, Some(now)),
            DeliveryOutcome::Retry { error, at } => {
                ("pending", Some(error.as_str()), Some(*at), None)
            }
            DeliveryOutcome::Dead { error } => ("dead", Some(error.as_str()), None, None),
        };
        let updated = sqlx::query(
            "UPDATE deliveries SET status = $1, last_error = COALESCE($2, last_error), \
             next_attempt_at = COALESCE($3, next_attempt_at), delivered_at = $4, \
             locked_by = NULL, lease_expires_at = NULL, updated_at = $5 \
             WHERE id = $6 AND locked_by = $7 AND status = 'pending'",
        )
        .bind(status)
        .bind(error)
        .bind(next_attempt_at)
        .bind(delivered_at)
        .bind(now)
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    pub async fn list_deliveries(
        &self,
        filter: &DeliveryFilter,
        page: &PageRequest,
    ) -> Result<Page<DeliveryRecord>, StorageError> {
        let rows = self.delivery_page_rows(filter, page).await?;
        Ok(Page::from_rows(rows, page.limit, |row| &row.id))
    }

    /// One delivery, whoever may see it: callers check its `namespace` (NULL: admins only).
    pub async fn find_delivery(&self, id: &str) -> Result<Option<DeliveryRecord>, StorageError> {
        let row: Option<DeliveryRow> = sqlx::query_as(
            "SELECT deliveries.*, notification_events.payload FROM deliveries \
             JOIN notification_events ON notification_events.id = deliveries.event_id \
             WHERE deliveries.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(DeliveryRecord::try_from).transpose()
    }

    /// Queues a dead delivery again with fresh attempts; false unless it was dead.
    pub async fn retry_delivery(
        &self,
        delivery: &DeliveryRecord,
        actor: &Actor,
    ) -> Result<bool, StorageError> {
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $1, \
             locked_by = NULL, lease_expires_at = NULL, updated_at = $1 \
             WHERE id = $2 AND status = 'dead'",
        )
        .bind(now)
        .bind(&delivery.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        let mut entry = AuditEntry::new("notification.retry", &delivery.id)
            .old(serde_json::json!({ "status": "dead", "attempts": delivery.attempts }))
            .new_value(serde_json::json!({ "status": "pending", "attempts": 0 }));
        entry.namespace = delivery.namespace.clone();
        insert_audit(&mut tx, actor, &entry).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Deliveries, newest first, one page (`after`: the last id of the previous page).
    /// With `filter.visible`, only those that belong to one of those namespaces: a
    /// delivery's namespace is its subscription's, and the deliveries of global
    /// subscriptions and of the configured addresses (namespace NULL) never match.
    async fn delivery_page_rows(
        &self,
        filter: &DeliveryFilter,
        page: &PageRequest,
    ) -> Result<Vec<DeliveryRecord>, StorageError> {
        let mut query = Sql::new(
            "SELECT deliveries.*, notification_events.payload FROM deliveries \
             JOIN notification_events ON notification_events.id = deliveries.event_id WHERE 1 = 1",
        );
        if let Some(names) = &filter.visible {
            if names.is_empty() {
                return Ok(Vec::new());
            }
            query.push(" AND deliveries.namespace IN (");
            let mut list = query.separated(", ");
            for name in names {
                list.push_bind(name.clone());
            }
            query.push(")");
        }
        if let Some(status) = filter.status {
            query.push(" AND deliveries.status = ").push_bind(status.as_str());
        }
        if let Some(event_id) = &filter.event_id {
            query.push(" AND deliveries.event_id = ").push_bind(event_id.clone());
        }
        if let Some(after) = &page.after {
            query.push(" AND deliveries.id < ").push_bind(after.clone());
        }
        query.push(" ORDER BY deliveries.id DESC LIMIT ").push_bind(page.limit + 1);
        let rows: Vec<DeliveryRow> = query.build_query_as().fetch_all(&self.pool).await?;
        convert(rows)
    }
}

/// Stores an event and one pending delivery per receiver that wants it: the namespace's
/// and the global subscriptions, and the `recipients` from the configuration. A delivery
/// belongs to its subscription's namespace, not to its event's: those of global
/// subscriptions and of the configured recipients get none, so only admins see and
/// retry them (their targets are the admins' to know). The event keeps its namespace.
pub(super) async fn insert_notification(
    tx: &mut Transaction<'_, Any>,
    event: EventType,
    notification: &Notification,
    recipients: &[String],
) -> Result<(), StorageError> {
    let now = now_millis();
    sqlx::query(
        "INSERT INTO notification_events (id, type, namespace, job_id, actor, payload, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&notification.id)
    .bind(event.as_str())
    .bind(&notification.namespace)
    .bind(&notification.job_id)
    .bind(&notification.actor)
    .bind(serde_json::to_string(notification).expect("notifications serialize"))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    let subscriptions: Vec<SubscriptionRow> = sqlx::query_as(
        "SELECT id, channel, namespace, target, events, secret, created_by, created_at \
         FROM subscriptions WHERE namespace IS NULL OR namespace = $1 ORDER BY id",
    )
    .bind(&notification.namespace)
    .fetch_all(&mut **tx)
    .await?;
    let subscriptions: Vec<SubscriptionRecord> = convert(subscriptions)?;
    // (channel, target, subscription id, the delivery's namespace)
    let mut receivers: Vec<(Channel, &str, Option<&str>, Option<&str>)> =
        recipients.iter().map(|address| (Channel::Email, address.as_str(), None, None)).collect();
    for subscription in &subscriptions {
        if subscribed(&subscription.events, event) {
            receivers.push((
                subscription.channel,
                &subscription.target,
                Some(&subscription.id),
                subscription.namespace.as_deref(),
            ));
        }
    }
    // One message per address, even when the configuration and a subscription both name it.
    let mut seen = std::collections::BTreeSet::new();
    receivers.retain(|(channel, target, _, _)| {
        *channel == Channel::Webhook || seen.insert(target.to_ascii_lowercase())
    });
    for chunk in receivers.chunks(100) {
        let mut insert = Sql::new(
            "INSERT INTO deliveries (id, event_id, channel, target, subscription_id, namespace, status, \
             attempts, next_attempt_at, created_at, updated_at) ",
        );
        insert.push_values(chunk, |mut row, (channel, target, subscription, namespace)| {
            row.push_bind(crate::storage::new_id())
                .push_bind(notification.id.clone())
                .push_bind(channel.as_str())
                .push_bind(target.to_string())
                .push_bind(subscription.map(str::to_string))
                .push_bind(namespace.map(str::to_string))
                .push_bind("pending")
                .push_bind(0_i64)
                .push_bind(now)
                .push_bind(now)
                .push_bind(now);
        });
        insert.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// The event a finished job announces, if any: its lifecycle event with the instances
/// as they are now, or `job.failed` with the error.
pub(super) async fn notify_job_finished(
    tx: &mut Transaction<'_, Any>,
    job_id: &str,
    error: Option<&str>,
    recipients: &[String],
) -> Result<(), StorageError> {
    let (kind, actor, credential, namespace): (String, String, Option<String>, Option<String>) =
        sqlx::query_as("SELECT kind, actor, credential, namespace FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_one(&mut **tx)
            .await?;
    let kind: JobKind = kind.parse().map_err(StorageError::Corrupt)?;
    let Some(event) = EventType::for_finished_job(kind, error.is_none()) else {
        return Ok(());
    };
    let rows: Vec<InstanceRow> = sqlx::query_as(
        "SELECT instances.* FROM job_instances JOIN instances ON instances.id = job_instances.instance_id \
         WHERE job_instances.job_id = $1 ORDER BY instances.launch_index, instances.id",
    )
    .bind(job_id)
    .fetch_all(&mut **tx)
    .await?;
    let instances: Vec<InstanceRecord> = convert(rows)?;
    let notification = Notification {
        id: crate::storage::new_id(),
        event: event.as_str().to_string(),
        occurred_at: to_datetime(now_millis()),
        namespace,
        actor,
        credential,
        job_id: Some(job_id.to_string()),
        job_kind: Some(kind.as_str().to_string()),
        instances: instances.iter().map(notified).collect(),
        error: error.map(str::to_string),
        drift: Vec::new(),
    };
    insert_notification(tx, event, &notification, recipients).await
}

/// An instance as notifications describe it.
pub(super) fn notified(instance: &InstanceRecord) -> NotifiedInstance {
    NotifiedInstance {
        id: instance.id.clone(),
        cloud_id: instance.cloud_id.clone(),
        name: instance.name.clone(),
        region: instance.region.clone(),
        instance_type: instance.instance_type.clone(),
        state: instance.state.as_str().to_string(),
        public_ip: instance.public_ip.clone(),
        private_ip: instance.private_ip.clone(),
        key_name: instance.key_name.clone(),
        login_user: instance.login_user.clone(),
    }
}

/// A subscription as the audit log records it: never its secret.
pub(super) fn subscription_value(subscription: &SubscriptionRecord) -> serde_json::Value {
    serde_json::json!({
        "channel": subscription.channel.as_str(),
        "target": subscription.target,
        "events": event_names(&subscription.events),
        "namespace": subscription.namespace,
    })
}

/// The event for one drift the reconciler found.
pub(super) fn drift_notification(
    instance: &InstanceRecord,
    drifts: &[&crate::storage::Drift],
    now: crate::storage::Millis,
) -> Notification {
    Notification {
        id: crate::storage::new_id(),
        event: crate::domain::EventType::InstanceDrifted.as_str().to_string(),
        occurred_at: crate::storage::to_datetime(now),
        namespace: Some(instance.namespace.clone()),
        actor: crate::storage::SYSTEM_ACTOR.to_string(),
        credential: None,
        job_id: None,
        job_kind: None,
        instances: vec![notified(instance)],
        error: None,
        drift: drifts
            .iter()
            .map(|drift| crate::domain::DriftChange {
                field: drift.field.clone(),
                old_value: drift.old_value.clone(),
                new_value: drift.new_value.clone(),
            })
            .collect(),
    }
}

/// Event names, as stored and audited.
fn event_names(events: &[EventType]) -> Vec<&'static str> {
    events.iter().map(|event| event.as_str()).collect()
}
