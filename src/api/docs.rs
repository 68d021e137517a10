//! The OpenAPI document (`/openapi.json`), Swagger UI (`/docs`) and ReDoc (`/redoc`), all
//! served from the binary: Swagger UI is vendored by `utoipa-swagger-ui`, the ReDoc bundle is
//! embedded from `assets/redoc/`. Nothing is fetched at build or run time.

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::api::{
    api_keys, audit, auth, error, export, health, instances, jobs, key_pairs, namespaces,
    notifications, orphans, policy, subscriptions, terraform_state, users,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "corral", description = "Provision and govern cloud instances through policy guardrails, as durable jobs.\n\n\
        Authenticate with an API key in the `X-API-KEY` header, or with `Authorization: Bearer <token>` \
        where the token comes from `POST /v1/token` (OAuth2 password grant)."),
    modifiers(&SecuritySchemes),
    security(("bearer" = []), ("api_key" = [])),
    paths(
        auth::issue_token,
        auth::get_me,
        users::create_user,
        users::list_users,
        users::get_user,
        users::update_user,
        users::delete_user,
        api_keys::create_api_key,
        api_keys::list_api_keys,
        api_keys::revoke_api_key,
        namespaces::create_namespace,
        namespaces::list_namespaces,
        namespaces::get_namespace,
        namespaces::update_namespace,
        namespaces::terminate_namespace,
        audit::list_audit,
        subscriptions::create_webhook,
        subscriptions::list_webhooks,
        subscriptions::get_webhook,
        subscriptions::delete_webhook,
        subscriptions::create_email_subscription,
        subscriptions::list_email_subscriptions,
        subscriptions::get_email_subscription,
        subscriptions::delete_email_subscription,
        notifications::list_notifications,
        notifications::retry_notification,
        instances::update_instance,
        instances::create_instances,
        instances::list_instances,
        instances::get_instance,
        instances::start_instance,
        instances::stop_instance,
        instances::reboot_instance,
        instances::terminate_instance,
        instances::act_on_instances,
        instances::refresh_instance,
        instances::list_drift,
        key_pairs::create_key_pair,
        key_pairs::list_key_pairs,
        key_pairs::get_key_pair,
        key_pairs::delete_key_pair,
        terraform_state::state,
        export::export_instance,
        export::export_namespace,
        jobs::get_job,
        jobs::list_jobs,
        jobs::get_job_events,
        orphans::list_orphans,
        orphans::adopt_orphan,
        orphans::terminate_orphan,
        orphans::reconcile_now,
        policy::get_policy,
        health::get_health,
        health::get_ready,
        health::get_status,
    ),
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

const REDOC_JS: &[u8] = include_bytes!("../../assets/redoc/redoc.standalone.js");

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

pub fn router() -> Router {
    Router::new()
        .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .route("/redoc", get(|| async { Html(REDOC_PAGE) }))
        .route(
            "/redoc/redoc.standalone.js",
            get(|| async {
                ([(header::CONTENT_TYPE, "application/javascript; charset=utf-8")], REDOC_JS)
                    .into_response()
            }),
        )
}
