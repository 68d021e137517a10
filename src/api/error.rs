//! The API's one error type and its wire form, RFC 9457 problem details
//! (`application/problem+json`): `type`, `title`, `status`, `detail` and, for field-level
//! problems, `errors: [{"field", "message"}]`.
//!
//! Handlers return `ApiError`; internal failures are logged once here and answered with an
//! opaque 500. `problem_responses` rewrites any other error response (unknown route, wrong
//! method) into the same envelope, so clients parse one shape.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::storage::StorageError;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// One problem with one field of the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// The field at fault: a JSON path such as `tags.team` or `security_group_ids[1]`, or the
    /// name of a query parameter.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError { field: field.into(), message: message.into() }
    }
}

/// The error envelope of every non-2xx answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem; `about:blank` when the status says it all.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed request: unparsable JSON, bad query parameters.
    #[error("{detail}")]
    BadRequest { detail: String, errors: Vec<FieldError> },
    /// Well-formed request that breaks the rules: wrong types, policy violations.
    #[error("the request is invalid")]
    Validation(Vec<FieldError>),
    #[error("{0}")]
    NotFound(String),
    /// The request cannot apply to the current state of what it names.
    #[error("{detail}")]
    Conflict { detail: String, errors: Vec<FieldError> },
    #[error("the request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The server cannot serve this now; answered with `Retry-After: 1`.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// Missing or wrong credentials; answered with a `WWW-Authenticate` challenge.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller may see what it asked for but its role does not allow the operation.
    #[error("{0}")]
    Forbidden(String),
    /// Admitting the request would exceed a quota of its namespace.
    #[error("{0}")]
    QuotaExceeded(String),
    /// Too many attempts; retry after the given seconds.
    #[error("{detail}")]
    TooManyRequests { detail: String, retry_after_secs: u64 },
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

/// How a resource is known: by its name, its id, or its cloud id.
#[derive(Debug, Clone, Copy)]
pub enum Key<'a> {
    Name(&'a str),
    Id(&'a str),
    CloudId(&'a str),
    /// An id or a name, as an instance is referred to.
    Reference(&'a str),
}

/// "no namespace named 'team-a'", "no job with id '…'": how every answer says that there is no
/// such `kind` of thing, or none the caller may see (which it is not told apart).
pub fn no_such(kind: &str, key: Key<'_>) -> String {
    match key {
        Key::Name(name) => format!("no {kind} named '{name}'"),
        Key::Id(id) => format!("no {kind} with id '{id}'"),
        Key::CloudId(id) => format!("no {kind} with cloud id '{id}'"),
        Key::Reference(reference) => format!("no {kind} with id or name '{reference}'"),
    }
}

impl ApiError {
    /// `404`, saying `no_such(kind, key)`.
    pub fn not_found(kind: &str, key: Key<'_>) -> ApiError {
        ApiError::NotFound(no_such(kind, key))
    }

    pub fn bad_request(detail: impl Into<String>) -> ApiError {
        ApiError::BadRequest { detail: detail.into(), errors: Vec::new() }
    }

    pub fn bad_field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        let error = FieldError::new(field, message);
        ApiError::BadRequest {
            detail: format!("{}: {}", error.field, error.message),
            errors: vec![error],
        }
    }
}

impl From<crate::auth::Busy> for ApiError {
    fn from(err: crate::auth::Busy) -> ApiError {
        ApiError::Unavailable(err.to_string())
    }
}

impl From<StorageError> for ApiError {
    fn from(err: StorageError) -> ApiError {
        ApiError::Internal(anyhow::Error::new(err))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, detail, errors) = match self {
            ApiError::BadRequest { detail, errors } => {
                (StatusCode::BAD_REQUEST, "about:blank", detail, errors)
            }
            ApiError::Validation(errors) => {
                let detail = errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                (StatusCode::UNPROCESSABLE_ENTITY, "urn:corral:problem:validation", detail, errors)
            }
            ApiError::NotFound(detail) => {
                (StatusCode::NOT_FOUND, "about:blank", detail, Vec::new())
            }
            ApiError::Conflict { detail, errors } => {
                (StatusCode::CONFLICT, "urn:corral:problem:state-conflict", detail, errors)
            }
            err @ ApiError::PayloadTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "about:blank", err.to_string(), Vec::new())
            }
            ApiError::UnsupportedMediaType(detail) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "about:blank", detail, Vec::new())
            }
            ApiError::Unavailable(detail) => {
                let mut response =
                    problem(StatusCode::SERVICE_UNAVAILABLE, "about:blank", detail, Vec::new());
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1));
                return response;
            }
            ApiError::Unauthorized(detail) => {
                let mut response =
                    problem(StatusCode::UNAUTHORIZED, "about:blank", detail, Vec::new());
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        r#"Bearer realm="corral", ApiKey realm="corral" header="X-API-KEY""#,
                    ),
                );
                return response;
            }
            ApiError::Forbidden(detail) => {
                (StatusCode::FORBIDDEN, "about:blank", detail, Vec::new())
            }
            ApiError::QuotaExceeded(detail) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "urn:corral:problem:quota-exceeded",
                detail,
                Vec::new(),
            ),
            ApiError::TooManyRequests { detail, retry_after_secs } => {
                let mut response =
                    problem(StatusCode::TOO_MANY_REQUESTS, "about:blank", detail, Vec::new());
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
                return response;
            }
            ApiError::Internal(err) => {
                tracing::error!(error = ?err, "request failed");
                let detail = "an internal error occurred; it has been logged".to_string();
                (StatusCode::INTERNAL_SERVER_ERROR, "about:blank", detail, Vec::new())
            }
        };
        problem(status, kind, detail, errors)
    }
}

fn problem(status: StatusCode, kind: &str, detail: String, errors: Vec<FieldError>) -> Response {
    let body = Problem {
        kind: kind.to_string(),
        title: status.canonical_reason().unwrap_or("Error").to_string(),
        status: status.as_u16(),
        detail,
        errors,
    };
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

/// Middleware: turns error responses that are not problem details yet (axum's own 404, 405,
/// rejected extractors) into the API's envelope, keeping their message as `detail`.
pub async fn problem_responses(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    // 423 carries the holder's lock info, which Terraform reads as it is.
    if !(status.is_client_error() || status.is_server_error())
        || is_problem
        || status == StatusCode::LOCKED
    {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    let detail = match status {
        StatusCode::NOT_FOUND if text.is_empty() => "no such route".to_string(),
        StatusCode::METHOD_NOT_ALLOWED if text.is_empty() => {
            "this route does not accept that method".to_string()
        }
        _ if text.is_empty() => status.canonical_reason().unwrap_or("error").to_string(),
        _ => text,
    };
    let mut rewritten = problem(status, "about:blank", detail, Vec::new());
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        rewritten.headers_mut().insert(header::ALLOW, allow.clone());
    }
    rewritten
}
