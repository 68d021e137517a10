//! Notifications: delivering the outbox.
//!
//! Events and their deliveries are written by `storage` in the transaction of the change that
//! caused them (a finished job, drift), so none is lost to a crash. Here, delivery workers
//! claim due deliveries under a lease, send each by email (`email`) or webhook (`webhook`),
//! and record the outcome: delivered; retried later with capped exponential backoff; or, after
//! `notify.max_attempts`, parked as dead, visible at `GET /v1/notifications?status=dead` and
//! retryable from there. A crash between sending and recording may send a delivery again; its
//! id (email `Message-ID`, webhook `X-Corral-Delivery`) stays the same, so receivers can drop
//! the duplicate.

mod email;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use crate::config::NotifySettings;
use crate::storage::{Channel, ClaimedDelivery, DeliveryOutcome, Store, now_millis};

pub use webhook::check_url;

use email::Mailer;

/// Deliveries one worker claims at a time, and sends at once.
const BATCH: i64 = 16;

/// Sends deliveries; shared by the delivery loop of one process.
pub struct Notifier {
    store: Store,
    mailer: Option<Mailer>,
    webhooks: webhook::WebhookSender,
    settings: NotifySettings,
    /// Where people reach this corral, for links to jobs.
    public_url: String,
}

impl Notifier {
    pub fn new(
        store: Store,
        settings: NotifySettings,
        public_url: String,
    ) -> anyhow::Result<Notifier> {
        let mailer = Mailer::from_settings(&settings)?;
        let webhooks = webhook::WebhookSender::new(
            Duration::from_secs(settings.webhook_timeout_secs),
            settings.webhook_allow_private,
        )?;
        Ok(Notifier { store, mailer, webhooks, settings, public_url })
    }

    /// Sends one delivery; an error says why it did not arrive.
    async fn send(&self, claimed: &ClaimedDelivery) -> Result<(), String> {
        let delivery = &claimed.delivery;
        let notification = &delivery.notification;
        match delivery.channel {
            Channel::Email => {
                let mailer = self.mailer.as_ref().ok_or(
                    "email is not configured on this server: set CORRAL_SMTP_HOST".to_string(),
                )?;
                let link = notification
                    .job_id
                    .as_ref()
                    .map(|id| format!("{}/v1/jobs/{id}", self.public_url.trim_end_matches('/')));
                mailer.send(&delivery.target, &delivery.id, notification, link.as_deref()).await
            }
            Channel::Webhook => {
                let secret =
                    claimed.secret.as_deref().ok_or("the webhook subscription was deleted")?;
                self.webhooks.send(&delivery.target, secret, &delivery.id, notification).await
            }
        }
    }

    /// What to record after an attempt that ended with `result`.
    fn outcome(&self, attempts: i64, result: Result<(), String>) -> DeliveryOutcome {
        match result {
            Ok(()) => DeliveryOutcome::Delivered,
            Err(error) if attempts >= self.settings.max_attempts => DeliveryOutcome::Dead {
                error: format!("gave up after {attempts} attempts: {error}"),
            },
            Err(error) => {
                let delay = self.settings.backoff(attempts);
                DeliveryOutcome::Retry { error, at: now_millis() + delay.as_millis() as i64 }
            }
        }
    }
}

/// Claims and sends due deliveries until `shutdown`; a batch in flight is finished first.
pub async fn run_deliveries(notifier: Arc<Notifier>, shutdown: CancellationToken) {
    let worker = format!("notify-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
    // Longer than any send may take, so a live worker never loses a delivery it is sending.
    let lease = Duration::from_secs(
        3 * notifier.settings.smtp_timeout_secs.max(notifier.settings.webhook_timeout_secs) + 30,
    );
    let idle = Duration::from_millis(notifier.settings.poll_interval_ms);
    while !shutdown.is_cancelled() {
        let lease_until = now_millis() + lease.as_millis() as i64;
        let batch = match notifier.store.claim_deliveries(&worker, lease_until, BATCH).await {
            Ok(batch) => batch,
            Err(err) => {
                tracing::warn!(error = %err, "claiming notification deliveries failed");
                Vec::new()
            }
        };
        if batch.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(idle) => {}
                _ = shutdown.cancelled() => {}
            }
            continue;
        }
        join_all(batch.iter().map(|claimed| deliver(&notifier, &worker, claimed))).await;
    }
}

async fn deliver(notifier: &Notifier, worker: &str, claimed: &ClaimedDelivery) {
    let delivery = &claimed.delivery;
    let result = notifier.send(claimed).await;
    if let Err(error) = &result {
        tracing::warn!(
            delivery = %delivery.id, channel = delivery.channel.as_str(), attempt = delivery.attempts,
            "notification not delivered: {error}"
        );
    }
    let outcome = notifier.outcome(delivery.attempts, result);
    match notifier.store.finish_delivery(&delivery.id, worker, &outcome).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(delivery = %delivery.id, "lost the lease on a delivery"),
        Err(err) => {
            tracing::warn!(delivery = %delivery.id, error = %err, "recording a delivery failed")
        }
    }
}
