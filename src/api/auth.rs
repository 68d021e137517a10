//! Authentication at the edge of the API: the middleware that admits only requests with valid
//! credentials, the `Caller` extractor handlers use to learn who asks, the token endpoint
//! (`POST /v1/token`, OAuth2 password grant) and `GET /v1/me`.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::extract::{ClientAddress, parse_json};
use crate::api::{ApiContext, ApiError, FieldError};
use crate::auth::AuthError;
use crate::domain::{Access, Credential, Principal, Role};
use crate::storage::Actor;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Header that carries the request id (taken from the client, or generated).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Middleware: lets a request through only with valid credentials, and hands the principal
/// to the handler.
pub async fn require_auth(
    State(ctx): State<ApiContext>,
    mut request: Request,
    next: Next,
) -> Response {
    match ctx.auth.authenticate(request.headers()).await {
        Ok(principal) => {
            if let Credential::Workspace { workspace, .. } = &principal.credential
                && request.uri().path() != format!("/v1/terraform/state/{workspace}")
            {
                return ApiError::Forbidden(format!(
                    "this token reaches Terraform state workspace {workspace} only"
                ))
                .into_response();
            }
            if principal.must_change_password && !changes_own_password(&principal, &request) {
                return must_change_password_first(&principal.username).into_response();
            }
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(err) => ApiError::from(err).into_response(),
    }
}

/// The refusal of anything but a password change to a user whose password was generated.
pub(crate) fn must_change_password_first(username: &str) -> ApiError {
    ApiError::Forbidden(format!(
        "the password of '{username}' was generated and must be changed first: PATCH \
         /v1/users/{username} with current_password and password (corral users passwd)"
    ))
}

/// Whether `request` may be all a user with a generated password does: read who they are, or
/// change their own password (`users::update_user` refuses a change of anything else).
fn changes_own_password(principal: &Principal, request: &Request) -> bool {
    let path = request.uri().path();
    let method = request.method();
    (method == axum::http::Method::GET && path == "/v1/me")
        || (method == axum::http::Method::PATCH
            && path.strip_prefix("/v1/users/") == Some(principal.username.as_str()))
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> ApiError {
        match err {
            AuthError::Unauthenticated(detail) => ApiError::Unauthorized(detail.to_string()),
            AuthError::Throttled(wait) => ApiError::TooManyRequests {
                detail: err.to_string(),
                retry_after_secs: wait.as_secs().max(1),
            },
            AuthError::Busy(err) => ApiError::from(err),
            AuthError::Storage(err) => ApiError::from(err),
        }
    }
}

/// Who is asking, and the id of the request, for handlers behind `require_auth`.
pub struct Caller {
    pub principal: Principal,
    pub request_id: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let principal = parts.extensions.get::<Principal>().cloned().ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!("a route that needs a caller is not authenticated"))
        })?;
        Ok(Caller { principal, request_id: request_id(&parts.headers) })
    }
}

fn request_id(headers: &HeaderMap) -> Option<String> {
    headers.get(REQUEST_ID_HEADER).and_then(|value| value.to_str().ok()).map(str::to_string)
}

impl Caller {
    /// The audit log's actor for this request.
    pub fn actor(&self) -> Actor {
        crate::auth::actor(&self.principal, self.request_id.clone())
    }

    /// Refuses unless the caller is an admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.principal.admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden("this needs the admin role".to_string()))
        }
    }

    /// Refuses unless the caller holds `needed` in `namespace`: an invisible namespace is
    /// answered by `hidden` (a 404 naming what was asked for), a visible one with too weak a
    /// role by a 403.
    pub fn require(
        &self,
        namespace: &str,
        needed: Role,
        hidden: impl FnOnce() -> ApiError,
    ) -> Result<(), ApiError> {
        match self.principal.access(namespace, needed) {
            Access::Allowed => Ok(()),
            Access::Hidden => Err(hidden()),
            Access::Denied => Err(ApiError::Forbidden(format!(
                "this needs the {needed} role in namespace '{namespace}'"
            ))),
        }
    }

    /// Whether the caller may read what is in `namespace`.
    pub fn sees(&self, namespace: &str) -> bool {
        self.principal.access(namespace, Role::Viewer) != Access::Hidden
    }
}

pub fn public_router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new().routes(routes!(issue_token))
}

pub fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new().routes(routes!(get_me))
}

/// Unknown fields are ignored, as OAuth2 asks of a token endpoint (RFC 6749, 3.2).
#[derive(Deserialize, ToSchema)]
pub struct TokenRequest {
    /// `password`, when given (OAuth2 clients send it).
    #[schema(pattern = "^password$", nullable = false)]
    pub grant_type: Option<String>,
    pub username: String,
    pub password: String,
    /// Accepted and ignored: a token carries all of its user's roles.
    #[serde(rename = "scope")]
    #[schema(nullable = false)]
    pub _scope: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct TokenBody {
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
}

/// Exchanges a username and password for an access token (OAuth2 password grant). Send a form
/// (`application/x-www-form-urlencoded`, as OAuth2 clients do) or JSON.
#[utoipa::path(post, path = "/v1/token", tag = "auth", operation_id = "issue_token",
    security(()),
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, body = TokenBody),
        (status = 401, description = "Wrong username or password", body = crate::api::Problem),
        (status = 422, body = crate::api::Problem),
        (status = 429, description = "Too many failed logins for this user or address", body = crate::api::Problem),
    ))]
pub async fn issue_token(
    State(ctx): State<ApiContext>,
    ClientAddress(client): ClientAddress,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<TokenBody>, ApiError> {
    let request = token_request(&headers, &body)?;
    if let Some(grant) = request.grant_type.as_deref()
        && grant != "password"
    {
        return Err(ApiError::Validation(vec![FieldError::new(
            "grant_type",
            format!("unsupported grant type '{grant}'; only 'password' is supported"),
        )]));
    }
    let issued = ctx.auth.login(&request.username, &request.password, client).await?;
    Ok(Json(TokenBody {
        access_token: issued.access_token,
        token_type: "bearer".to_string(),
        expires_in: issued.expires_in,
    }))
}

fn token_request(headers: &HeaderMap, body: &[u8]) -> Result<TokenRequest, ApiError> {
    let content_type =
        headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or_default();
    let mime = content_type.split(';').next().unwrap_or_default().trim();
    if mime == "application/json" {
        return parse_json(body);
    }
    if mime != "application/x-www-form-urlencoded" {
        return Err(ApiError::UnsupportedMediaType(format!(
            "expected application/x-www-form-urlencoded or application/json, got '{content_type}'"
        )));
    }
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in form_urlencoded::parse(body) {
        fields.insert(name.into_owned(), value.into_owned());
    }
    let mut missing = Vec::new();
    let mut take = |name: &str| {
        let value = fields.remove(name);
        if value.is_none() {
            missing.push(FieldError::new(name, "required"));
        }
        value.unwrap_or_default()
    };
    let (username, password) = (take("username"), take("password"));
    if !missing.is_empty() {
        return Err(ApiError::Validation(missing));
    }
    Ok(TokenRequest {
        grant_type: fields.remove("grant_type"),
        _scope: fields.remove("scope"),
        username,
        password,
    })
}

#[derive(Serialize, ToSchema)]
pub struct MeBody {
    pub username: String,
    pub admin: bool,
    /// Role per namespace.
    pub roles: BTreeMap<String, String>,
    /// `password` (a token) or `api_key`.
    pub authenticated_with: String,
    /// The API key's prefix, when one is used.
    pub api_key_prefix: Option<String>,
}

/// Who the credentials of this request belong to, and what they may do.
#[utoipa::path(get, path = "/v1/me", tag = "auth", operation_id = "get_me",
    responses((status = 200, body = MeBody), (status = 401, body = crate::api::Problem)))]
pub async fn get_me(caller: Caller) -> Json<MeBody> {
    let principal = caller.principal;
    let (authenticated_with, api_key_prefix) = match principal.credential {
        Credential::Password => ("password", None),
        Credential::ApiKey { prefix, .. } => ("api_key", Some(prefix)),
        Credential::Workspace { .. } => ("workspace_token", None),
    };
    Json(MeBody {
        username: principal.username,
        admin: principal.admin,
        roles: principal.roles.iter().map(|(ns, role)| (ns.clone(), role.to_string())).collect(),
        authenticated_with: authenticated_with.to_string(),
        api_key_prefix,
    })
}
