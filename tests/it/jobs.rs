//! Jobs: listing, filtering, and honest failure: transient cloud failures retried without
//! using up attempts until their budget runs out, hard failures counted against `max_attempts`.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{create_body, moto_url, spawn_app, spawn_app_with};
use crate::proxy::{FaultProxy, Mode};

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

/// Transient cloud failures (nothing listens, so every call fails to connect) do not use up
/// attempts: with `max_attempts = 1` the job runs again and again, each run attempt 1, until its
/// transient failures have lasted `jobs.transient_budget_secs`; then it fails and says why.
#[tokio::test]
async fn transient_cloud_failures_are_retried_uncounted_then_the_job_fails_and_says_why() {
    // Arrange: nothing listens on port 9.
    let app = spawn_app_with(|settings| {
        settings.aws.endpoint_url = Some("http://127.0.0.1:9".to_string());
        settings.jobs.max_attempts = 1;
        settings.jobs.transient_budget_secs = 2.0;
        settings.jobs.retry_max_delay_secs = 0.5;
    })
    .await;

    // Act
    let response = app.post_instances(&create_body("unreachable"), "?wait=30").await;

    // Assert
    assert_eq!(response.status(), StatusCode::CREATED);
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    crate::helpers::assert_gave_up_after_budget(&job, 2.0);
    assert_eq!(job["instances"][0]["state"], "failed");
    assert_eq!(job["instances"][0]["cloud_id"], Value::Null);
    let events = crate::helpers::job_history(&app, job["id"].as_str().unwrap()).await;
    let runs = crate::helpers::run_starts(&events);
    assert!(runs.len() >= 2, "more runs than max_attempts: {runs:?}");
    assert!(runs.iter().all(|run| run.starts_with("attempt 1 of 1 started by worker")), "{runs:?}");
    let uncounted = crate::helpers::uncounted_failures(&events);
    assert!(uncounted >= runs.len() - 1, "each run but the last was not counted: {events:?}");
}

/// Hard failures count against `max_attempts`: a wait for `running` that times out (the cloud
/// reports the instance pending, however long it runs) is attempt 1, then attempt 2, and the
/// job fails, its history showing both counted attempts; the instance it launched is kept and
/// never launched twice.
#[tokio::test]
async fn a_state_wait_that_times_out_counts_as_an_attempt_and_the_job_fails_after_max_attempts() {
    // Arrange
    let proxy = FaultProxy::start(moto_url(), 0.0).await;
    proxy.set_mode(Mode::PendingForever);
    let app = spawn_app_with(|settings| {
        settings.aws.endpoint_url = Some(proxy.url.clone());
        settings.jobs.max_attempts = 2;
        settings.jobs.state_wait_timeout_secs = 1;
    })
    .await;

    // Act
    let response = app.post_instances(&create_body("forever-pending"), "?wait=20").await;

    // Assert
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    let cloud_id = job["instances"][0]["cloud_id"].as_str().expect("the instance launched");
    let error = job["error"].as_str().unwrap();
    assert!(
        error.starts_with("gave up after 2 attempts: timed out after 1s waiting for running"),
        "{error}"
    );
    assert!(error.contains(&format!("{cloud_id} (pending)")), "{error}");
    let events = crate::helpers::job_history(&app, job["id"].as_str().unwrap()).await;
    let runs = crate::helpers::run_starts(&events);
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs[0].starts_with("attempt 1 of 2 started by worker"), "{runs:?}");
    assert!(runs[1].starts_with("attempt 2 of 2 started by worker"), "{runs:?}");
    let errors: Vec<(i64, &str)> = events
        .iter()
        .filter(|e| e["kind"] == "error")
        .map(|e| (e["attempt"].as_i64().unwrap(), e["message"].as_str().unwrap()))
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0].0, 1);
    assert!(errors[0].1.starts_with("timed out after 1s waiting for running"), "{errors:?}");
    assert_eq!(errors[1].0, 2);
    assert!(errors[1].1.starts_with("gave up after 2 attempts"), "{errors:?}");
    assert!(errors.iter().all(|(_, m)| !m.contains("transient, not counted")), "{errors:?}");
    assert_eq!(proxy.calls_of("RunInstances"), 1, "{:?}", proxy.calls());
    assert_eq!(app.moto_instances().await.len(), 1);
    assert_eq!(job["instances"][0]["state"], "pending");
}

#[tokio::test]
async fn wait_returns_202_when_the_job_outlasts_it() {
    let app = spawn_app_with(|settings| {
        settings.aws.endpoint_url = Some("http://127.0.0.1:9".to_string());
        settings.jobs.retry_delay_secs = 600.0;
    })
    .await;

    let response = app.post_instances(&create_body("slow"), "?wait=1").await;

    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let job: Value = response.json().await.unwrap();
    assert!(["queued", "running"].contains(&job["status"].as_str().unwrap()), "{job}");
    assert_eq!(job["finished_at"], Value::Null);
}
