//! Notifications against real receivers on loopback: an SMTP server (aiosmtpd, started per
//! test from the `.venv` that `scripts/test` prepares) and an HTTP webhook receiver.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::AsyncBufReadExt;

use crate::crash::Server;
use crate::helpers::{
    TestApp, admin_client, assert_problem, client_with, create_body, fresh_database_url, moto_url,
    new_moto_account, problem_fields, spawn_app, spawn_app_with,
};

/// An aiosmtpd server on 127.0.0.1 that writes what it receives to a file.
struct SmtpSink {
    port: u16,
    out: PathBuf,
    child: Option<tokio::process::Child>,
    _dir: tempfile::TempDir,
}

impl SmtpSink {
    /// A sink on a free port, not started yet.
    fn new() -> SmtpSink {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        SmtpSink { port, out: dir.path().join("mail.jsonl"), child: None, _dir: dir }
    }

    async fn started() -> SmtpSink {
        let mut sink = SmtpSink::new();
        sink.start().await;
        sink
    }

    async fn start(&mut self) {
        let python = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/smtp_sink.py");
        let mut child = tokio::process::Command::new(python)
            .args([script, &self.port.to_string(), self.out.to_str().unwrap(), "300"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the test venv has aiosmtpd: run the suite with scripts/test");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
        assert!(matches!(ready, Ok(Ok(Some(ref line))) if line == "ready"), "aiosmtpd: {ready:?}");
        self.child = Some(child);
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    fn messages(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    }

    /// Waits until at least `count` messages have arrived.
    async fn wait_for(&self, count: usize) -> Vec<Value> {
        for _ in 0..300 {
            let messages = self.messages();
            if messages.len() >= count {
                return messages;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("expected {count} mails, got {:#?}", self.messages());
    }
}

/// Settings that mail every event to `ops@example.com` through `sink`, retrying quickly.
fn mail_to(sink: &SmtpSink) -> impl FnOnce(&mut corral::config::Settings) {
    let port = sink.port;
    move |settings| {
        settings.notify.smtp_host = Some("127.0.0.1".to_string());
        settings.notify.smtp_port = Some(port);
        settings.notify.smtp_tls = corral::config::SmtpTls::None;
        settings.notify.email = vec!["ops@example.com".to_string()];
        quick_retries(settings);
    }
}

fn quick_retries(settings: &mut corral::config::Settings) {
    settings.notify.poll_interval_ms = 50;
    settings.notify.retry_delay_secs = 0.1;
    settings.notify.retry_max_delay_secs = 0.4;
    settings.notify.smtp_timeout_secs = 2;
    settings.notify.webhook_timeout_secs = 2;
}

/// An HTTP receiver on loopback that records every webhook and answers with `status`.
struct Receiver {
    url: String,
    status: Arc<AtomicU16>,
    received: Arc<Mutex<Vec<(HeaderMap, String)>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Receiver {
    async fn start(status: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/corral", listener.local_addr().unwrap());
        let status = Arc::new(AtomicU16::new(status));
        let received: Arc<Mutex<Vec<(HeaderMap, String)>>> = Arc::default();
        let (answer, log) = (status.clone(), received.clone());
        let router = axum::Router::new().route(
            "/hooks/corral",
            axum::routing::post(move |headers: HeaderMap, body: String| async move {
                log.lock().unwrap().push((headers, body));
                StatusCode::from_u16(answer.load(Ordering::SeqCst)).unwrap()
            }),
        );
        let server = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Receiver { url, status, received, server }
    }

    fn received(&self) -> Vec<(HeaderMap, String)> {
        self.received.lock().unwrap().clone()
    }
}

/// A webhook receiver on loopback that takes the first request and never answers it, and
/// answers 200 to the rest: while it holds the first, its sender has sent and waits to hear.
struct HoldingReceiver {
    url: String,
    received: Arc<Mutex<Vec<HeaderMap>>>,
    first_arrived: Arc<tokio::sync::Notify>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for HoldingReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl HoldingReceiver {
    async fn start() -> HoldingReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/corral", listener.local_addr().unwrap());
        let received: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
        let first_arrived = Arc::new(tokio::sync::Notify::new());
        let (log, arrived) = (received.clone(), first_arrived.clone());
        let router = axum::Router::new().route(
            "/hooks/corral",
            axum::routing::post(move |headers: HeaderMap| async move {
                let first = {
                    let mut log = log.lock().unwrap();
                    log.push(headers);
                    log.len() == 1
                };
                if first {
                    arrived.notify_one();
                    std::future::pending::<()>().await;
                }
                StatusCode::OK
            }),
        );
        let server = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        HoldingReceiver { url, received, first_arrived, server }
    }

    fn received(&self) -> Vec<HeaderMap> {
        self.received.lock().unwrap().clone()
    }
}

/// Serves `router` on a free loopback port and answers its base URL; it stops with the test.
async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

/// Rewrites a subscription's stored target, for what the API cannot arrange.
async fn db_set_subscription_target(app: &TestApp, id: &str, target: &str) {
    let sql = "UPDATE subscriptions SET target = $1 WHERE id = $2";
    let updated = if app.database_url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&app.database_url).await.unwrap();
        sqlx::query(sql).bind(target).bind(id).execute(&pool).await.unwrap().rows_affected()
    } else {
        let pool = sqlx::PgPool::connect(&app.database_url).await.unwrap();
        sqlx::query(sql).bind(target).bind(id).execute(&pool).await.unwrap().rows_affected()
    };
    assert_eq!(updated, 1, "subscription {id}");
}

/// Checks `X-Corral-Signature` the way a receiver would.
fn verify_signature(headers: &HeaderMap, body: &str, secret: &str) {
    let header = headers["x-corral-signature"].to_str().unwrap();
    let (t, v1) = header.split_once(',').unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let v1 = v1.strip_prefix("v1=").unwrap();
    let age = chrono::Utc::now().timestamp() - t.parse::<i64>().unwrap();
    assert!((0..60).contains(&age), "signature timestamp {t} is {age} s old");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    let expected: String =
        mac.finalize().into_bytes().iter().map(|byte| format!("{byte:02x}")).collect();
    assert_eq!(v1, expected, "signature of {body}");
}

async fn deliveries(app: &TestApp, query: &str) -> Vec<Value> {
    deliveries_at(&app.client, &app.address, query).await
}

/// The deliveries `query` lists on the corral at `base`.
async fn deliveries_at(client: &reqwest::Client, base: &str, query: &str) -> Vec<Value> {
    let response = client.get(format!("{base}/v1/notifications{query}")).send().await.unwrap();
    let page: Value = response.json().await.unwrap();
    page["items"].as_array().unwrap_or_else(|| panic!("{page}")).clone()
}

/// Waits until `query` lists `count` deliveries.
async fn wait_for_deliveries(app: &TestApp, query: &str, count: usize) -> Vec<Value> {
    for _ in 0..300 {
        let items = deliveries(app, query).await;
        if items.len() >= count {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("expected {count} deliveries for {query}: {:#?}", deliveries(app, "").await);
}

async fn act_and_wait(app: &TestApp, id: &str, action: &str) {
    let job: Value = app.act(id, action, "?wait=30").await.json().await.unwrap();
    assert_eq!(job["status"], "succeeded", "{action}: {job}");
}

#[tokio::test]
async fn each_step_of_an_instance_life_is_mailed_once_with_what_a_person_needs() {
    // Arrange: mail to ops@example.com through a real SMTP server, and a key pair to log in with.
    let sink = SmtpSink::started().await;
    let app = spawn_app_with(mail_to(&sink)).await;
    app.ec2.create_key_pair().key_name("deploy").send().await.unwrap();
    let mut body = create_body("web-1");
    body["key_name"] = json!("deploy");

    // Act: create, stop, start and terminate; then a create that fails.
    let created = app.create_running(&body).await;
    let id = created["instances"][0]["id"].as_str().unwrap().to_string();
    let cloud_id = created["instances"][0]["cloud_id"].as_str().unwrap().to_string();
    for action in ["stop", "start", "terminate"] {
        act_and_wait(&app, &id, action).await;
    }
    let mut broken = create_body("web-2");
    broken["key_name"] = json!("no-such-key");
    let failed: Value = app.post_instances(&broken, "?wait=30").await.json().await.unwrap();
    assert_eq!(failed["status"], "failed", "{failed}");

    // Assert: five deliveries, one per event, each delivered at its first attempt. A delivery
    // is recorded delivered only once the SMTP server has accepted its mail, so the sink now
    // holds every mail sent: one per delivery, whose Message-ID is the delivery's id.
    wait_for_deliveries(&app, "?status=delivered", 5).await;
    let all = deliveries(&app, "").await;
    assert_eq!(all.len(), 5, "one delivery per event: {all:#?}");
    assert!(
        all.iter()
            .all(|d| d["status"] == "delivered" && d["channel"] == "email" && d["attempts"] == 1),
        "{all:#?}"
    );
    let mails = sink.messages();
    assert_eq!(mails.len(), 5, "no mail twice: {mails:#?}");
    let message_ids: BTreeSet<String> =
        mails.iter().map(|mail| mail["message_id"].as_str().unwrap().to_string()).collect();
    let delivery_ids: BTreeSet<String> =
        all.iter().map(|d| format!("<{}@corral>", d["id"].as_str().unwrap())).collect();
    assert_eq!(message_ids, delivery_ids, "each mail's Message-ID is its delivery's id");
    let subjects: BTreeSet<String> =
        mails.iter().map(|mail| mail["subject"].as_str().unwrap().to_string()).collect();
    let expected: BTreeSet<String> = [
        "[corral] instance.created: web-1",
        "[corral] instance.stopped: web-1",
        "[corral] instance.started: web-1",
        "[corral] instance.terminated: web-1",
        "[corral] job.failed: web-2",
    ]
    .map(str::to_string)
    .into();
    assert_eq!(subjects, expected);
    for mail in &mails {
        assert_eq!(mail["to"], json!(["ops@example.com"]));
    }
    let creation = mails.iter().find(|mail| mail["subject"] == "[corral] instance.created: web-1");
    let text = creation.unwrap()["text"].as_str().unwrap();
    for expected in [
        format!("web-1 ({cloud_id}, corral id {id})"),
        "region us-east-1, type t3.micro".to_string(),
        format!("/v1/jobs/{}", created["id"].as_str().unwrap()),
        format!("By:        admin ({})", &app.admin_key[..12]),
        "ssh -i deploy.pem ec2-user@".to_string(),
    ] {
        assert!(text.contains(&expected), "'{expected}' missing from:\n{text}");
    }
    let failure = mails.iter().find(|mail| mail["subject"] == "[corral] job.failed: web-2");
    let text = failure.unwrap()["text"].as_str().unwrap();
    assert!(text.contains("Error:") && text.contains("no-such-key"), "{text}");
}

#[tokio::test]
async fn mail_queued_while_smtp_is_down_arrives_once_after_it_recovers() {
    // Arrange: mail flows; the creation's mail arrives and is recorded delivered.
    let mut sink = SmtpSink::started().await;
    let app = spawn_app_with(mail_to(&sink)).await;
    let created = app.create_running(&create_body("patient")).await;
    let id = created["instances"][0]["id"].as_str().unwrap().to_string();
    wait_for_deliveries(&app, "?status=delivered", 1).await;

    // Act: the SMTP server goes away; two events meanwhile fail and wait for retries.
    sink.stop().await;
    act_and_wait(&app, &id, "stop").await;
    act_and_wait(&app, &id, "start").await;
    let mut retried = Vec::new();
    for _ in 0..300 {
        retried = deliveries(&app, "?status=pending").await;
        if retried.len() == 2 && retried.iter().all(|d| d["attempts"].as_i64().unwrap() >= 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(retried.len(), 2, "both wait for a retry: {retried:#?}");
    assert!(retried.iter().all(|d| d["attempts"].as_i64().unwrap() >= 2), "{retried:#?}");
    assert!(retried[0]["last_error"].as_str().unwrap().contains("SMTP"), "{retried:#?}");
    assert_eq!(sink.messages().len(), 1);
    sink.start().await;

    // Assert: both are recorded delivered after the recovery, the creation's still at its one
    // attempt. Each is recorded only once the server has accepted its mail, so the sink now
    // holds every mail sent: one per delivery, whose Message-ID is the delivery's id.
    wait_for_deliveries(&app, "?status=delivered", 3).await;
    let all = deliveries(&app, "").await;
    assert_eq!(all.len(), 3, "{all:#?}");
    assert!(all.iter().all(|d| d["status"] == "delivered"), "{all:#?}");
    let attempts = |event: &str| {
        let delivery = all.iter().find(|d| d["event"]["type"] == event);
        delivery.unwrap_or_else(|| panic!("no delivery of {event}: {all:#?}"))["attempts"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(attempts("instance.created"), 1, "{all:#?}");
    assert!(attempts("instance.stopped") >= 2 && attempts("instance.started") >= 2, "{all:#?}");
    let mails = sink.messages();
    assert_eq!(mails.len(), 3, "no mail twice: {mails:#?}");
    let message_ids: BTreeSet<String> =
        mails.iter().map(|mail| mail["message_id"].as_str().unwrap().to_string()).collect();
    let delivery_ids: BTreeSet<String> =
        all.iter().map(|d| format!("<{}@corral>", d["id"].as_str().unwrap())).collect();
    assert_eq!(message_ids, delivery_ids, "each mail's Message-ID is its delivery's id");
    let subjects: BTreeSet<&str> =
        mails.iter().map(|mail| mail["subject"].as_str().unwrap()).collect();
    assert!(subjects.contains("[corral] instance.stopped: patient"), "{subjects:?}");
    assert!(subjects.contains("[corral] instance.started: patient"), "{subjects:?}");
    sink.stop().await;
}

#[tokio::test]
async fn webhooks_are_signed_filtered_by_event_and_scoped_to_their_namespace() {
    // Arrange: a webhook of namespace alpha for creations, stops and drift; one of beta for
    // terminations.
    let receiver = Receiver::start(200).await;
    let beta_receiver = Receiver::start(200).await;
    let app = spawn_app_with(|settings| {
        settings.notify.webhook_allow_private = true;
        quick_retries(settings);
    })
    .await;
    app.create_namespaces(&["alpha", "beta"]).await;
    let secret = "a-long-signing-secret";
    let hook = json!({
        "url": receiver.url,
        "events": ["instance.created", "instance.stopped", "instance.drifted"],
        "secret": secret,
        "namespace": "alpha",
    });
    let response = app.post_json("/v1/webhooks", &hook, None).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created_hook: Value = response.json().await.unwrap();
    assert!(created_hook.get("secret").is_none(), "{created_hook}");
    let beta_hook = json!({
        "url": beta_receiver.url,
        "events": ["instance.terminated"],
        "secret": secret,
        "namespace": "beta",
    });
    let response = app.post_json("/v1/webhooks", &beta_hook, None).await;
    assert_eq!(response.status(), StatusCode::CREATED);

    // Act: create, stop and start in alpha; a creation in beta; a stop made outside corral;
    // then alpha's instance is terminated.
    let mut body = create_body("hooked");
    body["namespace"] = json!("alpha");
    let job = app.create_running(&body).await;
    let id = job["instances"][0]["id"].as_str().unwrap().to_string();
    act_and_wait(&app, &id, "stop").await;
    act_and_wait(&app, &id, "start").await;
    let mut other = create_body("elsewhere");
    other["namespace"] = json!("beta");
    app.create_running(&other).await;
    let cloud_id = job["instances"][0]["cloud_id"].as_str().unwrap();
    app.ec2.stop_instances().instance_ids(cloud_id).send().await.unwrap();
    app.reconcile().await;
    act_and_wait(&app, &id, "terminate").await;

    // Assert: deliveries are written with their events, so once the jobs and the reconcile
    // pass have ended every delivery there will be exists. There are three, all alpha's
    // webhook's, each delivered at its first attempt: none for alpha's start or terminate
    // (not among its events), none for beta's creation (another namespace's). Beta's webhook
    // has none: beta's creation is not among its events, alpha's termination not its own.
    wait_for_deliveries(&app, "?status=delivered", 3).await;
    let all = deliveries(&app, "").await;
    assert_eq!(all.len(), 3, "{all:#?}");
    for delivery in &all {
        let outcome = (delivery["status"].as_str(), delivery["attempts"].as_i64());
        assert_eq!(outcome, (Some("delivered"), Some(1)), "{delivery:#}");
        assert_eq!(delivery["target"], receiver.url.as_str(), "{delivery:#}");
        assert_eq!(delivery["event"]["namespace"], "alpha", "{delivery:#}");
    }
    // A delivery is recorded delivered only after its receiver answered, so the receivers now
    // hold every request sent: one per delivery, each signed and carrying its delivery's id.
    assert!(beta_receiver.received().is_empty(), "{:#?}", beta_receiver.received());
    let received = receiver.received();
    assert_eq!(received.len(), 3, "no webhook twice: {received:#?}");
    let delivery_ids: BTreeSet<String> =
        all.iter().map(|d| d["id"].as_str().unwrap().to_string()).collect();
    let mut sent_ids = BTreeSet::new();
    let mut types = Vec::new();
    for (headers, body) in &received {
        verify_signature(headers, body, secret);
        let event: Value = serde_json::from_str(body).unwrap();
        assert_eq!(headers["x-corral-event"].to_str().unwrap(), event["type"]);
        assert_eq!(event["namespace"], "alpha");
        assert_eq!(event["instances"][0]["id"], id.as_str());
        sent_ids.insert(headers["x-corral-delivery"].to_str().unwrap().to_string());
        types.push(event["type"].as_str().unwrap().to_string());
    }
    assert_eq!(sent_ids, delivery_ids, "each request carries its own delivery's id");
    types.sort();
    assert_eq!(types, ["instance.created", "instance.drifted", "instance.stopped"]);
    let drifted = received.iter().find(|(_, body)| body.contains("instance.drifted")).unwrap();
    let event: Value = serde_json::from_str(&drifted.1).unwrap();
    assert_eq!(event["actor"], "system");
    assert_eq!(event["drift"][0]["new_value"], "stopped");

    // A tampered body fails the check a receiver makes.
    let (headers, body) = &received[0];
    let tampered = body.replace("alpha", "alphb");
    let outcome = std::panic::catch_unwind(|| verify_signature(headers, &tampered, secret));
    assert!(outcome.is_err(), "a changed body must not verify");

    // Listing never shows the secret.
    let listed = app.get("/v1/webhooks").await.text().await.unwrap();
    assert!(listed.contains(&receiver.url) && !listed.contains(secret), "{listed}");
}

#[tokio::test]
async fn a_receiver_that_keeps_failing_parks_the_delivery_as_dead_until_retried() {
    // Arrange: a global webhook whose receiver answers 500; three attempts allowed.
    let receiver = Receiver::start(500).await;
    let app = spawn_app_with(|settings| {
        settings.notify.webhook_allow_private = true;
        settings.notify.max_attempts = 3;
        quick_retries(settings);
    })
    .await;
    let hook = json!({ "url": receiver.url, "events": ["instance.created"], "secret": "0123456789abcdef" });
    assert_eq!(app.post_json("/v1/webhooks", &hook, None).await.status(), StatusCode::CREATED);

    // Act
    app.create_running(&create_body("unlucky")).await;

    // Assert: dead after three attempts, all with the same delivery id, visible in the API.
    let dead = wait_for_deliveries(&app, "?status=dead", 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["attempts"], 3);
    let error = dead[0]["last_error"].as_str().unwrap();
    assert!(error.contains("gave up after 3 attempts") && error.contains("500"), "{error}");
    let received = receiver.received();
    assert_eq!(received.len(), 3);
    let delivery_id = dead[0]["id"].as_str().unwrap();
    assert!(received.iter().all(|(headers, _)| headers["x-corral-delivery"] == delivery_id));

    // A retry after the receiver recovers delivers it; retrying a delivered one is a conflict.
    receiver.status.store(200, Ordering::SeqCst);
    let retried = app.post_empty(&format!("/v1/notifications/{delivery_id}/retry")).await;
    assert_eq!(retried.status(), StatusCode::OK);
    let retried: Value = retried.json().await.unwrap();
    // Pending again with its attempts reset; a worker may have claimed it (counting one) by the
    // time the answer is read.
    assert_eq!(retried["status"], "pending", "{retried}");
    assert!(retried["attempts"].as_i64().is_some_and(|n| n <= 1), "{retried}");
    wait_for_deliveries(&app, "?status=delivered", 1).await;
    assert_eq!(receiver.received().len(), 4);
    let again = app.post_empty(&format!("/v1/notifications/{delivery_id}/retry")).await;
    assert_problem(again, StatusCode::CONFLICT).await;
    let audit: Value = app.get("/v1/audit?action=notification.retry").await.json().await.unwrap();
    assert_eq!(audit["total"], 1, "{audit}");
}

#[tokio::test]
async fn subscriptions_refuse_private_targets_unknown_events_and_other_namespaces() {
    let app = spawn_app().await;
    app.create_namespaces(&["alpha", "beta"]).await;
    let hook = |url: &str| json!({ "url": url, "events": ["instance.created"], "secret": "0123456789abcdef", "namespace": "alpha" });

    // The SSRF guard: loopback, the metadata service and private ranges are refused.
    for url in ["http://127.0.0.1:9/hook", "http://169.254.169.254/latest", "http://10.0.0.5/"] {
        let problem = assert_problem(
            app.post_json("/v1/webhooks", &hook(url), None).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        let text = problem.to_string();
        assert!(text.contains("url") && text.contains("CORRAL_WEBHOOK_ALLOW_PRIVATE"), "{text}");
    }
    // Every problem of a body is named at once.
    let bad = json!({ "url": "ftp://example.com", "events": ["instance.exploded"], "secret": "short", "namespace": "alpha" });
    let problem = assert_problem(
        app.post_json("/v1/webhooks", &bad, None).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let fields = problem_fields(&problem);
    assert_eq!(fields, ["events[0]", "secret", "url"], "{problem}");
    // Email needs an SMTP server.
    let email = json!({ "email": "dev@example.com", "namespace": "alpha" });
    let problem = assert_problem(
        app.post_json("/v1/email-subscriptions", &email, None).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert!(problem.to_string().contains("CORRAL_SMTP_HOST"), "{problem}");

    // An operator of alpha: not beta's (404), not every namespace's (403).
    let key = app.user_key("opal", json!({ "alpha": "operator" })).await;
    let operator = client_with("x-api-key", &key);
    let public = |namespace: Option<&str>| json!({ "url": "https://example.com/hook", "secret": "0123456789abcdef", "namespace": namespace });
    let response =
        operator.post(app.url("/v1/webhooks")).json(&public(Some("beta"))).send().await.unwrap();
    assert_problem(response, StatusCode::NOT_FOUND).await;
    let response = operator.post(app.url("/v1/webhooks")).json(&public(None)).send().await.unwrap();
    assert_problem(response, StatusCode::FORBIDDEN).await;
}

#[tokio::test]
async fn deliveries_to_global_and_configured_receivers_are_the_admins_alone() {
    // Arrange: every event mailed to ops@example.com (the configuration), an admin's global
    // webhook and alpha's own webhook, both answering 500 so that their deliveries die at the
    // first attempt; a viewer and an operator of alpha.
    let sink = SmtpSink::started().await;
    let global = Receiver::start(500).await;
    let own = Receiver::start(500).await;
    let mail = mail_to(&sink);
    let app = spawn_app_with(move |settings| {
        mail(&mut *settings);
        settings.notify.webhook_allow_private = true;
        settings.notify.max_attempts = 1;
    })
    .await;
    app.create_namespaces(&["alpha"]).await;
    let viewer =
        client_with("x-api-key", &app.user_key("vera", json!({ "alpha": "viewer" })).await);
    let operator =
        client_with("x-api-key", &app.user_key("otto", json!({ "alpha": "operator" })).await);
    let hook = |url: &str, namespace: Option<&str>| json!({ "url": url, "events": ["instance.created"], "secret": "0123456789abcdef", "namespace": namespace });
    let response = app.post_json("/v1/webhooks", &hook(global.url.as_str(), None), None).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = operator
        .post(app.url("/v1/webhooks"))
        .json(&hook(own.url.as_str(), Some("alpha")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);

    // Act: an event in alpha, for all three receivers.
    let mut body = create_body("watched");
    body["namespace"] = json!("alpha");
    app.create_running(&body).await;

    // Assert: the admin sees all three; the deliveries to the admin's receivers belong to no
    // namespace, though their event is alpha's (and says so).
    sink.wait_for(1).await;
    wait_for_deliveries(&app, "?status=dead", 2).await;
    wait_for_deliveries(&app, "?status=delivered", 1).await;
    let all = deliveries(&app, "").await;
    assert_eq!(all.len(), 3, "{all:#?}");
    let to = |target: &str| {
        let found = all.iter().find(|delivery| delivery["target"] == target);
        found.unwrap_or_else(|| panic!("no delivery to {target}: {all:#?}")).clone()
    };
    let (global_hook, configured, own_hook) =
        (to(global.url.as_str()), to("ops@example.com"), to(own.url.as_str()));
    for (delivery, namespace) in
        [(&global_hook, Value::Null), (&configured, Value::Null), (&own_hook, json!("alpha"))]
    {
        assert_eq!(delivery["namespace"], namespace, "{delivery:#}");
        assert_eq!(delivery["event"]["namespace"], "alpha", "{delivery:#}");
    }
    let global_id = global_hook["id"].as_str().unwrap();
    let configured_id = configured["id"].as_str().unwrap();
    let own_id = own_hook["id"].as_str().unwrap();
    let event_id = own_hook["event"]["id"].as_str().unwrap();

    // Alpha's viewer and operator see only the delivery of alpha's own webhook, however they
    // ask, and cannot retry the others: to them those do not exist.
    for (who, client) in [("viewer", &viewer), ("operator", &operator)] {
        for query in [String::new(), format!("?event_id={event_id}"), "?status=dead".to_string()] {
            let response =
                client.get(app.url(&format!("/v1/notifications{query}"))).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{who} {query}");
            let text = response.text().await.unwrap();
            let page: Value = serde_json::from_str(&text).unwrap();
            let ids: Vec<&str> = page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|delivery| delivery["id"].as_str().unwrap())
                .collect();
            assert_eq!(ids, [own_id], "{who} {query}: {page:#}");
            assert!(
                !text.contains(&global.url) && !text.contains("ops@example.com"),
                "{who} {query}: {text}"
            );
        }
        for id in [global_id, configured_id] {
            let response = client
                .post(app.url(&format!("/v1/notifications/{id}/retry")))
                .send()
                .await
                .unwrap();
            assert_problem(response, StatusCode::NOT_FOUND).await;
        }
    }

    // Alpha's own delivery: its operator retries it, its viewer may not.
    let retry_own = app.url(&format!("/v1/notifications/{own_id}/retry"));
    assert_problem(viewer.post(retry_own.as_str()).send().await.unwrap(), StatusCode::FORBIDDEN)
        .await;
    assert_eq!(operator.post(retry_own.as_str()).send().await.unwrap().status(), StatusCode::OK);

    // The admin retries the global webhook's dead delivery; the delivered mail is visible to
    // the admin (a conflict, not a 404).
    let response = app.post_empty(&format!("/v1/notifications/{global_id}/retry")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let retried: Value = response.json().await.unwrap();
    assert_eq!(
        (retried["status"].as_str(), &retried["namespace"]),
        (Some("pending"), &Value::Null)
    );
    let response = app.post_empty(&format!("/v1/notifications/{configured_id}/retry")).await;
    assert_problem(response, StatusCode::CONFLICT).await;
}

#[tokio::test]
async fn a_namespace_holds_at_most_the_configured_number_of_subscriptions() {
    // Arrange: a cap of two; alpha holds a webhook and an email subscription, made by its
    // operator.
    let app = spawn_app_with(|settings| {
        settings.notify.max_subscriptions_per_namespace = 2;
        settings.notify.webhook_allow_private = true;
        settings.notify.smtp_host = Some("127.0.0.1".to_string());
        settings.notify.smtp_port = Some(9);
        settings.notify.smtp_tls = corral::config::SmtpTls::None;
    })
    .await;
    app.create_namespaces(&["alpha", "beta", "gamma"]).await;
    let operator = client_with(
        "x-api-key",
        &app.user_key("opal", json!({ "alpha": "operator", "beta": "operator" })).await,
    );
    let hook = |namespace: Option<&str>| json!({ "url": "http://127.0.0.1:9/hook", "secret": "0123456789abcdef", "namespace": namespace });
    let email = json!({ "email": "alpha@example.com", "namespace": "alpha" });
    let made = [("/v1/webhooks", hook(Some("alpha"))), ("/v1/email-subscriptions", email)];
    for (path, body) in &made {
        let response = operator.post(app.url(path)).json(body).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{path}");
    }

    // Act and assert: a third of either kind is refused, to its operator and to an admin
    // alike, naming the namespace, the cap and the setting.
    for (path, body) in &made {
        for client in [&operator, &app.client] {
            let response = client.post(app.url(path)).json(body).send().await.unwrap();
            let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
            assert_eq!(problem["type"], "urn:corral:problem:quota-exceeded", "{problem}");
            let detail = problem["detail"].as_str().unwrap();
            for expected in [
                "namespace 'alpha'",
                "allows 2 subscriptions",
                "notify.max_subscriptions_per_namespace",
            ] {
                assert!(detail.contains(expected), "'{expected}' missing from: {detail}");
            }
        }
    }
    let webhooks: Value = app.get("/v1/webhooks").await.json().await.unwrap();
    assert_eq!(webhooks["items"].as_array().unwrap().len(), 1, "nothing was stored: {webhooks}");

    // Another namespace has room of its own; global subscriptions (admins only) are not capped.
    let response =
        operator.post(app.url("/v1/webhooks")).json(&hook(Some("beta"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    for _ in 0..3 {
        let response = app.post_json("/v1/webhooks", &hook(None), None).await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }

    // Deleting one of alpha's makes room for exactly one more.
    let id = webhooks["items"][0]["id"].as_str().unwrap();
    let deleted = operator.delete(app.url(&format!("/v1/webhooks/{id}"))).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    for expected in [StatusCode::CREATED, StatusCode::UNPROCESSABLE_ENTITY] {
        let response =
            operator.post(app.url("/v1/webhooks")).json(&hook(Some("alpha"))).send().await.unwrap();
        assert_eq!(response.status(), expected);
    }

    // Concurrent creates in gamma: the cap holds, exactly two get in.
    let creates =
        (0..8).map(|_| app.client.post(app.url("/v1/webhooks")).json(&hook(Some("gamma"))).send());
    let answers = futures_util::future::join_all(creates).await;
    let statuses: Vec<StatusCode> =
        answers.into_iter().map(|answer| answer.unwrap().status()).collect();
    let created = statuses.iter().filter(|status| **status == StatusCode::CREATED).count();
    let refused =
        statuses.iter().filter(|status| **status == StatusCode::UNPROCESSABLE_ENTITY).count();
    assert_eq!((created, refused), (2, 6), "{statuses:?}");
    let listed: Value = app.get("/v1/webhooks").await.json().await.unwrap();
    let in_gamma = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|webhook| webhook["namespace"] == "gamma")
        .count();
    assert_eq!(in_gamma, 2, "{listed:#}");
}

/// A crash between sending a webhook and recording it: the delivery was claimed (its attempt
/// counted) and sent, and corral is killed while it waits for the answer. After a restart, once
/// the dead process's lease on the delivery has run out, it is sent again (at least once),
/// with the same `X-Corral-Delivery` both times so that the receiver can drop the duplicate.
#[tokio::test]
async fn a_webhook_in_flight_when_corral_is_killed_is_sent_again_with_the_same_delivery_id() {
    // Arrange: a corral process with a 2 s webhook timeout (so a claimed delivery's lease is
    // 3 × 2 + 30 = 36 s), and a global webhook for creations to a receiver that holds the
    // first request unanswered.
    let receiver = HoldingReceiver::start().await;
    let (key, secret) = new_moto_account().await;
    let dir = tempfile::tempdir().unwrap();
    let database = fresh_database_url(dir.path()).await;
    let env = [
        ("CORRAL_WEBHOOK_ALLOW_PRIVATE", "true"),
        ("CORRAL_NOTIFY__POLL_INTERVAL_MS", "50"),
        ("CORRAL_NOTIFY__WEBHOOK_TIMEOUT_SECS", "2"),
        ("CORRAL_NOTIFY__SMTP_TIMEOUT_SECS", "1"),
    ];
    let server = Server::start_with(&moto_url(), &database, &key, &secret, &env).await;
    let client = admin_client(&server.url).await;
    let hook = json!({ "url": receiver.url, "events": ["instance.created"], "secret": "0123456789abcdef" });
    let response =
        client.post(format!("{}/v1/webhooks", server.url)).json(&hook).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = client
        .post(format!("{}/v1/instances", server.url))
        .json(&create_body("interrupted"))
        .send()
        .await
        .unwrap();
    assert!(matches!(response.status(), StatusCode::CREATED | StatusCode::ACCEPTED));

    // Act: the moment the webhook has arrived, with corral waiting for its answer, kill -9;
    // then start corral again on the same database.
    let arrived = receiver.first_arrived.notified();
    tokio::time::timeout(Duration::from_secs(60), arrived).await.expect("the webhook arrives");
    server.kill_9();
    let server = Server::start_with(&moto_url(), &database, &key, &secret, &env).await;

    // Assert: the attempt was counted at the claim and nothing was recorded of how it went
    // (no error, not delivered): corral died between sending and recording.
    let listed = deliveries_at(&client, &server.url, "").await;
    assert_eq!(listed.len(), 1, "{listed:#?}");
    let delivery_id = listed[0]["id"].as_str().unwrap().to_string();
    let state = (listed[0]["status"].as_str(), listed[0]["attempts"].as_i64());
    assert_eq!(state, (Some("pending"), Some(1)), "{listed:#?}");
    assert_eq!(listed[0]["last_error"], Value::Null, "{listed:#?}");
    // Once the lease has run out, the restarted corral sends it again and records it delivered
    // at its second attempt; the receiver got the same delivery id both times.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let delivered = loop {
        let delivered = deliveries_at(&client, &server.url, "?status=delivered").await;
        if !delivered.is_empty() {
            break delivered;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not sent again: {:#?}",
            deliveries_at(&client, &server.url, "").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(delivered.len(), 1, "{delivered:#?}");
    assert_eq!(delivered[0]["id"], delivery_id.as_str());
    assert_eq!(delivered[0]["attempts"], 2, "{delivered:#?}");
    let received = receiver.received();
    assert_eq!(received.len(), 2, "sent before the kill and once after it: {received:#?}");
    for headers in &received {
        assert_eq!(headers["x-corral-delivery"].to_str().unwrap(), delivery_id);
    }
}

/// The SSRF guard runs again at every send: a webhook whose host passed the check when it was
/// made, but resolves to loopback by the time its delivery is sent, is refused then, naming
/// the host (not what it resolved to), and the receiver on loopback is never reached.
#[tokio::test]
async fn a_webhook_host_that_resolves_to_loopback_at_send_time_is_refused_then() {
    // Arrange: private targets refused (the default); a receiver on loopback; a webhook made for
    // a public address, whose stored target then names `localhost` instead: what an answer
    // for its name that changed after the check does, without a DNS server to change.
    let receiver = Receiver::start(200).await;
    let app = spawn_app_with(|settings| {
        settings.notify.max_attempts = 1;
        quick_retries(settings);
    })
    .await;
    let hook = json!({ "url": "http://93.184.216.34/hooks/corral", "events": ["instance.created"], "secret": "0123456789abcdef" });
    let response = app.post_json("/v1/webhooks", &hook, None).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let webhook: Value = response.json().await.unwrap();
    let rebound = receiver.url.replace("127.0.0.1", "localhost");
    db_set_subscription_target(&app, webhook["id"].as_str().unwrap(), &rebound).await;

    // Act
    app.create_running(&create_body("rebound")).await;

    // Assert: its one attempt was refused by the check at send time; nothing reached the
    // receiver.
    let dead = wait_for_deliveries(&app, "?status=dead", 1).await;
    assert_eq!(deliveries(&app, "").await.len(), 1);
    let attempt = (dead[0]["target"].as_str(), dead[0]["attempts"].as_i64());
    assert_eq!(attempt, (Some(rebound.as_str()), Some(1)), "{dead:#?}");
    let error = dead[0]["last_error"].as_str().unwrap();
    assert!(
        error.contains("webhook host 'localhost' does not resolve to public addresses only"),
        "{error}"
    );
    assert!(!error.contains("127.0.0.1") && !error.contains("::1"), "{error}");
    assert!(receiver.received().is_empty(), "{:#?}", receiver.received());
}

/// Redirects are not followed: a receiver answering 302 to another server fails the delivery
/// with that answer, and the server it points to is never asked.
#[tokio::test]
async fn a_receiver_that_redirects_fails_the_delivery_and_the_redirect_is_not_followed() {
    // Arrange: a server that records every request, of any method to any path, and answers
    // 200; a receiver that answers every webhook with a 302 to it; one attempt allowed.
    let hits: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = hits.clone();
    let landing = axum::Router::new().fallback(
        move |method: axum::http::Method, uri: axum::http::Uri| async move {
            log.lock().unwrap().push(format!("{method} {uri}"));
            StatusCode::OK
        },
    );
    let location = format!("{}/landing", serve(landing).await);
    let redirector = axum::Router::new().route(
        "/hooks/corral",
        axum::routing::any(move || async move {
            (StatusCode::FOUND, [(axum::http::header::LOCATION, location)])
        }),
    );
    let redirector_url = format!("{}/hooks/corral", serve(redirector).await);
    let app = spawn_app_with(|settings| {
        settings.notify.webhook_allow_private = true;
        settings.notify.max_attempts = 1;
        quick_retries(settings);
    })
    .await;
    let hook = json!({ "url": redirector_url, "events": ["instance.created"], "secret": "0123456789abcdef" });
    assert_eq!(app.post_json("/v1/webhooks", &hook, None).await.status(), StatusCode::CREATED);

    // Act
    app.create_running(&create_body("redirected")).await;

    // Assert: not delivered; the attempt failed on the 302 itself, and the server it pointed to
    // got nothing.
    let dead = wait_for_deliveries(&app, "?status=dead", 1).await;
    let all = deliveries(&app, "").await;
    assert_eq!(all.len(), 1, "{all:#?}");
    let error = dead[0]["last_error"].as_str().unwrap();
    assert!(error.contains("the receiver answered 302 Found"), "{error}");
    let hits = hits.lock().unwrap().clone();
    assert!(hits.is_empty(), "the redirect was followed: {hits:?}");
}

/// A reboot is announced as `instance.rebooted`, naming the instance and the reboot job.
#[tokio::test]
async fn a_reboot_is_announced_as_instance_rebooted_with_its_instance() {
    // Arrange: a global webhook for reboots only; a running instance.
    let receiver = Receiver::start(200).await;
    let app = spawn_app_with(|settings| {
        settings.notify.webhook_allow_private = true;
        quick_retries(settings);
    })
    .await;
    let secret = "0123456789abcdef";
    let hook = json!({ "url": receiver.url, "events": ["instance.rebooted"], "secret": secret });
    assert_eq!(app.post_json("/v1/webhooks", &hook, None).await.status(), StatusCode::CREATED);
    let created = app.create_running(&create_body("bouncy")).await;
    let id = created["instances"][0]["id"].as_str().unwrap().to_string();
    let cloud_id = created["instances"][0]["cloud_id"].as_str().unwrap().to_string();

    // Act
    let job: Value = app.act(&id, "reboot", "?wait=30").await.json().await.unwrap();
    assert_eq!(job["status"], "succeeded", "{job}");

    // Assert: one delivery (the creation is not among the webhook's events), the reboot's,
    // delivered at its first attempt; the receiver got it, signed, naming the instance.
    wait_for_deliveries(&app, "?status=delivered", 1).await;
    let all = deliveries(&app, "").await;
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0]["event"]["type"], "instance.rebooted", "{all:#?}");
    assert_eq!(all[0]["attempts"], 1, "{all:#?}");
    let received = receiver.received();
    assert_eq!(received.len(), 1, "{received:#?}");
    let (headers, body) = &received[0];
    verify_signature(headers, body, secret);
    assert_eq!(headers["x-corral-event"].to_str().unwrap(), "instance.rebooted");
    assert_eq!(headers["x-corral-delivery"].to_str().unwrap(), all[0]["id"].as_str().unwrap());
    let event: Value = serde_json::from_str(body).unwrap();
    assert_eq!(event["type"], "instance.rebooted", "{event:#}");
    assert_eq!(event["job_id"], job["id"], "{event:#}");
    assert_eq!(event["job_kind"], "reboot_instances", "{event:#}");
    assert_eq!(event["instances"].as_array().map(Vec::len), Some(1), "{event:#}");
    assert_eq!(event["instances"][0]["id"], id.as_str(), "{event:#}");
    assert_eq!(event["instances"][0]["cloud_id"], cloud_id.as_str(), "{event:#}");
}
