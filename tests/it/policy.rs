//! Policy: what is shown, and every rule refusing what it should, through the API.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    AMI_ARM, AMI_OTHER_OWNER, AMI_X86, assert_problem, create_body, problem_fields, spawn_app,
    spawn_app_with,
};

#[tokio::test]
async fn the_free_tier_policy_is_in_force_by_default() {
    let app = spawn_app().await;

    let policy: Value = app.get("/v1/policy").await.json().await.unwrap();

    assert_eq!(policy["profile"], "free-tier");
    assert_eq!(
        policy["instance_types"],
        json!(["t2.micro", "t3.micro", "t3.small", "t4g.micro", "t4g.small"])
    );
    assert_eq!(policy["storage_gb"], json!({ "min": 1, "max": 30, "default": 8 }));
    assert_eq!(policy["cpu_credits"], json!(["standard"]));
    assert_eq!(policy["default_region"], "us-east-1");
}

#[tokio::test]
async fn every_static_rule_is_refused_with_its_field() {
    let app = spawn_app().await;
    // (change to a valid body, field expected in the 422)
    let cases: [(&str, Value, &str); 12] = [
        ("region", json!("ap-south-1"), "region"),
        ("instance_type", json!("m5.large"), "instance_type"),
        ("ami", json!("ubuntu-latest"), "ami"),
        ("storage_gb", json!(31), "storage_gb"),
        ("storage_gb", json!(0), "storage_gb"),
        ("count", json!(2), "name"),
        ("count", json!(0), "count"),
        ("cpu_credits", json!("unlimited"), "cpu_credits"),
        ("namespace", json!("Not Valid"), "namespace"),
        ("security_group_ids", json!(["default"]), "security_group_ids[0]"),
        ("tags", json!({ "corral:job-id": "x" }), "tags.corral:job-id"),
        ("user_data", json!("x".repeat(16 * 1024 + 1)), "user_data"),
    ];
    for (key, value, field) in cases {
        let mut body = create_body("rule");
        body[key] = value;
        let response = app.post_instances(&body, "").await;
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        let fields = problem_fields(&problem);
        assert_eq!(fields, [field], "{key}: {problem}");
    }
    let jobs: Value = app.get_jobs("").await.json().await.unwrap();
    assert_eq!(jobs["items"], json!([]), "refused requests store nothing");
}

/// One request breaking three policy rules (region, instance type, storage) and missing two
/// required fields (name, AMI) is answered with all five problems, each by field and message,
/// in the order of the request's fields; nothing is stored.
#[tokio::test]
async fn all_violations_of_one_request_are_reported_together() {
    let app = spawn_app().await;
    let body = json!({ "region": "mars-1", "instance_type": "p5.48xlarge", "storage_gb": 500 });

    let response = app.post_instances(&body, "").await;

    let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(
        problem["errors"],
        json!([
            { "field": "name", "message": "is required (or name_prefix with count)" },
            { "field": "region",
              "message": "'mars-1' is not allowed; allowed: us-east-1, us-east-2, us-west-1, us-west-2, eu-west-1" },
            { "field": "instance_type",
              "message": "'p5.48xlarge' is not allowed; allowed: t2.micro, t3.micro, t3.small, t4g.micro, t4g.small" },
            { "field": "ami", "message": "is required, e.g. ami-0123456789abcdef0" },
            { "field": "storage_gb", "message": "500 GB is outside the allowed range 1-30 GB" },
        ]),
        "{problem}"
    );
    let jobs: Value = app.get_jobs("").await.json().await.unwrap();
    assert_eq!(jobs["items"], json!([]), "a refused request stores nothing");
}

#[tokio::test]
async fn the_policy_comes_from_configuration() {
    let app = spawn_app_with(|settings| {
        settings.policy.instance_types = vec!["t3.small".to_string()];
        settings.policy.max_count = 2;
    })
    .await;

    let response = app.post_instances(&create_body("configured"), "").await;

    let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(problem["errors"][0]["message"], "'t3.micro' is not allowed; allowed: t3.small");
    let policy: Value = app.get("/v1/policy").await.json().await.unwrap();
    assert_eq!(policy["max_count"], 2);
}

#[tokio::test]
async fn architecture_and_owner_rules_fail_the_job_before_any_launch() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({ "name": "arm-on-x86", "ami": AMI_ARM, "instance_type": "t3.micro" }),
            "policy violation: instance_type: 't3.micro' supports x86_64 but AMI 'ami-0e9271c829888680e' is arm64",
        ),
        (
            json!({ "name": "x86-on-arm", "ami": AMI_X86, "instance_type": "t4g.micro" }),
            "policy violation: instance_type: 't4g.micro' supports arm64 but AMI 'ami-04681a1dbd79675a5' is x86_64",
        ),
    ];
    for (body, expected) in cases {
        let job: Value = app.post_instances(&body, "?wait=30").await.json().await.unwrap();
        assert_eq!(job["status"], "failed");
        assert_eq!(job["attempts"], 1, "a policy violation is not retried");
        assert!(job["error"].as_str().unwrap().starts_with(expected), "{job}");
        assert_eq!(job["instances"][0]["state"], "failed");
    }
    assert!(app.moto_instances().await.is_empty(), "nothing was launched");
}

#[tokio::test]
async fn ami_owners_are_checked_against_the_cloud() {
    let app = spawn_app_with(|settings| {
        let rule = corral::domain::AmiRule {
            owners: vec!["137112412989".to_string()],
            ..corral::domain::AmiRule::default()
        };
        settings.policy.amis = [("*".to_string(), rule)].into();
    })
    .await;
    let body = json!({ "name": "suse", "ami": AMI_OTHER_OWNER, "instance_type": "t3.micro" });

    let job: Value = app.post_instances(&body, "?wait=30").await.json().await.unwrap();

    assert_eq!(job["status"], "failed");
    assert_eq!(
        job["error"],
        "policy violation: ami: 'ami-35e92e4c' belongs to owner 013907871322 which is not allowed in us-east-1; allowed: 137112412989"
    );
    assert!(app.moto_instances().await.is_empty(), "nothing was launched");
    app.create_running(&create_body("amazon-owned")).await;
}

#[tokio::test]
async fn a_matching_arm_pair_launches() {
    let app = spawn_app().await;

    let job = app
        .create_running(
            &json!({ "name": "graviton", "ami": AMI_ARM, "instance_type": "t4g.micro" }),
        )
        .await;

    assert_eq!(job["instances"][0]["state"], "running");
}

#[tokio::test]
async fn cloud_refusals_fail_the_job_with_the_clouds_message() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({ "name": "no-ami", "ami": "ami-0000000000000000f", "instance_type": "t3.micro" }),
            "InvalidAMIID.NotFound",
        ),
        (
            json!({ "name": "no-key", "ami": AMI_X86, "instance_type": "t3.micro", "key_name": "missing-key" }),
            "InvalidKeyPair.NotFound",
        ),
    ];
    for (body, code) in cases {
        let job: Value = app.post_instances(&body, "?wait=30").await.json().await.unwrap();
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["attempts"], 1, "{job}");
        assert!(job["error"].as_str().unwrap().starts_with(code), "{job}");
        assert_eq!(job["instances"][0]["state"], "failed");
    }
    assert!(app.moto_instances().await.is_empty());
}
