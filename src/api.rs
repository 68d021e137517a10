//! The HTTP API: one router per resource, merged here, with the state they share.
//!
//! Handlers validate, write the desired state and a job in one transaction, and return; they
//! never call a cloud provider (jobs do). Wire types live next to their handlers and are not
//! domain types. Errors use one envelope (`api::error`).

mod docs;
mod error;
mod extract;
mod health;
mod instances;
mod jobs;
mod orphans;
mod policy;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tower_http::trace::TraceLayer;

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
}

/// `/health` and `/ready` only, for processes that run jobs but serve no API.
pub fn health_router(ctx: ApiContext) -> Router {
    health::router().with_state(ctx).layer(axum::middleware::from_fn(error::problem_responses))
}

pub fn router(ctx: ApiContext) -> Router {
    let v1 = Router::new()
        .merge(instances::router())
        .merge(jobs::router())
        .merge(orphans::router())
        .merge(policy::router());
    Router::new()
        .nest("/v1", v1)
        .merge(health::router())
        .with_state(ctx)
        .merge(docs::router())
        .layer(axum::middleware::from_fn(error::problem_responses))
        .layer(DefaultBodyLimit::max(extract::MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
}
