//! The audit log: requests and observed changes, by page, filtered, and by namespace.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{assert_problem, client_with, create_body, problem_fields, spawn_app};

#[tokio::test]
async fn requests_and_observed_state_changes_are_audited_with_actor_and_request_id() {
    let app = spawn_app().await;
    app.create_namespaces(&["alpha"]).await;
    let operator_key = app.user_key("olga", json!({ "alpha": "operator" })).await;
    let olga = client_with("x-api-key", &operator_key);
    let mut body = create_body("audited");
    body["namespace"] = json!("alpha");

    let response = olga
        .post(app.url("/v1/instances?wait=30"))
        .header("x-request-id", "req-create-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-create-1");
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["actor"], operator_key[..12]);
    let instance_id = job["instances"][0]["id"].as_str().unwrap();

    let events: Value =
        app.get(&format!("/v1/audit?target={instance_id}&limit=100")).await.json().await.unwrap();
    let logs = events["logs"].as_array().unwrap();
    let create = logs.iter().find(|e| e["action"] == "instance.create").expect("create audited");
    assert_eq!(create["actor"], operator_key[..12], "an API key acts under its prefix");
    assert_eq!(create["namespace"], "alpha");
    assert_eq!(create["request_id"], "req-create-1");
    assert_eq!(create["new_value"]["job_id"], job["id"]);
    assert_eq!(create["new_value"]["instance_type"], "t3.micro");
    let observed: Vec<(&str, &str)> = logs
        .iter()
        .filter(|e| e["action"] == "instance.state")
        .map(|e| {
            assert_eq!(e["actor"], "system");
            (e["old_value"]["state"].as_str().unwrap(), e["new_value"]["state"].as_str().unwrap())
        })
        .collect();
    assert!(
        observed.contains(&("provisioning", "pending"))
            || observed.contains(&("provisioning", "running")),
        "{observed:?}"
    );
    assert_eq!(observed.first().unwrap().1, "running", "newest first");
    assert_eq!(events["total"], logs.len());
}

#[tokio::test]
async fn patching_an_instance_records_old_and_new_values_and_retags_it_in_the_cloud() {
    let app = spawn_app().await;
    let mut body = create_body("before");
    body["tags"] = json!({ "team": "blue", "temp": "yes" });
    let job = app.create_running(&body).await;
    let instance = &job["instances"][0];
    let (id, cloud_id) = (instance["id"].as_str().unwrap(), instance["cloud_id"].as_str().unwrap());

    let response = app
        .client
        .patch(app.url(&format!("/v1/instances/{id}?wait=30")))
        .json(&json!({ "name": "after", "tags": { "team": "red" } }))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    let job: Value = response.json().await.unwrap();
    assert_eq!(
        (job["kind"].as_str(), job["status"].as_str()),
        (Some("tag_instances"), Some("succeeded")),
        "{job}"
    );
    let tags = crate::helpers::tags_of(&app.moto_instances().await[cloud_id]);
    assert_eq!(tags["Name"], "after");
    assert_eq!(tags["team"], "red");
    assert!(!tags.contains_key("temp"), "a removed tag is removed in the cloud");
    let stored: Value = app.get_instance(id).await.json().await.unwrap();
    assert_eq!(
        (stored["name"].as_str(), &stored["tags"]),
        (Some("after"), &json!({ "team": "red" }))
    );
    let audit: Value = app
        .get(&format!("/v1/audit?action=instance.update&target={id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["total"], 1);
    let event = &audit["logs"][0];
    assert_eq!(event["actor"], app.admin_key[..12]);
    assert_eq!(
        event["old_value"],
        json!({ "name": "before", "tags": { "team": "blue", "temp": "yes" } })
    );
    assert_eq!(event["new_value"]["name"], "after");
    assert_eq!(event["new_value"]["tags"], json!({ "team": "red" }));

    // Bad names and reserved tags are refused, naming the field, and change nothing.
    let bad = app
        .client
        .patch(app.url(&format!("/v1/instances/{id}")))
        .json(&json!({ "name": "", "tags": { "corral:x": "1" } }))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(bad, StatusCode::UNPROCESSABLE_ENTITY).await;
    let fields = problem_fields(&problem);
    assert_eq!(fields, ["name", "tags.corral:x"]);
    let stored: Value = app.get_instance(id).await.json().await.unwrap();
    assert_eq!(stored["name"], "after");
}

#[tokio::test]
async fn the_log_pages_newest_first_with_totals_and_viewers_see_only_their_namespaces() {
    let app = spawn_app().await;
    app.create_namespaces(&["alpha", "beta"]).await;
    for n in 0..7 {
        let body = json!({ "name": format!("ns-{n}"), "quota": { "instances": n } });
        assert_eq!(
            app.post_json("/v1/namespaces", &body, None).await.status(),
            StatusCode::CREATED
        );
    }
    let quota = json!({ "quota": { "instances": 3, "vcpus": null } });
    let patched =
        app.client.patch(app.url("/v1/namespaces/beta")).json(&quota).send().await.unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    let viewer = client_with("x-api-key", &app.user_key("vic", json!({ "beta": "viewer" })).await);

    // Admin: everything, newest first, page by page.
    let all: Value = app.get("/v1/audit?limit=100").await.json().await.unwrap();
    let total = all["total"].as_i64().unwrap();
    assert_eq!(total as usize, all["logs"].as_array().unwrap().len());
    let ids: Vec<i64> =
        all["logs"].as_array().unwrap().iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|pair| pair[0] > pair[1]), "newest first: {ids:?}");
    let mut paged = Vec::new();
    for page in 1..=4 {
        let body: Value =
            app.get(&format!("/v1/audit?limit=4&page={page}")).await.json().await.unwrap();
        assert_eq!(
            (body["page"].as_i64(), body["limit"].as_i64(), body["total"].as_i64()),
            (Some(page), Some(4), Some(total))
        );
        paged.extend(body["logs"].as_array().unwrap().iter().map(|e| e["id"].as_i64().unwrap()));
    }
    assert_eq!(paged, ids[..paged.len().min(ids.len())].to_vec());
    assert!(total > 8, "more than two pages of four: {total}");

    // Filters.
    let created: Value =
        app.get("/v1/audit?action=namespace.create&limit=3").await.json().await.unwrap();
    assert_eq!(created["total"], 9);
    assert_eq!(created["logs"].as_array().unwrap().len(), 3);
    assert_eq!(created["logs"][0]["target"], "ns-6");
    let update: Value =
        app.get("/v1/audit?namespace=beta&action=namespace.update").await.json().await.unwrap();
    assert_eq!(update["total"], 1);
    assert_eq!(
        update["logs"][0]["old_value"],
        json!({ "quota": { "instances": null, "vcpus": null }, "default_backend": null })
    );
    assert_eq!(
        update["logs"][0]["new_value"],
        json!({ "quota": { "instances": 3, "vcpus": null }, "default_backend": null })
    );

    // A viewer of beta sees beta's events only, with totals to match.
    let seen: Value =
        viewer.get(app.url("/v1/audit?limit=100")).send().await.unwrap().json().await.unwrap();
    let namespaces: Vec<&str> =
        seen["logs"].as_array().unwrap().iter().map(|e| e["namespace"].as_str().unwrap()).collect();
    assert_eq!(namespaces, ["beta", "beta"], "the update and the creation of beta");
    assert_eq!(seen["total"], 2);
    let other: Value = viewer
        .get(app.url("/v1/audit?namespace=alpha"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((other["total"].as_i64(), other["logs"].as_array().unwrap().len()), (Some(0), 0));

    // Limits are checked.
    for query in ["limit=0", "limit=101", "page=0", "page=x", "sort=asc"] {
        assert_problem(app.get(&format!("/v1/audit?{query}")).await, StatusCode::BAD_REQUEST).await;
    }
}
