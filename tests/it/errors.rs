//! Every client mistake gets a 4xx problem-details answer naming what was wrong.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{AMI_X86, assert_problem, create_body, spawn_app};

#[tokio::test]
async fn malformed_json_is_a_400() {
    let app = spawn_app().await;

    let response = app.post_raw("/v1/instances", "application/json", b"{\"name\": ".to_vec()).await;

    let problem = assert_problem(response, StatusCode::BAD_REQUEST).await;
    assert!(problem["detail"].as_str().unwrap().starts_with("the body is not valid JSON"));
}

#[tokio::test]
async fn wrong_types_and_unknown_fields_are_422s_naming_the_field() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({ "name": "x", "ami": AMI_X86, "instance_type": "t3.micro", "count": "two" }),
            "count",
        ),
        (
            json!({ "name": "x", "ami": AMI_X86, "instance_type": "t3.micro", "tags": { "a": 1 } }),
            "tags.a",
        ),
        (
            json!({ "name": "x", "ami": AMI_X86, "instance_type": "t3.micro", "security_group_ids": "sg-1" }),
            "security_group_ids",
        ),
        (json!({ "name": "x", "ami": AMI_X86, "instance_typo": "t3.micro" }), "instance_typo"),
        (json!("not an object"), "body"),
    ];
    for (body, field) in cases {
        let response = app.post_instances(&body, "").await;
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(problem["errors"][0]["field"], field, "{body}");
    }
    let unknown =
        app.post_instances(&json!({ "name": "x", "instance_typo": "t3.micro" }), "").await;
    let problem = assert_problem(unknown, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(problem["detail"].as_str().unwrap().contains("instance_typo"), "{problem}");
}

#[tokio::test]
async fn a_body_over_one_mebibyte_is_a_413() {
    let app = spawn_app().await;
    let mut body = create_body("big");
    body["user_data"] = json!("x".repeat(1024 * 1024 + 1));

    let response = app.post_instances(&body, "").await;

    let problem = assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE).await;
    assert_eq!(problem["detail"], "the request body exceeds 1048576 bytes");
}

#[tokio::test]
async fn a_body_that_is_not_json_is_a_415() {
    let app = spawn_app().await;

    let response = app.post_raw("/v1/instances", "text/plain", b"name=x".to_vec()).await;

    assert_problem(response, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
}

#[tokio::test]
async fn bad_query_parameters_are_400s_naming_the_parameter() {
    let app = spawn_app().await;
    let body = create_body("q");
    let cases = [
        (
            "?backend=pulumi",
            "backend",
            "unknown backend 'pulumi'; allowed: aws (or awscli), terraform",
        ),
        ("?wait=61", "wait", "must be an integer from 0 to 60, got '61'"),
        ("?wait=soon", "wait", "must be an integer from 0 to 60, got 'soon'"),
        ("?colour=red", "colour", "unknown query parameter; known: wait, backend"),
    ];
    for (query, field, message) in cases {
        let response = app.post_instances(&body, query).await;
        let problem = assert_problem(response, StatusCode::BAD_REQUEST).await;
        assert_eq!(problem["errors"][0]["field"], field, "{query}");
        assert_eq!(problem["errors"][0]["message"], message, "{query}");
    }
    let list_cases = [
        ("?limit=0", "limit"),
        ("?limit=101", "limit"),
        ("?cursor=garbage", "cursor"),
        ("?state=exploded", "state"),
        ("?tag=novalue", "tag"),
        ("?limit=5&limit=6", "limit"),
        ("?all=yes", "all"),
    ];
    for (query, field) in list_cases {
        let problem = assert_problem(app.get_instances(query).await, StatusCode::BAD_REQUEST).await;
        assert_eq!(problem["errors"][0]["field"], field, "{query}");
    }
    let problem = assert_problem(app.get_jobs("?status=done").await, StatusCode::BAD_REQUEST).await;
    assert_eq!(problem["errors"][0]["field"], "status");
}

#[tokio::test]
async fn the_awscli_backend_name_is_the_native_backend() {
    let app = spawn_app().await;

    let job = app.post_instances(&create_body("cli"), "?backend=awscli&wait=30").await;

    assert_eq!(job.status(), StatusCode::CREATED);
    let job: serde_json::Value = job.json().await.unwrap();
    let instance: serde_json::Value =
        app.get_instance(job["instances"][0]["id"].as_str().unwrap()).await.json().await.unwrap();
    assert_eq!(instance["backend"], "aws");
}

#[tokio::test]
async fn unknown_routes_jobs_and_methods_answer_in_the_same_envelope() {
    let app = spawn_app().await;

    assert_problem(app.get("/v1/nothing-here").await, StatusCode::NOT_FOUND).await;
    let problem = assert_problem(
        app.get_job("0190b7a0-0000-7000-8000-000000000000").await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(problem["detail"], "no job with id '0190b7a0-0000-7000-8000-000000000000'");
    let put = app.client.put(app.url("/v1/instances")).send().await.unwrap();
    assert_problem(put, StatusCode::METHOD_NOT_ALLOWED).await;
}
