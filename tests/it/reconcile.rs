//! The reconciler: drift made behind corral's back, vanished instances, orphans, and forced
//! refreshes; the periodic pass and its lease across processes; and the job history, streamed
//! while the job runs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    AMI_X86, assert_problem, create_body, moto_url, spawn_app, spawn_app_with, spawn_server,
};
use crate::proxy::FaultProxy;

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

/// Every attribute corral manages that changes in the cloud is drift, field by field with its
/// old and new value, and the record then says what the cloud says: a second pass finds
/// nothing more.
#[tokio::test]
async fn every_managed_attribute_changed_in_the_cloud_is_drift_and_the_record_follows() {
    use aws_sdk_ec2::types::AttributeValue;
    let app = spawn_app().await;
    let mut body = create_body("reshaped");
    body["tags"] = json!({ "team": "blue", "keep": "yes" });
    body["storage_gb"] = json!(8);
    let job = app.create_running(&body).await;
    let id = job["instances"][0]["id"].as_str().unwrap();
    let cloud_id = job["instances"][0]["cloud_id"].as_str().unwrap();
    let ec2 = &app.ec2;
    ec2.stop_instances().instance_ids(cloud_id).send().await.unwrap();
    let small = AttributeValue::builder().value("t3.small").build();
    ec2.modify_instance_attribute()
        .instance_id(cloud_id)
        .instance_type(small)
        .send()
        .await
        .unwrap();
    let group = ec2
        .create_security_group()
        .group_name(format!("behind-{id}"))
        .description("changed behind corral's back")
        .send()
        .await
        .unwrap();
    let group = group.group_id().unwrap().to_string();
    ec2.modify_instance_attribute().instance_id(cloud_id).groups(&group).send().await.unwrap();
    let red = aws_sdk_ec2::types::Tag::builder().key("team").value("red").build();
    let extra = aws_sdk_ec2::types::Tag::builder().key("extra").value("1").build();
    // A name corral would not give: drift, told once, and the record keeps a usable name.
    let odd = aws_sdk_ec2::types::Tag::builder().key("Name").value("My Server").build();
    ec2.create_tags().resources(cloud_id).tags(red).tags(extra).tags(odd).send().await.unwrap();
    let keep = aws_sdk_ec2::types::Tag::builder().key("keep").build();
    ec2.delete_tags().resources(cloud_id).tags(keep).send().await.unwrap();
    let described = ec2.describe_instances().instance_ids(cloud_id).send().await.unwrap();
    let instance = &described.reservations()[0].instances()[0];
    let volume = instance.block_device_mappings()[0].ebs().unwrap().volume_id().unwrap();
    ec2.modify_volume().volume_id(volume).size(12).send().await.unwrap();

    app.reconcile().await;

    let drift: Value = app.get(&format!("/v1/instances/{id}/drift")).await.json().await.unwrap();
    let changes: BTreeMap<String, (Value, Value)> = drift["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (d["field"].as_str().unwrap().into(), (d["old_value"].clone(), d["new_value"].clone()))
        })
        .collect();
    let old_groups = changes.get("security_groups").map(|(old, _)| old.clone());
    let expected = BTreeMap::from([
        ("state".to_string(), (json!("running"), json!("stopped"))),
        ("instance_type".into(), (json!("t3.micro"), json!("t3.small"))),
        ("tags.team".into(), (json!("blue"), json!("red"))),
        ("tags.extra".into(), (Value::Null, json!("1"))),
        ("tags.keep".into(), (json!("yes"), Value::Null)),
        ("security_groups".into(), (old_groups.unwrap_or_default(), json!(group))),
        ("storage_gb".into(), (json!("8"), json!("12"))),
        ("name".into(), (json!("reshaped"), json!("My Server"))),
    ]);
    assert_eq!(changes, expected, "{drift}");
    assert_ne!(changes["security_groups"].0, json!(group), "the launch's groups were recorded");
    // People are told once, with every change.
    let told: Vec<Value> = app
        .db_notification_payloads("instance.drifted")
        .await
        .into_iter()
        .filter(|event| event["instances"][0]["id"] == id)
        .collect();
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0]["drift"].as_array().unwrap().len(), expected.len(), "{told:?}");

    let record: Value = app.get_instance(id).await.json().await.unwrap();
    assert_eq!(record["instance_type"], "t3.small");
    assert_eq!(record["name"], "reshaped");
    assert_eq!(record["tags"], json!({ "team": "red", "extra": "1" }));
    assert_eq!(record["security_groups"], json!([group]));
    assert_eq!(record["storage_gb"], 12);
    assert_eq!(record["state"], "stopped");

    app.reconcile().await;
    let again: Value = app.get(&format!("/v1/instances/{id}/drift")).await.json().await.unwrap();
    assert_eq!(again["items"].as_array().unwrap().len(), expected.len(), "{again}");
}

/// A rename the cloud refused is not claimed: the record goes back to the name the cloud has,
/// and the next pass finds no drift in what corral failed to do.
#[tokio::test]
async fn a_refused_rename_leaves_the_record_as_the_cloud_has_it_and_is_no_drift() {
    let proxy = FaultProxy::start(moto_url(), 0.0).await;
    let app = spawn_app_with(|settings| {
        settings.aws.endpoint_url = Some(proxy.url.clone());
        settings.jobs.max_attempts = 1;
    })
    .await;
    let job = app.create_running(&create_body("kept")).await;
    let id = job["instances"][0]["id"].as_str().unwrap();
    proxy.set_mode(crate::proxy::Mode::RefuseTagging);

    let rename = json!({ "name": "renamed", "tags": { "team": "red" } });
    let url = app.url(&format!("/v1/instances/{id}?wait=30"));
    let job: Value =
        app.client.patch(url).json(&rename).send().await.unwrap().json().await.unwrap();

    assert_eq!(job["status"], "failed", "{job}");
    let record: Value = app.get_instance(id).await.json().await.unwrap();
    assert_eq!((&record["name"], &record["tags"]), (&json!("kept"), &json!({})), "{record}");
    app.reconcile().await;
    let drift: Value = app.get(&format!("/v1/instances/{id}/drift")).await.json().await.unwrap();
    assert_eq!(drift["items"], json!([]), "{drift}");
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

/// A job's history is streamed as server-sent events while the job runs. EC2 is slowed down so
/// that the create job takes seconds; the stream, opened as soon as the job is queued, delivers
/// the first step while the job is still unfinished, then every step once and in order, then
/// `end` with the finished job, and closes. The same history is there as JSON afterwards.
#[tokio::test]
async fn a_job_records_its_steps_and_streams_them_as_server_sent_events() {
    // Arrange: every EC2 call takes 300 ms.
    let proxy = FaultProxy::start(moto_url(), 0.0).await;
    proxy.set_delay(Duration::from_millis(300));
    let app = spawn_app_with(|settings| settings.aws.endpoint_url = Some(proxy.url.clone())).await;
    let response = app.post_instances(&create_body("chatty"), "").await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let job: Value = response.json().await.unwrap();
    let job_id = job["id"].as_str().unwrap().to_string();
    let path = format!("/v1/jobs/{job_id}/events");

    // Act: open the stream and read its first event.
    let mut stream =
        app.client.get(app.url(&path)).header("Accept", "text/event-stream").send().await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let mut buffer = String::new();
    let first = next_event(&mut stream, &mut buffer).await.expect("a first event");
    let meanwhile: Value = app.get_job(&job_id).await.json().await.unwrap();

    // Assert: it arrived while the job was still at work.
    assert!(
        matches!(meanwhile["status"].as_str(), Some("queued" | "running")),
        "the first event came only after the job had ended: {meanwhile}"
    );
    assert_eq!((first["event"].as_str(), first["id"].as_str()), ("step", "1"), "{first:?}");
    let first_step: Value = serde_json::from_str(&first["data"]).unwrap();
    let message = first_step["message"].as_str().unwrap();
    assert!(message.starts_with("attempt 1 of 3 started by worker "), "{message}");

    // Then every step once, in order, and `end` with the finished job.
    let mut streamed = vec![first_step];
    let end = loop {
        let event = next_event(&mut stream, &mut buffer).await.expect("an end event");
        if event["event"] == "end" {
            break event;
        }
        assert_eq!(event["id"], (streamed.len() + 1).to_string(), "{event:?}");
        let step: Value = serde_json::from_str(&event["data"]).unwrap();
        assert_eq!(event["event"], step["kind"].as_str().unwrap(), "{event:?}");
        streamed.push(step);
    };
    let finished: Value = serde_json::from_str(&end["data"]).unwrap();
    assert_eq!(
        (finished["id"].as_str(), finished["status"].as_str()),
        (Some(job_id.as_str()), Some("succeeded")),
        "{finished}"
    );
    assert!(next_event(&mut stream, &mut buffer).await.is_none(), "the stream ends with the job");

    let history: Value = app.get(&path).await.json().await.unwrap();
    let items = history["items"].as_array().unwrap();
    assert_eq!(*items, streamed, "the stream carried the whole history");
    let messages: Vec<&str> = items.iter().map(|e| e["message"].as_str().unwrap()).collect();
    assert!(
        messages.iter().any(|m| m.starts_with("launching 1 t3.micro instance(s)")),
        "{messages:?}"
    );
    assert!(messages.iter().any(|m| m.starts_with("all running: i-")), "{messages:?}");
    assert_eq!(*messages.last().unwrap(), "succeeded");
    assert!(items[0]["at"].is_string());
}

/// The next server-sent event of `stream`, field by field (`event`, `id`, `data`), reading
/// more of the body into `buffer` as needed; `None` once the body has ended. Panics when
/// nothing comes for 30 s.
async fn next_event(
    stream: &mut reqwest::Response,
    buffer: &mut String,
) -> Option<BTreeMap<String, String>> {
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let fields: BTreeMap<String, String> = block
                .lines()
                .filter_map(|line| line.split_once(':'))
                .filter(|(name, _)| !name.is_empty())
                .map(|(name, value)| {
                    (name.to_string(), value.strip_prefix(' ').unwrap_or(value).to_string())
                })
                .collect();
            if !fields.is_empty() {
                return Some(fields);
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(30), stream.chunk())
            .await
            .expect("the stream goes on within 30 s")
            .expect("the stream reads");
        buffer.push_str(&String::from_utf8_lossy(&chunk?));
    }
}

/// With `reconcile.interval_secs` set, corral looks at the cloud by itself: an instance stopped
/// behind its back is recorded as stopped within a few intervals, with its drift and its audit
/// event, and no job was asked for.
#[tokio::test]
async fn the_periodic_reconciler_records_drift_without_being_asked() {
    // Arrange
    let app = spawn_app_with(|settings| {
        settings.reconcile.interval_secs = 1.0;
        settings.policy.regions = vec!["us-east-1".to_string()];
    })
    .await;
    let job = app.create_running(&create_body("watched")).await;
    let id = job["instances"][0]["id"].as_str().unwrap();
    let cloud_id = job["instances"][0]["cloud_id"].as_str().unwrap();

    // Act
    app.ec2.stop_instances().instance_ids(cloud_id).send().await.unwrap();

    // Assert: seen without a call to /v1/reconcile.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let instance: Value = app.get_instance(id).await.json().await.unwrap();
        if instance["state"] == "stopped" {
            break;
        }
        assert!(Instant::now() < deadline, "not seen stopped within 15 s: {instance}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drift: Value = app.get(&format!("/v1/instances/{id}/drift")).await.json().await.unwrap();
    let items = drift["items"].as_array().unwrap();
    assert_eq!(
        (items[0]["field"].as_str(), items[0]["new_value"].as_str()),
        (Some("state"), Some("stopped")),
        "{drift}"
    );
    assert!(items.iter().any(|d| d["old_value"] == "running"), "{drift}");
    let audit: Value = app
        .get(&format!("/v1/audit?action=instance.drift&target={id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["logs"][0]["actor"], "system", "{audit}");
    assert_eq!(audit["logs"][0]["new_value"], json!({ "state": "stopped" }), "{audit}");
    let jobs: Value = app.get_jobs("").await.json().await.unwrap();
    let kinds: Vec<&str> =
        jobs["items"].as_array().unwrap().iter().map(|j| j["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["create_instances"], "the passes are no jobs: {jobs}");
}

/// Two corral processes on one database, both with the periodic reconciler on, take turns
/// through the `reconciler` lease: while the one holding it keeps passing, every pass is its
/// own (each server calls EC2 through a proxy of its own, which counts its scans), the other
/// makes none, and passes come no faster than one per interval.
#[tokio::test]
async fn two_servers_on_one_database_run_one_reconcile_pass_per_interval() {
    // Arrange
    let first_proxy = FaultProxy::start(moto_url(), 0.0).await;
    let second_proxy = FaultProxy::start(moto_url(), 0.0).await;
    let first = spawn_server(|settings| {
        settings.aws.endpoint_url = Some(first_proxy.url.clone());
        settings.reconcile.interval_secs = 2.0;
        settings.policy.regions = vec!["us-east-1".to_string()];
    })
    .await;
    let (key_id, secret) = first.aws_credentials.clone();
    let database_url = first.database_url.clone();
    let second = spawn_server(|settings| {
        settings.database_url = database_url;
        settings.aws.endpoint_url = Some(second_proxy.url.clone());
        settings.aws.access_key_id = Some(key_id);
        settings.aws.secret_access_key = Some(secret.into());
        settings.reconcile.interval_secs = 2.0;
        settings.policy.regions = vec!["us-east-1".to_string()];
    })
    .await;
    // One pass scans its one region with one DescribeInstances call: nothing else runs.
    let scans =
        || (first_proxy.calls_of("DescribeInstances"), second_proxy.calls_of("DescribeInstances"));
    let passes = || {
        let (on_first, on_second) = scans();
        on_first + on_second
    };

    // Act: wait for a first pass, then for three more. (Two-second intervals: the lease lasts
    // three, so that a holder slowed down by a loaded machine keeps it.)
    let deadline = Instant::now() + Duration::from_secs(40);
    while passes() == 0 {
        assert!(Instant::now() < deadline, "no reconcile pass within 40 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let before = passes();
    while passes() < before + 3 {
        assert!(Instant::now() < deadline, "{} passes within 40 s", passes());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();

    // Assert
    let (by_first, by_second) = scans();
    assert!(
        by_first == 0 || by_second == 0,
        "both servers passed: {by_first} and {by_second} scans"
    );
    assert!(
        elapsed >= Duration::from_millis(5000),
        "three passes after one took {elapsed:?}: more than one pass per interval"
    );
    first.shutdown.cancel();
    second.shutdown.cancel();
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
