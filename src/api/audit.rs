//! `/v1/audit`: the audit log, newest first, by page or by cursor. Admins read every event;
//! others the events of the namespaces they hold a role in.
//!
//! `page` is an offset, and an offset is read past row by row, so pages reach back
//! `MAX_AUDIT_OFFSET` events and no further. `cursor` (a page's `next_cursor`) reads the events
//! older than the last one of that page, `id < cursor ORDER BY id DESC`, through the indexes,
//! at any depth.

use axum::Json;
use axum::extract::State;

use crate::api::auth::Caller;
use crate::api::extract::{QueryParams, encode_cursor, page_param};
use crate::api::{ApiContext, ApiError};
use crate::storage::{AuditFilter, AuditRecord, to_datetime};
use crate::wire::{AuditEventBody, AuditPage};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// How far back `page` reaches: `(page - 1) * limit` is at most this many events. The
/// description of `page` in `list_audit`'s OpenAPI annotation names it too.
pub const MAX_AUDIT_OFFSET: i64 = 10_000;

impl From<AuditRecord> for AuditEventBody {
    fn from(record: AuditRecord) -> AuditEventBody {
        AuditEventBody {
            id: record.id,
            timestamp: to_datetime(record.at),
            actor: record.actor,
            credential: record.credential,
            action: record.action,
            target: record.target,
            namespace: record.namespace,
            old_value: record.old_value,
            new_value: record.new_value,
            request_id: record.request_id,
        }
    }
}

pub fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new().routes(routes!(list_audit))
}

/// The audit log, newest first, filtered by namespace, actor, action and target.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", operation_id = "list_audit",
    params(
        ("page" = Option<i64>, Query, minimum = 1, maximum = 1_000_000, description = "From 1 (default 1). Pages reach 10000 events \
            back: (page - 1) * limit at most 10000; read further with cursor"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "Events per page, 1-100 (default 10)"),
        ("cursor" = Option<String>, Query, description = "next_cursor of a previous page: the \
            events older than that page's last, newest first, at any depth (keyset paging). \
            Give the same filters; page may only be 1 with it"),
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
    params.allow_only(&["page", "limit", "cursor", "namespace", "actor", "action", "target"])?;
    let page = params.int("page", 1, 1_000_000)?.unwrap_or(1);
    let limit = params.int("limit", 1, 100)?.unwrap_or(10);
    let before = cursor_param(&params)?;
    let offset = (page - 1) * limit;
    if before.is_some() && page != 1 {
        return Err(ApiError::bad_field(
            "page",
            "cannot go past 1 with cursor: the page after a cursor is its page's next_cursor",
        ));
    }
    if offset > MAX_AUDIT_OFFSET {
        return Err(ApiError::bad_field(
            "page",
            format!(
                "page {page} at limit {limit} starts {offset} events back, and pages reach \
                 {MAX_AUDIT_OFFSET} events back (page {} at limit {limit}); to read further, \
                 use keyset paging: pass a page's next_cursor as cursor",
                MAX_AUDIT_OFFSET / limit + 1
            ),
        ));
    }
    let text = |name: &str| params.one(name).map(|value| value.map(str::to_string));
    let filter = AuditFilter {
        visible: caller.principal.visible_namespaces(),
        namespace: text("namespace")?,
        actor: text("actor")?,
        action: text("action")?,
        target: text("target")?,
        before,
    };
    let (mut records, total) = if before.is_some() {
        // One event more than the page, to tell whether another page follows.
        ctx.store.audit_page(&filter, 1, limit + 1).await?
    } else {
        ctx.store.audit_page(&filter, page, limit).await?
    };
    let more = if before.is_some() {
        records.len() as i64 > limit
    } else {
        offset + (records.len() as i64) < total
    };
    records.truncate(limit as usize);
    let next_cursor = match records.last() {
        Some(last) if more => Some(encode_cursor(&last.id.to_string())),
        _ => None,
    };
    Ok(Json(AuditPage {
        logs: records.into_iter().map(AuditEventBody::from).collect(),
        page,
        limit,
        total,
        next_cursor,
    }))
}

/// The event id in `cursor`, the last event of the page before.
fn cursor_param(params: &QueryParams) -> Result<Option<i64>, ApiError> {
    // The cursor is the API's opaque one (`extract::page_param`), naming an event id.
    let Some(after) = page_param(params)?.after else { return Ok(None) };
    match after.parse::<i64>() {
        Ok(id) => Ok(Some(id)),
        Err(_) => Err(ApiError::bad_field(
            "cursor",
            "not a cursor of the audit log; use next_cursor from a previous page",
        )),
    }
}
