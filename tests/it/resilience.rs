//! Faults between corral and the cloud: errors, throttling, resets, lost answers, delays; and
//! the number of calls each operation costs. The guarantees of a launch: one instance per
//! request however the calls fail, the ClientToken stored before the call, RunInstances never
//! retried inside the SDK, cloud ids recorded before any other call.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ec2::types::{Instance, ResourceType, Tag, TagSpecification};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{AMI_X86, TestApp, create_body, moto_url, spawn_app_with, tags_of};
use crate::proxy::{FaultProxy, Mode};

/// Every instance in the emulator account, by the `corral:job-id` tag of its launch (`""`
/// without one), read page by page.
async fn moto_instances_by_job(app: &TestApp) -> BTreeMap<String, Vec<Instance>> {
    let mut by_job: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
    let mut next_token: Option<String> = None;
    loop {
        let page = app
            .ec2
            .describe_instances()
            .max_results(1000)
            .set_next_token(next_token.clone())
            .send()
            .await
            .unwrap();
        for instance in page.reservations().iter().flat_map(|r| r.instances()) {
            let job = tags_of(instance).get("corral:job-id").cloned().unwrap_or_default();
            by_job.entry(job).or_default().push(instance.clone());
        }
        next_token = page.next_token().map(str::to_string);
        if next_token.is_none() {
            return by_job;
        }
    }
}

/// The ClientToken stored with create job `job_id` when it was enqueued, read from the database.
async fn stored_client_token(app: &TestApp, job_id: &str) -> String {
    let sql = "SELECT payload FROM jobs WHERE id = $1";
    let payload: String = if app.database_url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&app.database_url).await.unwrap();
        sqlx::query_scalar(sql).bind(job_id).fetch_one(&pool).await.unwrap()
    } else {
        let pool = sqlx::PgPool::connect(&app.database_url).await.unwrap();
        sqlx::query_scalar(sql).bind(job_id).fetch_one(&pool).await.unwrap()
    };
    let payload: Value = serde_json::from_str(&payload).unwrap();
    payload["client_token"].as_str().expect("a create job stores its ClientToken").to_string()
}

/// The guarantee under a flaky cloud: with 30 % of calls failing at random (500s, throttling,
/// dropped connections, answers lost after the call took effect, slow answers), 50 creates made
/// at once all succeed with exactly one instance each, three rounds in a row, although a job
/// fails for good after 3 counted attempts; then stops succeed too.
#[tokio::test]
async fn fifty_creates_at_30_percent_faults_each_launch_one_instance_three_rounds_in_a_row() {
    // Arrange: a delayed call is slow, not timed out (a call held past the SDK's timeout would
    // reach the cloud after corral moved on, and moto, unlike EC2, does not honour ClientToken);
    // the timeout is long, as moto, shared by the whole suite, may be slow to answer.
    // The rate limiter stays out of the way: throttling answers slow it down.
    let proxy = FaultProxy::start(moto_url(), 0.30).await;
    proxy.set_fault_delay(Duration::from_millis(100));
    let app = spawn_app_with(|settings| {
        settings.aws.endpoint_url = Some(proxy.url.clone());
        settings.aws.call_timeout_secs = 60;
        let unlimited = corral::config::Bucket { burst: 1e6, per_second: 1e6 };
        settings.aws.rate_limits = corral::config::RateLimits {
            launch: unlimited,
            mutate: unlimited,
            describe: unlimited,
        };
        settings.jobs.concurrency = 10;
        settings.jobs.max_attempts = 3;
        settings.jobs.retry_delay_secs = 0.05;
        settings.jobs.retry_max_delay_secs = 0.5;
    })
    .await;

    let mut last_round = Vec::new();
    for round in 1..=3usize {
        // Act
        let creates = (0..50).map(|n| {
            let body = create_body(&format!("flaky-{round}-{n}"));
            let app = &app;
            async move {
                app.post_instances(&body, "?wait=60").await.json::<Value>().await.unwrap()
            }
        });
        let jobs = futures_util::future::join_all(creates).await;

        // Assert: each create request has exactly one instance in the cloud, the one corral
        // recorded, and the cloud has no other.
        let by_job = moto_instances_by_job(&app).await;
        for job in &jobs {
            let id = job["id"].as_str().unwrap();
            assert_eq!(job["status"], "succeeded", "round {round}: {job}");
            let launched: Vec<&str> = by_job
                .get(id)
                .map(|instances| instances.iter().map(|i| i.instance_id().unwrap()).collect())
                .unwrap_or_default();
            assert_eq!(launched.len(), 1, "round {round}: job {id} launched {launched:?}");
            assert_eq!(job["instances"][0]["cloud_id"], launched[0], "round {round}: {job}");
        }
        let total: usize = by_job.values().map(Vec::len).sum();
        assert_eq!(total, 50 * round, "round {round}: instances of no create request");
        last_round = jobs;
    }

    // Act: stop five of the last round's instances at once.
    let stops = last_round[..5].iter().map(|job| {
        let id = job["instances"][0]["id"].as_str().unwrap().to_string();
        let app = &app;
        async move { app.act(&id, "stop", "?wait=60").await.json::<Value>().await.unwrap() }
    });
    let stops = futures_util::future::join_all(stops).await;

    // Assert
    for stop in &stops {
        assert_eq!(stop["status"], "succeeded", "{stop}");
    }
    let stopped = moto_instances_by_job(&app)
        .await
        .values()
        .flatten()
        .filter(|i| i.state().unwrap().name().unwrap().as_str() == "stopped")
        .count();
    assert_eq!(stopped, 5);
    // The dangerous fault happened: launches reached the cloud and their answers were lost.
    assert!(
        proxy.answers_lost("RunInstances") > 0,
        "no RunInstances answer was lost: {:?}; calls: {:?}",
        proxy.faults(),
        proxy.calls()
    );
    eprintln!(
        "faults injected: {:?}; RunInstances answers lost: {}; calls: {:?}",
        proxy.faults(),
        proxy.answers_lost("RunInstances"),
        proxy.calls()
    );
}

/// With the cloud unreachable, a create job is tried again and again without using up its
/// attempts until its transient failures have lasted `jobs.transient_budget_secs`, then fails and
/// says why; nothing is lost: its instance is recorded as failed and the cloud has none.
#[tokio::test]
async fn unreachable_cloud_a_create_fails_after_its_transient_budget_and_nothing_is_lost() {
    // Arrange: every call is answered 500, throttled or dropped, and none reaches moto.
    let proxy = FaultProxy::start(moto_url(), 0.0).await;
    proxy.set_mode(Mode::Down);
    let app = spawn_app_with(|settings| {
        settings.aws.endpoint_url = Some(proxy.url.clone());
        settings.jobs.max_attempts = 3;
        settings.jobs.transient_budget_secs = 3.0;
        settings.jobs.retry_delay_secs = 0.05;
        settings.jobs.retry_max_delay_secs = 0.5;
    })
    .await;

    // Act
    let job: Value =
        app.post_instances(&create_body("nowhere"), "?wait=30").await.json().await.unwrap();

    // Assert: the job failed when the budget ran out, having run more than once as attempt 1.
    let job_id = job["id"].as_str().unwrap();
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["attempts"], 1, "transient failures are not counted: {job}");
    crate::helpers::assert_gave_up_after_budget(&job, 3.0);
    let events = crate::helpers::job_history(&app, job_id).await;
    let runs = crate::helpers::run_starts(&events);
    assert!(runs.len() >= 2, "the job ran again after a transient failure: {runs:?}");
    assert!(runs.iter().all(|run| run.starts_with("attempt 1 of 3 started by worker")), "{runs:?}");
    assert!(crate::helpers::uncounted_failures(&events) >= runs.len() - 1, "{events:?}");
    // Nothing is lost: corral records the instance as failed, never launched, and the cloud
    // (reached only through the proxy, which passed nothing on) has no instance.
    let instance: Value =
        app.get_instance(job["instances"][0]["id"].as_str().unwrap()).await.json().await.unwrap();
    assert_eq!(instance["state"], "failed");
    assert_eq!(instance["name"], "nowhere");
    assert_eq!(instance["cloud_id"], Value::Null);
    let in_cloud = moto_instances_by_job(&app).await;
    assert!(in_cloud.is_empty(), "{in_cloud:?}");
    assert!(proxy.faults().values().sum::<u64>() > 0, "corral's calls went through the proxy");
}

/// A launch that reached the cloud but whose answer was lost (the connection dropped) is not
/// launched again: the job's next run finds the instance by its `corral:job-id` tag and adopts
/// it. One create, one RunInstances, one instance.
#[tokio::test]
async fn a_launch_whose_answer_was_lost_is_found_by_its_tag_and_not_launched_again() {
    // Arrange
    let proxy = FaultProxy::start(moto_url(), 0.0).await;
    proxy.set_mode(Mode::LoseFirstLaunchAnswer);
    let app = spawn_app_with(|settings| settings.aws.endpoint_url = Some(proxy.url.clone())).await;

    // Act
    let job: Value =
        app.post_instances(&create_body("lost-answer"), "?wait=30").await.json().await.unwrap();

    // Assert
    let job_id = job["id"].as_str().unwrap();
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(proxy.answers_lost("RunInstances"), 1, "{:?}", proxy.faults());
    assert_eq!(proxy.calls_of("RunInstances"), 1, "launched once: {:?}", proxy.calls());
    let in_cloud = moto_instances_by_job(&app).await;
    assert_eq!(in_cloud.values().map(Vec::len).sum::<usize>(), 1, "{in_cloud:?}");
    let cloud_id = in_cloud[job_id][0].instance_id().unwrap();
    assert_eq!(job["instances"][0]["cloud_id"], cloud_id);
    let steps = app.job_steps(job_id).await;
    let found = format!("found the 1 instance(s) an earlier attempt launched: {cloud_id}");
    assert!(steps.contains(&found), "{steps}");
    assert_eq!(job["attempts"], 1, "a lost answer is a transient failure, not counted: {job}");
    assert_eq!(proxy.client_tokens(), [stored_client_token(&app, job_id).await]);
}

/// RunInstances is never retried inside the AWS SDK, and its ClientToken is the one stored with
/// the job before any call: a launch answered 500 is sent once; the next RunInstances comes from
/// the job's next run (its tag lookup having found nothing), with the same stored token.
#[tokio::test]
async fn a_failed_launch_is_sent_once_per_run_with_the_client_token_stored_before_the_call() {
    // Arrange: the first RunInstances is answered 500 without reaching moto.
    let proxy = FaultProxy::start(moto_url(), 0.0).await;
    proxy.set_mode(Mode::FailFirstLaunch);
    let app = spawn_app_with(|settings| settings.aws.endpoint_url = Some(proxy.url.clone())).await;

    // Act
    let job: Value =
        app.post_instances(&create_body("refused-once"), "?wait=30").await.json().await.unwrap();

    // Assert: run, launch, its failure; a new run, a new launch.
    let job_id = job["id"].as_str().unwrap();
    assert_eq!(job["status"], "succeeded", "{job}");
    let events = crate::helpers::job_history(&app, job_id).await;
    let outline: Vec<&str> = events
        .iter()
        .filter_map(|e| {
            let message = e["message"].as_str().unwrap();
            match e["kind"].as_str().unwrap() {
                "step" if message.starts_with("attempt ") => Some("run"),
                "step" if message.starts_with("launching ") => Some("launch"),
                "error" => Some("error"),
                _ => None,
            }
        })
        .collect();
    assert_eq!(outline, ["run", "launch", "error", "run", "launch"], "{events:?}");
    assert_eq!(crate::helpers::uncounted_failures(&events), 1, "{events:?}");
    assert_eq!(proxy.calls_of("RunInstances"), 2, "one per run: {:?}", proxy.calls());
    let stored = stored_client_token(&app, job_id).await;
    assert_eq!(proxy.client_tokens(), [stored.clone(), stored]);
    let in_cloud = moto_instances_by_job(&app).await;
    assert_eq!(in_cloud.values().map(Vec::len).sum::<usize>(), 1, "{in_cloud:?}");
    assert_eq!(in_cloud[job_id].len(), 1);
}

/// The cloud ids of launched instances are recorded as soon as RunInstances answers, before any
/// other call (tagging, describing): with every call after the launch failing, the instance
/// records carry the ids the cloud gave while the job is still retrying; once the cloud is back,
/// the job goes on with them and launches nothing more.
#[tokio::test]
async fn cloud_ids_are_recorded_as_soon_as_the_launch_answers_before_any_other_call() {
    // Arrange: two instances, so that the call after the launch tags them one by one.
    let proxy = FaultProxy::start(moto_url(), 0.0).await;
    proxy.set_mode(Mode::FailAfterLaunch);
    let app = spawn_app_with(|settings| {
        settings.aws.endpoint_url = Some(proxy.url.clone());
        settings.jobs.retry_max_delay_secs = 0.2;
    })
    .await;
    let body =
        json!({ "name_prefix": "early", "count": 2, "ami": AMI_X86, "instance_type": "t3.micro" });

    // Act: create, and read the records while every call after the launch fails and the job
    // has failed (transiently) at least once.
    let response = app.post_instances(&body, "").await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let job: Value = response.json().await.unwrap();
    let job_id = job["id"].as_str().unwrap().to_string();
    let ids: Vec<String> = job["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let recorded: BTreeMap<String, String> = loop {
        let mut recorded = BTreeMap::new();
        for id in &ids {
            let instance: Value = app.get_instance(id).await.json().await.unwrap();
            if let Some(cloud_id) = instance["cloud_id"].as_str() {
                recorded.insert(id.clone(), cloud_id.to_string());
            }
        }
        let failed =
            crate::helpers::uncounted_failures(&crate::helpers::job_history(&app, &job_id).await)
                > 0;
        if recorded.len() == ids.len() && failed {
            break recorded;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cloud ids recorded: {recorded:?}; history: {}",
            app.job_steps(&job_id).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let while_failing: Value = app.get_job(&job_id).await.json().await.unwrap();
    proxy.set_mode(Mode::Random);
    let job = app.wait_for_job(&job_id).await;

    // Assert: the ids were there while the job was still retrying, and are the cloud's.
    let status = while_failing["status"].as_str().unwrap();
    assert!(["queued", "running"].contains(&status), "{while_failing}");
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(proxy.calls_of("RunInstances"), 1, "nothing launched again: {:?}", proxy.calls());
    let in_cloud = moto_instances_by_job(&app).await;
    assert_eq!(in_cloud.values().map(Vec::len).sum::<usize>(), 2, "{in_cloud:?}");
    let launched = &in_cloud[&job_id];
    assert_eq!(launched.len(), 2);
    for instance in launched {
        // Tagged after the cloud came back: the record holding its id is the one it names.
        let tags = tags_of(instance);
        let corral_id = &tags["corral:instance-id"];
        assert_eq!(recorded[corral_id], instance.instance_id().unwrap(), "{recorded:?}");
    }
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

/// A reconcile pass describes a region's fleet in one tag-filtered scan, not per instance or
/// per launch: 120 known instances from three launches cost one DescribeInstances call (the
/// scan asks for pages of 1000).
#[tokio::test]
async fn a_reconcile_pass_over_120_instances_from_three_launches_takes_one_describe_call() {
    // Arrange: 120 instances launched by "a lost corral job" straight in the emulator, in three
    // launches of 40, found as orphans by a first pass, and adopted.
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
    for _ in 0..3 {
        app.ec2
            .run_instances()
            .image_id(AMI_X86)
            .instance_type("t3.micro".into())
            .min_count(40)
            .max_count(40)
            .tag_specifications(tags.clone())
            .send()
            .await
            .unwrap();
    }
    app.reconcile().await;
    let orphans: Value = app.get("/v1/orphans").await.json().await.unwrap();
    let orphans = orphans["items"].as_array().unwrap();
    assert_eq!(orphans.len(), 120);
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
    assert_eq!(describes, 1, "{describes} DescribeInstances calls: {:?}", proxy.calls());
    let events = crate::helpers::job_history(&app, job["id"].as_str().unwrap()).await;
    let summary =
        events.iter().find(|e| e["message"].as_str().unwrap().starts_with("reconciled")).unwrap();
    assert_eq!(summary["message"], "reconciled 120 instance(s): 0 drifted, 0 missing, 0 orphan(s)");
    eprintln!("reconcile pass over 120 instances: {:?}", proxy.calls());
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

/// Nothing is lost when the cloud goes down right after a launch took effect: the launch's
/// answer is lost, every call after it fails until the job's transient budget runs out, and
/// the job fails saying so, its instance recorded as never seen. The instance EC2 did make is
/// not forgotten: once the cloud is back, the next reconcile pass lists it as an orphan of
/// that job, to adopt or terminate.
#[tokio::test]
async fn a_launch_lost_as_the_cloud_goes_down_is_found_again_as_an_orphan() {
    // Arrange
    let proxy = FaultProxy::start(moto_url(), 0.0).await;
    proxy.set_mode(Mode::DownAfterLostLaunch);
    let app = spawn_app_with(|settings| {
        settings.aws.endpoint_url = Some(proxy.url.clone());
        settings.jobs.transient_budget_secs = 2.0;
        settings.jobs.retry_delay_secs = 0.05;
        settings.jobs.retry_max_delay_secs = 0.5;
    })
    .await;

    // Act: the create, while the cloud goes down under it.
    let job: Value =
        app.post_instances(&create_body("lost"), "?wait=30").await.json().await.unwrap();

    // Assert: the job gave up, and corral claims no instance it has not seen.
    let job_id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["status"], "failed", "{job}");
    crate::helpers::assert_gave_up_after_budget(&job, 2.0);
    assert_eq!(proxy.answers_lost("RunInstances"), 1, "the launch reached the cloud");
    assert_eq!(job["instances"][0]["state"], "failed", "{job}");
    assert_eq!(job["instances"][0]["cloud_id"], Value::Null, "{job}");
    let in_cloud = moto_instances_by_job(&app).await;
    let made: Vec<String> = in_cloud
        .get(&job_id)
        .map(|instances| instances.iter().map(|i| i.instance_id().unwrap().to_string()).collect())
        .unwrap_or_default();
    assert_eq!(made.len(), 1, "EC2 made the instance: {in_cloud:?}");

    // Act: the cloud is back; a reconcile pass looks at it.
    proxy.set_mode(Mode::Random);
    let pass = app.post_empty("/v1/reconcile?wait=30").await;
    assert_eq!(pass.status(), StatusCode::OK);

    // Assert: the instance is listed as an orphan of the failed job.
    let orphans: Value = app.get("/v1/orphans").await.json().await.unwrap();
    let items = orphans["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{orphans}");
    assert_eq!(items[0]["cloud_id"], made[0].as_str(), "{orphans}");
    assert_eq!(items[0]["job_id"], job_id.as_str(), "{orphans}");
}

/// A call the cloud does not answer in time is a transient failure like a 5xx: the job's
/// tries are not counted, and it fails when its transient budget has run out, saying so.
#[tokio::test]
async fn calls_that_time_out_are_transient_failures() {
    // Arrange: every call takes 3 s to pass; corral waits 1 s for each.
    let proxy = FaultProxy::start(moto_url(), 0.0).await;
    proxy.set_delay(Duration::from_secs(3));
    let app = spawn_app_with(|settings| {
        settings.aws.endpoint_url = Some(proxy.url.clone());
        settings.aws.call_timeout_secs = 1;
        settings.jobs.max_attempts = 1;
        settings.jobs.transient_budget_secs = 1.0;
        settings.jobs.retry_delay_secs = 0.05;
        settings.jobs.retry_max_delay_secs = 0.5;
    })
    .await;

    // Act
    let job: Value =
        app.post_instances(&create_body("slow"), "?wait=60").await.json().await.unwrap();

    // Assert: more than one try, all of them attempt 1 of 1, each timed out.
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(error.starts_with("gave up after"), "{error}");
    assert!(error.contains("of transient failures"), "{error}");
    let events = crate::helpers::job_history(&app, job["id"].as_str().unwrap()).await;
    let runs = crate::helpers::run_starts(&events);
    assert!(runs.len() >= 2, "tried again after a timeout: {runs:?}");
    assert!(runs.iter().all(|run| run.starts_with("attempt 1 of 1 started by worker")), "{runs:?}");
    let timeouts = events
        .iter()
        .filter(|e| e["kind"] == "error")
        .filter(|e| e["message"].as_str().unwrap().contains("transient, not counted"))
        .filter(|e| e["message"].as_str().unwrap().to_lowercase().contains("timeout"))
        .count();
    assert!(timeouts >= 1, "a timeout was retried uncounted: {events:?}");
    assert_eq!(job["instances"][0]["cloud_id"], Value::Null, "{job}");
}
