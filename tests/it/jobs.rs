//! Jobs: listing, filtering, and honest failure when the cloud cannot be reached.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{create_body, spawn_app, spawn_app_with};

#[tokio::test]
async fn jobs_are_listed_newest_first_with_filters_and_pages() {
    let app = spawn_app().await;
    let created = app.create_running(&create_body("one")).await;
    let id = created["instances"][0]["id"].as_str().unwrap();
    app.act(id, "stop", "?wait=30").await;
    app.act(id, "start", "?wait=30").await;

    let all: Value = app.get_jobs("").await.json().await.unwrap();
    let kinds: Vec<&str> =
        all["items"].as_array().unwrap().iter().map(|j| j["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["start_instances", "stop_instances", "create_instances"]);

    let first: Value = app.get_jobs("?limit=2").await.json().await.unwrap();
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().unwrap();
    let rest: Value =
        app.get_jobs(&format!("?limit=2&cursor={cursor}")).await.json().await.unwrap();
    assert_eq!(rest["items"][0]["kind"], "create_instances");
    assert_eq!(rest["next_cursor"], Value::Null);

    let failed: Value = app.get_jobs("?status=failed").await.json().await.unwrap();
    assert_eq!(failed["items"].as_array().unwrap().len(), 0);
    let succeeded: Value = app.get_jobs("?status=succeeded").await.json().await.unwrap();
    assert_eq!(succeeded["items"].as_array().unwrap().len(), 3);
    let job = &succeeded["items"][2];
    assert!(job["started_at"].is_string() && job["finished_at"].is_string());
    assert_eq!(job["instances"][0]["state"], "running");
}

#[tokio::test]
async fn transient_cloud_failures_are_retried_then_the_job_fails_and_says_why() {
    // Nothing listens on port 9: every call fails to connect, which is transient.
    let app = spawn_app_with(|settings| {
        settings.aws.endpoint_url = Some("http://127.0.0.1:9".to_string());
        settings.jobs.max_attempts = 2;
    })
    .await;

    let response = app.post_instances(&create_body("unreachable"), "?wait=30").await;

    assert_eq!(response.status(), StatusCode::CREATED);
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["status"], "failed");
    assert_eq!(job["attempts"], 2);
    let error = job["error"].as_str().unwrap();
    assert!(error.starts_with("gave up after 2 attempts: transient cloud failure"), "{error}");
    assert_eq!(job["instances"][0]["state"], "failed");
    assert_eq!(job["instances"][0]["cloud_id"], Value::Null);
}

#[tokio::test]
async fn wait_returns_202_when_the_job_outlasts_it() {
    let app = spawn_app_with(|settings| {
        settings.aws.endpoint_url = Some("http://127.0.0.1:9".to_string());
        settings.jobs.retry_delay = 600.0;
    })
    .await;

    let response = app.post_instances(&create_body("slow"), "?wait=1").await;

    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let job: Value = response.json().await.unwrap();
    assert!(["queued", "running"].contains(&job["status"].as_str().unwrap()), "{job}");
    assert_eq!(job["finished_at"], Value::Null);
}
