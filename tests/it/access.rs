//! Access control on every route: the routes come from the OpenAPI document, so a new route
//! cannot be left out, and each is called by every kind of caller. A call the caller's role
//! allows must succeed (2xx); a refused one must be refused by the check that says why.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_PASSWORD, AMI_X86, JWT_SECRET, TestApp, assert_problem, client_with, create_body, login,
    spawn_app, spawn_app_with,
};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rule {
    /// No credentials needed.
    Public,
    /// Any authenticated user.
    Anyone,
    /// Reads something in namespace `alpha`: its viewers, operators and admins.
    AlphaRead,
    /// Changes something in namespace `alpha`: its operators and admins.
    AlphaWrite,
    /// Admins only.
    Admin,
    /// The user `viewer` itself, or an admin.
    SelfOrAdmin,
    /// Reads the Terraform state of a workspace of alpha: its operators, admins, and the run
    /// of that workspace.
    StateRead,
    /// Writes the Terraform state of a workspace of alpha, or its lock: admins and the run of
    /// that workspace only.
    StateWrite,
}

/// How the matrix calls an operation.
struct Call {
    rule: Rule,
    /// Sent as JSON; `{instance}` becomes the target instance's id, `{caller}` the caller.
    body: Option<Value>,
    /// Appended to the path.
    query: &'static str,
}

fn call(rule: Rule) -> Call {
    Call { rule, body: None, query: "" }
}

/// Calls that make a job wait for it, so that the next caller finds the instance free and
/// `terminate_namespace` finds no job of alpha still running.
const WAIT: &str = "?wait=30";
/// The lock ID every state write of the matrix names (admins and the run share it, so that
/// each of them succeeds).
const MATRIX_LOCK: &str = "matrix-lock";
const WITH_MATRIX_LOCK: &str = "?ID=matrix-lock";
/// Terraform's state route. The document lists it by its GET; the other methods of the
/// protocol (OpenAPI cannot name LOCK and UNLOCK) are called as if it listed them.
const STATE_PATH: &str = "/v1/terraform/state/{workspace}";
const STATE_METHODS: [(&str, &str); 4] = [
    ("DELETE", "delete_terraform_state"),
    ("LOCK", "lock_terraform_state"),
    ("POST", "write_terraform_state"),
    ("UNLOCK", "unlock_terraform_state"),
];

/// Every operation of the API, with its rule and how to call it. The test fails when the
/// OpenAPI document lists an operation that is missing here, or this names one it does not.
fn table() -> BTreeMap<&'static str, Call> {
    use Rule::*;
    let with = |rule: Rule, body: Value| Call { body: Some(body), ..call(rule) };
    let waited = |rule: Rule| Call { query: WAIT, ..call(rule) };
    let create = json!({ "name": "matrix-{caller}", "ami": AMI_X86, "instance_type": "t3.micro",
                         "namespace": "alpha" });
    let lock = json!({ "ID": MATRIX_LOCK, "Operation": "OperationTypeApply" });
    let state = json!({ "version": 4, "serial": 1, "lineage": "matrix", "resources": [] });
    BTreeMap::from([
        ("get_health", call(Public)),
        ("get_ready", call(Public)),
        ("issue_token", with(Public, json!({ "username": "admin", "password": ADMIN_PASSWORD }))),
        ("get_status", call(Anyone)),
        ("get_policy", call(Anyone)),
        ("get_me", call(Anyone)),
        ("list_instances", call(Anyone)),
        ("list_jobs", call(Anyone)),
        ("list_namespaces", call(Anyone)),
        ("list_audit", call(Anyone)),
        ("create_api_key", with(Anyone, json!({ "name": "matrix" }))),
        ("list_api_keys", call(Anyone)),
        ("revoke_api_key", call(Anyone)),
        ("get_instance", call(AlphaRead)),
        ("list_drift", call(AlphaRead)),
        ("export_instance", call(AlphaRead)),
        ("export_namespace", call(AlphaRead)),
        ("get_job", call(AlphaRead)),
        ("get_job_events", call(AlphaRead)),
        ("get_namespace", call(AlphaRead)),
        ("create_instances", Call { query: WAIT, ..with(AlphaWrite, create) }),
        ("start_instance", waited(AlphaWrite)),
        ("stop_instance", waited(AlphaWrite)),
        ("reboot_instance", waited(AlphaWrite)),
        ("terminate_instance", waited(AlphaWrite)),
        ("refresh_instance", waited(AlphaWrite)),
        (
            "update_instance",
            Call { query: WAIT, ..with(AlphaWrite, json!({ "tags": { "checked": "yes" } })) },
        ),
        ("terminate_namespace", waited(AlphaWrite)),
        (
            "act_on_instances",
            Call {
                query: WAIT,
                ..with(AlphaWrite, json!({ "action": "reboot", "ids": ["{instance}"] }))
            },
        ),
        (
            "create_user",
            with(
                Admin,
                json!({ "username": "made-by-matrix", "password": "long enough password" }),
            ),
        ),
        ("list_users", call(Admin)),
        ("delete_user", call(Admin)),
        ("create_namespace", with(Admin, json!({ "name": "made-by-matrix" }))),
        ("update_namespace", with(Admin, json!({ "quota": { "instances": 100, "vcpus": null } }))),
        ("list_orphans", call(Admin)),
        ("adopt_orphan", call(Admin)),
        ("terminate_orphan", waited(Admin)),
        ("reconcile_now", waited(Admin)),
        ("get_user", call(SelfOrAdmin)),
        ("update_user", with(SelfOrAdmin, json!({}))),
        ("create_webhook", with(AlphaWrite, webhook_body())),
        ("list_webhooks", call(Anyone)),
        ("get_webhook", call(AlphaRead)),
        ("delete_webhook", call(AlphaWrite)),
        ("create_email_subscription", with(AlphaWrite, email_body())),
        ("list_email_subscriptions", call(Anyone)),
        ("get_email_subscription", call(AlphaRead)),
        ("delete_email_subscription", call(AlphaWrite)),
        ("list_notifications", call(Anyone)),
        ("retry_notification", call(AlphaWrite)),
        (
            "create_key_pair",
            with(AlphaWrite, json!({ "name": "matrix-{caller}", "namespace": "alpha" })),
        ),
        ("list_key_pairs", call(Anyone)),
        ("get_key_pair", call(AlphaRead)),
        ("delete_key_pair", call(AlphaWrite)),
        ("get_terraform_state", call(StateRead)),
        ("delete_terraform_state", Call { query: WITH_MATRIX_LOCK, ..call(StateWrite) }),
        ("lock_terraform_state", with(StateWrite, lock.clone())),
        ("write_terraform_state", Call { query: WITH_MATRIX_LOCK, ..with(StateWrite, state) }),
        ("unlock_terraform_state", with(StateWrite, lock)),
    ])
}

fn webhook_body() -> Value {
    json!({ "url": "http://127.0.0.1:9/hook", "secret": "0123456789abcdef", "namespace": "alpha",
            "events": ["instance.created"] })
}

fn email_body() -> Value {
    json!({ "email": "alpha@example.com", "namespace": "alpha", "events": ["instance.created"] })
}

/// The kinds of caller, in the order they call each route.
const CALLERS: [&str; 10] = [
    "none",
    "wrong key",
    "expired token",
    "tampered token",
    "viewer",
    "stranger",
    "operator",
    "admin",
    "run token",
    "other run token",
];

/// What a caller is answered.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// A 2xx.
    Done,
    /// This status, with a problem whose detail contains this text.
    Refused(StatusCode, &'static str),
    /// A 404 from the handler, naming what the caller asked for: the namespace is invisible to
    /// the caller.
    Hidden,
}

fn expected(rule: Rule, caller: &str) -> Answer {
    use Answer::*;
    use Rule::*;
    const OPERATOR_ROLE: &str = "this needs the operator role in namespace 'alpha'";
    const ADMIN_ROLE: &str = "this needs the admin role";
    const OTHER_WORKSPACE: &str = "this token reaches Terraform state workspace";
    const RUNS_AND_ADMINS: &str = "only corral's own Terraform runs and admins write";
    match (rule, caller) {
        (Public, _) => Done,
        (_, "none") => Refused(StatusCode::UNAUTHORIZED, "credentials required"),
        (_, "wrong key") => Refused(StatusCode::UNAUTHORIZED, "invalid API key"),
        (_, "expired token") => Refused(StatusCode::UNAUTHORIZED, "the token has expired"),
        (_, "tampered token") => Refused(StatusCode::UNAUTHORIZED, "the token is invalid"),
        (StateRead | StateWrite, "run token") => Done,
        (_, "run token" | "other run token") => Refused(StatusCode::FORBIDDEN, OTHER_WORKSPACE),
        (Anyone, _) => Done,
        (AlphaRead | AlphaWrite | StateRead | StateWrite, "stranger") => Hidden,
        (AlphaRead, _) => Done,
        (AlphaWrite | StateRead | StateWrite, "viewer") => {
            Refused(StatusCode::FORBIDDEN, OPERATOR_ROLE)
        }
        (StateWrite, "operator") => Refused(StatusCode::FORBIDDEN, RUNS_AND_ADMINS),
        (AlphaWrite | StateRead | StateWrite, _) => Done,
        (Admin, "admin") => Done,
        (Admin, _) => Refused(StatusCode::FORBIDDEN, ADMIN_ROLE),
        (SelfOrAdmin, "viewer" | "admin") => Done,
        (SelfOrAdmin, _) => Refused(StatusCode::FORBIDDEN, ADMIN_ROLE),
    }
}

/// Every route, by every kind of caller: none, a real key's prefix with another secret, the
/// admin's token expired and with its `exp` rewritten, a viewer, an operator of another
/// namespace (the stranger), an operator, an admin, and the Terraform runs of the workspace
/// the state route names and of another. Each allowed call succeeds; each refused one answers
/// the status and the reason of the check that refuses it.
#[tokio::test]
async fn every_route_answers_each_kind_of_caller_as_its_role_allows() {
    // Arrange: namespaces alpha and beta, a viewer and an operator of alpha, an operator of
    // beta (the stranger), and in alpha what the routes act on; whatever a call removes or
    // changes for good, each caller allowed to make it gets one of its own.
    // Notifications go nowhere (port 9 on loopback) and die at their first attempt.
    let app = spawn_app_with(|settings| {
        settings.notify.webhook_allow_private = true;
        settings.notify.smtp_host = Some("127.0.0.1".to_string());
        settings.notify.smtp_port = Some(9);
        settings.notify.smtp_tls = corral::config::SmtpTls::None;
        settings.notify.max_attempts = 1;
        settings.notify.poll_interval_ms = 50;
    })
    .await;
    app.create_namespaces(&["alpha", "beta"]).await;
    // What each operation acts on: `operation@caller` for a caller's own, else `operation`.
    let mut targets: BTreeMap<String, String> = BTreeMap::new();
    // Subscriptions of alpha to read, made before the instances so that their creation leaves
    // dead deliveries of alpha to retry.
    let kept_webhook = created_id(app.post_json("/v1/webhooks", &webhook_body(), None).await).await;
    aim(&mut targets, "get_webhook", &kept_webhook);
    let kept_email =
        created_id(app.post_json("/v1/email-subscriptions", &email_body(), None).await).await;
    aim(&mut targets, "get_email_subscription", &kept_email);
    let viewer = app.user_key("viewer", json!({ "alpha": "viewer" })).await;
    let stranger = app.user_key("stranger", json!({ "beta": "operator" })).await;
    let operator = app.user_key("operator", json!({ "alpha": "operator" })).await;
    app.user_key("doomed", json!({})).await;
    aim(&mut targets, "get_user", "viewer");
    aim(&mut targets, "update_user", "viewer");
    aim(&mut targets, "delete_user", "doomed");

    // Instances: target-1 for every route on one instance, target-2 and -3 to terminate, and
    // cycled-1 and -2, stopped, to start and then stop again. Their create jobs are the
    // workspaces of the state route and of the other run's token.
    let instances = |prefix: &str, count: i64| {
        json!({ "name_prefix": prefix, "count": count, "ami": AMI_X86,
                "instance_type": "t3.micro", "namespace": "alpha" })
    };
    let targeted = app.create_running(&instances("target", 3)).await;
    let cycled = app.create_running(&instances("cycled", 2)).await;
    let named = |job: &Value, name: &str| -> String {
        let found = job["instances"].as_array().unwrap().iter().find(|i| i["name"] == name);
        found.unwrap_or_else(|| panic!("no {name} in {job}"))["id"].as_str().unwrap().to_string()
    };
    let target = named(&targeted, "target-1");
    let cycled_ids = [named(&cycled, "cycled-1"), named(&cycled, "cycled-2")];
    let stopped: Value = app
        .post_bulk_action(&json!({ "action": "stop", "ids": cycled_ids }), WAIT)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stopped["status"], "succeeded", "{stopped}");
    for operation in [
        "get_instance",
        "update_instance",
        "list_drift",
        "export_instance",
        "reboot_instance",
        "refresh_instance",
        "start_instance",
        "stop_instance",
        "terminate_instance",
    ] {
        aim(&mut targets, operation, &target);
    }
    aim(&mut targets, "terminate_instance@operator", &named(&targeted, "target-2"));
    aim(&mut targets, "terminate_instance@admin", &named(&targeted, "target-3"));
    for (caller, id) in [("operator", &cycled_ids[0]), ("admin", &cycled_ids[1])] {
        aim(&mut targets, &format!("start_instance@{caller}"), id);
        aim(&mut targets, &format!("stop_instance@{caller}"), id);
    }
    let workspace = targeted["id"].as_str().unwrap().to_string();
    let other_workspace = cycled["id"].as_str().unwrap().to_string();
    for operation in ["get_job", "get_job_events", "get_terraform_state"] {
        aim(&mut targets, operation, &workspace);
    }
    for (_, operation) in STATE_METHODS {
        aim(&mut targets, operation, &workspace);
    }

    // Dead deliveries of alpha to retry, one each for the operator and the admin.
    let dead = dead_deliveries(&app, 2).await;
    aim(&mut targets, "retry_notification@operator", &dead[0]);
    aim(&mut targets, "retry_notification@admin", &dead[1]);
    aim(&mut targets, "retry_notification", &dead[1]);
    // Subscriptions and key pairs to delete. Refused callers name the admin's, which is then
    // still there for the admin to delete.
    for (operation, path, body) in [
        ("delete_webhook", "/v1/webhooks", webhook_body()),
        ("delete_email_subscription", "/v1/email-subscriptions", email_body()),
    ] {
        for caller in ["operator", "admin"] {
            let id = created_id(app.post_json(path, &body, None).await).await;
            aim(&mut targets, &format!("{operation}@{caller}"), &id);
            aim(&mut targets, operation, &id);
        }
    }
    for name in ["alpha-kept", "alpha-doomed-operator", "alpha-doomed-admin"] {
        let body = json!({ "name": name, "namespace": "alpha" });
        let response = app.post_json("/v1/keypairs", &body, None).await;
        assert_eq!(response.status(), StatusCode::CREATED, "key pair {name}");
    }
    aim(&mut targets, "get_key_pair", "alpha-kept");
    aim(&mut targets, "delete_key_pair@operator", "alpha-doomed-operator");
    aim(&mut targets, "delete_key_pair@admin", "alpha-doomed-admin");
    aim(&mut targets, "delete_key_pair", "alpha-doomed-admin");
    // Two orphans of beta, found by a reconcile pass: one to adopt, one to terminate.
    let stray = |name: &'static str| {
        [
            ("corral:job-id", "0190b7a0-0000-7000-8000-00000000beef"),
            ("corral:namespace", "beta"),
            ("Name", name),
        ]
    };
    let adoptee = app.launch_in_moto(&stray("stray-adopted")).await;
    let doomed_orphan = app.launch_in_moto(&stray("stray-terminated")).await;
    app.reconcile().await;
    let orphans: Value = app.get("/v1/orphans").await.json().await.unwrap();
    assert_eq!(orphans["items"].as_array().unwrap().len(), 2, "{orphans}");
    aim(&mut targets, "adopt_orphan", &adoptee);
    aim(&mut targets, "terminate_orphan", &doomed_orphan);

    let token = login(&app.address, "admin", ADMIN_PASSWORD).await;
    let expired = resigned_with_exp(&token, chrono::Utc::now().timestamp() - 3600);
    let callers: BTreeMap<&str, reqwest::Client> = BTreeMap::from([
        ("none", crate::helpers::http()),
        ("wrong key", client_with("x-api-key", &with_wrong_secret(&app.admin_key))),
        ("expired token", client_with("authorization", &format!("Bearer {expired}"))),
        (
            "tampered token",
            client_with("authorization", &format!("Bearer {}", with_tampered_exp(&token))),
        ),
        ("viewer", client_with("x-api-key", &viewer)),
        ("stranger", client_with("x-api-key", &stranger)),
        ("operator", client_with("x-api-key", &operator)),
        ("admin", app.client.clone()),
        ("run token", run_client(&workspace)),
        ("other run token", run_client(&other_workspace)),
    ]);
    // An API key of each user to revoke: its own.
    for caller in ["viewer", "stranger", "operator", "admin"] {
        let created = callers[caller]
            .post(app.url("/v1/api-keys"))
            .json(&json!({ "name": "spare" }))
            .send()
            .await
            .unwrap();
        let id = created_id(created).await;
        aim(&mut targets, &format!("revoke_api_key@{caller}"), &id);
        aim(&mut targets, "revoke_api_key", &id);
    }

    // The routes, from the OpenAPI document, and the state protocol's other methods.
    let openapi: Value = app.get("/openapi.json").await.json().await.unwrap();
    let mut operations = Vec::new();
    for (path, methods) in openapi["paths"].as_object().unwrap() {
        for (method, operation) in methods.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap().to_string();
            let public = operation["security"].as_array().is_some_and(|s| s == &[json!({})]);
            operations.push((method.to_uppercase(), path.clone(), id, public));
        }
    }
    assert!(openapi["paths"][STATE_PATH]["get"].is_object(), "{STATE_PATH} is documented");
    for (method, id) in STATE_METHODS {
        operations.push((method.to_string(), STATE_PATH.to_string(), id.to_string(), false));
    }
    // In path order, which the targets rely on: the cycled instances are started before they
    // are stopped, alpha's instances are all terminated after every route on one of them, and
    // the state's lock is taken before it is written under and released.
    operations.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
    let table = table();
    let listed: BTreeSet<&str> = operations.iter().map(|(_, _, id, _)| id.as_str()).collect();
    let ruled: BTreeSet<&str> = table.keys().copied().collect();
    assert_eq!(listed.len(), operations.len(), "operation ids are unique");
    let missing: Vec<&&str> = listed.difference(&ruled).collect();
    assert!(missing.is_empty(), "operations without an access rule in this test: {missing:?}");
    let gone: Vec<&&str> = ruled.difference(&listed).collect();
    assert!(gone.is_empty(), "the table names operations the API no longer has: {gone:?}");

    // Act and assert: every route, by every caller.
    let mut wrong = Vec::new();
    for (method, path, id, public) in &operations {
        let call = &table[id.as_str()];
        assert_eq!(*public, call.rule == Rule::Public, "{id}: the document and the table disagree");
        for caller in CALLERS {
            let object =
                targets.get(&format!("{id}@{caller}")).or_else(|| targets.get(id.as_str()));
            let url = app.url(&format!("{}{}", fill(path, object.map(String::as_str)), call.query));
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let mut request = callers[caller].request(method.clone(), &url);
            if let Some(body) = &call.body {
                let text = body
                    .to_string()
                    .replace("{instance}", &target)
                    .replace("{caller}", &caller.replace(' ', "-"));
                request = request.header("content-type", "application/json").body(text);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let challenged = response.headers().contains_key("www-authenticate");
            let text = response.text().await.unwrap_or_default();
            let detail = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|problem| problem["detail"].as_str().map(str::to_string))
                .unwrap_or_default();
            let answer = expected(call.rule, caller);
            let right = match answer {
                Answer::Done => status.is_success(),
                Answer::Refused(refusal, reason) => status == refusal && detail.contains(reason),
                Answer::Hidden => {
                    status == StatusCode::NOT_FOUND
                        && detail.starts_with("no ")
                        && detail != "no such route"
                }
            };
            if status == StatusCode::UNAUTHORIZED && !challenged {
                wrong.push(format!("{method} {url} ({id}) as {caller}: 401 without a challenge"));
            }
            if !right {
                let shown: String = text.chars().take(300).collect();
                wrong.push(format!(
                    "{method} {url} ({id}) as {caller}: expected {answer:?}, got {status} {shown}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "unexpected answers:\n{}", wrong.join("\n"));
}

/// Sets what an operation (`operation`, or `operation@caller` for one caller) acts on.
fn aim(targets: &mut BTreeMap<String, String>, key: &str, object: &str) {
    targets.insert(key.to_string(), object.to_string());
}

/// The `id` of a `201 Created` answer.
async fn created_id(response: reqwest::Response) -> String {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_string()
}

/// The ids of at least `count` dead deliveries, once there are (30 s at most).
async fn dead_deliveries(app: &TestApp, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page: Value = app.get("/v1/notifications?status=dead").await.json().await.unwrap();
        let ids: Vec<String> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|delivery| delivery["id"].as_str().unwrap().to_string())
            .collect();
        if ids.len() >= count {
            return ids;
        }
        assert!(Instant::now() < deadline, "fewer than {count} dead deliveries in 30 s: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The path of an operation with its parameter filled in: `{namespace}` is alpha, any other
/// parameter names `object`.
fn fill(path: &str, object: Option<&str>) -> String {
    let path = path.replace("{namespace}", "alpha");
    match (path.find('{'), path.find('}')) {
        (Some(open), Some(close)) => {
            let object = object.unwrap_or_else(|| panic!("{path}: give the matrix a target"));
            format!("{}{object}{}", &path[..open], &path[close + 1..])
        }
        _ => path,
    }
}

/// The claims of a token, read without checking it.
pub fn claims_of(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap();
    serde_json::from_slice(&json).unwrap()
}

/// A token with `claims`, signed with the key of every test server (`JWT_SECRET`).
pub fn signed(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// `token`'s claims (its user, its credentials version) signed anew with the server's key to
/// expire at `exp` (Unix seconds): in the past, a token of a real user that only its expiry
/// refuses.
pub fn resigned_with_exp(token: &str, exp: i64) -> String {
    let mut claims = claims_of(token);
    claims["iat"] = json!(exp - 1800);
    claims["exp"] = json!(exp);
    signed(&claims)
}

/// `token` with a day added to its `exp`, its header and signature kept: only the signature
/// check refuses it.
pub fn with_tampered_exp(token: &str) -> String {
    use base64::Engine;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims = claims_of(token);
    claims["exp"] = json!(claims["exp"].as_i64().unwrap() + 86_400);
    format!("{}.{}.{}", parts[0], engine.encode(claims.to_string()), parts[2])
}

/// `key` (`crl_<prefix>_<secret>`) with its prefix kept and every character of its secret
/// changed: the prefix finds the key, the digest does not match it.
pub fn with_wrong_secret(key: &str) -> String {
    let (prefix, secret) = key.rsplit_once('_').expect("crl_<prefix>_<secret>");
    let wrong: String = secret.chars().map(|c| if c == 'B' { 'C' } else { 'B' }).collect();
    format!("{prefix}_{wrong}")
}

/// A client sending HTTP Basic credentials as Terraform does, `password` being an API key or
/// a token.
fn basic_client(password: &str) -> reqwest::Client {
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("corral:{password}"));
    client_with("authorization", &format!("Basic {basic}"))
}

/// A client acting as the Terraform run of `workspace`: a token like the one corral gives its
/// runs (signed with the server's key, naming the workspace), sent as Terraform sends it.
fn run_client(workspace: &str) -> reqwest::Client {
    let now = chrono::Utc::now().timestamp();
    let claims = json!({ "sub": format!("workspace:{workspace}"), "name": "job:run-1",
                         "iat": now, "exp": now + 600, "iss": "corral" });
    basic_client(&signed(&claims))
}

impl TestApp {
    /// Creates a user with `roles` and returns an API key acting as it.
    pub async fn user_key(&self, username: &str, roles: Value) -> String {
        let password = format!("{username}-password-123");
        let body = json!({ "username": username, "password": password, "roles": roles });
        let response = self.post_json("/v1/users", &body, None).await;
        assert_eq!(response.status(), StatusCode::CREATED, "create user {username}");
        let token = crate::helpers::login(&self.address, username, &password).await;
        let client = client_with("authorization", &format!("Bearer {token}"));
        crate::helpers::create_api_key(&client, &self.address).await
    }
}

/// `GET /v1/me` with one credential header.
async fn me_with(app: &TestApp, header: &'static str, value: &str) -> reqwest::Response {
    client_with(header, value).get(app.url("/v1/me")).send().await.unwrap()
}

/// Each bad credential is refused by the check it fails, not by a lookup before it: a real
/// key's prefix with another secret by the digest (before anything about the key is told),
/// the admin's own claims past their expiry by the expiry, the admin's token with a later
/// `exp` by the signature. The same credential with that one thing right is accepted.
#[tokio::test]
async fn each_bad_credential_is_refused_by_the_check_it_fails() {
    let app = spawn_app().await;
    let token = login(&app.address, "admin", ADMIN_PASSWORD).await;

    // A key: its own secret is accepted, another behind its prefix is not.
    let accepted = me_with(&app, "x-api-key", &app.admin_key).await;
    assert_eq!(accepted.status(), StatusCode::OK);
    let me: Value = accepted.json().await.unwrap();
    let prefix = me["api_key_prefix"].as_str().unwrap().to_string();
    let wrong = with_wrong_secret(&app.admin_key);
    let kept = format!("{prefix}_");
    assert!(wrong.starts_with(kept.as_str()) && wrong != app.admin_key, "{wrong}");
    let refused = me_with(&app, "x-api-key", &wrong).await;
    let problem = assert_problem(refused, StatusCode::UNAUTHORIZED).await;
    assert_eq!(problem["detail"], "invalid API key");
    // A revoked key says so, but only to whoever holds it: its prefix with another secret is
    // just an invalid key.
    let spare: Value = app
        .post_json("/v1/api-keys", &json!({ "name": "spare" }), None)
        .await
        .json()
        .await
        .unwrap();
    let spare_key = spare["key"].as_str().unwrap();
    let revoke =
        app.client.delete(app.url(&format!("/v1/api-keys/{}", spare["id"].as_str().unwrap())));
    assert_eq!(revoke.send().await.unwrap().status(), StatusCode::OK);
    let revoked =
        assert_problem(me_with(&app, "x-api-key", spare_key).await, StatusCode::UNAUTHORIZED).await;
    assert_eq!(revoked["detail"], "the API key has been revoked");
    let guessed = me_with(&app, "x-api-key", &with_wrong_secret(spare_key)).await;
    let guessed = assert_problem(guessed, StatusCode::UNAUTHORIZED).await;
    assert_eq!(guessed["detail"], "invalid API key");

    // The admin's claims, signed with the server's key: accepted until they expire.
    let now = chrono::Utc::now().timestamp();
    let fresh = resigned_with_exp(&token, now + 600);
    let expired = resigned_with_exp(&token, now - 3600);
    assert_eq!(claims_of(&expired)["sub"], claims_of(&token)["sub"], "the admin's own id");
    let accepted = me_with(&app, "authorization", &format!("Bearer {fresh}")).await;
    assert_eq!(accepted.status(), StatusCode::OK);
    let me: Value = accepted.json().await.unwrap();
    assert_eq!(
        (me["username"].as_str(), me["authenticated_with"].as_str()),
        (Some("admin"), Some("password"))
    );
    let refused = me_with(&app, "authorization", &format!("Bearer {expired}")).await;
    let problem = assert_problem(refused, StatusCode::UNAUTHORIZED).await;
    assert_eq!(problem["detail"], "the token has expired");

    // The admin's token is accepted; with a later exp and the same signature it is not.
    let accepted = me_with(&app, "authorization", &format!("Bearer {token}")).await;
    assert_eq!(accepted.status(), StatusCode::OK);
    let tampered = with_tampered_exp(&token);
    assert_eq!(claims_of(&tampered)["sub"], claims_of(&token)["sub"]);
    assert_ne!(claims_of(&tampered)["exp"], claims_of(&token)["exp"]);
    let refused = me_with(&app, "authorization", &format!("Bearer {tampered}")).await;
    let problem = assert_problem(refused, StatusCode::UNAUTHORIZED).await;
    assert_eq!(problem["detail"], "the token is invalid");
}

/// Terraform's state protocol on one workspace: only that workspace's run and admins write
/// the state or its lock; a viewer, a stranger, an operator and another workspace's run are
/// refused, each for its own reason, and change nothing. A held lock answers every other lock
/// and write `423` with the holder's lock info until its holder releases it.
#[tokio::test]
async fn terraform_state_is_written_by_its_own_run_and_admins_and_a_held_lock_answers_423() {
    // Arrange: two workspaces (create jobs) of alpha; a viewer and an operator of alpha, an
    // operator of beta (the stranger); the run of each workspace.
    let app = spawn_app().await;
    app.create_namespaces(&["alpha", "beta"]).await;
    let mut body = create_body("stateful");
    body["namespace"] = json!("alpha");
    let workspace = app.create_running(&body).await["id"].as_str().unwrap().to_string();
    body["name"] = json!("stateful-too");
    let other = app.create_running(&body).await["id"].as_str().unwrap().to_string();
    let viewer =
        client_with("x-api-key", &app.user_key("viewer", json!({ "alpha": "viewer" })).await);
    let stranger =
        client_with("x-api-key", &app.user_key("stranger", json!({ "beta": "operator" })).await);
    let operator =
        client_with("x-api-key", &app.user_key("operator", json!({ "alpha": "operator" })).await);
    let run = run_client(&workspace);
    let refused_callers = [
        (
            "viewer",
            viewer,
            StatusCode::FORBIDDEN,
            "this needs the operator role in namespace 'alpha'",
        ),
        ("stranger", stranger, StatusCode::NOT_FOUND, "no Terraform workspace"),
        (
            "operator",
            operator,
            StatusCode::FORBIDDEN,
            "only corral's own Terraform runs and admins",
        ),
        (
            "other run",
            run_client(&other),
            StatusCode::FORBIDDEN,
            "reaches Terraform state workspace",
        ),
    ];
    let address = app.url(&format!("/v1/terraform/state/{workspace}"));
    let state_path = format!("/v1/terraform/state/{workspace}");
    let method = |name: &str| Method::from_bytes(name.as_bytes()).unwrap();
    let lock = |id: &str| json!({ "ID": id, "Operation": "OperationTypeApply", "Who": "tests" });
    let state = json!({ "version": 4, "serial": 1, "lineage": "protocol", "resources": [] });
    let (run_lock, intruder_lock) = (lock("run-1"), lock("intruder-1"));

    // Act and assert: the run takes the lock.
    let taken = run.request(method("LOCK"), &address).json(&run_lock).send().await.unwrap();
    assert_eq!(taken.status(), StatusCode::OK);

    // Everyone else is refused whatever they send, even naming the run's lock.
    for (who, client, status, reason) in &refused_callers {
        for (verb, query, body) in [
            ("POST", "?ID=run-1", Some(&state)),
            ("DELETE", "?ID=run-1", None),
            ("LOCK", "", Some(&intruder_lock)),
            ("UNLOCK", "", Some(&run_lock)),
        ] {
            let mut request = client.request(method(verb), format!("{address}{query}"));
            if let Some(body) = body {
                request = request.json(body);
            }
            let problem = assert_problem(request.send().await.unwrap(), *status).await;
            let detail = problem["detail"].as_str().unwrap();
            assert!(detail.contains(*reason), "{verb} by {who}: {problem}");
        }
        let read = client.get(&address).send().await.unwrap();
        let read_status = if *who == "operator" { StatusCode::NO_CONTENT } else { *status };
        assert_eq!(read.status(), read_status, "GET by {who}");
    }

    // Nothing was written, and the run still holds the lock: an admin's lock, write and delete
    // are answered 423 with the run's lock info.
    assert_eq!(app.get(&state_path).await.status(), StatusCode::NO_CONTENT);
    let held = app.client.request(method("LOCK"), &address).json(&lock("admin-1")).send().await;
    let held = held.unwrap();
    assert_eq!(held.status(), StatusCode::LOCKED);
    assert_eq!(held.json::<Value>().await.unwrap()["ID"], "run-1");
    let write = app.client.post(format!("{address}?ID=admin-1")).json(&state).send().await;
    let write = write.unwrap();
    assert_eq!(write.status(), StatusCode::LOCKED);
    assert_eq!(write.json::<Value>().await.unwrap()["ID"], "run-1");
    let delete = app.client.delete(format!("{address}?ID=admin-1")).send().await.unwrap();
    assert_eq!(delete.status(), StatusCode::LOCKED);

    // The run writes under its lock; the namespace's operator reads what it wrote.
    let written = run.post(format!("{address}?ID=run-1")).json(&state).send().await.unwrap();
    assert_eq!(written.status(), StatusCode::OK);
    let read = refused_callers[2].1.get(&address).send().await.unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.json::<Value>().await.unwrap(), state);

    // Released, the lock is the admin's to take; then the run is the one answered 423.
    let released = run.request(method("UNLOCK"), &address).json(&run_lock).send().await;
    assert_eq!(released.unwrap().status(), StatusCode::OK);
    let taken = app.client.request(method("LOCK"), &address).json(&lock("admin-1")).send().await;
    assert_eq!(taken.unwrap().status(), StatusCode::OK);
    let refused = run.request(method("LOCK"), &address).json(&lock("run-2")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::LOCKED);
    assert_eq!(refused.json::<Value>().await.unwrap()["ID"], "admin-1");
    let released =
        app.client.request(method("UNLOCK"), &address).json(&lock("admin-1")).send().await;
    assert_eq!(released.unwrap().status(), StatusCode::OK);

    // With no lock held, the run deletes the state.
    assert_eq!(run.delete(&address).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(app.get(&state_path).await.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_terraform_run_token_opens_its_own_workspace_and_nothing_else() {
    let app = spawn_app().await;
    let first = app.create_running(&create_body("one")).await;
    let second = app.create_running(&create_body("two")).await;
    let (mine, other) = (first["id"].as_str().unwrap(), second["id"].as_str().unwrap());
    // As Terraform sends it: HTTP Basic, the token as password.
    let run = run_client(mine);

    let own = run.get(app.url(&format!("/v1/terraform/state/{mine}"))).send().await.unwrap();
    assert_eq!(own.status(), StatusCode::NO_CONTENT, "no state written yet");
    for path in [
        format!("/v1/terraform/state/{other}"),
        "/v1/instances".to_string(),
        format!("/v1/jobs/{mine}"),
    ] {
        let response = run.get(app.url(&path)).send().await.unwrap();
        let problem = assert_problem(response, StatusCode::FORBIDDEN).await;
        let reason = format!("this token reaches Terraform state workspace {mine} only");
        assert_eq!(problem["detail"], reason.as_str(), "{path}");
    }
    // An API key works as the Basic password too, for people running terraform themselves.
    let person = basic_client(&app.admin_key);
    let response = person.get(app.url(&format!("/v1/terraform/state/{other}"))).send().await;
    assert_eq!(response.unwrap().status(), StatusCode::NO_CONTENT);
}
