//! The reconciler: drift made behind corral's back, vanished instances, orphans, and forced
//! refreshes; and the job history.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{AMI_X86, assert_problem, create_body, spawn_app};

#[tokio::test]
async fn changes_made_directly_in_the_cloud_show_up_as_drift_after_one_pass() {
    // Arrange
    let app = spawn_app().await;
    let job = app.create_running(&json!({ "name_prefix": "drift", "count": 3, "ami": AMI_X86, "instance_type": "t3.micro" })).await;
    let ids: Vec<(String, String)> = job["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (i["id"].as_str().unwrap().to_string(), i["cloud_id"].as_str().unwrap().to_string())
        })
        .collect();
    app.ec2.stop_instances().instance_ids(&ids[0].1).send().await.unwrap();
    app.ec2.terminate_instances().instance_ids(&ids[1].1).send().await.unwrap();

    // Act
    app.reconcile().await;

    // Assert
    for ((id, _), (state, drifted)) in
        ids.iter().zip([("stopped", true), ("terminated", true), ("running", false)])
    {
        let instance: Value = app.get_instance(id).await.json().await.unwrap();
        assert_eq!(instance["state"], state);
        let drift: Value =
            app.get(&format!("/v1/instances/{id}/drift")).await.json().await.unwrap();
        let items = drift["items"].as_array().unwrap();
        assert_eq!(!items.is_empty(), drifted, "{drift}");
        if drifted {
            assert_eq!(items[0]["field"], "state");
            assert_eq!(items[0]["old_value"], "running");
            assert_eq!(items[0]["new_value"], state);
        }
        // The audit log has it too, as corral's own observation.
        let audit: Value = app
            .get(&format!("/v1/audit?action=instance.drift&target={id}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(audit["total"], usize::from(drifted), "{audit}");
        if drifted {
            let event = &audit["logs"][0];
            assert_eq!(event["actor"], "system");
            assert_eq!(event["old_value"], json!({ "state": "running" }));
            assert_eq!(event["new_value"], json!({ "state": state }));
        }
    }
}

#[tokio::test]
async fn an_instance_the_cloud_no_longer_knows_is_marked_missing_not_deleted() {
    let app = spawn_app().await;
    let job = app.create_running(&create_body("vanishing")).await;
    let id = job["instances"][0]["id"].as_str().unwrap();
    app.db_forget_cloud_instance(id).await;

    app.reconcile().await;

    let instance: Value = app.get_instance(id).await.json().await.unwrap();
    assert_eq!(instance["state"], "missing");
    assert_eq!(instance["name"], "vanishing");
    let problem = assert_problem(app.act(id, "stop", "").await, StatusCode::CONFLICT).await;
    assert!(problem["detail"].as_str().unwrap().contains("missing"));
}

async fn launch_behind_corrals_back(app: &crate::helpers::TestApp, name: &str) -> String {
    let job_id = "0190b7a0-0000-7000-8000-00000000dead";
    app.launch_in_moto(&[("corral:job-id", job_id), ("corral:namespace", "lost"), ("Name", name)])
        .await
}

#[tokio::test]
async fn tagged_instances_corral_does_not_know_are_orphans_to_adopt_or_terminate() {
    let app = spawn_app().await;
    app.create_running(&create_body("known")).await;
    let adoptee = launch_behind_corrals_back(&app, "stray-1").await;
    let doomed = launch_behind_corrals_back(&app, "stray-2").await;

    app.reconcile().await;

    let orphans: Value = app.get("/v1/orphans").await.json().await.unwrap();
    let mut listed: Vec<&str> = orphans["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["cloud_id"].as_str().unwrap())
        .collect();
    listed.sort();
    let mut expected = vec![adoptee.as_str(), doomed.as_str()];
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(orphans["items"][0]["namespace"], "lost");

    // The tag names a namespace that does not exist: refused, not created.
    let refused = app.post_empty(&format!("/v1/orphans/{adoptee}/adopt")).await;
    let problem = assert_problem(refused, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(problem["detail"].as_str().unwrap().contains("no namespace named 'lost'"), "{problem}");
    assert_eq!(app.get("/v1/namespaces/lost").await.status(), StatusCode::NOT_FOUND);
    // The admin names the namespace instead.
    app.create_namespaces(&["rescued"]).await;
    let adopted = app.post_empty(&format!("/v1/orphans/{adoptee}/adopt?namespace=rescued")).await;
    assert_eq!(adopted.status(), StatusCode::CREATED);
    let adopted: Value = adopted.json().await.unwrap();
    assert_eq!(adopted["cloud_id"], adoptee.as_str());
    assert_eq!(adopted["name"], "stray-1");
    assert_eq!(adopted["namespace"], "rescued");
    assert_eq!(adopted["state"], "running");

    let job: Value = app
        .post_empty(&format!("/v1/orphans/{doomed}/terminate?wait=30&namespace=rescued"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(app.moto_state(&doomed).await, "terminated");

    app.reconcile().await;
    let orphans: Value = app.get("/v1/orphans").await.json().await.unwrap();
    assert_eq!(orphans["items"], json!([]));
    assert_problem(
        app.post_empty(&format!("/v1/orphans/{adoptee}/adopt")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn refresh_reads_one_instance_again_and_records_drift() {
    let app = spawn_app().await;
    let job = app.create_running(&create_body("refreshed")).await;
    let id = job["instances"][0]["id"].as_str().unwrap();
    let cloud_id = job["instances"][0]["cloud_id"].as_str().unwrap();
    app.ec2.stop_instances().instance_ids(cloud_id).send().await.unwrap();

    let response = app.post_empty(&format!("/v1/instances/{cloud_id}/refresh?wait=30")).await;

    assert_eq!(response.status(), StatusCode::OK);
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["kind"], "refresh_instances");
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["instances"][0]["state"], "stopped");
    let drift: Value = app.get(&format!("/v1/instances/{id}/drift")).await.json().await.unwrap();
    assert_eq!(drift["items"][0]["new_value"], "stopped");
}

#[tokio::test]
async fn a_job_records_its_steps_and_streams_them_as_server_sent_events() {
    let app = spawn_app().await;
    let job = app.create_running(&create_body("chatty")).await;
    let path = format!("/v1/jobs/{}/events", job["id"].as_str().unwrap());

    let history: Value = app.get(&path).await.json().await.unwrap();
    let stream =
        app.client.get(app.url(&path)).header("Accept", "text/event-stream").send().await.unwrap();

    let messages: Vec<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(messages[0].starts_with("attempt 1 of 3 started by worker "), "{}", messages[0]);
    assert!(
        messages.iter().any(|m| m.starts_with("launching 1 t3.micro instance(s)")),
        "{messages:?}"
    );
    assert!(messages.iter().any(|m| m.starts_with("all running: i-")), "{messages:?}");
    assert_eq!(*messages.last().unwrap(), "succeeded");
    assert!(history["items"][0]["at"].is_string());

    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let text = stream.text().await.unwrap();
    assert!(text.contains("event: step") && text.contains("id: 1"), "{text}");
    assert!(text.contains("event: end"), "the stream ends with the job: {text}");
    assert!(text.contains("\"status\":\"succeeded\""));
}

#[tokio::test]
async fn an_idempotency_key_returns_the_first_job_and_refuses_a_different_body() {
    let app = spawn_app().await;
    let body = create_body("once");

    let first = app.post_json("/v1/instances", &body, Some("key-1")).await;
    let again = app.post_json("/v1/instances", &body, Some("key-1")).await;
    let changed = app.post_json("/v1/instances", &create_body("twice"), Some("key-1")).await;

    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert!(again.headers().contains_key("idempotent-replayed"));
    let first: Value = first.json().await.unwrap();
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["id"], again["id"]);
    let problem = assert_problem(changed, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(problem["errors"][0]["field"], "Idempotency-Key");

    // Ten concurrent retries of a new request make one job.
    let raced = create_body("raced");
    let retries = (0..10).map(|_| app.post_json("/v1/instances", &raced, Some("key-2")));
    let answers = futures_util::future::join_all(retries).await;
    let mut job_ids = Vec::new();
    for answer in answers {
        let job: Value = answer.json().await.unwrap();
        job_ids.push(job["id"].as_str().unwrap().to_string());
    }
    job_ids.dedup();
    assert_eq!(job_ids.len(), 1);
    app.wait_for_job(&job_ids[0]).await;
    app.wait_for_job(first["id"].as_str().unwrap()).await;
    assert_eq!(app.moto_instances().await.len(), 2);
}
