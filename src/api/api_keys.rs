//! `/v1/api-keys`: long-lived credentials for scripts. A key acts as the user who created it;
//! it is shown once, at creation, and stored only as a digest. A key expires no later than the
//! key or token that made it, unless the request proves the user's password again: a stolen
//! 30-minute token cannot become a credential that never ends.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::auth::Caller;
use crate::api::error::Key;
use crate::api::extract::{ClientAddress, QueryParams, ValidJson};
use crate::api::{ApiContext, ApiError, FieldError};
use crate::auth::{api_key_digest, new_api_key};
use crate::storage::{ApiKeyRecord, now_millis, to_datetime};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyBody {
    /// What the key is for: 1-100 characters, not all blank.
    /// (Blank as Rust's `str::trim` counts it: Unicode's White_Space.)
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"[^\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub name: String,
    /// When the key stops working; when absent, never, or when the credential of this
    /// request expires (a token, an expiring key), unless `password` is given.
    pub expires_at: Option<DateTime<Utc>>,
    /// The user's password: lets the key outlive the credential that makes it.
    pub password: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedApiKeyBody {
    pub id: String,
    /// Identifies the key in lists and in the audit log.
    pub prefix: String,
    /// The key itself, shown this once: send it as the `X-API-KEY` header.
    pub key: String,
    pub name: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct ApiKeyBody {
    pub id: String,
    pub prefix: String,
    pub name: String,
    /// The user the key acts as.
    pub username: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct ApiKeyList {
    pub items: Vec<ApiKeyBody>,
}

impl From<&ApiKeyRecord> for ApiKeyBody {
    fn from(key: &ApiKeyRecord) -> ApiKeyBody {
        ApiKeyBody {
            id: key.id.clone(),
            prefix: key.prefix.clone(),
            name: key.name.clone(),
            username: key.username.clone(),
            expires_at: key.expires_at.map(to_datetime),
            revoked_at: key.revoked_at.map(to_datetime),
            created_at: to_datetime(key.created_at),
        }
    }
}

pub fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(list_api_keys, create_api_key))
        .routes(routes!(revoke_api_key))
}

/// Creates an API key that acts as the caller. The answer is the only time the key is shown.
#[utoipa::path(post, path = "/v1/api-keys", tag = "api-keys", operation_id = "create_api_key",
    request_body = CreateApiKeyBody,
    responses((status = 201, body = CreatedApiKeyBody), (status = 422, body = crate::api::Problem),
        (status = 429, description = "Too many wrong passwords for this user or address", body = crate::api::Problem)))]
pub async fn create_api_key(
    State(ctx): State<ApiContext>,
    caller: Caller,
    ClientAddress(client): ClientAddress,
    ValidJson(body): ValidJson<CreateApiKeyBody>,
) -> Result<Response, ApiError> {
    let mut errors = Vec::new();
    let name = body.name.trim();
    if name.is_empty() || body.name.chars().count() > 100 {
        errors.push(FieldError::new("name", "must be 1-100 characters, not all blank"));
    }
    let now = now_millis();
    let mut expires_at = body.expires_at.map(|at| at.timestamp_millis());
    if expires_at.is_some_and(|at| at <= now) {
        errors.push(FieldError::new("expires_at", "must be in the future"));
    }
    let username = &caller.principal.username;
    let proven = match &body.password {
        Some(password) => ctx.auth.confirm_password(username, password, client).await?,
        None => false,
    };
    if body.password.is_some() && !proven {
        errors.push(FieldError::new("password", format!("is not the password of '{username}'")));
    }
    if let Some(limit) = caller.principal.expires_at.filter(|_| !proven) {
        expires_at = Some(expires_at.map_or(limit, |at| at.min(limit)));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let (key, prefix) = new_api_key();
    let record = ApiKeyRecord {
        id: crate::storage::new_id(),
        user_id: caller.principal.user_id.clone(),
        username: caller.principal.username.clone(),
        name: name.to_string(),
        prefix,
        key_hash: api_key_digest(&key),
        expires_at,
        revoked_at: None,
        created_at: now,
    };
    ctx.store.create_api_key(&record, &caller.actor()).await?;
    let body = CreatedApiKeyBody {
        id: record.id,
        prefix: record.prefix,
        key,
        name: record.name,
        expires_at: expires_at.map(to_datetime),
        created_at: to_datetime(now),
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// API keys, newest first: the caller's own; an admin sees everyone's, or one user's with
/// `?user=`.
#[utoipa::path(get, path = "/v1/api-keys", tag = "api-keys", operation_id = "list_api_keys",
    params(("user" = Option<String>, Query, description = "Only this user's keys (admins)")),
    responses((status = 200, body = ApiKeyList), (status = 403, body = crate::api::Problem),
        (status = 404, description = "No such user", body = crate::api::Problem)))]
pub async fn list_api_keys(
    State(ctx): State<ApiContext>,
    caller: Caller,
    params: QueryParams,
) -> Result<Json<ApiKeyList>, ApiError> {
    params.allow_only(&["user"])?;
    let user = params.one("user")?;
    let keys = match (caller.principal.admin, user) {
        (false, Some(user)) if user != caller.principal.username => {
            return Err(ApiError::Forbidden("only admins list other users' keys".to_string()));
        }
        (false, _) => ctx.store.list_api_keys(Some(&caller.principal.user_id)).await?,
        (true, None) => ctx.store.list_api_keys(None).await?,
        (true, Some(user)) => match ctx.store.user_by_name(user).await? {
            Some(user) => ctx.store.list_api_keys(Some(&user.id)).await?,
            None => return Err(ApiError::not_found("user", Key::Name(user))),
        },
    };
    Ok(Json(ApiKeyList { items: keys.iter().map(ApiKeyBody::from).collect() }))
}

/// Revokes an API key at once: the caller's own, or any key for an admin.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "api-keys", operation_id = "revoke_api_key",
    params(("id" = String, Path)),
    responses((status = 200, body = ApiKeyBody), (status = 404, body = crate::api::Problem)))]
pub async fn revoke_api_key(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ApiKeyBody>, ApiError> {
    let owner = (!caller.principal.admin).then_some(caller.principal.user_id.as_str());
    let key = ctx
        .store
        .revoke_api_key(&id, owner, &caller.actor())
        .await?
        .ok_or_else(|| ApiError::not_found("API key", Key::Id(&id)))?;
    Ok(Json(ApiKeyBody::from(&key)))
}
