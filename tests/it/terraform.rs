//! The Terraform backend, with the real `terraform` of this machine and the AWS provider from
//! its local mirror, against moto: the lifecycle, one request's destroy leaving another's
//! instances alone, the state and its lock kept by corral, retries that end with Terraform's
//! error and leave nothing behind, namespace and server default backends, user text kept
//! literal, and a server without terraform. Skipped, saying so, where terraform is absent.
//!
//! Each Terraform command costs seconds of CPU (loading the AWS provider), and these tests are
//! most of the suite's time: a test runs as few Terraform jobs as what it shows needs, at once
//! where they are independent.

use aws_sdk_ec2::types::{Filter, InstanceStateName};
use corral::domain::Backend;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    AMI_X86, TestApp, assert_problem, create_body, moto_url, spawn_app, spawn_app_with,
    terraform_mirror,
};

/// What moto says of an instance's state.
async fn cloud_state(app: &TestApp, cloud_id: &str) -> InstanceStateName {
    let described = app.ec2.describe_instances().instance_ids(cloud_id).send().await.unwrap();
    let instance = &described.reservations()[0].instances()[0];
    instance.state().unwrap().name().unwrap().clone()
}

/// The time and message of the first step of a job's history that starts with `prefix`.
async fn step_starting(
    app: &TestApp,
    job_id: &str,
    prefix: &str,
) -> Option<(chrono::DateTime<chrono::Utc>, String)> {
    let events: Value = app.get(&format!("/v1/jobs/{job_id}/events")).await.json().await.unwrap();
    let items = events["items"].as_array().unwrap();
    let event = items.iter().find(|event| {
        event["message"].as_str().is_some_and(|message| message.starts_with(prefix))
    })?;
    let at = event["at"].as_str().unwrap().parse().unwrap();
    Some((at, event["message"].as_str().unwrap().to_string()))
}

/// Posts a create with `query` (no wait) and waits for its job.
/// (`201` instead of `202` when a worker had already finished the job by the time of the answer.)
async fn create_and_wait(app: &TestApp, body: &Value, query: &str) -> Value {
    let response = app.post_instances(body, query).await;
    assert!(
        [StatusCode::ACCEPTED, StatusCode::CREATED].contains(&response.status()),
        "{}",
        response.status()
    );
    let job: Value = response.json().await.unwrap();
    app.wait_for_job(job["id"].as_str().unwrap()).await
}

/// Posts `action` on instance `id` (no wait) and waits for its job (`200` instead of `202`
/// when a worker had already finished it, as a refused job can be, by the time of the answer).
async fn act_and_wait(app: &TestApp, id: &str, action: &str) -> Value {
    let response = app.act(id, action, "").await;
    assert!(
        [StatusCode::ACCEPTED, StatusCode::OK].contains(&response.status()),
        "{action} {id}: {}",
        response.status()
    );
    let job: Value = response.json().await.unwrap();
    app.wait_for_job(job["id"].as_str().unwrap()).await
}

#[tokio::test]
async fn terraform_creates_stops_starts_and_destroys_one_request_leaving_another_alone() {
    if terraform_mirror().is_none() {
        return;
    }
    let app = spawn_app().await;
    let mut first = create_body("tf-first");
    first["ingress"] = json!([{ "port": 22, "cidr": "caller" }]);
    first["tags"] = json!({ "team": "blue" });
    // The second names no backend: its namespace defaults to Terraform (the server to aws).
    let namespace = json!({ "name": "tf-team", "default_backend": "terraform" });
    assert_eq!(
        app.post_json("/v1/namespaces", &namespace, None).await.status(),
        StatusCode::CREATED
    );
    let mut second = create_body("tf-second");
    second["namespace"] = json!("tf-team");
    // The two requests run at once, each in its own workspace.
    let (first, second) = tokio::join!(
        create_and_wait(&app, &first, "?backend=terraform"),
        create_and_wait(&app, &second, "")
    );

    for job in [&first, &second] {
        assert_eq!(job["status"], "succeeded", "{job}");
        let instance = &job["instances"][0];
        assert_eq!(instance["state"], "running");
        let cloud_id = instance["cloud_id"].as_str().unwrap();
        assert_eq!(cloud_state(&app, cloud_id).await, InstanceStateName::Running);
    }
    let first_id = first["instances"][0]["id"].as_str().unwrap().to_string();
    let first_cloud = first["instances"][0]["cloud_id"].as_str().unwrap().to_string();
    let second_cloud = second["instances"][0]["cloud_id"].as_str().unwrap().to_string();
    for job in [&first, &second] {
        let id = job["instances"][0]["id"].as_str().unwrap();
        let instance: Value = app.get(&format!("/v1/instances/{id}")).await.json().await.unwrap();
        assert_eq!(instance["backend"], "terraform");
    }

    // The job's history shows each Terraform command and its output, without secrets.
    let workspace = first["id"].as_str().unwrap();
    let steps = app.job_steps(workspace).await;
    for expected in [
        "terraform init: done",
        "terraform plan",
        "terraform apply: done",
        "Apply complete! Resources: 3 added",
    ] {
        assert!(steps.contains(expected), "no '{expected}' in:\n{steps}");
    }
    assert!(!steps.contains(&app.aws_credentials.1), "the AWS secret is in the history");

    // The state is in corral, not on disk: it names the instance; the group is the request's.
    let state: Value =
        app.get(&format!("/v1/terraform/state/{workspace}")).await.json().await.unwrap();
    assert!(state.to_string().contains(&first_cloud), "{state}");
    let filter = Filter::builder().name("tag:corral:job-id").values(workspace).build();
    let groups = app.ec2.describe_security_groups().filters(filter.clone()).send().await.unwrap();
    let [group] = groups.security_groups() else { panic!("{groups:?}") };
    let cidrs: Vec<&str> =
        group.ip_permissions()[0].ip_ranges().iter().filter_map(|r| r.cidr_ip()).collect();
    assert_eq!(cidrs, ["127.0.0.1/32"]);

    // Stop and start through aws_ec2_instance_state; reboot through the native API.
    let stopped = act_and_wait(&app, &first_id, "stop").await;
    assert_eq!(stopped["status"], "succeeded", "{stopped}");
    assert_eq!(cloud_state(&app, &first_cloud).await, InstanceStateName::Stopped);
    let steps = app.job_steps(stopped["id"].as_str().unwrap()).await;
    assert!(steps.contains("aws_ec2_instance_state.i0"), "{steps}");
    assert_eq!(cloud_state(&app, &second_cloud).await, InstanceStateName::Running);
    let started = act_and_wait(&app, &first_id, "start").await;
    assert_eq!(started["status"], "succeeded", "{started}");
    assert_eq!(cloud_state(&app, &first_cloud).await, InstanceStateName::Running);
    let rebooted = act_and_wait(&app, &first_id, "reboot").await;
    assert_eq!(rebooted["status"], "succeeded", "{rebooted}");
    assert!(!app.job_steps(rebooted["id"].as_str().unwrap()).await.contains("terraform"));

    // Destroying the first request leaves the second request's instance alone.
    let ended = act_and_wait(&app, &first_id, "terminate").await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    let steps = app.job_steps(ended["id"].as_str().unwrap()).await;
    assert!(steps.contains("terraform destroy: done"), "{steps}");
    assert_eq!(cloud_state(&app, &first_cloud).await, InstanceStateName::Terminated);
    assert_eq!(cloud_state(&app, &second_cloud).await, InstanceStateName::Running);
    let groups = app.ec2.describe_security_groups().filters(filter).send().await.unwrap();
    assert!(groups.security_groups().is_empty(), "the request's group outlived it");
    let second_state: Value = app
        .get(&format!("/v1/terraform/state/{}", second["id"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    assert!(second_state.to_string().contains(&second_cloud), "{second_state}");
}

#[tokio::test]
async fn a_server_without_terraform_refuses_the_backend_at_request_time() {
    let app = spawn_app_with(|settings| {
        settings.terraform.binary = "/nonexistent/terraform".to_string();
    })
    .await;
    let response = app.post_instances(&create_body("no-tf"), "?backend=terraform").await;
    let problem = assert_problem(response, StatusCode::BAD_REQUEST).await;
    assert!(problem.to_string().contains("terraform is not installed"), "{problem}");
    let listed: Value = app.get("/v1/instances").await.json().await.unwrap();
    assert!(listed["items"].as_array().unwrap().is_empty(), "nothing was stored");

    // Nor can a namespace default to it, made or changed.
    let namespace = json!({ "name": "tf-team", "default_backend": "terraform" });
    let problem = assert_problem(
        app.post_json("/v1/namespaces", &namespace, None).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "default_backend", "{problem}");
    assert!(problem.to_string().contains("terraform is not installed"), "{problem}");
    assert_eq!(app.get("/v1/namespaces/tf-team").await.status(), StatusCode::NOT_FOUND);
    app.create_namespaces(&["plain"]).await;
    let change = json!({ "default_backend": "terraform" });
    let response = app.client.patch(app.url("/v1/namespaces/plain")).json(&change).send();
    let problem = assert_problem(response.await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(problem["errors"][0]["field"], "default_backend", "{problem}");
    let plain: Value = app.get("/v1/namespaces/plain").await.json().await.unwrap();
    assert_eq!(plain["default_backend"], Value::Null);
}

#[tokio::test]
async fn the_state_lock_is_kept_by_corral_and_a_second_run_waits_for_its_holder() {
    if terraform_mirror().is_none() {
        return;
    }
    let app = spawn_app().await;
    let body = json!({ "name_prefix": "tf-locked", "count": 2, "ami": AMI_X86,
                       "instance_type": "t3.micro" });
    let created = create_and_wait(&app, &body, "?backend=terraform").await;
    assert_eq!(created["status"], "succeeded", "{created}");
    let workspace = created["id"].as_str().unwrap().to_string();
    let instance_id = created["instances"][0]["id"].as_str().unwrap().to_string();
    let cloud_id = created["instances"][0]["cloud_id"].as_str().unwrap().to_string();
    let other_id = created["instances"][1]["id"].as_str().unwrap().to_string();
    let other_cloud_id = created["instances"][1]["cloud_id"].as_str().unwrap().to_string();
    let address = app.url(&format!("/v1/terraform/state/{workspace}"));
    let lock = |id: &str| {
        json!({ "ID": id, "Operation": "OperationTypeApply", "Who": "alice@laptop",
                "Version": "1.11.4", "Created": "2026-11-25T12:00:00Z", "Path": "", "Info": "" })
    };
    let method = |name: &str| reqwest::Method::from_bytes(name.as_bytes()).unwrap();

    // Someone's run holds the lock: another lock, and a write under another lock, are refused
    // with the holder's lock info.
    let taken = app.client.request(method("LOCK"), &address).json(&lock("alice-1")).send().await;
    assert_eq!(taken.unwrap().status(), StatusCode::OK);
    let refused =
        app.client.request(method("LOCK"), &address).json(&lock("bob-1")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::LOCKED);
    let holder: Value = refused.json().await.unwrap();
    assert_eq!(
        (holder["ID"].as_str(), holder["Who"].as_str()),
        (Some("alice-1"), Some("alice@laptop"))
    );
    let state = app.get(&format!("/v1/terraform/state/{workspace}")).await.text().await.unwrap();
    let write = app.client.post(format!("{address}?ID=bob-1")).body(state.clone()).send().await;
    assert_eq!(write.unwrap().status(), StatusCode::LOCKED);

    // Terraform itself, run by a user with an API key as its password, names the holding lock.
    let dir = tempfile::tempdir().unwrap();
    let config = json!({ "terraform": { "backend": { "http": {
        "address": address, "lock_address": address, "unlock_address": address } } } });
    std::fs::write(dir.path().join("main.tf.json"), config.to_string()).unwrap();
    let env = [("TF_HTTP_USERNAME", "me"), ("TF_HTTP_PASSWORD", app.admin_key.as_str())];
    app.terraform(dir.path(), &["init", "-input=false", "-no-color"], &env).await.unwrap();
    let failed = app
        .terraform(dir.path(), &["plan", "-input=false", "-no-color", "-lock-timeout=0s"], &env)
        .await
        .unwrap_err();
    assert!(failed.contains("Error acquiring the state lock"), "{failed}");
    assert!(failed.contains("HTTP remote state already locked: ID=alice-1"), "{failed}");

    // corral's own run waits for the lock instead of failing, and goes on once it is released.
    // A later job on the same workspace waits its turn without holding a worker: it hands its
    // attempt back, uncounted, after waiting 10 s.
    let mut stops = Vec::new();
    for id in [&instance_id, &other_id] {
        let stop = app.act(id, "stop", "").await;
        assert_eq!(stop.status(), StatusCode::ACCEPTED);
        stops.push(stop.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string());
    }
    let turn = format!(
        "waiting for job {}, which works on Terraform workspace {workspace} first; attempt not \
         counted",
        stops[0]
    );
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while !app.job_steps(&stops[1]).await.contains(&turn) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the later stop never handed its turn back: {}",
            app.job_steps(&stops[1]).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    // All that time the first stop's plan, which takes the lock, has not ended.
    let waiting: Value = app.get_job(&stops[0]).await.json().await.unwrap();
    assert_eq!(waiting["status"], "running", "{waiting}");
    let plan = step_starting(&app, &stops[0], "terraform plan").await;
    assert!(plan.is_none(), "the plan ended under alice's lock: {plan:?}");
    assert_eq!(cloud_state(&app, &cloud_id).await, InstanceStateName::Running);
    let released_at = chrono::Utc::now();
    let released =
        app.client.request(method("UNLOCK"), &address).json(&lock("alice-1")).send().await;
    assert_eq!(released.unwrap().status(), StatusCode::OK);

    // While the stops run, an UNLOCK naming a lock nobody holds answers who holds the lock, if
    // anyone does, and changes nothing: corral's runs are seen holding it.
    let mut holders = Vec::new();
    // A guard against stops that never end (each is a Terraform plan and apply, the second
    // after the first), not a measure of their speed.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let probe =
            app.client.request(method("UNLOCK"), &address).json(&lock("probe")).send().await;
        let probe = probe.unwrap();
        if probe.status() == StatusCode::LOCKED {
            holders.push(probe.json::<Value>().await.unwrap());
        } else {
            assert_eq!(probe.status(), StatusCode::OK);
        }
        let mut finished = 0;
        for stop_id in &stops {
            let job: Value = app.get_job(stop_id).await.json().await.unwrap();
            if job["status"] == "succeeded" || job["status"] == "failed" {
                finished += 1;
            }
        }
        if finished == stops.len() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the stops did not finish");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for stop_id in &stops {
        let stopped = app.wait_for_job(stop_id).await;
        assert_eq!(stopped["status"], "succeeded", "{stopped}");
        assert_eq!(stopped["attempts"], 1, "{stopped}");
    }
    assert_eq!(cloud_state(&app, &cloud_id).await, InstanceStateName::Stopped);
    assert_eq!(cloud_state(&app, &other_cloud_id).await, InstanceStateName::Stopped);
    // The plan ended only once alice's lock was released, and Terraform says it waited for the
    // lock (it prints "Acquiring state lock" only when taking the lock takes over 400 ms).
    let (at, plan) =
        step_starting(&app, &stops[0], "terraform plan").await.expect("the first stop ran a plan");
    assert!(at > released_at, "the plan ended at {at}, before alice's lock was released");
    assert!(plan.contains("Acquiring state lock"), "{plan}");

    // The runs took the lock: each holder seen was one of corral's Terraform operations.
    assert!(!holders.is_empty(), "no run of corral was ever seen holding the lock");
    for holder in &holders {
        assert_ne!(holder["ID"], "alice-1", "{holder}");
        assert!(holder["ID"].as_str().is_some_and(|id| !id.is_empty()), "{holder}");
        let operation = holder["Operation"].as_str().unwrap_or_default();
        assert!(operation.starts_with("OperationType"), "not Terraform's lock: {holder}");
    }
    // And released it: the workspace can be locked again.
    let relock = app.client.request(method("LOCK"), &address).json(&lock("carol-1")).send().await;
    assert_eq!(relock.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn a_failing_apply_is_retried_then_fails_with_terraforms_error_leaving_nothing() {
    if terraform_mirror().is_none() {
        return;
    }
    let app = spawn_app_with(|settings| settings.jobs.max_attempts = 2).await;
    let mut body = create_body("tf-broken");
    body["key_name"] = json!("no-such-key");
    body["ingress"] = json!([{ "port": 22, "cidr": "caller" }]);

    let response = app.post_instances(&body, "?backend=terraform").await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let job_id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    // An instance tagged with the job that its state never names, as an apply interrupted
    // before it could save the state leaves behind (a destroy does not see it).
    let stray = app.launch_in_moto(&[("corral:job-id", &job_id)]).await;
    let job = app.wait_for_job(&job_id).await;

    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(error.contains("terraform apply failed: Error: creating EC2 Instance"), "{error}");
    assert!(error.contains("no-such-key"), "{error}");
    let steps = app.job_steps(job["id"].as_str().unwrap()).await;
    assert_eq!(steps.matches("terraform apply: failed").count(), 2, "{steps}");
    // The stray went with the request; the failed runs made no instance of their own.
    assert_eq!(cloud_state(&app, &stray).await, InstanceStateName::Terminated);
    assert!(steps.contains(&format!("terminated {stray}, tagged with this failed request")));
    let filter = Filter::builder().name("tag:corral:job-id").values(&job_id).build();
    let made = app.ec2.describe_instances().filters(filter.clone()).send().await.unwrap();
    let made: Vec<&str> = made
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.instance_id())
        .collect();
    assert_eq!(made, [stray.as_str()]);
    // The security group the failed runs made went with the request.
    assert!(steps.contains("terraform destroy: done"), "{steps}");
    let groups = app.ec2.describe_security_groups().filters(filter).send().await.unwrap();
    assert!(groups.security_groups().is_empty(), "{groups:?}");
}

/// A server whose default backend is Terraform does not start where terraform is missing.
#[tokio::test]
async fn a_terraform_default_backend_without_terraform_is_refused_at_start() {
    let refused = corral::startup::Application::build(corral::config::Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        terraform: corral::config::TerraformSettings {
            default_backend: corral::domain::Backend::Terraform,
            binary: "/nonexistent/terraform".to_string(),
            ..Default::default()
        },
        database_url: format!("sqlite://{}/t.db", tempfile::tempdir().unwrap().path().display()),
        ..Default::default()
    })
    .await;
    let err = refused.err().expect("a terraform default without terraform is refused at start");
    assert!(format!("{err:#}").contains("/nonexistent/terraform"), "{err:#}");
}

/// Which backend a request that names none gets (its namespace's default, else the server's),
/// and that user text reaches the cloud as written on both backends: tags and user_data full of
/// Terraform's template syntax, each of which would read a file of the server or run a function
/// if Terraform evaluated it. (One test, so that its Terraform create serves both.)
#[tokio::test]
async fn the_configured_default_backend_applies_and_user_text_reaches_the_cloud_as_written() {
    if terraform_mirror().is_none() {
        return;
    }
    // Links in emails point elsewhere; runs still reach the state API at the listener.
    let app = spawn_app_with(|settings| {
        settings.terraform.default_backend = Backend::Terraform;
        settings.notify.public_url = Some("https://corral.example.invalid".into());
    })
    .await;
    let tags = json!({
        "${upper(\"key\")}": "${upper(\"probe\")}-${length(file(\"/etc/passwd\"))}",
        "directive": "%{ if true }yes%{ endif }",
        "escaped": "$${already} %%{doubled} $$ %",
    });
    let user_data =
        "#!/bin/sh\necho '${file(\"/proc/self/environ\")}' %{for x in [1]}${x}%{endfor}\n";
    // A namespace's default comes before the server's.
    let namespace = json!({ "name": "native", "default_backend": "aws" });
    assert_eq!(
        app.post_json("/v1/namespaces", &namespace, None).await.status(),
        StatusCode::CREATED
    );
    for (name, namespace, backend) in
        [("tf-literal", "default", "terraform"), ("native-literal", "native", "aws")]
    {
        let mut body = create_body(name);
        body["namespace"] = json!(namespace);
        body["tags"] = tags.clone();
        body["user_data"] = json!(user_data);
        let job = create_and_wait(&app, &body, "").await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let id = job["instances"][0]["id"].as_str().unwrap();
        let instance: Value = app.get(&format!("/v1/instances/{id}")).await.json().await.unwrap();
        assert_eq!(instance["backend"], backend, "{name}");
        let steps = app.job_steps(job["id"].as_str().unwrap()).await;
        if backend == "terraform" {
            assert!(steps.contains("terraform apply: done"), "{steps}");
        } else {
            assert!(!steps.contains("terraform"), "{steps}");
        }
        assert!(!steps.contains("PROBE") && !steps.contains("root:"), "{steps}");

        let cloud_id = job["instances"][0]["cloud_id"].as_str().unwrap();
        let instance = app.moto_instances().await.remove(cloud_id).unwrap();
        let cloud_tags = crate::helpers::tags_of(&instance);
        for (key, value) in tags.as_object().unwrap() {
            assert_eq!(cloud_tags.get(key).map(String::as_str), value.as_str(), "{name} {key}");
        }
        let attribute = app
            .ec2
            .describe_instance_attribute()
            .instance_id(cloud_id)
            .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
            .send()
            .await
            .unwrap();
        let encoded = attribute.user_data().and_then(|v| v.value()).unwrap();
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), user_data, "{name}");
    }
}

#[tokio::test]
async fn a_state_naming_another_requests_instance_is_refused_and_that_instance_keeps_running() {
    if terraform_mirror().is_none() {
        return;
    }
    let app = spawn_app().await;
    let created =
        create_and_wait(&app, &create_body("tf-victim-of-state"), "?backend=terraform").await;
    assert_eq!(created["status"], "succeeded", "{created}");
    let workspace = created["id"].as_str().unwrap();
    let own_cloud = created["instances"][0]["cloud_id"].as_str().unwrap();
    let instance_id = created["instances"][0]["id"].as_str().unwrap();
    // Another team's instance, which corral's cloud identity can reach.
    let foreign = app.launch_in_moto(&[("team", "other")]).await;

    // Its id swapped into the state (only an admin can write it through the API).
    let path = format!("/v1/terraform/state/{workspace}");
    let state = app.get(&path).await.text().await.unwrap();
    assert!(state.contains(own_cloud), "{state}");
    let tampered = state.replace(own_cloud, &foreign);
    let written = app.client.post(app.url(&path)).body(tampered).send().await.unwrap();
    assert_eq!(written.status(), StatusCode::OK);

    let stopped = act_and_wait(&app, instance_id, "stop").await;
    assert_eq!(stopped["status"], "failed", "{stopped}");
    assert_eq!(stopped["attempts"], 1, "refused at once, not retried: {stopped}");
    let error = stopped["error"].as_str().unwrap();
    assert!(error.contains(&format!("instance '{foreign}'")), "{error}");
    assert!(error.contains("which this request did not make"), "{error}");
    assert!(!app.job_steps(stopped["id"].as_str().unwrap()).await.contains("terraform plan"));
    assert_eq!(cloud_state(&app, &foreign).await, InstanceStateName::Running);
    assert_eq!(cloud_state(&app, own_cloud).await, InstanceStateName::Running);

    // A resource corral never declares is refused the same way.
    let mut added: Value = serde_json::from_str(&state).unwrap();
    added["serial"] = json!(added["serial"].as_i64().unwrap() + 10);
    added["resources"].as_array_mut().unwrap().push(json!({
        "mode": "managed", "type": "aws_vpc", "name": "theirs",
        "provider": "provider[\"registry.terraform.io/hashicorp/aws\"]",
        "instances": [{ "schema_version": 1, "attributes": { "id": "vpc-0123" } }],
    }));
    let written = app.client.post(app.url(&path)).json(&added).send().await.unwrap();
    assert_eq!(written.status(), StatusCode::OK);
    let ended = act_and_wait(&app, instance_id, "terminate").await;
    assert_eq!(ended["status"], "failed", "{ended}");
    assert!(ended["error"].as_str().unwrap().contains("the resource aws_vpc.theirs"), "{ended}");
    assert_eq!(cloud_state(&app, own_cloud).await, InstanceStateName::Running);
}

/// The start-up check of the state URL tells corral's API from a closed port and from another
/// HTTP server, naming the URL it tried.
#[tokio::test]
async fn the_state_url_check_finds_corral_and_only_corral() {
    let app = spawn_app().await;
    assert_eq!(corral::terraform::reaches_corral(&app.address).await, Ok(()));

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let err = corral::terraform::reaches_corral(&format!("http://{closed}")).await.unwrap_err();
    let probe = format!("GET http://{closed}/v1/terraform/state/reachability-check");
    assert!(err.contains(&format!("{probe} from this server failed")), "{err}");

    let moto = moto_url();
    let err = corral::terraform::reaches_corral(&moto).await.unwrap_err();
    assert!(err.contains("not as corral's state API does") && err.contains(&moto), "{err}");
}
