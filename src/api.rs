//! The HTTP API: one router per resource, merged here, with the state they share.
//!
//! Each route is declared once, in its module's `router()`, as a handler with its
//! `#[utoipa::path]` (`utoipa_axum::routes!`): the axum route and its operation in
//! `/openapi.json` come from that one declaration, so that no route escapes the document, nor
//! the access matrix built from it (`tests/it/access.rs`). Adding a route: the handler with its
//! `#[utoipa::path]`, one `.routes(routes!(…))` line in its module's `router()`, and its rule in
//! the access matrix.
//!
//! Handlers validate, write the desired state and a job in one transaction, and return; they
//! never change anything in the cloud (jobs do), and read from it only through the cached
//! catalog. Wire types are not domain types: those the CLI reads too (instances, jobs,
//! namespaces, audit) are in `crate::wire`, the others live next to their handlers. Errors use one
//! envelope (`api::error`).
//!
//! Every route except health, docs and `/v1/token` sits behind `auth::require_auth`; handlers
//! take a `Caller` and decide what it may see and do (`domain::identity`).

mod admission;
mod api_keys;
mod audit;
mod auth;
mod docs;
mod error;
mod export;
mod extract;
mod health;
mod instances;
mod jobs;
mod key_pairs;
pub mod limits;
mod namespaces;
mod notifications;
mod orphans;
mod policy;
mod schema;
mod subscriptions;
mod terraform_state;
mod users;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderName;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::auth::Authenticator;
use crate::cloud::Catalog;
use crate::domain::Policy;
use crate::jobs::Queue;
use crate::storage::Store;

pub use docs::ApiDoc;
pub use error::{ApiError, FieldError, Problem};

/// State shared by every handler.
#[derive(Clone)]
pub struct ApiContext {
    pub store: Store,
    pub queue: Queue,
    pub policy: Arc<Policy>,
    /// Attempts a new job gets before it is parked as failed.
    pub max_attempts: i64,
    pub started_at: Instant,
    /// Where cloud calls go, as shown by `/status`.
    pub cloud_endpoint: Arc<str>,
    pub auth: Arc<Authenticator>,
    /// Instance-type facts (vCPUs for quotas), cached.
    pub catalog: Arc<Catalog>,
    /// Where EC2 calls go when not to AWS itself (an emulator), for exported configurations.
    pub endpoint_url: Option<Arc<str>>,
    /// Whether `terraform` is installed here, so that `?backend=terraform` can be accepted.
    pub terraform_available: bool,
    /// Backend of create requests that name none.
    pub default_backend: crate::domain::Backend,
    /// What notification subscriptions may name (the SSRF guard, whether email is set up).
    pub notify: Arc<crate::config::NotifySettings>,
    /// Reverse proxies whose `X-Forwarded-For` is believed (`extract::ClientAddress`).
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
    /// Request timeouts and the cap on event streams.
    pub limits: Arc<limits::Limits>,
}

/// `/health` and `/ready` only, for processes that run jobs but serve no API.
pub fn health_router(ctx: ApiContext) -> Router {
    let (health, _) = health::router().split_for_parts();
    health.with_state(ctx).layer(axum::middleware::from_fn(error::problem_responses))
}

/// The whole API and its OpenAPI document, from the routers of its modules.
pub fn router(ctx: ApiContext) -> Router {
    let (protected, protected_doc) = OpenApiRouter::new()
        .merge(api_keys::router())
        .merge(audit::router())
        .merge(auth::router())
        .merge(export::router())
        .merge(instances::router())
        .merge(jobs::router())
        .merge(key_pairs::router())
        .merge(namespaces::router())
        .merge(notifications::router())
        .merge(orphans::router())
        .merge(policy::router())
        .merge(subscriptions::router())
        .merge(terraform_state::router())
        .merge(users::router())
        .merge(health::status_router())
        .split_for_parts();
    let protected = protected
        .route_layer(axum::middleware::from_fn_with_state(ctx.clone(), auth::require_auth));
    let (public, public_doc) =
        OpenApiRouter::new().merge(auth::public_router()).merge(health::router()).split_for_parts();
    let mut document = ApiDoc::openapi();
    document.merge(protected_doc);
    document.merge(public_doc);
    docs::describe_error_answers(&mut document);
    let request_id = HeaderName::from_static(auth::REQUEST_ID_HEADER);
    Router::new()
        .merge(protected)
        .merge(public)
        .with_state(ctx.clone())
        .merge(docs::router(document))
        .layer(axum::middleware::from_fn_with_state(ctx.limits.clone(), limits::request_timeout))
        .layer(axum::middleware::from_fn(error::problem_responses))
        .layer(DefaultBodyLimit::max(extract::MAX_BODY_BYTES))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<_>| {
            let id = request
                .headers()
                .get(auth::REQUEST_ID_HEADER)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default();
            tracing::info_span!("request", method = %request.method(), uri = %request.uri().path(), request_id = id)
        }))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}
