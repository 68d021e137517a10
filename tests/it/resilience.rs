//! Faults between corral and the cloud: errors, throttling, resets, lost answers, delays; and
//! the number of calls each operation costs.

use std::time::Duration;

use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{AMI_X86, create_body, moto_url, spawn_app_with, tags_of};
use crate::proxy::FaultProxy;

#[tokio::test]
async fn with_30_percent_of_calls_failing_every_job_still_succeeds_without_duplicates() {
    // Arrange
    // The call timeout leaves moto room to be slow on a loaded machine (a whole suite shares
    // it); a delayed call is held past it.
    let proxy = FaultProxy::start(moto_url(), 0.30).await;
    proxy.set_fault_delay(Duration::from_secs(6));
    let app = spawn_app_with(|settings| {
        settings.aws.endpoint_url = Some(proxy.url.clone());
        settings.aws.call_timeout_secs = 5;
        settings.jobs.max_attempts = 8;
        settings.jobs.retry_delay = 0.05;
        settings.jobs.retry_max_delay = 0.5;
    })
    .await;

    // Act: ten creates in parallel, then stop half of them.
    let creates = (0..10).map(|n| {
        let body = create_body(&format!("flaky-{n}"));
        let app = &app;
        async move { app.post_instances(&body, "?wait=60").await.json::<Value>().await.unwrap() }
    });
    let jobs = futures_util::future::join_all(creates).await;
    let mut stops = Vec::new();
    for job in &jobs[..5] {
        let id = job["instances"][0]["id"].as_str().unwrap();
        stops.push(app.act(id, "stop", "?wait=60").await.json::<Value>().await.unwrap());
    }

    // Assert
    for job in jobs.iter().chain(&stops) {
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    let in_cloud = app.moto_instances().await;
    assert_eq!(in_cloud.len(), 10, "one instance per request, no duplicates");
    let mut corral_ids: Vec<String> =
        in_cloud.values().map(|i| tags_of(i)["corral:instance-id"].clone()).collect();
    corral_ids.sort();
    corral_ids.dedup();
    assert_eq!(corral_ids.len(), 10);
    let stopped = in_cloud
        .values()
        .filter(|i| i.state().unwrap().name().unwrap().as_str() == "stopped")
        .count();
    assert_eq!(stopped, 5);
    let faults: u64 = proxy.faults().values().sum();
    assert!(faults > 0, "the proxy injected faults: {:?}", proxy.faults());
    eprintln!("faults injected: {:?}; calls: {:?}", proxy.faults(), proxy.calls());
}

#[tokio::test]
async fn with_the_cloud_unreachable_jobs_fail_after_max_attempts_and_nothing_is_lost() {
    let proxy = FaultProxy::start(moto_url(), 1.0).await;
    let app = spawn_app_with(|settings| {
        settings.aws.endpoint_url = Some(proxy.url.clone());
        settings.aws.call_timeout_secs = 1;
        settings.jobs.max_attempts = 3;
    })
    .await;

    let job: Value =
        app.post_instances(&create_body("nowhere"), "?wait=60").await.json().await.unwrap();

    assert_eq!(job["status"], "failed");
    assert_eq!(job["attempts"], 3);
    assert!(job["error"].as_str().unwrap().starts_with("gave up after 3 attempts"), "{job}");
    let instance: Value =
        app.get_instance(job["instances"][0]["id"].as_str().unwrap()).await.json().await.unwrap();
    assert_eq!(instance["state"], "failed");
    assert_eq!(instance["name"], "nowhere");
    let events: Value = app
        .get(&format!("/v1/jobs/{}/events", job["id"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    let errors =
        events["items"].as_array().unwrap().iter().filter(|e| e["kind"] == "error").count();
    assert_eq!(errors, 3, "every attempt's error is recorded: {events}");
}

#[tokio::test]
async fn creating_100_instances_takes_one_run_instances_call() {
    let proxy = FaultProxy::start(moto_url(), 0.0).await;
    let app = spawn_app_with(|settings| {
        settings.aws.endpoint_url = Some(proxy.url.clone());
        settings.policy.max_count = 100;
    })
    .await;
    let body =
        json!({ "name_prefix": "many", "count": 100, "ami": AMI_X86, "instance_type": "t3.micro" });

    let response = app.post_instances(&body, "?wait=60").await;

    assert_eq!(response.status(), StatusCode::CREATED);
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(proxy.calls_of("RunInstances"), 1, "{:?}", proxy.calls());
    assert_eq!(proxy.calls_of("CreateTags"), 100, "one per instance: each has its own name");
    assert!(proxy.calls_of("DescribeInstances") <= 3, "{:?}", proxy.calls());
    assert_eq!(app.moto_instances().await.len(), 100);
    eprintln!("calls to create 100 instances: {:?}", proxy.calls());
}

#[tokio::test]
async fn a_reconcile_pass_over_2500_instances_takes_at_most_3_describe_calls() {
    // Arrange: 2,500 instances launched by "a lost corral job" straight in the emulator (25 calls
    // of 100: launching them through corral would spend minutes tagging each one), found as
    // orphans by a first pass, and adopted.
    let proxy = FaultProxy::start(moto_url(), 0.0).await;
    let app = spawn_app_with(|settings| {
        settings.aws.endpoint_url = Some(proxy.url.clone());
        settings.policy.regions = vec!["us-east-1".to_string()];
    })
    .await;
    let tags = TagSpecification::builder()
        .resource_type(ResourceType::Instance)
        .tags(
            Tag::builder()
                .key("corral:job-id")
                .value("0190b7a0-0000-7000-8000-00000000beef")
                .build(),
        )
        .build();
    for _ in 0..25 {
        app.ec2
            .run_instances()
            .image_id(AMI_X86)
            .instance_type("t3.micro".into())
            .min_count(100)
            .max_count(100)
            .tag_specifications(tags.clone())
            .send()
            .await
            .unwrap();
    }
    app.reconcile().await;
    let orphans: Value = app.get("/v1/orphans").await.json().await.unwrap();
    let orphans = orphans["items"].as_array().unwrap();
    assert_eq!(orphans.len(), 2500);
    for orphan in orphans {
        let response = app
            .post_empty(&format!("/v1/orphans/{}/adopt", orphan["cloud_id"].as_str().unwrap()))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    proxy.reset_calls();

    // Act
    let job = app.reconcile().await;

    // Assert
    let describes = proxy.calls_of("DescribeInstances");
    assert!(describes <= 3, "{describes} DescribeInstances calls: {:?}", proxy.calls());
    let events: Value = app
        .get(&format!("/v1/jobs/{}/events", job["id"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    let summary = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["message"].as_str().unwrap().starts_with("reconciled"))
        .unwrap();
    assert_eq!(
        summary["message"],
        "reconciled 2500 instance(s): 0 drifted, 0 missing, 0 orphan(s)"
    );
    eprintln!("reconcile pass over 2500 instances: {:?}", proxy.calls());
}

#[tokio::test]
async fn jobs_waiting_in_one_region_share_their_state_polls() {
    let proxy = FaultProxy::start(moto_url(), 0.0).await;
    let app = spawn_app_with(|settings| {
        settings.aws.endpoint_url = Some(proxy.url.clone());
        settings.jobs.concurrency = 10;
    })
    .await;
    // Warm the AMI and instance-type cache so that only the jobs' own calls are counted.
    app.create_running(&create_body("warm")).await;
    proxy.reset_calls();
    // Every call takes 300 ms, so the ten launches, made at once, end together and the jobs
    // wait at the same time, however loaded the machine is.
    proxy.set_delay(Duration::from_millis(300));

    let creates = (0..10).map(|n| {
        let body = create_body(&format!("shared-{n}"));
        let app = &app;
        async move { app.post_instances(&body, "?wait=30").await.json::<Value>().await.unwrap() }
    });
    let jobs = futures_util::future::join_all(creates).await;

    assert!(jobs.iter().all(|j| j["status"] == "succeeded"));
    assert_eq!(proxy.calls_of("RunInstances"), 10);
    // A first attempt has nothing to look up, and the waits are batched: one poll loop per job
    // would make at least 10 calls.
    let describes = proxy.calls_of("DescribeInstances");
    assert!(describes < 10, "{describes} DescribeInstances calls: {:?}", proxy.calls());
    eprintln!("10 concurrent creates: {:?}", proxy.calls());
}
