//! Unit tests of the worker loop (`run_workers`): panic isolation, lease renewal, and the
//! take-over of a job whose worker stopped renewing its lease. They run inside the crate, on
//! SQLite in a temporary directory, against the in-memory fake provider (`cloud::fake`), in
//! real time with a lease of one second.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cloud::fake::FakeProvider;
use crate::cloud::{Catalog, DescribeBatcher, Provider};
use crate::config::JobSettings;
use crate::domain::{Backend, CreateRequest, InstanceState, JobKind, JobStatus, Policy};
use crate::jobs::{CreatePayload, JobContext, Queue, run_workers};
use crate::storage::{
    Actor, Admission, InstanceRecord, JobEvent, JobView, NewJob, Store, now_millis,
};

struct Harness {
    ctx: Arc<JobContext>,
    fake: Arc<FakeProvider>,
    _dir: tempfile::TempDir,
}

/// A job context on a fresh SQLite file with `fake` as its cloud: `concurrency` workers per
/// set, a lease of `lease_secs`, quick polls, and retries a minute away.
async fn harness(fake: FakeProvider, concurrency: usize, lease_secs: u64) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Store::connect(&format!("sqlite://{}", dir.path().join("t.db").display())).await.unwrap();
    let fake = Arc::new(fake);
    let provider: Arc<dyn Provider> = fake.clone();
    let settings = JobSettings {
        concurrency,
        lease_secs,
        poll_interval_ms: 20,
        retry_delay_secs: 60.0,
        state_poll_initial_ms: 1,
        state_poll_max_ms: 5,
        ..JobSettings::default()
    };
    let ctx = JobContext {
        store,
        catalog: Arc::new(Catalog::new(provider.clone(), Duration::from_secs(60))),
        describer: DescribeBatcher::new(provider.clone(), Duration::ZERO),
        provider,
        policy: Policy::free_tier(),
        settings,
        terraform: None,
    };
    Harness { ctx: Arc::new(ctx), fake, _dir: dir }
}

/// Stores a create job for one instance, as the API would; returns its id.
async fn enqueue_create(ctx: &JobContext, max_attempts: i64) -> String {
    let job_id = crate::storage::new_id();
    // Names are unique among live instances: each job's instance has its own.
    let request = CreateRequest {
        name_prefix: Some(format!("unit-{}", job_id.replace('-', ""))),
        count: Some(1),
        ami: Some("ami-12345678".into()),
        instance_type: Some("t3.micro".into()),
        ..CreateRequest::default()
    };
    let spec = ctx.policy.check_request(&request).unwrap();
    let now = now_millis();
    let instances: Vec<InstanceRecord> = (0..spec.names.len())
        .map(|idx| InstanceRecord::desired(&spec, &job_id, idx, 2, now))
        .collect();
    let payload = CreatePayload { spec, client_token: job_id.clone(), backend: Backend::Aws };
    let job = NewJob {
        id: job_id.clone(),
        kind: JobKind::CreateInstances,
        payload: serde_json::to_value(&payload).unwrap(),
        max_attempts,
        actor: Actor::system(),
        namespace: Some("default".into()),
    };
    let admission = ctx.store.insert_create_job(&job, &instances, None).await.unwrap();
    assert_eq!(admission, Admission::Stored);
    job_id
}

/// Runs a set of workers, as one corral process does, until `shutdown` is cancelled.
fn start_workers(ctx: &Arc<JobContext>, shutdown: &CancellationToken) -> JoinHandle<()> {
    tokio::spawn(run_workers(ctx.clone(), Queue::new(ctx.store.clone()), shutdown.clone()))
}

/// Shuts the worker sets down and waits for them to return.
async fn stop(shutdown: CancellationToken, sets: Vec<JoinHandle<()>>) {
    shutdown.cancel();
    for set in sets {
        tokio::time::timeout(Duration::from_secs(5), set)
            .await
            .expect("idle workers stop at shutdown")
            .expect("a worker set never panics");
    }
}

/// Polls job `job_id` until `done` holds, for at most 20 s.
async fn wait_for(
    ctx: &JobContext,
    job_id: &str,
    what: &str,
    done: impl Fn(&JobView) -> bool,
) -> JobView {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let view = ctx.store.get_job(job_id).await.unwrap().expect("the job exists");
        if done(&view) {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {job_id} never {what}: {} after {} attempt(s), error {:?}",
            view.job.status,
            view.job.attempts,
            view.job.error
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The "attempt N of M started by worker W" events of a job's history: one per claim by a
/// worker.
async fn starts(ctx: &JobContext, job_id: &str) -> Vec<JobEvent> {
    ctx.store
        .job_events(job_id, 0)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.kind == "step" && event.message.contains(" started by worker "))
        .collect()
}

/// The worker a start event names.
fn worker_of(event: &JobEvent) -> Option<String> {
    event.message.split(" started by worker ").nth(1).map(str::to_string)
}

/// A job whose body panics does not take its worker down: the attempt is recorded as failed,
/// counted, with an error saying the job panicked, and queued for a retry; the one worker of
/// the set then runs the next job to success. Unit test on SQLite (temporary directory).
#[tokio::test]
async fn a_panicking_job_fails_its_attempt_and_its_worker_runs_the_next_job() {
    // Arrange: one worker; the first launch panics.
    let fake = FakeProvider::default();
    fake.state.lock().unwrap().launch_panics = true;
    let h = harness(fake, 1, 60).await;
    let shutdown = CancellationToken::new();
    let workers = start_workers(&h.ctx, &shutdown);

    // Act: the panicking job, then, once its attempt is recorded, a second job.
    let panicking = enqueue_create(&h.ctx, 3).await;
    let failed =
        wait_for(&h.ctx, &panicking, "recorded its attempt", |v| v.job.error.is_some()).await;
    let next = enqueue_create(&h.ctx, 3).await;
    let finished = wait_for(&h.ctx, &next, "finished", |v| v.job.status.is_finished()).await;
    stop(shutdown, vec![workers]).await;

    // Assert: the panic is a counted, failed attempt, queued again for later.
    assert_eq!(failed.job.status, JobStatus::Queued);
    assert_eq!(failed.job.attempts, 1);
    let error = failed.job.error.as_deref().unwrap();
    assert!(error.contains("panicked"), "{error}");
    let events = h.ctx.store.job_events(&panicking, 0).await.unwrap();
    let panicked =
        |e: &JobEvent| e.kind == "error" && e.attempt == 1 && e.message.contains("panicked");
    assert!(events.iter().any(panicked), "{events:?}");
    // Assert: the same worker ran the next job, to success.
    assert_eq!(finished.job.status, JobStatus::Succeeded, "{:?}", finished.job.error);
    assert_eq!(finished.instances[0].state, InstanceState::Running);
    let (first, second) = (starts(&h.ctx, &panicking).await, starts(&h.ctx, &next).await);
    assert_eq!((first.len(), second.len()), (1, 1), "{first:?} {second:?}");
    assert!(worker_of(&first[0]).is_some(), "{}", first[0].message);
    assert_eq!(worker_of(&first[0]), worker_of(&second[0]));
    assert_eq!(h.fake.calls("launch"), 2);
}

/// A job that runs for more than two lease lengths keeps its lease, renewed while it runs: two sets
/// of workers poll the database meanwhile, as two processes would, yet the job is claimed
/// once, launched once, and succeeds. Unit test on SQLite (temporary directory).
#[tokio::test]
async fn a_renewed_lease_keeps_a_long_job_from_being_claimed_twice() {
    // Arrange: a 3 s lease (renewed every second: a loaded machine may delay a renewal by two
    // without losing it); the launch takes 7 s.
    let fake = FakeProvider::default();
    fake.state.lock().unwrap().launch_delay = Duration::from_millis(7_000);
    let h = harness(fake, 1, 3).await;
    let job_id = enqueue_create(&h.ctx, 3).await;

    // Act
    let shutdown = CancellationToken::new();
    let sets = vec![start_workers(&h.ctx, &shutdown), start_workers(&h.ctx, &shutdown)];
    let view = wait_for(&h.ctx, &job_id, "finished", |v| v.job.status.is_finished()).await;
    stop(shutdown, sets).await;

    // Assert
    assert_eq!(view.job.status, JobStatus::Succeeded, "{:?}", view.job.error);
    let ran_for = view.job.finished_at.unwrap() - view.job.started_at.unwrap();
    assert!(ran_for >= 7_000, "the job outlived its lease twice: {ran_for} ms");
    let starts = starts(&h.ctx, &job_id).await;
    assert_eq!(starts.len(), 1, "claimed once: {starts:?}");
    assert!(starts[0].message.starts_with("attempt 1 of 3 started"), "{}", starts[0].message);
    assert_eq!(view.job.attempts, 1);
    assert_eq!(h.fake.calls("launch"), 1);
}

/// A job whose lease is not renewed, its worker having stopped, is taken over by a live
/// worker once the lease has expired, and not before; the take-over is the job's next
/// attempt and succeeds. Unit test on SQLite (temporary directory).
#[tokio::test]
async fn an_expired_lease_is_taken_over_by_a_live_worker() {
    // Arrange: a worker claims the job for 1 s, then stops without renewing or finishing it.
    let h = harness(FakeProvider::default(), 1, 1).await;
    let job_id = enqueue_create(&h.ctx, 3).await;
    let lease_until = now_millis() + 1_000;
    let claimed = h.ctx.store.claim_job("stopped-worker", lease_until).await.unwrap().expect("due");
    assert_eq!((claimed.job.id.as_str(), claimed.job.attempts), (job_id.as_str(), 1));

    // Act
    let shutdown = CancellationToken::new();
    let workers = start_workers(&h.ctx, &shutdown);
    let view = wait_for(&h.ctx, &job_id, "finished", |v| v.job.status.is_finished()).await;
    stop(shutdown, vec![workers]).await;

    // Assert
    assert_eq!(view.job.status, JobStatus::Succeeded, "{:?}", view.job.error);
    assert_eq!(view.job.attempts, 2, "the stopped worker's attempt, then the take-over");
    let starts = starts(&h.ctx, &job_id).await;
    assert_eq!(starts.len(), 1, "{starts:?}");
    assert_eq!(starts[0].attempt, 2);
    assert!(starts[0].message.starts_with("attempt 2 of 3 started"), "{}", starts[0].message);
    assert!(
        starts[0].at >= lease_until,
        "taken over {} ms before the lease ended",
        lease_until - starts[0].at
    );
    assert_eq!(h.fake.calls("launch"), 1);
}

/// A reconciler that stops gives its lease up, so that the next process (after a restart, or
/// another replica) passes at its first interval instead of three intervals later.
#[tokio::test]
async fn a_stopping_reconciler_gives_its_lease_up() {
    let harness = harness(FakeProvider::default(), 1, 60).await;
    let shutdown = CancellationToken::new();
    // Its lease lasts three intervals (6 s): long past the end of this test, unless given up.
    let interval = Duration::from_secs(2);
    let task = tokio::spawn(crate::jobs::reconciler::run_reconciler(
        harness.ctx.clone(),
        interval,
        "first".to_string(),
        shutdown.clone(),
    ));
    let store = &harness.ctx.store;
    let later = || now_millis() + 60_000;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // Held by the running reconciler: another holder cannot take it.
    while store.try_lease("reconciler", "probe", now_millis() - 1).await.unwrap() {
        store.release_lease("reconciler", "probe").await.unwrap();
        assert!(tokio::time::Instant::now() < deadline, "the reconciler never took its lease");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!store.try_lease("reconciler", "second", later()).await.unwrap());

    shutdown.cancel();
    task.await.unwrap();

    assert!(store.try_lease("reconciler", "second", later()).await.unwrap(), "given up");
}
