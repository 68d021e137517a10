//! Health, readiness, status and the API documentation.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{create_body, spawn_app};

#[tokio::test]
async fn health_and_ready_answer_ok() {
    let app = spawn_app().await;

    let health: Value = app.get("/health").await.json().await.unwrap();
    let ready = app.get("/ready").await;

    assert_eq!(health, serde_json::json!({ "status": "ok" }));
    assert_eq!(ready.status(), StatusCode::OK);
}

#[tokio::test]
async fn status_counts_instances_by_state_and_jobs_by_status() {
    let app = spawn_app().await;
    let job = app.create_running(&create_body("counted")).await;
    app.act(job["instances"][0]["id"].as_str().unwrap(), "stop", "?wait=30").await;

    let status: Value = app.get("/status").await.json().await.unwrap();

    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["uptime_seconds"].is_u64());
    assert!(status["timestamp"].is_string());
    assert_eq!(status["instances"], serde_json::json!({ "stopped": 1 }));
    assert_eq!(status["jobs"], serde_json::json!({ "succeeded": 2 }));
    assert!(status["cloud"].as_str().unwrap().contains("127.0.0.1"), "{status}");
}

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let app = spawn_app().await;

    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();

    let paths: Vec<&str> = doc["paths"].as_object().unwrap().keys().map(String::as_str).collect();
    for expected in [
        "/v1/instances",
        "/v1/instances/{id}",
        "/v1/instances/{id}/start",
        "/v1/instances/{id}/stop",
        "/v1/instances/{id}/reboot",
        "/v1/instances/actions",
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/policy",
        "/health",
        "/ready",
        "/status",
    ] {
        assert!(paths.contains(&expected), "{expected} missing from {paths:?}");
    }
    assert_eq!(doc["paths"]["/v1/instances"]["post"]["operationId"], "create_instances");
}

#[tokio::test]
async fn swagger_ui_and_redoc_are_served_from_the_binary() {
    let app = spawn_app().await;

    let swagger = app.get("/docs/").await;
    assert_eq!(swagger.status(), StatusCode::OK);
    assert!(swagger.text().await.unwrap().contains("swagger-ui"));
    let initializer = app.get("/docs/swagger-initializer.js").await.text().await.unwrap();
    assert!(initializer.contains("/openapi.json"));

    let redoc = app.get("/redoc").await.text().await.unwrap();
    assert!(redoc.contains("/redoc/redoc.standalone.js") && !redoc.contains("cdn."));
    let bundle = app.get("/redoc/redoc.standalone.js").await;
    assert_eq!(bundle.status(), StatusCode::OK);
    assert!(bundle.bytes().await.unwrap().len() > 500_000);
}
