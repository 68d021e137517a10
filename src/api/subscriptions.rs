//! `/v1/webhooks` and `/v1/email-subscriptions`: who is told about which events.
//!
//! A subscription belongs to one namespace, made and removed by its operators (or an admin),
//! and seen by everyone who may read the namespace; without a namespace it covers every
//! namespace and only admins manage it. A webhook's secret is accepted once and never shown
//! again. Webhook URLs pass the SSRF guard (`notify::check_url`) when they are made.
//!
//! A namespace holds at most `notify.max_subscriptions_per_namespace` subscriptions (50 by
//! default), webhooks and email subscriptions counted together, so that one namespace cannot
//! make unbounded work for the delivery workers; a create past the cap is a `422`. Global
//! subscriptions are made by admins only and are not counted or capped.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::auth::Caller;
use crate::api::error::Key;
use crate::api::extract::ValidJson;
use crate::api::{ApiContext, ApiError, FieldError};
use crate::domain::{EventType, Role};
use crate::storage::{Channel, SubscriptionAdmission, SubscriptionRecord, now_millis, to_datetime};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Shortest webhook signing secret accepted.
const MIN_SECRET_LEN: usize = 16;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookBody {
    /// Where events are POSTed (http or https).
    #[schema(format = "uri", pattern = "^[Hh][Tt][Tt][Pp][Ss]?://")]
    pub url: String,
    /// Event types to send; all of them when empty or absent.
    #[serde(default)]
    #[schema(value_type = Vec<crate::api::schema::EventTypes>)]
    pub events: Vec<String>,
    /// Key of the `X-Corral-Signature` HMAC, at least 16 characters; never shown again.
    #[schema(min_length = 16)]
    pub secret: String,
    /// Only this namespace's events; every namespace's when absent (admins only).
    pub namespace: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookBody {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub namespace: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEmailSubscriptionBody {
    #[schema(format = Email)]
    pub email: String,
    /// Event types to mail; all of them when empty or absent.
    #[serde(default)]
    #[schema(value_type = Vec<crate::api::schema::EventTypes>)]
    pub events: Vec<String>,
    /// Only this namespace's events; every namespace's when absent (admins only).
    pub namespace: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EmailSubscriptionBody {
    pub id: String,
    pub email: String,
    pub events: Vec<String>,
    pub namespace: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    pub items: Vec<WebhookBody>,
}

#[derive(Serialize, ToSchema)]
pub struct EmailSubscriptionList {
    pub items: Vec<EmailSubscriptionBody>,
}

impl From<&SubscriptionRecord> for WebhookBody {
    fn from(record: &SubscriptionRecord) -> WebhookBody {
        WebhookBody {
            id: record.id.clone(),
            url: record.target.clone(),
            events: event_names(&record.events),
            namespace: record.namespace.clone(),
            created_by: record.created_by.clone(),
            created_at: to_datetime(record.created_at),
        }
    }
}

impl From<&SubscriptionRecord> for EmailSubscriptionBody {
    fn from(record: &SubscriptionRecord) -> EmailSubscriptionBody {
        EmailSubscriptionBody {
            id: record.id.clone(),
            email: record.target.clone(),
            events: event_names(&record.events),
            namespace: record.namespace.clone(),
            created_by: record.created_by.clone(),
            created_at: to_datetime(record.created_at),
        }
    }
}

pub fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(list_webhooks, create_webhook))
        .routes(routes!(get_webhook, delete_webhook))
        .routes(routes!(list_email_subscriptions, create_email_subscription))
        .routes(routes!(get_email_subscription, delete_email_subscription))
}

/// Subscribes a URL to events. Each delivery is a JSON POST signed with
/// `X-Corral-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
///
/// A namespace holds at most `notify.max_subscriptions_per_namespace` subscriptions (webhooks
/// and email subscriptions together); global webhooks (admins only) are not capped. The
/// deliveries of a global webhook belong to no namespace: only admins see and retry them.
#[utoipa::path(post, path = "/v1/webhooks", tag = "notifications", operation_id = "create_webhook",
    request_body = CreateWebhookBody,
    responses((status = 201, body = WebhookBody),
        (status = 422, description = "The body is invalid, or the namespace already holds \
            notify.max_subscriptions_per_namespace subscriptions", body = crate::api::Problem),
        (status = 403, body = crate::api::Problem), (status = 404, body = crate::api::Problem)))]
pub async fn create_webhook(
    State(ctx): State<ApiContext>,
    caller: Caller,
    ValidJson(body): ValidJson<CreateWebhookBody>,
) -> Result<Response, ApiError> {
    require_manage(&caller, body.namespace.as_deref())?;
    let (events, mut errors) = parse_events(&body.events);
    if body.secret.chars().count() < MIN_SECRET_LEN {
        errors.push(FieldError::new(
            "secret",
            format!("must have at least {MIN_SECRET_LEN} characters"),
        ));
    }
    if let Err(problem) =
        crate::notify::check_url(&body.url, ctx.notify.webhook_allow_private).await
    {
        errors.push(FieldError::new("url", problem));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let record = SubscriptionRecord {
        secret: Some(body.secret),
        ..new_subscription(&caller, Channel::Webhook, body.namespace, body.url, events)
    };
    store(&ctx, &caller, &record).await?;
    Ok((StatusCode::CREATED, Json(WebhookBody::from(&record))).into_response())
}

/// Webhooks of the namespaces the caller may read (every webhook, for admins).
#[utoipa::path(get, path = "/v1/webhooks", tag = "notifications", operation_id = "list_webhooks",
    responses((status = 200, body = WebhookList)))]
pub async fn list_webhooks(
    State(ctx): State<ApiContext>,
    caller: Caller,
) -> Result<Json<WebhookList>, ApiError> {
    let records = list(&ctx, &caller, Channel::Webhook).await?;
    Ok(Json(WebhookList { items: records.iter().map(WebhookBody::from).collect() }))
}

#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "notifications", operation_id = "get_webhook",
    params(("id" = String, Path)),
    responses((status = 200, body = WebhookBody), (status = 404, body = crate::api::Problem)))]
pub async fn get_webhook(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<WebhookBody>, ApiError> {
    let record = find(&ctx, &caller, Channel::Webhook, &id, Role::Viewer).await?;
    Ok(Json(WebhookBody::from(&record)))
}

/// Removes a webhook; its deliveries still pending are parked as dead.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "notifications", operation_id = "delete_webhook",
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = crate::api::Problem)))]
pub async fn delete_webhook(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    remove(&ctx, &caller, Channel::Webhook, &id).await
}

/// Mails an address about events.
///
/// A namespace holds at most `notify.max_subscriptions_per_namespace` subscriptions (webhooks
/// and email subscriptions together); global ones (admins only) are not capped. The deliveries
/// of a global subscription belong to no namespace: only admins see and retry them.
#[utoipa::path(post, path = "/v1/email-subscriptions", tag = "notifications",
    operation_id = "create_email_subscription", request_body = CreateEmailSubscriptionBody,
    responses((status = 201, body = EmailSubscriptionBody),
        (status = 422, description = "The body is invalid, or the namespace already holds \
            notify.max_subscriptions_per_namespace subscriptions", body = crate::api::Problem),
        (status = 403, body = crate::api::Problem), (status = 404, body = crate::api::Problem)))]
pub async fn create_email_subscription(
    State(ctx): State<ApiContext>,
    caller: Caller,
    ValidJson(body): ValidJson<CreateEmailSubscriptionBody>,
) -> Result<Response, ApiError> {
    require_manage(&caller, body.namespace.as_deref())?;
    let (events, mut errors) = parse_events(&body.events);
    let email = body.email.trim().to_string();
    if email.parse::<lettre::Address>().is_err() {
        errors.push(FieldError::new("email", format!("'{email}' is not an email address")));
    }
    if ctx.notify.smtp_host.is_none() {
        errors.push(FieldError::new(
            "email",
            "this server has no SMTP server configured (CORRAL_SMTP_HOST), so it cannot send email",
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let record = new_subscription(&caller, Channel::Email, body.namespace, email, events);
    store(&ctx, &caller, &record).await?;
    Ok((StatusCode::CREATED, Json(EmailSubscriptionBody::from(&record))).into_response())
}

/// Email subscriptions of the namespaces the caller may read (all of them, for admins).
#[utoipa::path(get, path = "/v1/email-subscriptions", tag = "notifications",
    operation_id = "list_email_subscriptions",
    responses((status = 200, body = EmailSubscriptionList)))]
pub async fn list_email_subscriptions(
    State(ctx): State<ApiContext>,
    caller: Caller,
) -> Result<Json<EmailSubscriptionList>, ApiError> {
    let records = list(&ctx, &caller, Channel::Email).await?;
    Ok(Json(EmailSubscriptionList {
        items: records.iter().map(EmailSubscriptionBody::from).collect(),
    }))
}

#[utoipa::path(get, path = "/v1/email-subscriptions/{id}", tag = "notifications",
    operation_id = "get_email_subscription", params(("id" = String, Path)),
    responses((status = 200, body = EmailSubscriptionBody), (status = 404, body = crate::api::Problem)))]
pub async fn get_email_subscription(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<EmailSubscriptionBody>, ApiError> {
    let record = find(&ctx, &caller, Channel::Email, &id, Role::Viewer).await?;
    Ok(Json(EmailSubscriptionBody::from(&record)))
}

/// Removes an email subscription; its deliveries still pending are parked as dead.
#[utoipa::path(delete, path = "/v1/email-subscriptions/{id}", tag = "notifications",
    operation_id = "delete_email_subscription", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = crate::api::Problem)))]
pub async fn delete_email_subscription(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    remove(&ctx, &caller, Channel::Email, &id).await
}

/// Operators manage their namespaces' subscriptions; only admins manage global ones.
fn require_manage(caller: &Caller, namespace: Option<&str>) -> Result<(), ApiError> {
    match namespace {
        Some(namespace) => caller.require(namespace, Role::Operator, || {
            ApiError::not_found("namespace", Key::Name(namespace))
        }),
        None => caller.require_admin().map_err(|_| {
            ApiError::Forbidden(
                "subscriptions for every namespace need the admin role; name a namespace"
                    .to_string(),
            )
        }),
    }
}

/// The events a request names, and a problem for each name that is no event.
fn parse_events(names: &[String]) -> (Vec<EventType>, Vec<FieldError>) {
    let (mut events, mut errors) = (Vec::new(), Vec::new());
    for (index, name) in names.iter().enumerate() {
        match name.parse::<EventType>() {
            Ok(event) => events.push(event),
            Err(err) => errors.push(FieldError::new(format!("events[{index}]"), err)),
        }
    }
    (events, errors)
}

/// Event names as answered: in name order.
fn event_names(events: &[EventType]) -> Vec<String> {
    events.iter().map(|event| event.as_str().to_string()).collect()
}

fn new_subscription(
    caller: &Caller,
    channel: Channel,
    namespace: Option<String>,
    target: String,
    mut events: Vec<EventType>,
) -> SubscriptionRecord {
    events.sort_by_key(|event| event.as_str());
    events.dedup();
    SubscriptionRecord {
        id: crate::storage::new_id(),
        channel,
        namespace,
        target,
        events,
        secret: None,
        created_by: caller.principal.actor(),
        created_at: now_millis(),
    }
}

/// Stores `record`, within its namespace's cap of subscriptions (counted in the transaction
/// that stores it, so concurrent creates cannot pass it together).
async fn store(
    ctx: &ApiContext,
    caller: &Caller,
    record: &SubscriptionRecord,
) -> Result<(), ApiError> {
    let max = ctx.notify.max_subscriptions_per_namespace;
    let namespace = record.namespace.as_deref().unwrap_or_default();
    match ctx.store.create_subscription(record, max, &caller.actor()).await? {
        SubscriptionAdmission::Created => Ok(()),
        SubscriptionAdmission::UnknownNamespace => {
            Err(ApiError::not_found("namespace", Key::Name(namespace)))
        }
        SubscriptionAdmission::OverCap { held, max } => Err(ApiError::QuotaExceeded(format!(
            "namespace '{namespace}' allows {max} subscriptions (webhooks and email subscriptions \
             together, notify.max_subscriptions_per_namespace, \
             CORRAL_NOTIFY__MAX_SUBSCRIPTIONS_PER_NAMESPACE) and holds {held}; delete one, or ask \
             an admin to raise the setting"
        ))),
    }
}

async fn list(
    ctx: &ApiContext,
    caller: &Caller,
    channel: Channel,
) -> Result<Vec<SubscriptionRecord>, ApiError> {
    let visible = caller.principal.visible_namespaces();
    Ok(ctx.store.list_subscriptions(channel, visible.as_deref()).await?)
}

/// The subscription `id` of `channel`, if the caller holds `needed` where it applies; a
/// subscription the caller may not read is a 404.
async fn find(
    ctx: &ApiContext,
    caller: &Caller,
    channel: Channel,
    id: &str,
    needed: Role,
) -> Result<SubscriptionRecord, ApiError> {
    let not_found =
        || ApiError::not_found(&format!("{} subscription", channel.as_str()), Key::Id(id));
    let record = ctx.store.find_subscription(id).await?.filter(|record| record.channel == channel);
    let Some(record) = record else { return Err(not_found()) };
    match &record.namespace {
        Some(namespace) => caller.require(namespace, needed, not_found)?,
        None if caller.principal.admin => {}
        None => return Err(not_found()),
    }
    Ok(record)
}

async fn remove(
    ctx: &ApiContext,
    caller: &Caller,
    channel: Channel,
    id: &str,
) -> Result<StatusCode, ApiError> {
    let record = find(ctx, caller, channel, id, Role::Operator).await?;
    if ctx.store.delete_subscription(&record, &caller.actor()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(&format!("{} subscription", channel.as_str()), Key::Id(id)))
    }
}
