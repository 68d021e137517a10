//! Export: the Terraform configuration is checked by the real `terraform` (validate, then a plan
//! that must import the instances, not create or destroy any) against moto, with the provider
//! from the machine's local mirror; the CloudFormation template is read back as YAML.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{assert_problem, create_body, spawn_app, terraform_mirror};

#[tokio::test]
async fn a_namespace_exported_to_terraform_validates_and_its_plan_imports_without_replacing() {
    if terraform_mirror().is_none() {
        return;
    }
    // Arrange: two instances in alpha, one with a key pair, and a terminated one left out.
    let app = spawn_app().await;
    app.create_namespaces(&["alpha"]).await;
    app.ec2.create_key_pair().key_name("deploy").send().await.unwrap();
    let mut body = create_body("web");
    body["namespace"] = json!("alpha");
    body["count"] = json!(2);
    body["name_prefix"] = body["name"].take();
    body["key_name"] = json!("deploy");
    body["tags"] = json!({ "team": "blue" });
    body["user_data"] = json!("#!/bin/sh\necho '${not-terraform}' > /tmp/hello\n");
    body["ingress"] = json!([{ "port": 22, "cidr": "203.0.113.0/24" }]);
    app.create_running(&body).await;
    let mut gone = create_body("gone");
    gone["namespace"] = json!("alpha");
    let gone = app.create_running(&gone).await;
    let gone_id = gone["instances"][0]["id"].as_str().unwrap();
    let ended: Value = app.act(gone_id, "terminate", "?wait=30").await.json().await.unwrap();
    assert_eq!(ended["status"], "succeeded");

    // Act
    let response = app.get("/v1/namespaces/alpha/export?format=terraform").await;
    assert_eq!(response.status(), StatusCode::OK);
    let config = response.text().await.unwrap();

    // Assert: terraform accepts it and would adopt both instances, changing nothing drastic.
    assert_eq!(config.matches("import {").count(), 2, "{config}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.tf"), &config).unwrap();
    app.terraform(dir.path(), &["init", "-input=false", "-no-color"], &[]).await.unwrap();
    app.terraform(dir.path(), &["validate", "-no-color"], &[]).await.unwrap();
    let plan =
        app.terraform(dir.path(), &["plan", "-input=false", "-no-color"], &[]).await.unwrap();
    let summary =
        plan.lines().find(|line| line.starts_with("Plan:")).unwrap_or_else(|| panic!("{plan}"));
    assert_eq!(summary, "Plan: 2 to import, 0 to add, 0 to change, 0 to destroy.", "{plan}");
}

#[tokio::test]
async fn an_instance_exports_to_cloudformation_and_what_has_no_cloud_twin_does_not() {
    let app = spawn_app().await;
    let job = app.create_running(&create_body("solo")).await;
    let id = job["instances"][0]["id"].as_str().unwrap().to_string();
    let cloud_id = job["instances"][0]["cloud_id"].as_str().unwrap().to_string();

    let response = app.get(&format!("/v1/instances/{cloud_id}/export?format=cloudformation")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let template = crate::helpers::parse_yaml(&response.text().await.unwrap()).await;
    let resource = &template["Resources"]["solo"];
    assert_eq!(resource["Type"], "AWS::EC2::Instance");
    assert_eq!(resource["DeletionPolicy"], "Retain");
    assert_eq!(resource["Properties"]["ImageId"], crate::helpers::AMI_X86);
    assert_eq!(resource["Properties"]["InstanceType"], "t3.micro");
    let tags = resource["Properties"]["Tags"].as_array().unwrap();
    assert!(tags.contains(&json!({ "Key": "Name", "Value": "solo" })), "{tags:?}");
    assert!(tags.contains(&json!({ "Key": "corral:instance-id", "Value": id })), "{tags:?}");

    let bad = app.get(&format!("/v1/instances/{id}/export?format=pulumi")).await;
    assert_problem(bad, StatusCode::BAD_REQUEST).await;
    let ended: Value = app.act(&id, "terminate", "?wait=30").await.json().await.unwrap();
    assert_eq!(ended["status"], "succeeded");
    let gone = app.get(&format!("/v1/instances/{id}/export")).await;
    assert_problem(gone, StatusCode::CONFLICT).await;
}
