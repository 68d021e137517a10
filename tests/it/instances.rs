//! Creating, listing, reading and changing instances, checked against what moto reports.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    AMI_X86, TestApp, assert_problem, create_body, moto_url, spawn_app, spawn_app_with, tags_of,
};
use crate::proxy::FaultProxy;

#[tokio::test]
async fn create_with_wait_launches_one_tagged_running_instance() {
    // Arrange
    let app = spawn_app().await;
    app.create_namespaces(&["shop"]).await;
    let mut body = create_body("web-1");
    body["tags"] = json!({ "team": "blue" });
    body["namespace"] = json!("shop");

    // Act
    let response = app.post_instances(&body, "?wait=30").await;

    // Assert
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let job: Value = response.json().await.unwrap();
    assert_eq!(location, format!("/v1/jobs/{}", job["id"].as_str().unwrap()));
    assert_eq!(job["kind"], "create_instances");
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["attempts"], 1);
    let instance = &job["instances"][0];
    assert_eq!(instance["state"], "running");
    let cloud_id = instance["cloud_id"].as_str().unwrap();

    let in_cloud = app.moto_instances().await;
    assert_eq!(in_cloud.len(), 1, "exactly one instance launched");
    let launched = &in_cloud[cloud_id];
    assert_eq!(launched.private_ip_address(), instance["private_ip"].as_str());
    assert_eq!(launched.public_ip_address(), instance["public_ip"].as_str());
    assert!(instance["private_ip"].is_string());
    let tags = tags_of(launched);
    assert_eq!(tags["Name"], "web-1");
    assert_eq!(tags["team"], "blue");
    assert_eq!(tags["corral:namespace"], "shop");
    assert_eq!(tags["corral:job-id"], job["id"].as_str().unwrap());
    assert_eq!(tags["corral:instance-id"], instance["id"].as_str().unwrap());
    assert_eq!(launched.instance_type().unwrap().as_str(), "t3.micro");
    assert_eq!(launched.image_id(), Some(AMI_X86));
}

#[tokio::test]
async fn create_without_wait_answers_202_and_the_job_finishes() {
    let app = spawn_app().await;

    let response = app.post_instances(&create_body("later"), "").await;

    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let job: Value = response.json().await.unwrap();
    assert!(["queued", "running"].contains(&job["status"].as_str().unwrap()), "{job}");
    assert_eq!(job["instances"][0]["state"], "provisioning");
    let finished = app.wait_for_job(job["id"].as_str().unwrap()).await;
    assert_eq!(finished["status"], "succeeded");
    assert_eq!(finished["instances"][0]["state"], "running");
}

#[tokio::test]
async fn name_prefix_and_count_launch_all_instances_in_one_job_with_their_own_names() {
    let app = spawn_app().await;
    let body =
        json!({ "name_prefix": "build", "count": 3, "ami": AMI_X86, "instance_type": "t3.small" });

    let job = app.create_running(&body).await;

    let instances = job["instances"].as_array().unwrap();
    let names: Vec<&str> = instances.iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["build-1", "build-2", "build-3"]);
    let in_cloud = app.moto_instances().await;
    assert_eq!(in_cloud.len(), 3);
    for instance in instances {
        let tags = tags_of(&in_cloud[instance["cloud_id"].as_str().unwrap()]);
        assert_eq!(tags["Name"], instance["name"].as_str().unwrap());
        assert_eq!(tags["corral:instance-id"], instance["id"].as_str().unwrap());
        assert_eq!(instance["state"], "running");
    }
}

#[tokio::test]
async fn an_instance_is_found_by_corral_id_and_by_cloud_id() {
    let app = spawn_app().await;
    let job = app.create_running(&create_body("lookup")).await;
    let id = job["instances"][0]["id"].as_str().unwrap();
    let cloud_id = job["instances"][0]["cloud_id"].as_str().unwrap();

    for key in [id, cloud_id] {
        let response = app.get_instance(key).await;
        assert_eq!(response.status(), StatusCode::OK);
        let instance: Value = response.json().await.unwrap();
        assert_eq!(instance["id"], id);
        assert_eq!(instance["cloud_id"], cloud_id);
        assert_eq!(instance["name"], "lookup");
        assert_eq!(instance["namespace"], "default");
        assert_eq!(instance["region"], "us-east-1");
        assert_eq!(instance["storage_gb"], 8);
        assert_eq!(instance["backend"], "aws");
        assert!(instance["created_at"].is_string() && instance["updated_at"].is_string());
    }
    let missing =
        assert_problem(app.get_instance("i-0123456789abcdef0").await, StatusCode::NOT_FOUND).await;
    assert_eq!(missing["detail"], "no instance with id or name 'i-0123456789abcdef0'");
}

/// Names work wherever ids do, when one live instance the caller sees has the name: a name
/// two namespaces share is a 409 listing both for the admin, and plain for who sees only one.
/// Names are unique among the live instances of a namespace, for creates and renames alike,
/// and numbered names go on from the highest one live.
#[tokio::test]
async fn names_work_wherever_ids_do_and_are_unique_among_live_instances_of_a_namespace() {
    let app = spawn_app().await;
    app.create_namespaces(&["alpha", "beta"]).await;
    let create_in = |namespace: &str, name: &str| {
        let mut body = create_body(name);
        body["namespace"] = json!(namespace);
        body
    };
    let alpha = app.create_running(&create_in("alpha", "web")).await;
    let alpha_id = alpha["instances"][0]["id"].as_str().unwrap().to_string();
    let beta = app.create_running(&create_in("beta", "web")).await;
    let beta_id = beta["instances"][0]["id"].as_str().unwrap();

    let ambiguous = assert_problem(app.get_instance("web").await, StatusCode::CONFLICT).await;
    let detail = ambiguous["detail"].as_str().unwrap();
    assert!(detail.starts_with("'web' names 2 instances you can see"), "{detail}");
    assert!(detail.contains(&alpha_id) && detail.contains(beta_id), "{detail}");
    let viewer = crate::helpers::client_with(
        "x-api-key",
        &app.user_key("ana", json!({ "alpha": "operator" })).await,
    );
    let mine: Value =
        viewer.get(app.url("/v1/instances/web")).send().await.unwrap().json().await.unwrap();
    assert_eq!(mine["id"], alpha_id.as_str());

    // An action by name, and a bulk action mixing a name and an id.
    let stopped = viewer.post(app.url("/v1/instances/web/stop?wait=30")).send().await.unwrap();
    let stopped: Value = stopped.json().await.unwrap();
    assert_eq!(stopped["status"], "succeeded", "{stopped}");
    assert_eq!(stopped["instances"][0]["id"], alpha_id.as_str());
    let both = json!({ "action": "start", "ids": ["web", alpha_id] });
    let started = viewer.post(app.url("/v1/instances/actions?wait=30")).json(&both).send().await;
    let started: Value = started.unwrap().json().await.unwrap();
    assert_eq!(started["instances"].as_array().unwrap().len(), 1, "{started}");

    // A second live "web" in alpha is refused, naming it; so is a rename onto it.
    let again = app.post_instances(&create_in("alpha", "web"), "").await;
    let problem = assert_problem(again, StatusCode::UNPROCESSABLE_ENTITY).await;
    let message = problem["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("namespace 'alpha' has a live instance named 'web'"), "{problem}");
    let mut numbered = create_in("alpha", "");
    numbered["name"] = Value::Null;
    numbered["name_prefix"] = json!("web");
    let first = app.create_running(&numbered).await;
    assert_eq!(first["instances"][0]["name"], "web-1");
    numbered["count"] = json!(2);
    let next = app.create_running(&numbered).await;
    let names: Vec<&str> =
        next["instances"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["web-2", "web-3"]);
    let rename = app
        .client
        .patch(app.url(&format!("/v1/instances/{alpha_id}")))
        .json(&json!({ "name": "web-2" }))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(rename, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(problem["errors"][0]["message"].as_str().unwrap().contains("'web-2'"), "{problem}");

    // Numbering that would pass 64 characters is refused, naming the prefix; a number no one
    // counted up to (past nine digits) is no reason.
    let huge = app.create_running(&create_in("alpha", "big-18446744073709551615")).await;
    assert_eq!(huge["status"], "succeeded");
    numbered["name_prefix"] = json!("big");
    numbered["count"] = json!(1);
    let next = app.create_running(&numbered).await;
    assert_eq!(next["instances"][0]["name"], "big-1", "{next}");
    let long = "p".repeat(59);
    app.create_running(&create_in("alpha", &format!("{long}-9999"))).await;
    numbered["name_prefix"] = json!(long);
    let refused =
        assert_problem(app.post_instances(&numbered, "").await, StatusCode::UNPROCESSABLE_ENTITY)
            .await;
    assert!(refused.to_string().contains("name_prefix"), "{refused}");

    // Once terminated, a name is free again, and an id still finds the old instance.
    let ended: Value = app.act(beta_id, "terminate", "?wait=30").await.json().await.unwrap();
    assert_eq!(ended["status"], "succeeded", "{ended}");
    let only: Value = app.get_instance("web").await.json().await.unwrap();
    assert_eq!(only["id"], alpha_id.as_str(), "the terminated one no longer answers to its name");
    assert_eq!(app.get_instance(beta_id).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn stop_start_reboot_terminate_follow_the_cloud() {
    let app = spawn_app().await;
    let job = app.create_running(&create_body("cycle")).await;
    let id = job["instances"][0]["id"].as_str().unwrap().to_string();
    let cloud_id = job["instances"][0]["cloud_id"].as_str().unwrap().to_string();

    for (action, expected) in [
        ("stop", "stopped"),
        ("start", "running"),
        ("reboot", "running"),
        ("terminate", "terminated"),
    ] {
        let response = app.act(&id, action, "?wait=30").await;
        assert_eq!(response.status(), StatusCode::OK, "{action}");
        assert!(response.headers().contains_key("location"));
        let job: Value = response.json().await.unwrap();
        assert_eq!(job["status"], "succeeded", "{action}: {job}");
        assert_eq!(job["kind"], format!("{action}_instances"));
        assert_eq!(job["instances"][0]["state"], expected, "{action}");
        assert_eq!(app.moto_state(&cloud_id).await, expected, "{action} in the cloud");
    }

    // Terminated instances stay listed.
    let listed: Value = app.get_instances("?state=terminated").await.json().await.unwrap();
    assert_eq!(listed["items"][0]["id"], id.as_str());
}

/// Acts on an instance and waits for the job; panics unless it succeeded.
async fn act_and_wait(app: &TestApp, id: &str, action: &str) -> Value {
    let response = app.act(id, action, "?wait=30").await;
    assert!(response.status().is_success(), "{action}: {}", response.status());
    let job: Value = response.json().await.unwrap();
    let job = app.wait_for_job(job["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "succeeded", "{action}: {job}");
    job
}

/// Panics if corral called EC2 since the proxy's count was last reset.
fn assert_no_cloud_call(proxy: &FaultProxy, after: &str) {
    let calls = proxy.calls();
    assert!(calls.is_empty(), "{after} called EC2: {calls:?}");
}

/// An action the instance's state does not allow is refused with `409` naming the states it
/// is allowed from, in the request: no job is stored and not one EC2 call is made (counted at
/// a proxy between corral and the emulator).
#[tokio::test]
async fn impossible_transitions_are_refused_with_409_before_any_cloud_call() {
    // Arrange
    let proxy = FaultProxy::start(moto_url(), 0.0).await;
    let app = spawn_app_with(|settings| settings.aws.endpoint_url = Some(proxy.url.clone())).await;
    let job = app.create_running(&create_body("strict")).await;
    let id = job["instances"][0]["id"].as_str().unwrap().to_string();
    let cloud_id = job["instances"][0]["cloud_id"].as_str().unwrap().to_string();
    assert_eq!(proxy.calls_of("RunInstances"), 1, "corral calls EC2 through the proxy");

    // Act and assert: a running instance cannot be started ...
    proxy.reset_calls();
    let problem = assert_problem(app.act(&id, "start", "").await, StatusCode::CONFLICT).await;
    assert_eq!(
        problem["detail"],
        "cannot start an instance that is running; allowed from: stopped"
    );
    assert_no_cloud_call(&proxy, "a refused start");

    // ... a stopped one cannot be rebooted ...
    act_and_wait(&app, &id, "stop").await;
    proxy.reset_calls();
    let problem = assert_problem(app.act(&id, "reboot", "").await, StatusCode::CONFLICT).await;
    assert_eq!(
        problem["detail"],
        "cannot reboot an instance that is stopped; allowed from: running"
    );
    assert_no_cloud_call(&proxy, "a refused reboot");

    // ... and a terminated one takes nothing, by corral id or by cloud id.
    act_and_wait(&app, &id, "terminate").await;
    let jobs_before: Value = app.get_jobs("").await.json().await.unwrap();
    proxy.reset_calls();
    let problem = assert_problem(app.act(&cloud_id, "start", "").await, StatusCode::CONFLICT).await;
    assert_eq!(problem["errors"][0]["field"], id.as_str());
    let problem = assert_problem(app.act(&id, "terminate", "").await, StatusCode::CONFLICT).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("cannot terminate an instance that is terminated"),
        "{problem}"
    );
    assert_no_cloud_call(&proxy, "a refused start or terminate");

    // No job was stored for the refused requests, and the cloud was left alone.
    let jobs_after: Value = app.get_jobs("").await.json().await.unwrap();
    assert_eq!(
        jobs_before["items"].as_array().unwrap().len(),
        jobs_after["items"].as_array().unwrap().len()
    );
    assert_eq!(app.moto_state(&cloud_id).await, "terminated");
    assert_no_cloud_call(&proxy, "the refused requests");
}

/// The facts of an AMI and an instance type are asked of EC2 once and then cached
/// (`cloud::catalog`): a second create with the same AMI and type calls neither
/// DescribeImages nor DescribeInstanceTypes again; another type is looked up once too.
#[tokio::test]
async fn creates_with_the_same_image_and_type_describe_them_once() {
    // Arrange
    let proxy = FaultProxy::start(moto_url(), 0.0).await;
    let app = spawn_app_with(|settings| settings.aws.endpoint_url = Some(proxy.url.clone())).await;

    // Act
    app.create_running(&create_body("first")).await;
    let after_first = proxy.calls();
    app.create_running(&create_body("second")).await;
    let after_second = proxy.calls();
    let mut other_type = create_body("third");
    other_type["instance_type"] = json!("t3.small");
    app.create_running(&other_type).await;
    let after_third = proxy.calls();

    // Assert
    let count = |calls: &std::collections::BTreeMap<String, u64>, action: &str| {
        calls.get(action).copied().unwrap_or_default()
    };
    assert_eq!(count(&after_first, "DescribeImages"), 1, "{after_first:?}");
    assert_eq!(count(&after_first, "DescribeInstanceTypes"), 1, "{after_first:?}");
    assert_eq!(count(&after_second, "RunInstances"), 2, "{after_second:?}");
    assert_eq!(count(&after_second, "DescribeImages"), 1, "asked again: {after_second:?}");
    assert_eq!(count(&after_second, "DescribeInstanceTypes"), 1, "asked again: {after_second:?}");
    assert_eq!(count(&after_third, "RunInstances"), 3, "{after_third:?}");
    assert_eq!(count(&after_third, "DescribeImages"), 1, "asked again: {after_third:?}");
    assert_eq!(count(&after_third, "DescribeInstanceTypes"), 2, "t3.small: {after_third:?}");
}

#[tokio::test]
async fn an_instance_busy_with_a_job_refuses_another_action() {
    // The cloud is unreachable and retries are far apart, so the create job keeps the instance.
    let app = spawn_app_with(|settings| {
        settings.aws.endpoint_url = Some("http://127.0.0.1:9".to_string());
        settings.jobs.retry_delay_secs = 600.0;
    })
    .await;
    let job: Value = app.post_instances(&create_body("busy"), "").await.json().await.unwrap();
    let id = job["instances"][0]["id"].as_str().unwrap();

    let response = app.act(id, "terminate", "").await;

    let problem = assert_problem(response, StatusCode::CONFLICT).await;
    assert_eq!(
        problem["detail"],
        format!("busy with job {}; retry when it has finished", job["id"].as_str().unwrap())
    );
}

#[tokio::test]
async fn bulk_actions_use_one_job_for_many_instances() {
    let app = spawn_app().await;
    let job = app.create_running(&json!({ "name_prefix": "fleet", "count": 3, "ami": AMI_X86, "instance_type": "t3.micro" })).await;
    let instances = job["instances"].as_array().unwrap();
    // Mixed id kinds, separated by nothing but the list; a duplicate is harmless.
    let ids = json!([instances[0]["id"], instances[1]["cloud_id"], instances[0]["id"]]);

    let response = app.post_bulk_action(&json!({ "action": "stop", "ids": ids }), "?wait=30").await;

    assert_eq!(response.status(), StatusCode::OK);
    let stop_job: Value = response.json().await.unwrap();
    assert_eq!(stop_job["status"], "succeeded", "{stop_job}");
    assert_eq!(stop_job["instances"].as_array().unwrap().len(), 2);
    let in_cloud = app.moto_instances().await;
    for (idx, expected) in [(0, "stopped"), (1, "stopped"), (2, "running")] {
        let cloud_id = instances[idx]["cloud_id"].as_str().unwrap();
        assert_eq!(in_cloud[cloud_id].state().unwrap().name().unwrap().as_str(), expected);
    }
}

#[tokio::test]
async fn bulk_actions_name_every_unknown_or_conflicting_instance() {
    let app = spawn_app().await;
    let job = app.create_running(&json!({ "name_prefix": "pair", "count": 2, "ami": AMI_X86, "instance_type": "t3.micro" })).await;
    let first = job["instances"][0]["id"].as_str().unwrap();
    let second = job["instances"][1]["id"].as_str().unwrap();
    app.act(first, "stop", "?wait=30").await;

    let unknown = app
        .post_bulk_action(&json!({ "action": "stop", "ids": [first, "i-nope1", "i-nope2"] }), "")
        .await;
    let problem = assert_problem(unknown, StatusCode::NOT_FOUND).await;
    assert_eq!(problem["detail"], "no instances with ids or names: i-nope1, i-nope2");

    let conflict =
        app.post_bulk_action(&json!({ "action": "reboot", "ids": [first, second] }), "").await;
    let problem = assert_problem(conflict, StatusCode::CONFLICT).await;
    assert_eq!(problem["errors"].as_array().unwrap().len(), 1);
    assert_eq!(problem["errors"][0]["field"], first);

    let bad_action =
        app.post_bulk_action(&json!({ "action": "explode", "ids": [first] }), "").await;
    let problem = assert_problem(bad_action, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(problem["errors"][0]["field"], "action");
    let empty = app.post_bulk_action(&json!({ "action": "stop", "ids": [] }), "").await;
    assert_problem(empty, StatusCode::UNPROCESSABLE_ENTITY).await;
}

#[tokio::test]
async fn list_filters_by_state_namespace_name_and_tags() {
    let app = spawn_app().await;
    app.create_namespaces(&["team-a", "team-b"]).await;
    let mut a = create_body("alpha");
    a["namespace"] = json!("team-a");
    a["tags"] = json!({ "env": "prod", "tier": "web" });
    let mut b = create_body("beta");
    b["namespace"] = json!("team-b");
    b["tags"] = json!({ "env": "dev" });
    app.create_running(&a).await;
    let beta = app.create_running(&b).await;
    app.act(beta["instances"][0]["id"].as_str().unwrap(), "stop", "?wait=30").await;
    let gamma = app.create_running(&create_body("gamma")).await;
    app.act(gamma["instances"][0]["id"].as_str().unwrap(), "terminate", "?wait=30").await;

    // Live instances unless the query asks for ended ones.
    let cases = [
        ("", vec!["beta", "alpha"]),
        ("?all=true", vec!["gamma", "beta", "alpha"]),
        ("?all=false", vec!["beta", "alpha"]),
        ("?state=terminated", vec!["gamma"]),
        ("?namespace=team-a", vec!["alpha"]),
        ("?state=stopped", vec!["beta"]),
        ("?state=running", vec!["alpha"]),
        ("?name=beta", vec!["beta"]),
        ("?tag=env:prod", vec!["alpha"]),
        ("?tag=env:prod&tag=tier:web", vec!["alpha"]),
        ("?tag=env:prod&tag=tier:db", vec![]),
        ("?namespace=team-b&state=running", vec![]),
    ];
    for (query, expected) in cases {
        let page: Value = app.get_instances(query).await.json().await.unwrap();
        let names: Vec<&str> =
            page["items"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
        assert_eq!(names, expected, "query {query}");
        assert_eq!(page["next_cursor"], Value::Null);
    }
}

#[tokio::test]
async fn pagination_walks_every_instance_exactly_once() {
    let app = spawn_app().await;
    app.create_running(
        &json!({ "name_prefix": "p", "count": 7, "ami": AMI_X86, "instance_type": "t3.micro" }),
    )
    .await;

    let mut seen = Vec::new();
    let mut query = "?limit=3".to_string();
    let mut pages = 0;
    loop {
        let page: Value = app.get_instances(&query).await.json().await.unwrap();
        pages += 1;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|i| i["name"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=3&cursor={cursor}"),
            None => break,
        }
    }

    assert_eq!(pages, 3);
    seen.sort();
    assert_eq!(seen, ["p-1", "p-2", "p-3", "p-4", "p-5", "p-6", "p-7"]);
}

/// The ssh command logs in as the user the AMI implies: `ubuntu` on Canonical's Ubuntu,
/// `ec2-user` on Amazon Linux.
#[tokio::test]
async fn the_ssh_command_uses_the_login_user_of_the_ami() {
    let app = spawn_app().await;
    app.ec2.create_key_pair().key_name("deploy").send().await.unwrap();
    let mut ubuntu = create_body("jammy");
    ubuntu["ami"] = json!("ami-785db401");
    ubuntu["key_name"] = json!("deploy");
    let mut amazon = create_body("amzn");
    amazon["key_name"] = json!("deploy");
    for (body, user) in [(ubuntu, "ubuntu"), (amazon, "ec2-user")] {
        let job = app.create_running(&body).await;
        let id = job["instances"][0]["id"].as_str().unwrap();
        let instance: Value = app.get_instance(id).await.json().await.unwrap();
        let ip = instance["public_ip"].as_str().unwrap();
        assert_eq!(instance["ssh_command"], format!("ssh -i deploy.pem {user}@{ip}"), "{instance}");
        assert_eq!(job["instances"][0]["ssh_command"], instance["ssh_command"], "{job}");
    }
}
