//! kill -9 of the serving process at random points while creates, stops and terminates are in
//! flight, then restart: every job ends, every desired instance exists exactly once in the cloud,
//! and no instance tagged by corral is unknown to it.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_PASSWORD, AMI_X86, JWT_SECRET, admin_client, moto_url, new_moto_account, tags_of,
};

/// Kept small so that the test runs in well under a minute or two.
const TRIALS: usize = 5;
const CREATES: usize = 50;

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        // The server leads a process group of its own: its terraform runs go with it.
        let _ =
            Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `corral serve` on a free port and waits until it answers.
    async fn start(database: &str, key: &str, secret: &str) -> Server {
        Server::start_against(&moto_url(), database, key, secret).await
    }

    pub(crate) async fn start_against(
        endpoint: &str,
        database: &str,
        key: &str,
        secret: &str,
    ) -> Server {
        Server::start_with(endpoint, database, key, secret, &[]).await
    }

    pub(crate) async fn start_with(
        endpoint: &str,
        database: &str,
        key: &str,
        secret: &str,
        env: &[(&str, &str)],
    ) -> Server {
        use std::os::unix::process::CommandExt;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(env!("CARGO_BIN_EXE_corral"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--database", database])
            .env("AWS_ENDPOINT_URL", endpoint)
            .env("AWS_ACCESS_KEY_ID", key)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_REGION", "us-east-1")
            .env("CORRAL_JOBS__LEASE_SECS", "3")
            .env("CORRAL_JOB_RETRY_DELAY", "0.1")
            .env("CORRAL_JOB_MAX_ATTEMPTS", "20")
            .env("CORRAL_JOBS__POLL_INTERVAL_MS", "100")
            .env("CORRAL_JOBS__STATE_POLL_INITIAL_MS", "50")
            .env("CORRAL_JOBS__STATE_POLL_MAX_MS", "500")
            .env("CORRAL_RECONCILE_INTERVAL", "0")
            .env("CORRAL_AWS__RATE_LIMITS__LAUNCH__BURST", "1000")
            .env("CORRAL_AWS__RATE_LIMITS__LAUNCH__PER_SECOND", "1000")
            .env("CORRAL_JOBS__SHUTDOWN_GRACE_SECS", "1")
            .env("CORRAL_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("CORRAL_AUTH__JWT_SECRET", JWT_SECRET)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Server { child, url: format!("http://127.0.0.1:{port}") };
        for _ in 0..200 {
            if crate::helpers::http().get(format!("{}/health", server.url)).send().await.is_ok() {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("corral did not start");
    }

    /// SIGTERM, then waits for the process to exit; returns how long that took.
    fn terminate(mut self) -> Duration {
        let started = std::time::Instant::now();
        let status =
            Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "corral exits cleanly on SIGTERM: {exit:?}");
        started.elapsed()
    }

    /// SIGKILL: no shutdown, no cleanup.
    pub(crate) fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGKILL to the server alone; answers what is left of its process group by name after
    /// `grace` (the rest is killed when `self` is dropped).
    async fn kill_9_alone(mut self, grace: Duration) -> Vec<String> {
        let group = self.child.id();
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        tokio::time::sleep(grace).await;
        process_group(group)
    }
}

/// The live processes of this machine, from /proc: pid, name, parent pid and process group.
fn live_processes() -> Vec<(u32, String, u32, u32)> {
    let mut processes = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid pgrp …; comm may hold spaces, so split after its ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() < 3 || fields[0] == "Z" {
            continue;
        }
        let name = head.split_once('(').map_or("", |(_, comm)| comm).to_string();
        let ppid = fields[1].parse::<u32>().unwrap_or_default();
        let pgrp = fields[2].parse::<u32>().unwrap_or_default();
        processes.push((pid, name, ppid, pgrp));
    }
    processes
}

/// Names of the live processes in process group `group`.
fn process_group(group: u32) -> Vec<String> {
    live_processes().into_iter().filter(|p| p.3 == group).map(|p| p.1).collect()
}

/// The live children of process `parent` named `name`, by pid.
fn children_named(parent: u32, name: &str) -> Vec<u32> {
    live_processes().into_iter().filter(|p| p.2 == parent && p.1 == name).map(|p| p.0).collect()
}

fn random_ms(min: u64, max: u64) -> Duration {
    Duration::from_millis(min + (uuid::Uuid::new_v4().as_u128() % (max - min) as u128) as u64)
}

/// One request of the workload: method, path, body, and its idempotency key.
type Request = (reqwest::Method, String, Option<Value>, String);

fn send_all(
    client: &reqwest::Client,
    url: &str,
    requests: &[Request],
) -> Vec<tokio::task::JoinHandle<Option<(u16, Value)>>> {
    requests
        .iter()
        .cloned()
        .map(|(method, path, body, key)| {
            let request = client
                .request(method, format!("{url}{path}"))
                .timeout(Duration::from_secs(10))
                .header("Idempotency-Key", key);
            let request = match body {
                Some(body) => request.json(&body),
                None => request,
            };
            tokio::spawn(async move {
                let response = request.send().await.ok()?;
                let status = response.status().as_u16();
                Some((status, response.json().await.ok()?))
            })
        })
        .collect()
}

pub(crate) async fn get_json(client: &reqwest::Client, url: impl reqwest::IntoUrl) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// Returns once the server at `url` lists a running job (or after 30 s, when none started: the
/// test's own assertions then say what happened).
async fn wait_until_a_job_runs(client: &reqwest::Client, url: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        let answer = client.get(format!("{url}/v1/jobs?limit=100")).send().await;
        if let Ok(answer) = answer
            && let Ok(page) = answer.json::<Value>().await
            && page["items"]
                .as_array()
                .is_some_and(|jobs| jobs.iter().any(|job| job["status"] == "running"))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn all_pages(client: &reqwest::Client, url: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let separator = if url.contains('?') { '&' } else { '?' };
    let mut next = format!("{url}{separator}limit=100");
    loop {
        let page: Value = get_json(client, &next).await;
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => next = format!("{url}{separator}limit=100&cursor={cursor}"),
            None => return items,
        }
    }
}

#[tokio::test]
async fn kill_9_mid_work_then_restart_loses_and_duplicates_nothing() {
    // Jobs a kill caught mid-work (claimed, so their next claim counted another attempt).
    let mut resumed_in_all = 0;
    for trial in 1..=TRIALS {
        // Arrange: a server with four running instances to stop and terminate.
        let (key, secret) = new_moto_account().await;
        let dir = tempfile::tempdir().unwrap();
        let database = crate::helpers::fresh_database_url(dir.path()).await;
        let server = Server::start(&database, &key, &secret).await;
        let client = admin_client(&server.url).await;
        let base: Value = client
            .post(format!("{}/v1/instances?wait=30", server.url))
            .json(&json!({ "name_prefix": "base", "count": 4, "ami": AMI_X86, "instance_type": "t3.micro" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(base["status"], "succeeded", "{base}");
        let base_ids: Vec<String> = base["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect();
        let mut workload: Vec<Request> = (0..CREATES)
            .map(|n| {
                let body = json!({ "name": format!("crash-{n}"), "ami": AMI_X86, "instance_type": "t3.micro" });
                (reqwest::Method::POST, "/v1/instances".to_string(), Some(body), format!("create-{n}"))
            })
            .collect();
        for id in &base_ids[..2] {
            workload.push((
                reqwest::Method::POST,
                format!("/v1/instances/{id}/stop"),
                None,
                format!("stop-{id}"),
            ));
        }
        for id in &base_ids[2..] {
            workload.push((
                reqwest::Method::DELETE,
                format!("/v1/instances/{id}"),
                None,
                format!("terminate-{id}"),
            ));
        }

        // Act: send everything, kill -9 at a random point once a job is running (on a loaded
        // machine a fixed delay may end before any is), twice, then restart and send it all
        // again (the idempotency keys make resent requests return the jobs already stored).
        let mut server = server;
        for (low, high) in [(0, 300), (50, 800)] {
            let _in_flight = send_all(&client, &server.url, &workload);
            wait_until_a_job_runs(&client, &server.url).await;
            tokio::time::sleep(random_ms(low, high)).await;
            server.kill_9();
            server = Server::start(&database, &key, &secret).await;
        }
        for answer in send_all(&client, &server.url, &workload) {
            let (status, body) = answer.await.unwrap().expect("the restarted server answers");
            assert!([200, 201, 202].contains(&status), "trial {trial}: {status} {body}");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let queued = all_pages(&client, &format!("{}/v1/jobs", server.url)).await;
            let unfinished = queued
                .iter()
                .filter(|j| j["status"] == "queued" || j["status"] == "running")
                .count();
            if unfinished == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "trial {trial}: {unfinished} jobs stuck"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }

        // Assert
        let jobs = all_pages(&client, &format!("{}/v1/jobs", server.url)).await;
        assert_eq!(jobs.len(), 1 + CREATES + 4, "trial {trial}: one job per request");
        for job in &jobs {
            assert_eq!(job["status"], "succeeded", "trial {trial}: {job}");
        }
        let resumed = jobs.iter().filter(|j| j["attempts"].as_i64().unwrap() > 1).count();
        eprintln!("trial {trial}: {} jobs, {resumed} resumed after a kill", jobs.len());
        resumed_in_all += resumed;
        let instances = all_pages(&client, &format!("{}/v1/instances?all=true", server.url)).await;
        assert_eq!(instances.len(), 4 + CREATES, "trial {trial}: one record per desired instance");
        let known: BTreeMap<String, String> = instances
            .iter()
            .map(|i| {
                (
                    i["cloud_id"].as_str().expect("launched").to_string(),
                    i["id"].as_str().unwrap().to_string(),
                )
            })
            .collect();

        let ec2 = crate::helpers::ec2_client(&key, &secret);
        let mut in_cloud: BTreeMap<String, String> = BTreeMap::new();
        let mut pages = ec2.describe_instances().into_paginator().send();
        while let Some(page) = pages.next().await {
            for instance in page.unwrap().reservations().iter().flat_map(|r| r.instances()) {
                let corral_id =
                    tags_of(instance).get("corral:instance-id").cloned().unwrap_or_default();
                in_cloud.insert(instance.instance_id().unwrap().to_string(), corral_id);
            }
        }
        assert_eq!(in_cloud.len(), 4 + CREATES, "trial {trial}: no duplicate launched");
        assert_eq!(
            in_cloud, known,
            "trial {trial}: every cloud instance is corral's, tagged with its id"
        );
        let distinct: BTreeSet<&String> = in_cloud.values().collect();
        assert_eq!(distinct.len(), in_cloud.len());
        for (idx, expected) in
            [(0, "stopped"), (1, "stopped"), (2, "terminated"), (3, "terminated")]
        {
            let instance = instances.iter().find(|i| i["id"] == base_ids[idx].as_str()).unwrap();
            assert_eq!(instance["state"], expected, "trial {trial}");
        }
        server.kill_9();
    }
    // Every trial kills twice while requests and jobs are in flight; had no kill ever caught a
    // job mid-work, nothing above would have shown a resumed job ending once.
    assert!(resumed_in_all > 0, "no kill of {TRIALS} trials caught a job mid-work");
}

#[tokio::test]
async fn sigterm_hands_unfinished_jobs_back_and_they_finish_after_a_restart() {
    // Arrange: every cloud call takes 700 ms, so jobs are mid-flight when SIGTERM arrives.
    let (key, secret) = new_moto_account().await;
    let proxy = crate::proxy::FaultProxy::start(moto_url(), 0.0).await;
    proxy.set_delay(Duration::from_millis(700));
    let dir = tempfile::tempdir().unwrap();
    let database = crate::helpers::fresh_database_url(dir.path()).await;
    let server = Server::start_against(&proxy.url, &database, &key, &secret).await;
    let client = admin_client(&server.url).await;
    for n in 0..6 {
        let body =
            json!({ "name": format!("graceful-{n}"), "ami": AMI_X86, "instance_type": "t3.micro" });
        let response =
            client.post(format!("{}/v1/instances", server.url)).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 202);
    }
    // Wait until jobs are running (each needs several slow calls, far more than the grace).
    for _ in 0..100 {
        let running: Value =
            get_json(&client, format!("{}/v1/jobs?status=running", server.url)).await;
        if !running["items"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Act
    let took = server.terminate();

    // Assert: out within the grace period; after a restart every job ends, once.
    assert!(took < Duration::from_secs(5), "shutdown took {took:?} with a 1 s grace period");
    proxy.set_delay(Duration::ZERO);
    let server = Server::start_against(&proxy.url, &database, &key, &secret).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let jobs = loop {
        let jobs = all_pages(&client, &format!("{}/v1/jobs", server.url)).await;
        if jobs.iter().all(|j| j["status"] == "succeeded" || j["status"] == "failed") {
            break jobs;
        }
        assert!(tokio::time::Instant::now() < deadline, "jobs stuck: {jobs:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(jobs.len(), 6);
    assert!(jobs.iter().all(|j| j["status"] == "succeeded"), "{jobs:?}");
    let mut handed_back = 0;
    for job in &jobs {
        let events: Value = get_json(
            &client,
            format!("{}/v1/jobs/{}/events", server.url, job["id"].as_str().unwrap()),
        )
        .await;
        let messages = events["items"].as_array().unwrap();
        handed_back += messages
            .iter()
            .filter(|e| e["message"].as_str().unwrap().starts_with("handed back at shutdown"))
            .count();
    }
    assert!(handed_back > 0, "some jobs were mid-flight and handed back");
    eprintln!("{handed_back} of 6 jobs handed back at shutdown, all finished after the restart");
    let ec2 = crate::helpers::ec2_client(&key, &secret);
    let output = ec2.describe_instances().send().await.unwrap();
    let launched: usize = output.reservations().iter().map(|r| r.instances().len()).sum();
    assert_eq!(launched, 6, "no duplicates after a graceful restart");
}

#[tokio::test]
async fn kill_9_mid_terraform_apply_then_restart_adopts_what_it_made_instead_of_duplicating() {
    let Some(mirror) = crate::helpers::terraform_mirror() else { return };
    let (key, secret) = new_moto_account().await;
    let dir = tempfile::tempdir().unwrap();
    let database = crate::helpers::fresh_database_url(dir.path()).await;
    let rc = dir.path().join("cli.tfrc");
    std::fs::write(&rc, crate::helpers::terraform_cli_config(&mirror)).unwrap();
    let work = dir.path().join("terraform");
    let env = [
        ("CORRAL_TERRAFORM_CLI_CONFIG", rc.to_str().unwrap()),
        ("CORRAL_TERRAFORM__WORK_DIR", work.to_str().unwrap()),
    ];
    let server = Server::start_with(&moto_url(), &database, &key, &secret, &env).await;
    let client = admin_client(&server.url).await;
    let body = json!({ "name": "tf-crash", "ami": AMI_X86, "instance_type": "t3.micro",
                       "ingress": [{ "port": 22, "cidr": "caller" }] });
    let job: Value = client
        .post(format!("{}/v1/instances?backend=terraform", server.url))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job_id = job["id"].as_str().unwrap().to_string();

    // Act: as soon as the apply has made the instance, corral is killed, before the run can
    // finish (its terraform must die with it); then corral starts again.
    let ec2 = crate::helpers::ec2_client(&key, &secret);
    let tagged = || Filter::builder().name("tag:corral:job-id").values(&job_id).build();
    // A guard, not a measure of speed: init, plan and the start of apply on a loaded machine.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let found = ec2.describe_instances().filters(tagged()).send().await.unwrap();
        if !found.reservations().is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "terraform made no instance");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The apply is still running (its provider waits for the instance to run): corral's own
    // child `terraform` is alive when corral is killed, and gone afterwards.
    let running = children_named(server.child.id(), "terraform");
    assert!(!running.is_empty(), "no terraform child of corral was running at the kill");
    let left = server.kill_9_alone(Duration::from_secs(5)).await;
    assert!(!left.iter().any(|name| name == "terraform"), "terraform outlived corral: {left:?}");
    let survivors: Vec<u32> = live_processes()
        .into_iter()
        .filter(|p| running.contains(&p.0) && p.1 == "terraform")
        .map(|p| p.0)
        .collect();
    assert!(survivors.is_empty(), "terraform {survivors:?} outlived corral's SIGKILL");
    eprintln!("5 s after corral's SIGKILL, its process group holds: {left:?}");
    let server = Server::start_with(&moto_url(), &database, &key, &secret, &env).await;
    let client = admin_client(&server.url).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let job = loop {
        let job: Value = get_json(&client, format!("{}/v1/jobs/{job_id}", server.url)).await;
        if job["status"] == "succeeded" || job["status"] == "failed" {
            break job;
        }
        assert!(tokio::time::Instant::now() < deadline, "the job did not finish: {job}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    // Assert: one instance and one security group, the ones the first run made.
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(job["attempts"].as_i64().unwrap() >= 2, "{job}");
    let found = ec2.describe_instances().filters(tagged()).send().await.unwrap();
    let instances: Vec<&aws_sdk_ec2::types::Instance> =
        found.reservations().iter().flat_map(|r| r.instances()).collect();
    assert_eq!(instances.len(), 1, "one instance, never two: {instances:?}");
    assert_eq!(instances[0].instance_id(), job["instances"][0]["cloud_id"].as_str());
    let groups = ec2.describe_security_groups().filters(tagged()).send().await.unwrap();
    assert_eq!(groups.security_groups().len(), 1, "{groups:?}");
    let events: Value = get_json(&client, format!("{}/v1/jobs/{job_id}/events", server.url)).await;
    let steps = events.to_string();
    assert!(steps.contains("adopting what an earlier attempt made"), "{steps}");
}
