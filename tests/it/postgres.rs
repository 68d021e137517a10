//! Behaviour only PostgreSQL has: several replicas sharing one database, and `LISTEN/NOTIFY`
//! wake-ups between processes. The SQLite pass of `scripts/test` leaves this module out; on the
//! PostgreSQL pass every test here runs, and in CI a missing server fails them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use corral::config::ProcessRole;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::crash::{Server, all_pages, get_json};
use crate::helpers::{
    AMI_X86, admin_client, create_body, moto_url, new_moto_account, new_postgres_database,
    postgres_only, spawn_app_with, spawn_server, tags_of,
};
use crate::proxy::FaultProxy;

/// Creates in the replica test: enough for every worker of three replicas to contend for claims,
/// few enough to stay quick.
const JOBS: usize = 60;

/// The workers that started a job's attempts, in order, from its history ("attempt N of M
/// started by worker <pid>-<process>-<n>").
fn starters(events: &Value) -> Vec<String> {
    events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|event| event["message"].as_str())
        .filter(|message| message.starts_with("attempt "))
        .filter_map(|message| message.split(" started by worker ").nth(1))
        .map(str::to_string)
        .collect()
}

/// The process id a worker id begins with.
fn pid_of(worker: &str) -> u32 {
    worker.split('-').next().unwrap().parse().unwrap()
}

fn time_of(job: &Value, field: &str) -> DateTime<Utc> {
    let text = job[field].as_str().unwrap_or_else(|| panic!("no {field}: {job}"));
    text.parse().unwrap()
}

/// Three replicas start together on an empty database (their migrations race), share the work
/// of many creates, and one is killed with SIGKILL while it holds jobs: those jobs finish on the
/// other replicas, every job launches exactly one instance with exactly one RunInstances, and
/// no job is run twice.
#[tokio::test]
async fn three_replicas_on_one_postgres_run_every_job_once_and_take_over_a_killed_ones_jobs() {
    let Some(base) = postgres_only() else { return };
    // Arrange: every EC2 call goes through `proxy`, which counts the calls that go on to moto.
    // The replica to be killed reaches it through a second proxy that holds each call 500 ms,
    // so that its jobs are long and some are in its hands when it dies; a call it made that
    // dies with it in that proxy never reaches moto, nor the count.
    let database = new_postgres_database(&base).await;
    let (key, secret) = new_moto_account().await;
    let proxy = FaultProxy::start(moto_url(), 0.0).await;
    let slow = FaultProxy::start(proxy.url.clone(), 0.0).await;
    slow.set_delay(Duration::from_millis(500));
    let (a, b, c) = tokio::join!(
        Server::start_against(&proxy.url, &database, &key, &secret),
        Server::start_against(&slow.url, &database, &key, &secret),
        Server::start_against(&proxy.url, &database, &key, &secret),
    );
    let (a_pid, b_pid, c_pid) = (a.child.id(), b.child.id(), c.child.id());
    let client = admin_client(&a.url).await;
    let create = |url: String, n: usize| {
        let client = client.clone();
        async move {
            let body = json!({ "name": format!("replica-{n}"), "ami": AMI_X86,
                               "instance_type": "t3.micro" });
            let response =
                client.post(format!("{url}/v1/instances")).json(&body).send().await.unwrap();
            // 201 when another replica already finished the job before the answer was written.
            assert!([201, 202].contains(&response.status().as_u16()), "{}", response.status());
        }
    };

    // Act: three quarters of the creates spread over the three APIs; once replica b is seen
    // running a job, b is killed; the rest go to the two replicas left.
    let started = std::time::Instant::now();
    let urls = [a.url.clone(), b.url.clone(), c.url.clone()];
    let before = JOBS * 3 / 4;
    futures_util::future::join_all((0..before).map(|n| create(urls[n % 3].clone(), n))).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let running: Value =
            get_json(&client, format!("{}/v1/jobs?status=running&limit=100", a.url)).await;
        let histories = futures_util::future::join_all(
            running["items"].as_array().unwrap().iter().map(|job| {
                let url = format!("{}/v1/jobs/{}/events", a.url, job["id"].as_str().unwrap());
                let client = client.clone();
                async move { get_json(&client, url).await }
            }),
        )
        .await;
        let held_by_b = histories
            .iter()
            .any(|events| starters(events).last().is_some_and(|worker| pid_of(worker) == b_pid));
        if held_by_b {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "replica b never ran a job");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.kill_9();
    let killed_at = Utc::now();
    let later =
        (before..JOBS).map(|n| create(if n % 2 == 0 { a.url.clone() } else { c.url.clone() }, n));
    futures_util::future::join_all(later).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let jobs = loop {
        let jobs = all_pages(&client, &format!("{}/v1/jobs", a.url)).await;
        if jobs.len() == JOBS
            && jobs.iter().all(|j| j["status"] == "succeeded" || j["status"] == "failed")
        {
            break jobs;
        }
        assert!(tokio::time::Instant::now() < deadline, "jobs stuck after the kill: {jobs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Assert: every job succeeded, each with one instance and one RunInstances.
    for job in &jobs {
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    // One launch per job: every RunInstances of one job carries its ClientToken. The job b was
    // killed in may send its launch again, with the same token, when the next holder looks for
    // what b launched before EC2 has made it; EC2 answers that with the first launch.
    let tokens: BTreeSet<String> = proxy.client_tokens().into_iter().collect();
    assert_eq!(tokens.len(), JOBS, "one launch (ClientToken) per job reached EC2");
    let run_instances = proxy.calls_of("RunInstances");
    assert!(run_instances <= JOBS as u64 + 1, "{run_instances} RunInstances for {JOBS} jobs");
    let ec2 = crate::helpers::ec2_client(&key, &secret);
    let mut corral_ids = BTreeSet::new();
    let mut pages = ec2.describe_instances().into_paginator().send();
    let mut launched = 0;
    while let Some(page) = pages.next().await {
        for instance in page.unwrap().reservations().iter().flat_map(|r| r.instances()) {
            launched += 1;
            corral_ids.insert(tags_of(instance)["corral:instance-id"].clone());
        }
    }
    assert_eq!(launched, JOBS, "one instance per job, none twice");
    assert_eq!(corral_ids.len(), JOBS);

    // The jobs b had started: those it finished, it finished before it died; every other one
    // was taken over, its last attempt started by a worker of a or c, which finished it.
    let mut by_replica: BTreeMap<u32, usize> = BTreeMap::new();
    let (mut taken_over, mut takeover) = (0, Duration::ZERO);
    for job in &jobs {
        let id = job["id"].as_str().unwrap();
        let events: Value = get_json(&client, format!("{}/v1/jobs/{id}/events", a.url)).await;
        let started_by = starters(&events);
        let finisher = pid_of(started_by.last().unwrap_or_else(|| panic!("never started: {job}")));
        *by_replica.entry(finisher).or_default() += 1;
        let finished = time_of(job, "finished_at");
        if finisher == b_pid {
            assert!(finished <= killed_at, "b finished {id} after it was killed: {events}");
        } else if started_by.iter().any(|worker| pid_of(worker) == b_pid) {
            taken_over += 1;
            assert!([a_pid, c_pid].contains(&finisher), "{id} finished by {finisher}: {events}");
            takeover = takeover.max((finished - killed_at).to_std().unwrap_or_default());
        }
    }
    assert!(taken_over > 0, "b was killed holding none of its jobs: {by_replica:?}");
    assert!(by_replica.keys().all(|pid| [a_pid, b_pid, c_pid].contains(pid)), "{by_replica:?}");
    assert!(by_replica.len() >= 2, "the work was shared: {by_replica:?}");
    eprintln!(
        "{JOBS} jobs on 3 replicas: {launched} instances, {run_instances} RunInstances, finished \
         by replica {by_replica:?}; {taken_over} of the killed replica's jobs taken over, the \
         last finished {takeover:?} after the kill (lease 3 s); {:?} in all",
        started.elapsed()
    );
}

/// Two processes on one database: one serves the API and runs no jobs, the other runs jobs and
/// looks for due ones only once a minute unless woken. Each job posted to the API is picked up
/// by the other process at once, which only its `NOTIFY` explains, and a `?wait=` on the API
/// is answered as soon as the other process finishes the job, which only the relayed finish
/// explains (a waiter otherwise reads the job again once a second).
#[tokio::test]
async fn an_api_process_wakes_a_worker_process_and_hears_at_once_when_it_finishes_a_job() {
    let Some(base) = postgres_only() else { return };
    // Arrange: the worker starts first, so that its first look for jobs has found none before
    // anything is posted.
    let database = new_postgres_database(&base).await;
    let worker = spawn_server(|settings| {
        settings.role = ProcessRole::Worker;
        settings.database_url = database.clone();
        settings.jobs.poll_interval_ms = 60_000;
    })
    .await;
    let _stop_worker = worker.shutdown.clone().drop_guard();
    let api = spawn_app_with(|settings| {
        settings.role = ProcessRole::Api;
        settings.database_url = database.clone();
    })
    .await;

    // Act: a create, then refreshes of its instance, each waited for on the API, one after the
    // other.
    let response = api.post_instances(&create_body("woken"), "?wait=10").await;
    let answered = Utc::now();
    assert_eq!(response.status(), StatusCode::CREATED, "the create was not run within 10 s");
    let created: Value = response.json().await.unwrap();
    let mut finished = vec![(created.clone(), answered)];
    let instance_id = created["instances"][0]["id"].as_str().unwrap().to_string();
    // Nine jobs: a waiter that only re-read the job once a second would answer within 400 ms
    // of its end for about four in ten, never for all nine but by a chance of 1 in 4,000.
    for _ in 0..8 {
        // The worker that ran the last job is back waiting before the next is posted.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let response =
            api.post_empty(&format!("/v1/instances/{instance_id}/refresh?wait=10")).await;
        let answered = Utc::now();
        assert_eq!(response.status(), StatusCode::OK, "the refresh was not run within 10 s");
        finished.push((response.json().await.unwrap(), answered));
    }

    // Assert: each job was claimed within moments of being stored (the worker's own look is a
    // minute away), and its waiter answered within moments of its end (its own re-read is up
    // to a second away).
    for (job, answered) in &finished {
        assert_eq!(job["status"], "succeeded", "{job}");
        let picked_up =
            (time_of(job, "started_at") - time_of(job, "created_at")).num_milliseconds();
        assert!(picked_up < 5_000, "picked up {picked_up} ms after it was stored: {job}");
        let heard = (*answered - time_of(job, "finished_at")).num_milliseconds();
        assert!(heard < 400, "answered {heard} ms after the job finished: {job}");
    }
    // The worker process's emulator account holds the instance: it ran the job.
    let cloud_id = created["instances"][0]["cloud_id"].as_str().unwrap();
    let described = worker.ec2.describe_instances().instance_ids(cloud_id).send().await.unwrap();
    assert_eq!(described.reservations().len(), 1, "{described:?}");
}

/// Two replicas on one database: every change to a principal made through one applies at the
/// very next request on the other, though the other keeps principals in memory.
#[tokio::test]
async fn a_principal_change_on_one_replica_applies_at_the_next_request_on_another() {
    let Some(base) = postgres_only() else { return };
    let database = new_postgres_database(&base).await;
    let writer = spawn_app_with(|settings| settings.database_url = database.clone()).await;
    let reader = spawn_server(|settings| settings.database_url = database.clone()).await;
    let _stop_reader = reader.shutdown.clone().drop_guard();
    crate::identity::principal_changes_apply_at_the_next_request(&writer, &reader.address).await;
}
