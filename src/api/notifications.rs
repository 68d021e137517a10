//! `/v1/notifications`: every delivery of every event, where it stands (pending, delivered,
//! dead) and why the last attempt failed, with a retry for the dead ones.
//!
//! A delivery belongs to the namespace of the subscription it was made for, not to its
//! event's: a namespace's readers see the deliveries of that namespace's own webhooks and
//! email subscriptions, and its operators retry them. The deliveries of global subscriptions
//! and of the configured `notify.email` addresses belong to no namespace and are the admins'
//! alone, since their targets (a Slack or Teams incoming-webhook URL is a credential) are not
//! the namespace's to know. The event itself still names its namespace.

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::auth::Caller;
use crate::api::error::Key;
use crate::api::extract::{PageParams, QueryParams, encode_cursor, page_param};
use crate::api::{ApiContext, ApiError};
use crate::domain::{Notification, Role};
use crate::storage::{DeliveryFilter, DeliveryRecord, DeliveryStatus, to_datetime};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Serialize, ToSchema)]
pub struct DeliveryBody {
    /// Stable across attempts: the email's `Message-ID` and the webhook's `X-Corral-Delivery`.
    pub id: String,
    /// `email` or `webhook`.
    pub channel: String,
    /// The address or URL.
    pub target: String,
    /// `pending`, `delivered` or `dead`.
    pub status: String,
    pub attempts: i64,
    /// When the next attempt is due (pending deliveries).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// The namespace of the delivery's subscription, which decides who sees and retries it;
    /// null for global subscriptions and the configured `notify.email` addresses (admins
    /// only). The event's own namespace is `event.namespace`.
    pub namespace: Option<String>,
    /// The event, as webhooks receive it.
    #[schema(value_type = Object)]
    pub event: Notification,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryPage {
    pub items: Vec<DeliveryBody>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

impl From<&DeliveryRecord> for DeliveryBody {
    fn from(delivery: &DeliveryRecord) -> DeliveryBody {
        DeliveryBody {
            id: delivery.id.clone(),
            channel: delivery.channel.as_str().to_string(),
            target: delivery.target.clone(),
            status: delivery.status.as_str().to_string(),
            attempts: delivery.attempts,
            next_attempt_at: (delivery.status == DeliveryStatus::Pending)
                .then(|| to_datetime(delivery.next_attempt_at)),
            last_error: delivery.last_error.clone(),
            delivered_at: delivery.delivered_at.map(to_datetime),
            created_at: to_datetime(delivery.created_at),
            namespace: delivery.namespace.clone(),
            event: delivery.notification.clone(),
        }
    }
}

pub fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new().routes(routes!(list_notifications)).routes(routes!(retry_notification))
}

/// Deliveries, newest first: those of the subscriptions of the namespaces the caller may read;
/// all of them, including those of global subscriptions and of the configured `notify.email`
/// addresses, for admins only.
#[utoipa::path(get, path = "/v1/notifications", tag = "notifications",
    operation_id = "list_notifications",
    params(
        ("status" = inline(Option<crate::api::schema::DeliveryStatuses>), Query),
        ("event_id" = Option<String>, Query, description = "Only the deliveries of this event"),
        PageParams,
    ),
    responses((status = 200, body = DeliveryPage), (status = 400, body = crate::api::Problem)))]
pub async fn list_notifications(
    State(ctx): State<ApiContext>,
    caller: Caller,
    params: QueryParams,
) -> Result<Json<DeliveryPage>, ApiError> {
    params.allow_only(&["status", "event_id", "limit", "cursor"])?;
    let filter = DeliveryFilter {
        visible: caller.principal.visible_namespaces(),
        status: params.parsed::<DeliveryStatus>("status")?,
        event_id: params.one("event_id")?.map(str::to_string),
    };
    let page = ctx.store.list_deliveries(&filter, &page_param(&params)?).await?;
    Ok(Json(DeliveryPage {
        items: page.items.iter().map(DeliveryBody::from).collect(),
        next_cursor: page.next_after.as_deref().map(encode_cursor),
    }))
}

/// Sends a dead delivery again, with a fresh count of attempts. Needs the operator role in the
/// delivery's namespace (its subscription's); a delivery of a global subscription or of a
/// configured `notify.email` address is retried by admins only, and is a 404 to anyone else.
#[utoipa::path(post, path = "/v1/notifications/{id}/retry", tag = "notifications",
    operation_id = "retry_notification", params(("id" = String, Path)),
    responses((status = 200, body = DeliveryBody),
        (status = 403, description = "A viewer of the delivery's namespace", body = crate::api::Problem),
        (status = 404, description = "No such delivery, or one the caller may not see", body = crate::api::Problem),
        (status = 409, description = "The delivery is not dead", body = crate::api::Problem)))]
pub async fn retry_notification(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeliveryBody>, ApiError> {
    let not_found = || ApiError::not_found("notification delivery", Key::Id(&id));
    let delivery = ctx.store.find_delivery(&id).await?.ok_or_else(not_found)?;
    // The delivery's namespace is its subscription's: none (admins only) for global
    // subscriptions and the configured addresses, whatever namespace the event is in.
    match &delivery.namespace {
        Some(namespace) => caller.require(namespace, Role::Operator, not_found)?,
        None if caller.principal.admin => {}
        None => return Err(not_found()),
    }
    if !ctx.store.retry_delivery(&delivery, &caller.actor()).await? {
        return Err(ApiError::Conflict {
            detail: format!(
                "delivery '{id}' is {}; only dead deliveries are retried",
                delivery.status.as_str()
            ),
            errors: Vec::new(),
        });
    }
    let delivery = ctx.store.find_delivery(&id).await?.ok_or_else(not_found)?;
    Ok(Json(DeliveryBody::from(&delivery)))
}
