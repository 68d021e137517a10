//! The OpenAPI document (`/openapi.json`), Swagger UI (`/docs`) and ReDoc (`/redoc`), all
//! served from the binary: Swagger UI is vendored by `utoipa-swagger-ui`, the ReDoc bundle is
//! embedded from `assets/redoc/`. Nothing is fetched at build or run time.

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::api::{error, health, instances, jobs, orphans, policy};

#[derive(OpenApi)]
#[openapi(
    info(title = "corral", description = "Provision and govern cloud instances through policy guardrails, as durable jobs."),
    paths(
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
        (name = "instances", description = "Instances and their lifecycle"),
        (name = "jobs", description = "Durable jobs behind every change"),
        (name = "orphans", description = "Instances tagged by corral that it does not know"),
        (name = "policy", description = "Guardrails in force"),
        (name = "health", description = "Liveness, readiness and status"),
    )
)]
pub struct ApiDoc;

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
