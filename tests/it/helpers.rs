//! `spawn_app()` and `TestApp`: a running corral with an HTTP client, one method per endpoint,
//! plus direct views of the emulator (`moto_*`) to check what really happened in the cloud.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use corral::config::Settings;
use corral::startup::Application;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// An AMI moto knows in every region: Amazon Linux 2, x86_64, owned by Amazon.
pub const AMI_X86: &str = "ami-04681a1dbd79675a5";
/// An AMI moto knows in every region: Amazon Linux 2022, arm64, owned by Amazon.
pub const AMI_ARM: &str = "ami-0e9271c829888680e";
/// An AMI moto knows whose owner the free-tier policy does not allow (SUSE).
pub const AMI_OTHER_OWNER: &str = "ami-35e92e4c";

/// Password of the `admin` user every test server starts with.
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";
/// Token signing key of every test server, so that tests can forge expired tokens.
pub const JWT_SECRET: &str = "jwt-secret-for-tests-0123456789abcdef";

pub fn moto_url() -> String {
    std::env::var("CORRAL_TEST_MOTO_URL").expect(
        "CORRAL_TEST_MOTO_URL is not set: run the suite with scripts/test, which starts the moto \
         EC2 emulator, or start one with scripts/moto and export its URL",
    )
}

pub struct TestApp {
    pub address: String,
    /// The SQLite file, for `db_` helpers that arrange what the API cannot.
    pub database_url: String,
    /// Sends the admin's API key with every request.
    pub client: reqwest::Client,
    /// The admin's API key.
    pub admin_key: String,
    pub ec2: aws_sdk_ec2::Client,
    /// The emulator account's access key and secret, for tools that call it directly.
    pub aws_credentials: (String, String),
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts corral on a free port with a fresh database, in a fresh emulator account.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let started = spawn_server(configure).await;
    let token = login(&started.address, "admin", ADMIN_PASSWORD).await;
    let admin_key =
        create_api_key(&client_with("authorization", &format!("Bearer {token}")), &started.address)
            .await;
    let client = client_with("x-api-key", &admin_key);
    let Started { address, database_url, ec2, aws_credentials, shutdown, dir } = started;
    TestApp { address, database_url, client, admin_key, ec2, aws_credentials, shutdown, _dir: dir }
}

/// A corral started by `spawn_server`, before anyone logged in.
pub struct Started {
    pub address: String,
    pub database_url: String,
    pub ec2: aws_sdk_ec2::Client,
    pub aws_credentials: (String, String),
    pub shutdown: CancellationToken,
    pub dir: tempfile::TempDir,
}

/// Starts corral as `spawn_app_with` does, without logging in (the admin's password is
/// `ADMIN_PASSWORD` unless `configure` changes it). It stops when `shutdown` is cancelled.
pub async fn spawn_server(configure: impl FnOnce(&mut Settings)) -> Started {
    corral::telemetry::init(if std::env::var("TEST_LOG").is_ok() { "info" } else { "off" });
    let dir = tempfile::tempdir().unwrap();
    let (key_id, secret) = new_moto_account().await;
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: fresh_database_url(dir.path()).await,
        data_dir: Some(dir.path().join("data").display().to_string()),
        ..Settings::default()
    };
    settings.aws.endpoint_url = Some(moto_url());
    settings.aws.access_key_id = Some(key_id.clone());
    settings.aws.secret_access_key = Some(secret.clone().into());
    settings.jobs.poll_interval_ms = 100;
    settings.jobs.state_poll_initial_ms = 50;
    settings.jobs.state_poll_max_ms = 500;
    settings.jobs.retry_delay_secs = 0.05;
    // Tests measure behaviour, not EC2's budget: the limiter has unit tests of its own.
    let fast = corral::config::Bucket { burst: 1000.0, per_second: 1000.0 };
    settings.aws.rate_limits =
        corral::config::RateLimits { launch: fast, mutate: fast, describe: fast };
    settings.reconcile.interval_secs = 0.0;
    settings.auth.admin_password = Some(ADMIN_PASSWORD.into());
    settings.auth.jwt_secret = Some(JWT_SECRET.into());
    if let Some(mirror) = terraform_mirror_path() {
        let rc = dir.path().join("cli.tfrc");
        std::fs::write(&rc, terraform_cli_config(&mirror)).unwrap();
        settings.terraform.cli_config = Some(rc.display().to_string());
        settings.terraform.work_dir = Some(dir.path().join("terraform").display().to_string());
    }
    configure(&mut settings);
    let database_url = settings.database_url.clone();
    let app = Application::build(settings).await.expect("corral builds");
    let address = format!("http://{}", app.local_addr());
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let ec2 = ec2_client(&key_id, &secret);
    Started { address, database_url, ec2, aws_credentials: (key_id, secret), shutdown, dir }
}

/// The folder holding `registry.terraform.io/hashicorp/aws/…`, set by `scripts/test` when it
/// finds the provider on this machine.
fn terraform_mirror_path() -> Option<String> {
    std::env::var("CORRAL_TEST_TF_MIRROR").ok().filter(|m| !m.is_empty())
}

/// Decides what a test does when something it needs (`what`) is missing from this machine.
/// Under `CI=true`, `CORRAL_TEST_REQUIRE_ALL=1` or `CORRAL_TEST_REQUIRE_<SWITCH>=1` the test
/// fails: a check that cannot run is not a check that passed. Otherwise the skip is written to
/// the file `CORRAL_TEST_SKIP_LOG` names (`scripts/test` lists them at the end of its run) and to
/// stderr, and the caller returns.
pub fn missing_prerequisite(switch: &str, what: &str) {
    let on =
        |name: &str| std::env::var(name).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let test = std::thread::current().name().unwrap_or("a test").to_string();
    if on("CI") || on("CORRAL_TEST_REQUIRE_ALL") || on(&format!("CORRAL_TEST_REQUIRE_{switch}")) {
        panic!("{test} needs {what}, which is missing on this machine");
    }
    eprintln!("SKIPPED: {test} needs {what}");
    if let Ok(log) = std::env::var("CORRAL_TEST_SKIP_LOG") {
        use std::io::Write;
        let mut file =
            std::fs::OpenOptions::new().create(true).append(true).open(log).expect("skip log");
        writeln!(file, "{test}: needs {what}").expect("skip log");
    }
}

/// The provider mirror when terraform can run here; otherwise `None`, after
/// `missing_prerequisite` (which fails the test in CI).
pub fn terraform_mirror() -> Option<String> {
    let found = std::process::Command::new("terraform").arg("version").output().is_ok();
    match (found, terraform_mirror_path()) {
        (true, Some(mirror)) => Some(mirror),
        _ => {
            missing_prerequisite(
                "TERRAFORM",
                "terraform and its provider mirror (CORRAL_TEST_TF_MIRROR, set by scripts/test \
                 when it finds terraform-provider-aws on this machine)",
            );
            None
        }
    }
}

/// The PostgreSQL server of a test that only means something on PostgreSQL (the tests in
/// `postgres::`, which the SQLite pass of `scripts/test` leaves out); otherwise `None`, after
/// `missing_prerequisite`.
pub fn postgres_only() -> Option<String> {
    let url = postgres_url();
    if url.is_none() {
        missing_prerequisite("POSTGRES", "a PostgreSQL server (CORRAL_TEST_POSTGRES_URL)");
    }
    url
}

/// A Terraform CLI configuration that takes the AWS provider from `mirror` only.
pub fn terraform_cli_config(mirror: &str) -> String {
    format!(
        "provider_installation {{\n  filesystem_mirror {{\n    path = \"{mirror}\"\n    \
         include = [\"registry.terraform.io/hashicorp/aws\"]\n  }}\n  direct {{\n    \
         exclude = [\"registry.terraform.io/hashicorp/aws\"]\n  }}\n}}\n"
    )
}

impl TestApp {
    /// Runs terraform in `dir` as a user would, with this app's emulator account and the
    /// provider mirror; returns its output, or the output as the error when it fails.
    pub async fn terraform(
        &self,
        dir: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<String, String> {
        let mirror = terraform_mirror_path().expect("callers check terraform_mirror()");
        let rc = dir.join("cli.tfrc");
        std::fs::write(&rc, terraform_cli_config(&mirror)).unwrap();
        let (key, secret) = &self.aws_credentials;
        let output = tokio::process::Command::new("terraform")
            .args(args)
            .current_dir(dir)
            .env("TF_CLI_CONFIG_FILE", &rc)
            .env("TF_IN_AUTOMATION", "1")
            .env("AWS_ACCESS_KEY_ID", key)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env_remove("AWS_PROFILE")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if output.status.success() { Ok(text) } else { Err(text) }
    }
}

/// A job's history, oldest first.
pub async fn job_history(app: &TestApp, job_id: &str) -> Vec<Value> {
    let events: Value = app.get(&format!("/v1/jobs/{job_id}/events")).await.json().await.unwrap();
    events["items"].as_array().unwrap().clone()
}

/// The step that starts each run of a job ("attempt N of M started by worker W"), in order.
pub fn run_starts(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["kind"] == "step")
        .filter_map(|e| e["message"].as_str())
        .filter(|message| message.starts_with("attempt "))
        .map(str::to_string)
        .collect()
}

/// The runs that ended in a transient failure, which the worker does not count.
pub fn uncounted_failures(events: &[Value]) -> usize {
    events
        .iter()
        .filter(|e| e["kind"] == "error")
        .filter(|e| e["message"].as_str().unwrap().contains("transient, not counted"))
        .count()
}

/// How long a finished job ran, from its first start to its end.
pub fn job_duration(job: &Value) -> std::time::Duration {
    let at = |field: &str| {
        let text = job[field].as_str().unwrap_or_else(|| panic!("{field} of {job}"));
        chrono::DateTime::parse_from_rfc3339(text).unwrap()
    };
    (at("finished_at") - at("started_at")).to_std().unwrap()
}

/// A job that gave up on transient failures ran at least `budget` seconds, not much longer,
/// and says how long it went on.
pub fn assert_gave_up_after_budget(job: &Value, budget: f64) {
    let error = job["error"].as_str().unwrap();
    assert!(error.starts_with("gave up after"), "{error}");
    assert!(error.contains("of transient failures"), "{error}");
    let lasted = job_duration(job).as_secs_f64();
    // The last try starts at most one capped backoff after the budget ran out.
    assert!(
        lasted >= budget && lasted < budget + 10.0,
        "ran {lasted:.1}s on a {budget}s budget: {job}"
    );
    let said: f64 = error["gave up after ".len()..].split('s').next().unwrap().parse().unwrap();
    assert!(said >= budget.floor(), "{error}");
}

/// A token for `username` from `POST /v1/token`.
pub async fn login(base: &str, username: &str, password: &str) -> String {
    let response = http()
        .post(format!("{base}/v1/token"))
        .form(&[("username", username), ("password", password)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "login as {username}");
    let body: Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_string()
}

/// A new API key of whoever `client` authenticates as.
pub async fn create_api_key(client: &reqwest::Client, base: &str) -> String {
    let response = client
        .post(format!("{base}/v1/api-keys"))
        .json(&json!({ "name": "tests" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    body["key"].as_str().unwrap().to_string()
}

/// A plain HTTP client. corral's own clients bring their TLS settings, so the process has no
/// default crypto provider for a bare `reqwest::Client::new()`: tests use this instead.
pub fn http() -> reqwest::Client {
    http_builder().build().unwrap()
}

fn http_builder() -> reqwest::ClientBuilder {
    static TLS: std::sync::OnceLock<rustls::ClientConfig> = std::sync::OnceLock::new();
    let tls = TLS.get_or_init(|| corral::tls_client_config().unwrap());
    reqwest::Client::builder().use_preconfigured_tls(tls.clone())
}

/// A client that sends `header: value` with every request.
pub fn client_with(header: &'static str, value: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(header, reqwest::header::HeaderValue::from_str(value).unwrap());
    http_builder().default_headers(headers).build().unwrap()
}

/// A client acting as the bootstrap admin of the server at `base`, with a bearer token.
pub async fn admin_client(base: &str) -> reqwest::Client {
    let token = login(base, "admin", ADMIN_PASSWORD).await;
    client_with("authorization", &format!("Bearer {token}"))
}

/// The base URL of the throwaway PostgreSQL cluster, when the suite runs on PostgreSQL.
pub fn postgres_url() -> Option<String> {
    std::env::var("CORRAL_TEST_POSTGRES_URL").ok().filter(|url| !url.is_empty())
}

/// A new, empty database: a fresh PostgreSQL database when the suite runs on PostgreSQL
/// (`CORRAL_TEST_POSTGRES_URL`), else a SQLite file in `dir`.
pub async fn fresh_database_url(dir: &std::path::Path) -> String {
    match postgres_url() {
        Some(base) => new_postgres_database(&base).await,
        None => format!("sqlite://{}", dir.join("corral.db").display()),
    }
}

/// Creates a database in the cluster at `base` and returns its URL.
pub async fn new_postgres_database(base: &str) -> String {
    use sqlx::Connection;
    let name = format!("corral_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(base).await.expect("PostgreSQL answers");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    format!("{prefix}/{name}")
}

/// An EC2 client straight to the emulator (not through corral), in the account of `key_id`.
pub fn ec2_client(key_id: &str, secret: &str) -> aws_sdk_ec2::Client {
    let config = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(moto_url())
        .credentials_provider(Credentials::new(key_id, secret, None, None, "test"))
        .build();
    aws_sdk_ec2::Client::from_conf(config)
}

/// Creates an IAM user with an access key in a new emulator account; moto routes every call
/// signed with that key to that account, so tests never see each other's instances.
pub async fn new_moto_account() -> (String, String) {
    let account: u64 = 100_000_000_000 + (uuid::Uuid::new_v4().as_u128() % 899_999_999_999) as u64;
    let client = http();
    let call = |body: &'static str| {
        client
            .post(moto_url())
            .header("x-moto-account-id", account.to_string())
            .header(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20260101/us-east-1/iam/aws4_request, \
                 SignedHeaders=host, Signature=0",
            )
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let created = call("Action=CreateUser&UserName=corral&Version=2010-05-08").await.unwrap();
    assert!(created.status().is_success(), "moto CreateUser: {}", created.text().await.unwrap());
    let key = call("Action=CreateAccessKey&UserName=corral&Version=2010-05-08")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    (xml_value(&key, "AccessKeyId"), xml_value(&key, "SecretAccessKey"))
}

fn xml_value(xml: &str, element: &str) -> String {
    let open = format!("<{element}>");
    let start = xml.find(&open).unwrap_or_else(|| panic!("no {element} in {xml}")) + open.len();
    let end = xml[start..].find('<').unwrap() + start;
    xml[start..end].to_string()
}

/// A valid create request for one t3.micro.
pub fn create_body(name: &str) -> Value {
    json!({ "name": name, "ami": AMI_X86, "instance_type": "t3.micro" })
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn post_json(
        &self,
        path: &str,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> Response {
        let mut request = self.client.post(self.url(path)).json(body);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.unwrap()
    }

    pub async fn post_empty(&self, path: &str) -> Response {
        self.client.post(self.url(path)).send().await.unwrap()
    }

    /// Creates namespaces (as the admin), without quotas.
    pub async fn create_namespaces(&self, names: &[&str]) {
        for name in names {
            let response = self.post_json("/v1/namespaces", &json!({ "name": name }), None).await;
            assert_eq!(response.status(), StatusCode::CREATED, "create namespace {name}");
        }
    }

    /// Runs a reconcile pass now and waits for it.
    pub async fn reconcile(&self) -> Value {
        let job: Value = self.post_empty("/v1/reconcile?wait=60").await.json().await.unwrap();
        assert_eq!(job["status"], "succeeded", "{job}");
        job
    }

    /// Points a stored instance at a cloud id the cloud has never heard of, as if the instance
    /// had vanished.
    pub async fn db_forget_cloud_instance(&self, instance_id: &str) {
        let sql = "UPDATE instances SET cloud_id = 'i-0000000000deadbee' WHERE id = $1";
        if self.database_url.starts_with("sqlite:") {
            let pool = sqlx::SqlitePool::connect(&self.database_url).await.unwrap();
            sqlx::query(sql).bind(instance_id).execute(&pool).await.unwrap();
        } else {
            let pool = sqlx::PgPool::connect(&self.database_url).await.unwrap();
            sqlx::query(sql).bind(instance_id).execute(&pool).await.unwrap();
        }
    }

    /// The payloads of the notification events of `event_type`, oldest first, as stored.
    pub async fn db_notification_payloads(&self, event_type: &str) -> Vec<Value> {
        let sql = "SELECT payload FROM notification_events WHERE type = $1 ORDER BY created_at, id";
        let rows: Vec<(String,)> = if self.database_url.starts_with("sqlite:") {
            let pool = sqlx::SqlitePool::connect(&self.database_url).await.unwrap();
            sqlx::query_as(sql).bind(event_type).fetch_all(&pool).await.unwrap()
        } else {
            let pool = sqlx::PgPool::connect(&self.database_url).await.unwrap();
            sqlx::query_as(sql).bind(event_type).fetch_all(&pool).await.unwrap()
        };
        rows.iter().map(|(payload,)| serde_json::from_str(payload).unwrap()).collect()
    }

    pub async fn post_instances(&self, body: &Value, query: &str) -> Response {
        self.client
            .post(self.url(&format!("/v1/instances{query}")))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> Response {
        self.client
            .post(self.url(path))
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_instances(&self, query: &str) -> Response {
        self.get(&format!("/v1/instances{query}")).await
    }

    pub async fn get_instance(&self, id: &str) -> Response {
        self.get(&format!("/v1/instances/{id}")).await
    }

    /// `start`, `stop` or `reboot` by POST, `terminate` by DELETE.
    pub async fn act(&self, id: &str, action: &str, query: &str) -> Response {
        let request = if action == "terminate" {
            self.client.delete(self.url(&format!("/v1/instances/{id}{query}")))
        } else {
            self.client.post(self.url(&format!("/v1/instances/{id}/{action}{query}")))
        };
        request.send().await.unwrap()
    }

    pub async fn post_bulk_action(&self, body: &Value, query: &str) -> Response {
        self.client
            .post(self.url(&format!("/v1/instances/actions{query}")))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_job(&self, id: &str) -> Response {
        self.get(&format!("/v1/jobs/{id}")).await
    }

    pub async fn get_jobs(&self, query: &str) -> Response {
        self.get(&format!("/v1/jobs{query}")).await
    }

    /// The messages of a job's history, one per line.
    pub async fn job_steps(&self, job_id: &str) -> String {
        let events: Value =
            self.get(&format!("/v1/jobs/{job_id}/events")).await.json().await.unwrap();
        let messages: Vec<&str> = events["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|event| event["message"].as_str())
            .collect();
        messages.join("\n")
    }

    /// Polls a job until it has finished, for tests that did not pass `?wait=` or whose wait
    /// ran out. Gives up after 300 s: a guard against a job that never ends, not a measure of
    /// speed (a Terraform job on a loaded machine takes a minute or two).
    pub async fn wait_for_job(&self, id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        while tokio::time::Instant::now() < deadline {
            let job: Value = self.get_job(id).await.json().await.unwrap();
            if job["status"] == "succeeded" || job["status"] == "failed" {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("job {id} did not finish in 300 s");
    }

    /// Creates instances and waits for the job; panics unless it succeeded.
    pub async fn create_running(&self, body: &Value) -> Value {
        let response = self.post_instances(body, "?wait=30").await;
        // 201 when the job finished within the wait, 202 when a loaded machine made it longer.
        let status = response.status();
        assert!(matches!(status, StatusCode::CREATED | StatusCode::ACCEPTED), "{status}");
        let job: Value = response.json().await.unwrap();
        let job = self.wait_for_job(job["id"].as_str().unwrap()).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        job
    }

    /// Launches one instance straight in the emulator, behind corral's back, with these tags;
    /// answers its EC2 id.
    pub async fn launch_in_moto(&self, tags: &[(&str, &str)]) -> String {
        let mut spec = TagSpecification::builder().resource_type(ResourceType::Instance);
        for (key, value) in tags {
            spec = spec.tags(Tag::builder().key(*key).value(*value).build());
        }
        let output = self
            .ec2
            .run_instances()
            .image_id(AMI_X86)
            .instance_type("t3.micro".into())
            .min_count(1)
            .max_count(1)
            .tag_specifications(spec.build())
            .send()
            .await
            .unwrap();
        output.instances()[0].instance_id().unwrap().to_string()
    }

    /// Every instance in the emulator account, by EC2 id.
    pub async fn moto_instances(&self) -> BTreeMap<String, aws_sdk_ec2::types::Instance> {
        let output = self.ec2.describe_instances().send().await.unwrap();
        output
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .map(|i| (i.instance_id().unwrap().to_string(), i.clone()))
            .collect()
    }

    pub async fn moto_state(&self, cloud_id: &str) -> String {
        let instances = self.moto_instances().await;
        instances[cloud_id].state().unwrap().name().unwrap().as_str().to_string()
    }
}

/// The fields a problem's `errors` name, in order.
pub fn problem_fields(problem: &Value) -> Vec<&str> {
    let errors = problem["errors"].as_array().expect("the problem lists its errors");
    errors.iter().map(|error| error["field"].as_str().expect("each error names a field")).collect()
}

pub fn tags_of(instance: &aws_sdk_ec2::types::Instance) -> BTreeMap<String, String> {
    instance
        .tags()
        .iter()
        .map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string()))
        .collect()
}

/// Asserts a problem-details answer and returns its body.
pub async fn assert_problem(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    assert!(body["title"].is_string() && body["detail"].is_string() && body["type"].is_string());
    body
}

/// YAML read back by PyYAML (from the test venv), as JSON.
pub async fn parse_yaml(yaml: &str) -> Value {
    use tokio::io::AsyncWriteExt;
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    let mut child = tokio::process::Command::new(python)
        .args(["-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).await.unwrap();
    let output = child.wait_with_output().await.unwrap();
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| panic!("{err}: {yaml}"))
}
