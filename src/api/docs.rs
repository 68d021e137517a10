//! The OpenAPI document (`/openapi.json`), Swagger UI (`/docs`) and ReDoc (`/redoc`), all
//! served from the binary: Swagger UI is vendored by `utoipa-swagger-ui`, the ReDoc bundle is
//! embedded from `assets/redoc/`. Nothing is fetched at build or run time.
//!
//! Every answer of these routes carries `X-Content-Type-Options: nosniff`,
//! `X-Frame-Options: DENY` and a `Content-Security-Policy` that allows what the pages load
//! from corral itself and nothing from elsewhere (`DocsHeaders`). Inline scripts are allowed
//! by their SHA-256 only, computed when the router is built from the very HTML that is served,
//! so that the hashes cannot drift from the pages.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use sha2::{Digest, Sha256};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::api::error;

#[derive(OpenApi)]
#[openapi(
    info(title = "corral", description = "Provision and govern cloud instances through policy guardrails, as durable jobs.\n\n\
        Authenticate with an API key in the `X-API-KEY` header, or with `Authorization: Bearer <token>` \
        where the token comes from `POST /v1/token` (OAuth2 password grant)."),
    modifiers(&SecuritySchemes),
    security(("bearer" = []), ("api_key" = [])),
    components(schemas(error::Problem, error::FieldError)),
    tags(
        (name = "auth", description = "Tokens, and who the credentials belong to"),
        (name = "users", description = "Users and their roles per namespace"),
        (name = "api-keys", description = "Long-lived credentials for scripts"),
        (name = "namespaces", description = "Namespaces and their quotas"),
        (name = "audit", description = "Who did what"),
        (name = "notifications", description = "Email and webhooks on lifecycle events, and their deliveries"),
        (name = "instances", description = "Instances and their lifecycle"),
        (name = "keypairs", description = "SSH key pairs: imported public keys, or generated once"),
        (name = "terraform", description = "Terraform's HTTP state backend (GET, POST, DELETE, LOCK, UNLOCK)"),
        (name = "jobs", description = "Durable jobs behind every change"),
        (name = "orphans", description = "Instances tagged by corral that it does not know"),
        (name = "policy", description = "Guardrails in force"),
        (name = "health", description = "Liveness, readiness and status"),
    )
)]
pub struct ApiDoc;

/// The two ways to authenticate, so that Swagger UI's Authorize button offers both.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("A token from POST /v1/token"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-KEY",
                "A key from POST /v1/api-keys",
            ))),
        );
    }
}

/// Completes every operation of `openapi` with the error answers the layers around the handlers
/// give, and documents every error answer with the type it is sent as
/// (`application/problem+json`), so that the document names every status a route can answer:
///
/// - `400`: a malformed JSON body, a query string with a parameter the route does not take
///   (`extract`), or a path that is not UTF-8 once decoded, for operations with a body, query
///   or path parameters;
/// - `401`: no valid credentials, and `403`: credentials that may not be used here (a user who
///   must change the password first, a Terraform run's token outside its workspace), for
///   operations that need credentials (`auth::require_auth`);
/// - `404`: no such resource, for operations with path parameters;
/// - `413` and `415`: a body too large, or not JSON, for operations with a body;
/// - `503`: the answer did not start in time (`limits::request_timeout`), for every operation.
///
/// What a handler itself answers is declared in its `#[utoipa::path]`.
pub fn describe_error_answers(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::security::SecurityRequirement;
    use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
    for item in openapi.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            let parameters = operation.parameters.as_deref().unwrap_or_default();
            let has_query = parameters.iter().any(|p| p.parameter_in == ParameterIn::Query);
            let has_path = parameters.iter().any(|p| p.parameter_in == ParameterIn::Path);
            let has_body = operation.request_body.is_some();
            // `security(())` (health, docs, the token endpoint) is one empty requirement.
            let secured = operation.security.as_ref().is_none_or(|requirements| {
                requirements
                    .iter()
                    .any(|requirement| *requirement != SecurityRequirement::default())
            });
            let added = [
                (400, has_body || has_query || has_path, "The body, query or path is malformed"),
                (401, secured, "No valid credentials"),
                (403, secured, "The credentials may not do this"),
                (404, has_path, "No such resource"),
                (413, has_body, "The body is too large"),
                (415, has_body, "The body is not JSON"),
                (503, true, "The answer did not start in time, or the server is busy"),
            ];
            let responses = &mut operation.responses.responses;
            for (status, applies, description) in added {
                if applies {
                    responses.entry(status.to_string()).or_insert_with(|| {
                        RefOr::T(ResponseBuilder::new().description(description).build())
                    });
                }
            }
            for (status, response) in responses.iter_mut() {
                let RefOr::T(response) = response else { continue };
                if !status.starts_with(['4', '5']) {
                    continue;
                }
                response.content.shift_remove("application/json");
                response.content.insert(
                    error::PROBLEM_JSON.to_string(),
                    Content::new(Some(RefOr::Ref(Ref::from_schema_name("Problem")))),
                );
            }
        }
    }
}

const REDOC_JS: &[u8] = include_bytes!("../../assets/redoc/redoc.standalone.js");

const OPENAPI_PATH: &str = "/openapi.json";

const REDOC_PAGE: &str = r#"<!DOCTYPE html>
<html>
  <head>
    <title>corral API</title>
    <meta charset="utf-8"/>
    <meta name="viewport" content="width=device-width, initial-scale=1">
  </head>
  <body>
    <redoc spec-url="/openapi.json"></redoc>
    <script src="/redoc/redoc.standalone.js"></script>
  </body>
</html>
"#;

/// The HTML pages of the vendored Swagger UI (`/docs/` answers `index.html`); their inline
/// scripts (`oauth2-redirect.html` has one) are allowed by hash.
const SWAGGER_PAGES: &[&str] = &["index.html", "oauth2-redirect.html"];

/// What both pages need: scripts, styles, images and the API itself from corral (the spec, and
/// Swagger UI's "Try it out"), icons as `data:` URIs, and styles inline (Swagger UI's rendered
/// markdown, ReDoc's styled-components, which inserts `<style>` elements). No other origin:
/// ReDoc's sidebar logo from `cdn.redoc.ly` is refused, and ReDoc then hides it.
fn content_security_policy(scripts: &[String], extra: &str) -> HeaderValue {
    let hashes: String = scripts.iter().map(|hash| format!(" {hash}")).collect();
    let policy = format!(
        "default-src 'none'; script-src 'self'{hashes}; style-src 'self' 'unsafe-inline'; \
         img-src 'self' data:; connect-src 'self'; font-src 'self'; {extra}\
         frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    );
    HeaderValue::try_from(policy).expect("a policy of ASCII sources is a valid header value")
}

/// The `Content-Security-Policy` of each part of the docs.
struct DocsHeaders {
    swagger: HeaderValue,
    redoc: HeaderValue,
    /// The OpenAPI document runs nothing, and is framed by no one.
    document: HeaderValue,
}

impl DocsHeaders {
    fn new(swagger_config: &utoipa_swagger_ui::Config<'static>) -> DocsHeaders {
        let config = Arc::new(swagger_config.clone());
        let mut swagger_scripts = Vec::new();
        for page in SWAGGER_PAGES {
            // A page this version of Swagger UI does not have is not served either.
            if let Ok(Some(file)) = utoipa_swagger_ui::serve(page, config.clone()) {
                let html = String::from_utf8_lossy(&file.bytes);
                swagger_scripts.extend(inline_scripts(&html).into_iter().map(script_hash));
            }
        }
        let redoc_scripts: Vec<String> =
            inline_scripts(REDOC_PAGE).into_iter().map(script_hash).collect();
        DocsHeaders {
            swagger: content_security_policy(&swagger_scripts, ""),
            // ReDoc's search runs in a worker that it starts from a `blob:` URL.
            redoc: content_security_policy(&redoc_scripts, "worker-src blob:; "),
            document: HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        }
    }

    fn policy_for(&self, path: &str) -> &HeaderValue {
        if path == OPENAPI_PATH {
            &self.document
        } else if path == "/redoc" || path.starts_with("/redoc/") {
            &self.redoc
        } else {
            &self.swagger
        }
    }
}

/// A CSP source allowing `script`, the text of an inline `<script>` element.
fn script_hash(script: &str) -> String {
    let digest = Sha256::digest(script.as_bytes());
    format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest))
}

/// The text of every inline `<script>` of `html` (one without a `src`), byte for byte as a
/// browser hashes it. Enough HTML for the static pages above: comments are skipped, and a
/// `>` inside an attribute value of a script tag is not expected.
fn inline_scripts(html: &str) -> Vec<&str> {
    // ASCII lowercasing keeps every byte where it was, so offsets in `lower` are offsets in
    // `html`.
    let lower = html.to_ascii_lowercase();
    let mut scripts = Vec::new();
    let mut at = 0;
    loop {
        let rest = &lower[at..];
        let (comment, script) = (rest.find("<!--"), rest.find("<script"));
        match (comment, script) {
            (Some(comment), Some(script)) if comment < script => {
                let Some(end) = lower[at + comment..].find("-->") else { break };
                at += comment + end + 3;
            }
            (_, Some(script)) => {
                let open = at + script;
                let name_end = open + "<script".len();
                let Some(tag_len) = lower[name_end..].find('>') else { break };
                let attributes = &lower[name_end..name_end + tag_len];
                if !attributes.is_empty()
                    && !attributes.starts_with(|c: char| c.is_ascii_whitespace() || c == '/')
                {
                    // Another element whose name starts with "script".
                    at = name_end;
                    continue;
                }
                let body = name_end + tag_len + 1;
                let Some(body_len) = lower[body..].find("</script") else { break };
                let has_src = attributes
                    .split(|c: char| c.is_ascii_whitespace() || c == '/')
                    .any(|attribute| attribute == "src" || attribute.starts_with("src="));
                if !has_src {
                    scripts.push(&html[body..body + body_len]);
                }
                at = body + body_len;
            }
            _ => break,
        }
    }
    scripts
}

/// Adds the docs' security headers to every answer of the docs routes.
async fn security_headers(
    State(headers): State<Arc<DocsHeaders>>,
    request: Request,
    next: Next,
) -> Response {
    let policy = headers.policy_for(request.uri().path()).clone();
    let mut response = next.run(request).await;
    let answer = response.headers_mut();
    answer.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    answer.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    answer.insert(header::CONTENT_SECURITY_POLICY, policy);
    response
}

/// The documentation routes, serving `openapi`: `ApiDoc` with the operations of every route
/// (`api::router` collects them from the routers themselves).
pub fn router(openapi: utoipa::openapi::OpenApi) -> Router {
    // No validator badge: it would send the document's URL to validator.swagger.io.
    let swagger_config = utoipa_swagger_ui::Config::default().validator_url("none");
    let headers = Arc::new(DocsHeaders::new(&swagger_config));
    Router::new()
        .merge(SwaggerUi::new("/docs").url(OPENAPI_PATH, openapi).config(swagger_config))
        .route("/redoc", get(|| async { Html(REDOC_PAGE) }))
        .route(
            "/redoc/redoc.standalone.js",
            get(|| async {
                ([(header::CONTENT_TYPE, "application/javascript; charset=utf-8")], REDOC_JS)
                    .into_response()
            }),
        )
        .layer(axum::middleware::from_fn_with_state(headers, security_headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_scripts_are_found_and_external_ones_and_comments_skipped() {
        let html = "<!-- <script>no</script> --><SCRIPT src=\"a.js\"></SCRIPT>\
                    <scripts>x</scripts><script type=\"module\">one()</script>\
                    <script>\n two()\n</script >";
        assert_eq!(inline_scripts(html), ["one()", "\n two()\n"]);
        assert!(inline_scripts(REDOC_PAGE).is_empty());
    }

    #[test]
    fn a_hash_is_the_base64_sha256_of_the_script() {
        // echo -n "alert(1)" | openssl dgst -sha256 -binary | base64
        assert_eq!(
            script_hash("alert(1)"),
            "'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI='"
        );
    }
}
