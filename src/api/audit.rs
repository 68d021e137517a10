//! `/v1/audit`: the audit log, newest first, by page. Admins read every event; others the
//! events of the namespaces they hold a role in.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::auth::Caller;
use crate::api::extract::QueryParams;
use crate::api::{ApiContext, ApiError};
use crate::storage::{AuditFilter, AuditRecord, to_datetime};

#[derive(Serialize, ToSchema)]
pub struct AuditEventBody {
    pub id: i64,
    pub timestamp: DateTime<Utc>,
    /// A username, an API key's prefix, or `system`.
    pub actor: String,
    /// E.g. `instance.create`, `instance.state`, `user.update`.
    pub action: String,
    /// What the action applied to: an instance id, a username, a namespace, a key prefix.
    pub target: String,
    pub namespace: Option<String>,
    pub old_value: Option<serde_json::Value>,
    pub new_value: Option<serde_json::Value>,
    /// The `X-Request-Id` of the request that made the change; null for changes corral observed.
    pub request_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub logs: Vec<AuditEventBody>,
    pub page: i64,
    pub limit: i64,
    /// Events matching the filters, on all pages.
    pub total: i64,
}

impl From<AuditRecord> for AuditEventBody {
    fn from(record: AuditRecord) -> AuditEventBody {
        AuditEventBody {
            id: record.id,
            timestamp: to_datetime(record.at),
            actor: record.actor,
            action: record.action,
            target: record.target,
            namespace: record.namespace,
            old_value: record.old_value,
            new_value: record.new_value,
            request_id: record.request_id,
        }
    }
}

pub fn router() -> Router<ApiContext> {
    Router::new().route("/audit", get(list_audit))
}

/// The audit log, newest first, filtered by namespace, actor, action and target.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", operation_id = "list_audit",
    params(
        ("page" = Option<i64>, Query, description = "From 1 (default 1)"),
        ("limit" = Option<i64>, Query, description = "Events per page, 1-100 (default 10)"),
        ("namespace" = Option<String>, Query),
        ("actor" = Option<String>, Query),
        ("action" = Option<String>, Query),
        ("target" = Option<String>, Query),
    ),
    responses((status = 200, body = AuditPage), (status = 400, body = crate::api::Problem)))]
pub async fn list_audit(
    State(ctx): State<ApiContext>,
    caller: Caller,
    params: QueryParams,
) -> Result<Json<AuditPage>, ApiError> {
    params.allow_only(&["page", "limit", "namespace", "actor", "action", "target"])?;
    let page = params.int("page", 1, 1_000_000)?.unwrap_or(1);
    let limit = params.int("limit", 1, 100)?.unwrap_or(10);
    let text = |name: &str| params.one(name).map(|value| value.map(str::to_string));
    let filter = AuditFilter {
        visible: caller.principal.visible_namespaces(),
        namespace: text("namespace")?,
        actor: text("actor")?,
        action: text("action")?,
        target: text("target")?,
    };
    let (records, total) = ctx.store.audit_page(&filter, page, limit).await?;
    Ok(Json(AuditPage {
        logs: records.into_iter().map(AuditEventBody::from).collect(),
        page,
        limit,
        total,
    }))
}
