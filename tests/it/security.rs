//! Attacks by the actors of SECURITY.md, each shown to fail: operators writing Terraform state,
//! password guessing and lockouts, credentials outliving what made them, two credentials in
//! one request, a reused username, a generated first password. (Attacks that need the real
//! terraform live in `terraform`, those on the CLI in `cli` and the unit tests of
//! `cli::profile`.)

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_PASSWORD, TestApp, assert_problem, client_with, create_body, http, login, spawn_app,
    spawn_app_with,
};

#[tokio::test]
async fn an_operator_cannot_write_or_lock_terraform_state_only_read_it() {
    let app = spawn_app().await;
    let job = app.create_running(&create_body("stateful")).await;
    let workspace = job["id"].as_str().unwrap();
    let operator =
        client_with("x-api-key", &app.user_key("olga", json!({ "default": "operator" })).await);
    let address = app.url(&format!("/v1/terraform/state/{workspace}"));
    let state = json!({ "version": 4, "serial": 1, "lineage": "x", "resources": [] });
    let lock = json!({ "ID": "olga-1", "Operation": "OperationTypeApply" });

    for (method, body) in
        [("POST", &state), ("LOCK", &lock), ("UNLOCK", &lock), ("DELETE", &Value::Null)]
    {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let response = operator.request(method.clone(), &address).json(body).send().await.unwrap();
        let problem = assert_problem(response, StatusCode::FORBIDDEN).await;
        assert!(problem["detail"].as_str().unwrap().contains("admins"), "{method}: {problem}");
    }
    // Reading stays open to operators; nothing was written or locked.
    let read = operator.get(&address).send().await.unwrap();
    assert_eq!(read.status(), StatusCode::NO_CONTENT);
    let admin_lock = app.client.request(Method::from_bytes(b"LOCK").unwrap(), &address);
    assert_eq!(admin_lock.json(&lock).send().await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn a_stranger_is_refused_before_sending_a_state_body() {
    let app = spawn_app().await;
    let job = app.create_running(&create_body("big-state")).await;
    let stranger = client_with("x-api-key", &app.user_key("sid", json!({})).await);
    // 8 MiB announced, one chunk sent, the rest never: the answer comes without the body.
    let (sender, mut receiver) =
        tokio::sync::mpsc::channel::<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>>(1);
    sender.send(Ok(hyper::body::Frame::data(bytes::Bytes::from(vec![b'{'; 1024])))).await.unwrap();
    let stream = futures_util::stream::poll_fn(move |context| receiver.poll_recv(context));
    let request = stranger
        .post(app.url(&format!("/v1/terraform/state/{}", job["id"].as_str().unwrap())))
        .header("content-length", (8 * 1024 * 1024).to_string())
        .body(reqwest::Body::wrap(http_body_util::StreamBody::new(stream)));
    let response = tokio::time::timeout(Duration::from_secs(10), request.send())
        .await
        .expect("answered before the body was sent")
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    drop(sender);
}

/// `count` logins as `username` with `password` sent at once from `client`; their statuses.
async fn logins_at_once(
    app: &TestApp,
    client: &reqwest::Client,
    username: &str,
    password: &str,
    count: usize,
) -> Vec<StatusCode> {
    let attempts = (0..count).map(|_| {
        client
            .post(app.url("/v1/token"))
            .form(&[("username", username), ("password", password)])
            .send()
    });
    futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|response| response.unwrap().status())
        .collect()
}

#[tokio::test]
async fn guesses_sent_at_once_are_counted_before_any_password_is_hashed() {
    let app = spawn_app().await;
    let statuses = logins_at_once(&app, &http(), "admin", "a wrong guess", 30).await;
    let wrong = statuses.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count();
    let refused = statuses
        .iter()
        .filter(|s| [StatusCode::TOO_MANY_REQUESTS, StatusCode::SERVICE_UNAVAILABLE].contains(s))
        .count();
    // The limit is 5 failures per user and client: no more than 5 guesses were checked.
    assert!(wrong <= 5, "{wrong} guesses were checked: {statuses:?}");
    assert_eq!(wrong + refused, 30, "{statuses:?}");
}

#[tokio::test]
async fn a_stranger_failing_logins_cannot_lock_the_user_out_elsewhere() {
    let app = spawn_app_with(|settings| {
        settings.server.trusted_proxies = vec!["127.0.0.1/32".to_string()];
    })
    .await;
    // Behind a trusted proxy (here: loopback), each client is its X-Forwarded-For address.
    let from = |address: &str| client_with("x-forwarded-for", address);
    let attacker = from("203.0.113.66");
    for _ in 0..6 {
        let statuses = logins_at_once(&app, &attacker, "admin", "guess", 1).await;
        assert_ne!(statuses[0], StatusCode::OK);
    }
    // The attacker's own client waits, even with the right password ...
    let statuses = logins_at_once(&app, &attacker, "admin", ADMIN_PASSWORD, 1).await;
    assert_eq!(statuses, [StatusCode::TOO_MANY_REQUESTS]);
    // ... and the admin, elsewhere, is not held back at all, nor from another IPv6 /64.
    for address in ["198.51.100.7", "2001:db8:1:1::5"] {
        let statuses = logins_at_once(&app, &from(address), "admin", ADMIN_PASSWORD, 1).await;
        assert_eq!(statuses, [StatusCode::OK], "from {address}");
    }
    // A forwarded address is believed from a trusted proxy only, and only its last hop: a
    // client writing the header itself still counts as the address the proxy saw.
    let spoofing = client_with("x-forwarded-for", "198.51.100.7, 203.0.113.66");
    let statuses = logins_at_once(&app, &spoofing, "admin", ADMIN_PASSWORD, 1).await;
    assert_eq!(statuses, [StatusCode::TOO_MANY_REQUESTS]);
}

#[tokio::test]
async fn without_trusted_proxies_a_forwarded_address_is_ignored() {
    let app = spawn_app().await;
    for _ in 0..5 {
        let guess = client_with("x-forwarded-for", &format!("203.0.113.{}", rand_octet()));
        logins_at_once(&app, &guess, "admin", "guess", 1).await;
    }
    // Every guess came from 127.0.0.1, whatever the header said.
    let statuses = logins_at_once(&app, &http(), "admin", ADMIN_PASSWORD, 1).await;
    assert_eq!(statuses, [StatusCode::TOO_MANY_REQUESTS]);
    // And `"cidr": "caller"` is the connection's address too.
    let mut body = create_body("caller-rule");
    body["ingress"] = json!([{ "port": 22, "cidr": "caller" }]);
    let spoofed = app.client.post(app.url("/v1/instances?wait=30"));
    let job: Value = spoofed
        .header("x-forwarded-for", "0.0.0.0")
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(job["status"], "succeeded", "{job}");
    let groups = app.ec2.describe_security_groups().send().await.unwrap();
    let cidrs: Vec<&str> = groups
        .security_groups()
        .iter()
        .flat_map(|g| g.ip_permissions())
        .flat_map(|p| p.ip_ranges())
        .filter_map(|r| r.cidr_ip())
        .collect();
    assert!(cidrs.contains(&"127.0.0.1/32") && !cidrs.contains(&"0.0.0.0/32"), "{cidrs:?}");
}

fn rand_octet() -> u8 {
    (uuid::Uuid::new_v4().as_u128() % 250) as u8 + 1
}

#[tokio::test]
async fn an_overlong_username_is_refused_without_a_hash_or_a_count() {
    let app = spawn_app_with(|settings| settings.auth.login_failures_per_address = 2).await;
    let long = "a".repeat(10_000);
    for _ in 0..5 {
        let statuses = logins_at_once(&app, &http(), &long, "whatever", 1).await;
        assert_eq!(statuses, [StatusCode::UNAUTHORIZED]);
    }
    // Nothing was counted against the client.
    let statuses = logins_at_once(&app, &http(), "admin", ADMIN_PASSWORD, 1).await;
    assert_eq!(statuses, [StatusCode::OK]);
}

#[tokio::test]
async fn a_token_cannot_mint_a_key_that_outlives_it() {
    let app = spawn_app().await;
    let token = login(&app.address, "admin", ADMIN_PASSWORD).await;
    let with_token = client_with("authorization", &format!("Bearer {token}"));
    let minted = |client: &reqwest::Client, body: Value| {
        let request = client.post(app.url("/v1/api-keys")).json(&body).send();
        async move {
            let response = request.await.unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let never = minted(&with_token, json!({ "name": "forever" })).await;
    assert_eq!(never.0, StatusCode::CREATED);
    let expires = chrono::DateTime::parse_from_rfc3339(never.1["expires_at"].as_str().unwrap())
        .expect("the key expires");
    let left = expires.signed_duration_since(chrono::Utc::now()).num_seconds();
    assert!((1700..=1805).contains(&left), "expires in {left} s, as the token does");
    // A key made by that key expires no later either.
    let key = never.1["key"].as_str().unwrap().to_string();
    let later = (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339();
    let child =
        minted(&client_with("x-api-key", &key), json!({ "name": "c", "expires_at": later })).await;
    assert_eq!(child.0, StatusCode::CREATED);
    assert!(child.1["expires_at"].as_str().unwrap() <= never.1["expires_at"].as_str().unwrap());
    // The password, proven again, lets a key outlive the token; a wrong one does not.
    let wrong = minted(&with_token, json!({ "name": "w", "password": "not it at all" })).await;
    assert_eq!(wrong.0, StatusCode::UNPROCESSABLE_ENTITY, "{}", wrong.1);
    let proven = minted(&with_token, json!({ "name": "p", "password": ADMIN_PASSWORD })).await;
    assert_eq!(proven.0, StatusCode::CREATED);
    assert_eq!(proven.1["expires_at"], Value::Null);
}

#[tokio::test]
async fn a_stolen_token_cannot_change_the_password_and_a_change_ends_old_tokens() {
    let app = spawn_app().await;
    app.user_key("ann", json!({})).await;
    let token = login(&app.address, "ann", "ann-password-123").await;
    let thief = client_with("authorization", &format!("Bearer {token}"));
    let change = |client: &reqwest::Client, body: Value| {
        client.patch(app.url("/v1/users/ann")).json(&body).send()
    };
    let taken = change(&thief, json!({ "password": "the thief's password" })).await.unwrap();
    let problem = assert_problem(taken, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(problem["errors"][0]["field"], "current_password", "{problem}");
    let wrong = json!({ "password": "the thief's password", "current_password": "a guess" });
    let problem =
        assert_problem(change(&thief, wrong).await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY)
            .await;
    assert_eq!(problem["errors"][0]["message"], "is not your current password");
    login(&app.address, "ann", "ann-password-123").await;

    // Ann changes it herself: the old token stops working, a new login works.
    let own = json!({ "password": "ann's new password", "current_password": "ann-password-123" });
    assert_eq!(change(&thief, own).await.unwrap().status(), StatusCode::OK);
    let after = thief.get(app.url("/v1/me")).send().await.unwrap();
    let problem = assert_problem(after, StatusCode::UNAUTHORIZED).await;
    assert!(problem["detail"].as_str().unwrap().contains("password changed"), "{problem}");
    let fresh = login(&app.address, "ann", "ann's new password").await;
    let me = client_with("authorization", &format!("Bearer {fresh}")).get(app.url("/v1/me"));
    assert_eq!(me.send().await.unwrap().status(), StatusCode::OK);
    // An admin resets someone else's password without knowing it.
    let reset = app.client.patch(app.url("/v1/users/ann"));
    let reset = reset.json(&json!({ "password": "reset by the admin" })).send().await.unwrap();
    assert_eq!(reset.status(), StatusCode::OK);
    login(&app.address, "ann", "reset by the admin").await;
}

#[tokio::test]
async fn two_credentials_must_both_be_valid_and_the_same_user() {
    let app = spawn_app().await;
    let ann_key = app.user_key("ann", json!({})).await;
    let admin_token = login(&app.address, "admin", ADMIN_PASSWORD).await;
    let both = |key: &str, authorization: &str| {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-api-key", key.parse().unwrap());
        headers.insert("authorization", authorization.parse().unwrap());
        http().get(app.url("/v1/me")).headers(headers).send()
    };
    let bogus = both(&app.admin_key, "Bearer not-a-token").await.unwrap();
    assert_eq!(bogus.status(), StatusCode::UNAUTHORIZED);
    let bogus_key = both("crl_bogus", &format!("Bearer {admin_token}")).await.unwrap();
    assert_eq!(bogus_key.status(), StatusCode::UNAUTHORIZED);
    let mixed = both(&ann_key, &format!("Bearer {admin_token}")).await.unwrap();
    let problem = assert_problem(mixed, StatusCode::UNAUTHORIZED).await;
    assert!(problem["detail"].as_str().unwrap().contains("different users"), "{problem}");
    let same = both(&app.admin_key, &format!("Bearer {admin_token}")).await.unwrap();
    assert_eq!(same.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_reused_username_does_not_see_the_jobs_of_the_user_it_replaces() {
    let app = spawn_app().await;
    app.create_namespaces(&["team"]).await;
    let as_dana = |token: String| client_with("authorization", &format!("Bearer {token}"));
    app.user_key("dana", json!({ "team": "operator" })).await;
    let first = as_dana(login(&app.address, "dana", "dana-password-123").await);
    let mut body = create_body("dana-box");
    body["namespace"] = json!("team");
    let job: Value = first
        .post(app.url("/v1/instances?wait=30"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(job["actor"], "dana", "{job}");
    let job_path = format!("/v1/jobs/{}", job["id"].as_str().unwrap());

    // dana leaves; someone new gets the name, with no role in the team.
    let deleted = app.client.delete(app.url("/v1/users/dana")).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    app.user_key("dana", json!({})).await;
    let second = as_dana(login(&app.address, "dana", "dana-password-123").await);
    let listed: Value = second.get(app.url("/v1/jobs")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["items"], json!([]), "{listed}");
    let read = second.get(app.url(&job_path)).send().await.unwrap();
    assert_eq!(read.status(), StatusCode::NOT_FOUND);

    // Names corral itself acts under cannot be taken.
    for reserved in ["system", "crl_ab12cd34"] {
        let body = json!({ "username": reserved, "password": "long enough password" });
        let response = app.post_json("/v1/users", &body, None).await;
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(problem["errors"][0]["field"], "username", "{problem}");
    }
}

#[tokio::test]
async fn a_generated_first_password_is_in_a_private_file_and_must_be_changed() {
    let server = crate::helpers::spawn_server(|settings| settings.auth.admin_password = None).await;
    let _stop = server.shutdown.clone().drop_guard();
    let address = &server.address;
    let file = server.dir.path().join("data").join("initial-admin-password");
    let metadata = std::fs::metadata(&file).expect("the password is in the data directory");
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o777, 0o600);
    let password = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert_eq!(password.len(), 24);

    let token = login(address, "admin", &password).await;
    let admin = client_with("authorization", &format!("Bearer {token}"));
    let refused = admin.get(format!("{address}/v1/instances")).send().await.unwrap();
    let problem = assert_problem(refused, StatusCode::FORBIDDEN).await;
    assert!(problem["detail"].as_str().unwrap().contains("must be changed"), "{problem}");
    let me = admin.get(format!("{address}/v1/me")).send().await.unwrap();
    assert_eq!(me.status(), StatusCode::OK);
    let change = json!({ "password": "the admin's own choice", "current_password": password });
    let changed = admin.patch(format!("{address}/v1/users/admin")).json(&change).send().await;
    assert_eq!(changed.unwrap().status(), StatusCode::OK);
    let token = login(address, "admin", "the admin's own choice").await;
    let admin = client_with("authorization", &format!("Bearer {token}"));
    let listed = admin.get(format!("{address}/v1/instances")).send().await.unwrap();
    assert_eq!(listed.status(), StatusCode::OK);
}

/// `corral serve` as an operator starts it by hand: without `CORRAL_ADMIN_PASSWORD`, with a
/// data directory, its output (at debug level) in a file. Killed when dropped.
struct Serving {
    child: std::process::Child,
    base: String,
}

impl Serving {
    async fn start(
        database: &str,
        data_dir: &std::path::Path,
        log: &std::path::Path,
        aws: &(String, String),
    ) -> Serving {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let output = std::fs::File::create(log).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_corral"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--database", database])
            .env_remove("CORRAL_ADMIN_PASSWORD")
            .env_remove("CORRAL_AUTH__ADMIN_PASSWORD")
            .env("CORRAL_DATA_DIR", data_dir)
            .env("CORRAL_RECONCILE_INTERVAL", "0")
            .env("AWS_ENDPOINT_URL", crate::helpers::moto_url())
            .env("AWS_ACCESS_KEY_ID", &aws.0)
            .env("AWS_SECRET_ACCESS_KEY", &aws.1)
            .env("AWS_REGION", "us-east-1")
            .env("RUST_LOG", "debug")
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .unwrap();
        let serving = Serving { child, base: format!("http://127.0.0.1:{port}") };
        for _ in 0..400 {
            if http().get(format!("{}/health", serving.base)).send().await.is_ok() {
                return serving;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("corral did not start: {}", std::fs::read_to_string(log).unwrap_or_default());
    }

    /// SIGTERM, and waits until the process has ended.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first start with no admin hands the generated password over once: in a 0600 file of
/// the data directory, never in the server's output. A second start on the same database
/// neither rewrites the file nor makes a new password: the first one still logs in, and still
/// opens nothing until it is changed, not even an API key that would outlive it.
#[tokio::test]
async fn a_generated_first_password_is_handed_over_once_and_never_logged() {
    // Arrange
    let aws = crate::helpers::new_moto_account().await;
    let dir = tempfile::tempdir().unwrap();
    let database = crate::helpers::fresh_database_url(dir.path()).await;
    let data_dir = dir.path().join("data");
    let file = data_dir.join("initial-admin-password");
    let (first_log, second_log) = (dir.path().join("first.log"), dir.path().join("second.log"));

    // Act: a first start, a login with the generated password, an API key asked for ...
    let first = Serving::start(&database, &data_dir, &first_log, &aws).await;
    let handed_over =
        std::fs::read_to_string(&file).expect("the password is in the data directory");
    let metadata = std::fs::metadata(&file).unwrap();
    let password = handed_over.trim().to_string();
    let token = login(&first.base, "admin", &password).await;
    let admin = client_with("authorization", &format!("Bearer {token}"));
    let early_key = admin
        .post(format!("{}/v1/api-keys", first.base))
        .json(&json!({ "name": "before the change" }))
        .send()
        .await
        .unwrap();
    let early_key = assert_problem(early_key, StatusCode::FORBIDDEN).await;
    first.stop();
    // ... then a second start on the same database and data directory.
    let second = Serving::start(&database, &data_dir, &second_log, &aws).await;
    let token = login(&second.base, "admin", &password).await;
    let admin = client_with("authorization", &format!("Bearer {token}"));
    let listed = admin.get(format!("{}/v1/instances", second.base)).send().await.unwrap();
    let listed = assert_problem(listed, StatusCode::FORBIDDEN).await;
    second.stop();

    // Assert: the file is private, and the second start left it as it was.
    let mode = std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o777;
    assert_eq!(mode, 0o600, "mode {mode:o}");
    assert_eq!(password.len(), 24, "{handed_over:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), handed_over, "the file was rewritten");
    let modified = std::fs::metadata(&file).unwrap().modified().unwrap();
    assert_eq!(modified, metadata.modified().unwrap(), "the file was rewritten");
    assert!(!data_dir.join("initial-admin-password.new").exists(), "a draft was left behind");
    // The password was refused for everything but its own change, on both starts.
    for problem in [&early_key, &listed] {
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("was generated and must be changed first"), "{problem}");
    }
    // The output says where the password is, never what it is.
    let first_output = std::fs::read_to_string(&first_log).unwrap();
    let second_output = std::fs::read_to_string(&second_log).unwrap();
    assert!(first_output.contains("created the first admin"), "{first_output}");
    assert!(first_output.contains(&file.display().to_string()), "{first_output}");
    assert!(!second_output.contains("created the first admin"), "{second_output}");
    for (start, output) in [("first", &first_output), ("second", &second_output)] {
        assert!(!output.contains(&password), "the password is in the {start} start's output");
    }
}

/// Until the generated password is changed, the admin's own `PATCH /v1/users/admin` changes
/// nothing else: a change of its roles alone is refused, and the roles stay as they were.
#[tokio::test]
async fn a_generated_password_must_be_changed_before_the_admin_changes_anything_else() {
    let server = crate::helpers::spawn_server(|settings| settings.auth.admin_password = None).await;
    let _stop = server.shutdown.clone().drop_guard();
    let address = &server.address;
    let file = server.dir.path().join("data").join("initial-admin-password");
    let password = std::fs::read_to_string(&file).unwrap().trim().to_string();
    let token = login(address, "admin", &password).await;
    let admin = client_with("authorization", &format!("Bearer {token}"));

    let roles = json!({ "roles": { "default": "viewer" } });
    let response =
        admin.patch(format!("{address}/v1/users/admin")).json(&roles).send().await.unwrap();

    let problem = assert_problem(response, StatusCode::FORBIDDEN).await;
    assert!(problem["detail"].as_str().unwrap().contains("must be changed first"), "{problem}");
    let me = admin.get(format!("{address}/v1/me")).send().await.unwrap();
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["roles"], json!({}), "{me}");
}

/// Settings print their secrets as `[REDACTED]` (each is a `secrecy::SecretString`): the AWS
/// secret key, the first admin's password, the token signing key and the SMTP password never
/// appear in their `Debug` form, which still shows the settings around them.
#[test]
fn settings_print_their_secrets_as_redacted() {
    let mut settings = corral::config::Settings::default();
    settings.aws.access_key_id = Some("AKIAEXAMPLEKEY0001".to_string());
    settings.aws.secret_access_key = Some("aws-secret-key-3141".into());
    settings.auth.admin_password = Some("admin-password-2718".into());
    settings.auth.jwt_secret = Some("jwt-signing-key-1618-0123456789abcdef".into());
    settings.notify.smtp_user = Some("mailer-1732".to_string());
    settings.notify.smtp_password = Some("smtp-password-1414".into());
    let secrets = [
        "aws-secret-key-3141",
        "admin-password-2718",
        "jwt-signing-key-1618-0123456789abcdef",
        "smtp-password-1414",
    ];

    let printed = format!("{settings:?}");
    let pretty = format!("{settings:#?}");

    for text in [&printed, &pretty] {
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} is printed: {text}");
        }
        assert!(text.contains("AKIAEXAMPLEKEY0001") && text.contains("mailer-1732"), "{text}");
    }
    for field in ["secret_access_key", "admin_password", "jwt_secret", "smtp_password"] {
        let redacted = format!("{field}: Some(SecretBox<str>([REDACTED]))");
        assert!(printed.contains(&redacted), "{field} is not shown as [REDACTED]: {printed}");
    }
}

/// A password inside a settings URL prints as `[redacted]` as well: the database's
/// (`postgres://USER:PASSWORD@HOST/DB`) and that of Terraform's proxy.
#[test]
fn a_password_in_a_settings_url_prints_as_redacted() {
    let mut settings = corral::config::Settings {
        database_url: "postgres://corral:db-password-5772@db.internal:5432/corral".to_string(),
        ..Default::default()
    };
    settings.terraform.proxy =
        Some("http://squid:proxy-password-6931@proxy.internal:3128".to_string());

    let printed = format!("{settings:?}");

    assert!(!printed.contains("db-password-5772"), "{printed}");
    assert!(!printed.contains("proxy-password-6931"), "{printed}");
    assert!(printed.contains("postgres://corral@db.internal:5432/corral"), "{printed}");
    assert!(printed.contains("http://squid@proxy.internal:3128"), "{printed}");
}

/// `corral` run with `args` and only `env` (no other `CORRAL_*` variable) in `dir`; expects it
/// to fail and returns what it printed.
fn corral_failing(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("HOME", dir)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "corral {args:?} succeeded: {text}");
    text
}

/// When corral refuses its settings, it names the setting and never shows the secret in it: a
/// database URL it cannot use is shown without its password, a signing key too short is
/// named, not printed.
#[test]
fn a_refused_setting_is_named_without_its_secret() {
    let dir = tempfile::tempdir().unwrap();
    let url = "mysql://corral:db-password-5772@db.internal/corral";
    let text = corral_failing(dir.path(), &["migrate", "--database", url], &[]);
    assert!(
        text.contains("unsupported database URL 'mysql://corral@db.internal/corral'"),
        "{text}"
    );
    assert!(!text.contains("db-password-5772"), "{text}");

    let short = "short-signing-key-2236";
    let sqlite = format!("sqlite://{}", dir.path().join("corral.db").display());
    let env = [("CORRAL_AUTH__JWT_SECRET", short)];
    let text = corral_failing(dir.path(), &["migrate", "--database", &sqlite], &env);
    assert!(text.contains("auth.jwt_secret must be at least 32 bytes"), "{text}");
    assert!(!text.contains(short), "{text}");
}

/// Reads what the server sends on `stream` until it closes it or `wait` passes; `None` if it
/// was still open then.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, wait: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let read = tokio::time::timeout(wait, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    });
    read.await.ok().map(|()| String::from_utf8_lossy(&received).into_owned())
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app_with(|settings| settings.server.header_timeout_secs = 1).await;
    let address = app.address.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: corral\r\nX-Slow: ").await.unwrap();
    let closed = read_until_closed(&mut slow, Duration::from_secs(10)).await;
    assert!(closed.is_some(), "the connection was still open 10 s later");
    assert!(!closed.unwrap().contains("200 OK"));
    // Nor can a connection that sends nothing at all, or nothing after its first answer, hold
    // its place.
    let mut idle = tokio::net::TcpStream::connect(&address).await.unwrap();
    let closed = read_until_closed(&mut idle, Duration::from_secs(10)).await;
    assert!(closed.is_some(), "an idle connection was still open 10 s later");
    let mut kept = tokio::net::TcpStream::connect(&address).await.unwrap();
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: corral\r\n\r\n").await.unwrap();
    let answered = read_until_closed(&mut kept, Duration::from_secs(10)).await;
    assert!(answered.is_some_and(|text| text.starts_with("HTTP/1.1 200")), "kept alive forever");
    // Others are served meanwhile and after.
    assert_eq!(app.get("/health").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn connections_past_the_cap_are_answered_503_and_closed() {
    let app = spawn_app_with(|settings| settings.server.max_connections = 4).await;
    let address = app.address.trim_start_matches("http://").to_string();
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    let mut refused = 0;
    for stream in &mut held {
        if let Some(answer) = read_until_closed(stream, Duration::from_millis(500)).await {
            assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
            assert!(answer.contains("server.max_connections"), "{answer}");
            refused += 1;
        }
    }
    assert!(refused >= 4, "only {refused} of 8 connections past a cap of 4 were refused");
    drop(held);
    // The places are given back.
    let mut served = false;
    for _ in 0..20 {
        let response = http().get(app.url("/health")).send().await;
        if response.is_ok_and(|r| r.status() == StatusCode::OK) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served);
}

#[tokio::test]
async fn serve_speaks_tls_with_a_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ca = dir.path().join("ca.pem");
    // A throwaway certificate authority, and a certificate it signs for 127.0.0.1.
    let openssl = |args: &[&str]| {
        let made = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("openssl runs");
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec[..],
            &["-days", "1", "-subj", "/CN=test-ca", "-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec[..],
            &["-subj", "/CN=localhost", "-keyout", "key.pem", "-out", "leaf.csr"],
        ]
        .concat(),
    );
    std::fs::write(
        dir.path().join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
        "-out",
        "cert.pem",
    ]);
    let server = crate::helpers::spawn_server(|settings| {
        settings.server.tls_cert = Some(cert.display().to_string());
        settings.server.tls_key = Some(key.display().to_string());
    })
    .await;
    let _stop = server.shutdown.clone().drop_guard();
    let https = server.address.replace("http://", "https://");

    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&ca).unwrap();
    for der in rustls_pemfile_certs(&pem) {
        roots.add(der).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = reqwest::Client::builder().use_preconfigured_tls(tls).build().unwrap();
    let health = client.get(format!("{https}/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let token = client
        .post(format!("{https}/v1/token"))
        .form(&[("username", "admin"), ("password", ADMIN_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), StatusCode::OK);
    // Plain HTTP gets no answer from it.
    let plain = http().get(format!("{}/health", server.address)).send().await;
    assert!(plain.is_err() || plain.unwrap().status() != StatusCode::OK);
}

/// The certificates in a PEM document.
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem).map(Result::unwrap).collect()
}

#[tokio::test]
async fn event_streams_are_capped_per_caller() {
    let proxy = crate::proxy::FaultProxy::start(crate::helpers::moto_url(), 0.0).await;
    let app = spawn_app_with(|settings| {
        settings.aws.endpoint_url = Some(proxy.url.clone());
        settings.server.max_event_streams_per_caller = 1;
    })
    .await;
    // A job that stays running for a while: every EC2 call takes 2 s.
    proxy.set_delay(Duration::from_secs(2));
    let job: Value = app.post_instances(&create_body("slow"), "").await.json().await.unwrap();
    let path = format!("/v1/jobs/{}/events", job["id"].as_str().unwrap());
    let stream = |client: &reqwest::Client| {
        client.get(app.url(&path)).header("Accept", "text/event-stream").send()
    };
    let first = stream(&app.client).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let second = stream(&app.client).await.unwrap();
    let problem = assert_problem(second, StatusCode::TOO_MANY_REQUESTS).await;
    assert!(problem["detail"].as_str().unwrap().contains("event streams open"), "{problem}");
    // Another caller has places of its own; the first caller's comes back when closed.
    let viewer =
        client_with("x-api-key", &app.user_key("vera", json!({ "default": "viewer" })).await);
    assert_eq!(stream(&viewer).await.unwrap().status(), StatusCode::OK);
    drop(first);
    let mut reopened = false;
    for _ in 0..20 {
        if stream(&app.client).await.unwrap().status() == StatusCode::OK {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reopened);
    proxy.set_delay(Duration::ZERO);
}

#[tokio::test]
async fn a_security_group_other_teams_trust_cannot_be_attached() {
    let app = spawn_app().await;
    // A group that another team's database lets in.
    let group = app
        .ec2
        .create_security_group()
        .group_name("trusted-by-the-database")
        .description("other team")
        .send()
        .await
        .unwrap();
    let group_id = group.group_id().unwrap().to_string();
    let operator =
        client_with("x-api-key", &app.user_key("olga", json!({ "default": "operator" })).await);
    let mut body = create_body("joins-their-group");
    body["security_group_ids"] = json!([group_id]);
    let response = operator.post(app.url("/v1/instances")).json(&body).send().await.unwrap();
    let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(problem["errors"][0]["field"], "security_group_ids[0]", "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains(&group_id), "{problem}");
    let listed: Value = app.get("/v1/instances").await.json().await.unwrap();
    assert_eq!(listed["items"], json!([]), "nothing was stored");
    assert!(app.moto_instances().await.is_empty(), "nothing was launched");
}

#[tokio::test]
async fn refreshes_of_one_instance_coalesce_into_one_pending_job() {
    let proxy = crate::proxy::FaultProxy::start(crate::helpers::moto_url(), 0.0).await;
    let app = spawn_app_with(|settings| {
        settings.aws.endpoint_url = Some(proxy.url.clone());
        settings.jobs.concurrency = 1;
    })
    .await;
    let created = app.create_running(&create_body("refreshed")).await;
    let id = created["instances"][0]["id"].as_str().unwrap().to_string();
    // Each EC2 call takes a second: the first refresh runs while the others queue up.
    proxy.set_delay(Duration::from_secs(1));
    let mut jobs = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let response = app.act(&id, "refresh", "").await;
        assert!(response.status().is_success(), "{}", response.status());
        let job: Value = response.json().await.unwrap();
        jobs.insert(job["id"].as_str().unwrap().to_string());
        // Whenever a refresh was asked for, at most one waits behind the one running.
        let queued: Value = app.get_jobs("?status=queued").await.json().await.unwrap();
        let waiting = queued["items"].as_array().unwrap();
        assert!(waiting.len() <= 1, "refreshes waiting at once: {waiting:?}");
    }
    proxy.set_delay(Duration::ZERO);
    // However slowly this machine answered, twenty requests in a row did not make twenty jobs.
    assert!(jobs.len() < 20, "20 refreshes made {} jobs", jobs.len());
    for job in &jobs {
        assert_eq!(app.wait_for_job(job).await["status"], "succeeded");
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_its_answers_loses_its_connection() {
    use tokio::io::AsyncWriteExt;
    let server = crate::helpers::spawn_server(|settings| {
        settings.server.header_timeout_secs = 1;
        settings.server.max_connections = 1;
    })
    .await;
    let _stop = server.shutdown.clone().drop_guard();
    let address: std::net::SocketAddr =
        server.address.trim_start_matches("http://").parse().unwrap();
    // Many large answers asked for at once, on a socket that takes in almost nothing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(address).await.unwrap();
    let ask = "GET /docs/swagger-ui-bundle.js HTTP/1.1\r\nHost: corral\r\n\r\n".repeat(16);
    stalled.write_all(ask.as_bytes()).await.unwrap();
    // The one place comes back once the server gives up on it.
    let mut served = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let response = http().get(format!("{}/health", server.address)).send().await;
        if response.is_ok_and(|r| r.status() == StatusCode::OK) {
            served = true;
            break;
        }
    }
    assert!(served, "a client that reads nothing held the only connection for 20 s");
    drop(stalled);
}
