//! The storage contract, run against whichever database the suite runs on (SQLite, or
//! PostgreSQL with `CORRAL_TEST_POSTGRES_URL`): claims, leases, guarded completion, idempotency
//! keys, named leases and Terraform state locks behave the same on both.

use std::collections::BTreeSet;

use corral::domain::JobKind;
use corral::storage::{Actor, Admission, IdempotencyKey, JobOutcome, NewJob, Store, now_millis};

async fn store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = crate::helpers::fresh_database_url(dir.path()).await;
    (Store::connect(&url).await.unwrap(), dir)
}

fn job() -> NewJob {
    NewJob {
        id: uuid::Uuid::now_v7().to_string(),
        kind: JobKind::Reconcile,
        payload: serde_json::json!({}),
        max_attempts: 3,
        actor: Actor::system(),
        namespace: None,
    }
}

async fn enqueue(store: &Store) -> String {
    let job = job();
    assert_eq!(store.insert_instances_job(&job, None, &[], None).await.unwrap(), Admission::Stored);
    job.id
}

#[tokio::test]
async fn concurrent_claims_never_hand_one_job_to_two_workers() {
    let (store, _dir) = store().await;
    for _ in 0..60 {
        enqueue(&store).await;
    }

    let claimers = (0..8).map(|worker| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut claimed = Vec::new();
            while let Some(job) =
                store.claim_job(&format!("w{worker}"), now_millis() + 60_000).await.unwrap()
            {
                claimed.push(job.job.id);
            }
            claimed
        })
    });
    let mut all = Vec::new();
    for claimer in claimers {
        all.extend(claimer.await.unwrap());
    }

    let distinct: BTreeSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 60);
    assert_eq!(distinct.len(), 60);
}

#[tokio::test]
async fn an_expired_lease_is_claimed_again_and_its_old_holder_cannot_finish() {
    let (store, _dir) = store().await;
    let id = enqueue(&store).await;
    let first = store.claim_job("w1", now_millis() - 1).await.unwrap().unwrap();
    assert_eq!((first.job.id.as_str(), first.job.attempts), (id.as_str(), 1));

    let second = store.claim_job("w2", now_millis() + 60_000).await.unwrap().unwrap();

    assert_eq!((second.job.id.as_str(), second.job.attempts), (id.as_str(), 2));
    let done = [("outcome", "succeeded".to_string())];
    assert!(!store.finish_job(&id, "w1", &JobOutcome::Succeeded, 1, &done).await.unwrap());
    assert!(!store.renew_lease(&id, "w1", now_millis() + 60_000).await.unwrap());
    assert!(store.finish_job(&id, "w2", &JobOutcome::Succeeded, 2, &done).await.unwrap());
    let view = store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(view.job.status.as_str(), "succeeded");
    let history = store.job_events(&id, 0).await.unwrap();
    let attempts: Vec<i64> = history.iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, [2], "only the lease holder's outcome is recorded");
}

/// A claimed job stays with its worker while the lease holds, and a renewal is what makes it
/// hold: a lease that has run out, renewed by its holder before anyone else claimed the job,
/// keeps the job from others; nobody else can renew it. A retry is not claimed before its time.
#[tokio::test]
async fn a_held_lease_keeps_the_job_and_a_retry_waits_for_its_time() {
    let (store, _dir) = store().await;
    let id = enqueue(&store).await;
    store.claim_job("w1", now_millis() + 60_000).await.unwrap().unwrap();
    assert!(store.claim_job("w2", now_millis() + 60_000).await.unwrap().is_none(), "held");

    // A lease that has run out ...
    let other = enqueue(&store).await;
    let claimed = store.claim_job("w3", now_millis() - 1).await.unwrap().unwrap();
    assert_eq!(claimed.job.id, other);
    // ... is renewed by its holder only ...
    assert!(!store.renew_lease(&other, "w2", now_millis() + 60_000).await.unwrap());
    assert!(store.renew_lease(&other, "w3", now_millis() + 60_000).await.unwrap());
    // ... and then keeps the job from others.
    assert!(store.claim_job("w2", now_millis() + 60_000).await.unwrap().is_none(), "renewed");
    let view = store.get_job(&other).await.unwrap().unwrap();
    assert_eq!((view.job.status.as_str(), view.job.attempts), ("running", 1));

    assert!(store.renew_lease(&id, "w1", now_millis() + 60_000).await.unwrap());
    let retry = JobOutcome::Retry { error: "throttled".into(), run_at: now_millis() + 60_000 };
    assert!(store.finish_job(&id, "w1", &retry, 1, &[]).await.unwrap());
    assert!(store.claim_job("w2", now_millis() + 60_000).await.unwrap().is_none(), "not due yet");

    let view = store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(view.job.status.as_str(), "queued");
    assert_eq!(view.job.error.as_deref(), Some("throttled"));
}

#[tokio::test]
async fn a_handed_back_attempt_is_not_counted_and_keeps_the_jobs_error() {
    let (store, _dir) = store().await;
    let id = enqueue(&store).await;
    store.claim_job("w1", now_millis() + 60_000).await.unwrap().unwrap();
    let retry = JobOutcome::Retry { error: "throttled".into(), run_at: now_millis() };
    assert!(store.finish_job(&id, "w1", &retry, 1, &[]).await.unwrap());
    let claimed = store.claim_job("w1", now_millis() + 60_000).await.unwrap().unwrap();
    assert_eq!(claimed.job.attempts, 2);

    let back = JobOutcome::HandBack { reason: "waiting".into(), run_at: now_millis() + 60_000 };
    assert!(store.finish_job(&id, "w1", &back, 2, &[]).await.unwrap());

    let view = store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(view.job.status.as_str(), "queued");
    assert_eq!(view.job.attempts, 1, "the handed-back attempt gave its count back");
    assert_eq!(view.job.error.as_deref(), Some("throttled"));
    assert!(store.claim_job("w2", now_millis() + 60_000).await.unwrap().is_none(), "not due yet");
}

#[tokio::test]
async fn an_idempotency_key_replays_its_job_or_refuses_another_request() {
    let (store, _dir) = store().await;
    let key = IdempotencyKey { key: "k".into(), fingerprint: "a".into() };
    let first = job();
    assert_eq!(
        store.insert_instances_job(&first, None, &[], Some(&key)).await.unwrap(),
        Admission::Stored
    );

    let again = store.insert_instances_job(&job(), None, &[], Some(&key)).await.unwrap();
    let other = IdempotencyKey { key: "k".into(), fingerprint: "b".into() };
    let mismatch = store.insert_instances_job(&job(), None, &[], Some(&other)).await.unwrap();

    assert_eq!(again, Admission::Replay { job_id: first.id.clone() });
    assert_eq!(mismatch, Admission::KeyMismatch);
    let jobs = store
        .list_jobs(&Default::default(), &corral::storage::PageRequest { limit: 10, after: None })
        .await
        .unwrap();
    assert_eq!(jobs.items.len(), 1, "replays and mismatches store nothing");
}

#[tokio::test]
async fn a_named_lease_has_one_holder_until_it_expires() {
    let (store, _dir) = store().await;

    assert!(store.try_lease("reconciler", "a", now_millis() + 60_000).await.unwrap());
    assert!(!store.try_lease("reconciler", "b", now_millis() + 60_000).await.unwrap());
    assert!(store.try_lease("reconciler", "a", now_millis() - 1).await.unwrap(), "renewed");
    assert!(store.try_lease("reconciler", "b", now_millis() + 60_000).await.unwrap(), "taken over");
    assert!(!store.try_lease("reconciler", "a", now_millis() + 60_000).await.unwrap());
    // Given up by another than its holder, it stays; by its holder, it is free at once.
    store.release_lease("reconciler", "a").await.unwrap();
    assert!(!store.try_lease("reconciler", "a", now_millis() + 60_000).await.unwrap());
    store.release_lease("reconciler", "b").await.unwrap();
    assert!(store.try_lease("reconciler", "a", now_millis() + 60_000).await.unwrap(), "freed");
}

#[tokio::test]
async fn a_namespace_with_a_backlog_does_not_hold_back_another() {
    let (store, _dir) = store().await;
    let enqueue_in = |namespace: &'static str| {
        let store = store.clone();
        async move {
            let job = NewJob { namespace: Some(namespace.to_string()), ..job() };
            let stored = store.insert_instances_job(&job, None, &[], None).await.unwrap();
            assert_eq!(stored, Admission::Stored);
            job.id
        }
    };
    let mut backlog = Vec::new();
    for _ in 0..5 {
        backlog.push(enqueue_in("busy").await);
    }
    let quiet = enqueue_in("quiet").await;
    let lease = now_millis() + 60_000;

    let first = store.claim_job("w1", lease).await.unwrap().unwrap();
    let second = store.claim_job("w2", lease).await.unwrap().unwrap();

    assert_eq!(first.job.id, backlog[0], "the oldest job goes first");
    assert_eq!(second.job.id, quiet, "then the namespace with nothing running");
    let third = store.claim_job("w3", lease).await.unwrap().unwrap();
    assert_eq!(third.job.id, backlog[1]);
}

/// A transient failure gives back the attempt its claim counted and starts a run of them,
/// which the next transient failure extends and any other outcome (a hand-back included)
/// ends; the time the job then waits past its due time is taken off the run, which counts
/// time spent failing only.
#[tokio::test]
async fn transient_failures_are_uncounted_and_their_run_ends_with_any_other_outcome() {
    let (store, _dir) = store().await;
    let id = enqueue(&store).await;
    let lease = || now_millis() + 60_000;
    let transient = |run_at| JobOutcome::Transient { error: "throttled".into(), run_at };
    let job = |store: &Store| {
        let (store, id) = (store.clone(), id.clone());
        async move { store.get_job(&id).await.unwrap().unwrap().job }
    };

    // A first transient failure, due again at once.
    store.claim_job("w1", lease()).await.unwrap().unwrap();
    let before = now_millis();
    assert!(store.finish_job(&id, "w1", &transient(now_millis()), 1, &[]).await.unwrap());
    let first = job(&store).await;
    assert_eq!((first.status.as_str(), first.attempts, first.transient_failures), ("queued", 0, 1));
    assert_eq!(first.error.as_deref(), Some("throttled"));
    let since = first.transient_since.expect("a run of transient failures began");
    assert!((before..=now_millis()).contains(&since), "{since}");

    // Claimed late: the run's start moves by as much. A second failure extends the run.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let claimed = store.claim_job("w1", lease()).await.unwrap().unwrap().job;
    assert_eq!(claimed.attempts, 1);
    let moved = claimed.transient_since.unwrap();
    assert!(moved >= since + 300 && moved <= now_millis(), "{since} -> {moved}");
    assert!(store.finish_job(&id, "w1", &transient(now_millis()), 1, &[]).await.unwrap());
    let second = job(&store).await;
    assert_eq!((second.attempts, second.transient_failures), (0, 2));
    assert_eq!(second.transient_since, Some(moved), "the run goes on from where it began");

    // A hand-back is no failure: the run ends, the attempt is not counted.
    store.claim_job("w1", lease()).await.unwrap().unwrap();
    let back = JobOutcome::HandBack { reason: "waiting".into(), run_at: now_millis() };
    assert!(store.finish_job(&id, "w1", &back, 1, &[]).await.unwrap());
    let handed_back = job(&store).await;
    assert_eq!(
        (handed_back.attempts, handed_back.transient_failures, handed_back.transient_since),
        (0, 0, None)
    );

    // A counted failure ends a new run too, and counts.
    store.claim_job("w1", lease()).await.unwrap().unwrap();
    assert!(store.finish_job(&id, "w1", &transient(now_millis()), 1, &[]).await.unwrap());
    assert_eq!(job(&store).await.transient_failures, 1);
    store.claim_job("w1", lease()).await.unwrap().unwrap();
    let retry = JobOutcome::Retry { error: "timed out".into(), run_at: now_millis() };
    assert!(store.finish_job(&id, "w1", &retry, 1, &[]).await.unwrap());
    let counted = job(&store).await;
    assert_eq!(
        (counted.attempts, counted.transient_failures, counted.transient_since),
        (1, 0, None)
    );
    assert_eq!(counted.error.as_deref(), Some("timed out"));
}

/// Terraform's state and its lock (what the HTTP backend of `terraform` runs reaches): a held
/// lock keeps every other writer and locker out and answers who holds it, its own holder
/// writes, a force-unlock (no id) frees it, and a job's lock left by an earlier attempt is
/// released by that job only.
#[tokio::test]
async fn a_terraform_state_lock_keeps_out_every_other_writer_until_it_is_released() {
    use corral::storage::LockOutcome::{Done, HeldBy};
    let (store, _dir) = store().await;
    let ws = "ws-1";
    assert_eq!(store.terraform_state(ws).await.unwrap(), None);
    assert_eq!(store.write_terraform_state(ws, Some("v1"), None).await.unwrap(), Done);
    assert_eq!(store.terraform_state(ws).await.unwrap().as_deref(), Some("v1"));

    let info = r#"{"ID":"lock-a","Who":"run a"}"#;
    assert_eq!(store.lock_terraform_state(ws, "lock-a", info, Some("job-a")).await.unwrap(), Done);
    assert_eq!(store.lock_terraform_state(ws, "lock-a", info, Some("job-a")).await.unwrap(), Done);
    let held = HeldBy(Some(info.to_string()));
    assert_eq!(store.lock_terraform_state(ws, "lock-b", "{}", Some("job-b")).await.unwrap(), held);
    assert_eq!(store.write_terraform_state(ws, Some("v2"), Some("lock-b")).await.unwrap(), held);
    assert_eq!(store.write_terraform_state(ws, Some("v2"), None).await.unwrap(), held);
    assert_eq!(store.unlock_terraform_state(ws, Some("lock-b")).await.unwrap(), held);
    assert_eq!(store.terraform_state(ws).await.unwrap().as_deref(), Some("v1"), "nothing written");

    assert_eq!(store.write_terraform_state(ws, Some("v2"), Some("lock-a")).await.unwrap(), Done);
    assert_eq!(store.terraform_state(ws).await.unwrap().as_deref(), Some("v2"));
    assert!(!store.release_job_lock(ws, "job-b").await.unwrap(), "job-b holds no lock");
    assert!(store.release_job_lock(ws, "job-a").await.unwrap());
    assert_eq!(store.lock_terraform_state(ws, "lock-b", "{}", Some("job-b")).await.unwrap(), Done);
    assert_eq!(store.unlock_terraform_state(ws, None).await.unwrap(), Done, "force-unlock");
    assert_eq!(store.write_terraform_state(ws, None, None).await.unwrap(), Done);
    assert_eq!(store.terraform_state(ws).await.unwrap(), None, "a delete removes the state");
    assert_eq!(store.terraform_state("ws-2").await.unwrap(), None, "other workspaces untouched");
}

/// Drift is judged when the reconciliation is written, against the instance as stored then: a
/// change while a job owns the instance is the job's, a change after it finished is drift, even
/// when the pass read its instances while the job still ran.
#[tokio::test]
async fn drift_is_judged_against_the_instance_as_stored_when_it_is_written() {
    use corral::domain::InstanceState::{Running, Stopped};
    use corral::storage::{InstanceRecord, Observation, Reconciliation};
    let (store, _dir) = store().await;
    let job = NewJob { kind: JobKind::CreateInstances, ..job() };
    let now = now_millis();
    let instance = InstanceRecord {
        id: corral::storage::new_id(),
        cloud_id: Some("i-0drift".into()),
        name: "watched".into(),
        namespace: "default".into(),
        region: "us-east-1".into(),
        ami: "ami-1".into(),
        instance_type: "t3.micro".into(),
        storage_gb: 8,
        state: Running,
        public_ip: None,
        private_ip: None,
        key_name: None,
        tags: Default::default(),
        security_groups: None,
        login_user: None,
        backend: corral::domain::Backend::Aws,
        launch_index: 0,
        created_by_job: job.id.clone(),
        active_job_id: Some(job.id.clone()),
        vcpus: 2,
        created_at: now,
        updated_at: now,
    };
    let admitted = store.insert_create_job(&job, std::slice::from_ref(&instance), None).await;
    assert_eq!(admitted.unwrap(), Admission::Stored);
    let seen = |state| Reconciliation {
        observations: vec![Observation {
            instance_id: instance.id.clone(),
            cloud_id: "i-0drift".into(),
            state,
            public_ip: None,
            private_ip: None,
            attributes: None,
            authoritative: false,
        }],
        ..Reconciliation::default()
    };

    // While the job owns it, a change is the job's.
    assert_eq!(store.record_reconciliation(&seen(Stopped)).await.unwrap(), []);
    assert!(store.drift_of(&instance.id).await.unwrap().is_empty());

    // Once the job has finished, the same kind of change is drift, with the state it left.
    store.claim_job("w1", now_millis() + 60_000).await.unwrap().unwrap();
    assert!(store.finish_job(&job.id, "w1", &JobOutcome::Succeeded, 1, &[]).await.unwrap());
    let drift = store.record_reconciliation(&seen(Running)).await.unwrap();
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert_eq!(
        (drift[0].old_value.as_deref(), drift[0].new_value.as_deref()),
        (Some("stopped"), Some("running"))
    );
    let recorded = store.drift_of(&instance.id).await.unwrap();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].field, "state");
    // Seen again unchanged: nothing new.
    assert_eq!(store.record_reconciliation(&seen(Running)).await.unwrap(), []);

    // What the cloud said before the record last changed is not judged: the record changed
    // since (here: the observation above), and the next pass will see what that change did.
    let stale = Reconciliation { observed_at: Some(now), ..seen(Stopped) };
    assert_eq!(store.record_reconciliation(&stale).await.unwrap(), []);
    let after_it = Reconciliation { observed_at: Some(now_millis() + 1), ..seen(Stopped) };
    assert_eq!(store.record_reconciliation(&after_it).await.unwrap().len(), 1);
}

/// Rows written before actors were people named an API key's prefix as their actor; the
/// migration that brought `credential` makes them name the key's user, the prefix as their
/// credential, and leaves usernames, `system` and the prefixes of keys whose user is gone
/// alone.
#[tokio::test]
async fn the_audit_log_and_jobs_written_under_key_prefixes_come_to_name_people() {
    let dir = tempfile::tempdir().unwrap();
    let before = dir.path().join("before");
    std::fs::create_dir(&before).unwrap();
    let all = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"));
    for entry in std::fs::read_dir(all).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.as_str() < "20261202000014" {
            std::fs::copy(&path, before.join(&name)).unwrap();
        }
    }
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("old.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::migrate::Migrator::new(before.as_path()).await.unwrap().run(&pool).await.unwrap();
    for statement in [
        "INSERT INTO users (id, username, password_hash, is_admin, created_at, updated_at) \
         VALUES ('u1', 'olga', 'x', 0, 1, 1)",
        "INSERT INTO api_keys (id, user_id, name, prefix, key_hash, created_at) \
         VALUES ('k1', 'u1', 'ci', 'crl_olga1234', 'h', 1)",
        "INSERT INTO audit_events (at, actor, action, target) VALUES \
         (1, 'crl_olga1234', 'instance.create', 'i1'), (2, 'olga', 'instance.update', 'i1'), \
         (3, 'system', 'instance.state', 'i1'), (4, 'crl_gone0000', 'instance.stop', 'i1')",
        "INSERT INTO jobs (id, kind, status, payload, attempts, max_attempts, run_at, created_at, \
         updated_at, actor) VALUES ('j1', 'reconcile', 'succeeded', '{}', 1, 3, 1, 1, 1, \
         'crl_olga1234'), ('j2', 'reconcile', 'succeeded', '{}', 1, 3, 1, 1, 1, 'system')",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    pool.close().await;

    Store::connect(&url).await.unwrap();

    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let audit: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT actor, credential FROM audit_events ORDER BY at")
            .fetch_all(&pool)
            .await
            .unwrap();
    let named =
        |actor: &str, credential: Option<&str>| (actor.to_string(), credential.map(str::to_string));
    assert_eq!(
        audit,
        [
            named("olga", Some("crl_olga1234")),
            named("olga", None),
            named("system", None),
            named("crl_gone0000", None),
        ]
    );
    let jobs: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT actor, credential FROM jobs ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(jobs, [named("olga", Some("crl_olga1234")), named("system", None)]);
}
