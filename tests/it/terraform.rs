//! The Terraform backend, with the real `terraform` of this machine and the AWS provider from
//! its local mirror, against moto: the lifecycle, one request's destroy leaving another's
//! instances alone, the state and its lock kept by corral, retries that end with Terraform's
//! error, and a server without terraform. Skipped, saying so, where terraform is absent.

use aws_sdk_ec2::types::{Filter, InstanceStateName};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, assert_problem, create_body, spawn_app, spawn_app_with, terraform_mirror,
};

/// What moto says of an instance's state.
async fn cloud_state(app: &TestApp, cloud_id: &str) -> InstanceStateName {
    let described = app.ec2.describe_instances().instance_ids(cloud_id).send().await.unwrap();
    let instance = &described.reservations()[0].instances()[0];
    instance.state().unwrap().name().unwrap().clone()
}

async fn create_with_terraform(app: &TestApp, body: &Value) -> Value {
    let response = app.post_instances(body, "?backend=terraform").await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let job: Value = response.json().await.unwrap();
    app.wait_for_job(job["id"].as_str().unwrap()).await
}

async fn act_and_wait(app: &TestApp, id: &str, action: &str) -> Value {
    let response = app.act(id, action, "").await;
    assert_eq!(response.status(), StatusCode::ACCEPTED, "{action} {id}");
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
    let first = create_with_terraform(&app, &first).await;
    let second = create_with_terraform(&app, &create_body("tf-second")).await;

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
    let instance: Value = app.get(&format!("/v1/instances/{first_id}")).await.json().await.unwrap();
    assert_eq!(instance["backend"], "terraform");

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
}
