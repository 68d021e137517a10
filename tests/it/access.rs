//! Access control on every route: the routes come from the OpenAPI document, so a new route
//! cannot be left out, and each is called by every kind of caller.

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{AMI_X86, JWT_SECRET, TestApp, client_with, spawn_app_with};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rule {
    /// No credentials needed.
    Public,
    /// Any authenticated caller.
    Anyone,
    /// Reads something in namespace `alpha`: its viewers, operators and admins.
    AlphaRead,
    /// Changes something in namespace `alpha`: its operators and admins.
    AlphaWrite,
    /// Admins only.
    Admin,
    /// The user `viewer` itself, or an admin.
    SelfOrAdmin,
    /// Removes something in namespace `alpha`: its operators and admins; whoever comes after
    /// the first to succeed finds it gone.
    AlphaDelete,
}

/// Every operation of the API, with its rule and how to call it. The test fails when the
/// OpenAPI document lists an operation that is missing here.
fn table() -> BTreeMap<&'static str, (Rule, Option<Value>)> {
    use Rule::*;
    let create = json!({ "name": "matrix", "ami": AMI_X86, "instance_type": "t3.micro", "namespace": "alpha" });
    BTreeMap::from([
        ("get_health", (Public, None)),
        ("get_ready", (Public, None)),
        ("issue_token", (Public, None)),
        ("get_status", (Anyone, None)),
        ("get_policy", (Anyone, None)),
        ("get_me", (Anyone, None)),
        ("list_instances", (Anyone, None)),
        ("list_jobs", (Anyone, None)),
        ("list_namespaces", (Anyone, None)),
        ("list_audit", (Anyone, None)),
        ("create_api_key", (Anyone, Some(json!({ "name": "matrix" })))),
        ("list_api_keys", (Anyone, None)),
        ("revoke_api_key", (Anyone, None)),
        ("get_instance", (AlphaRead, None)),
        ("list_drift", (AlphaRead, None)),
        ("export_instance", (AlphaRead, None)),
        ("export_namespace", (AlphaRead, None)),
        ("get_job", (AlphaRead, None)),
        ("get_job_events", (AlphaRead, None)),
        ("get_namespace", (AlphaRead, None)),
        ("create_instances", (AlphaWrite, Some(create))),
        ("start_instance", (AlphaWrite, None)),
        ("stop_instance", (AlphaWrite, None)),
        ("reboot_instance", (AlphaWrite, None)),
        ("terminate_instance", (AlphaWrite, None)),
        ("refresh_instance", (AlphaWrite, None)),
        ("update_instance", (AlphaWrite, Some(json!({ "tags": { "checked": "yes" } })))),
        ("terminate_namespace", (AlphaWrite, None)),
        (
            "act_on_instances",
            (AlphaWrite, Some(json!({ "action": "reboot", "ids": ["{instance}"] }))),
        ),
        (
            "create_user",
            (
                Admin,
                Some(json!({ "username": "made-by-matrix", "password": "long enough password" })),
            ),
        ),
        ("list_users", (Admin, None)),
        ("delete_user", (Admin, None)),
        ("create_namespace", (Admin, Some(json!({ "name": "made-by-matrix" })))),
        (
            "update_namespace",
            (Admin, Some(json!({ "quota": { "instances": 100, "vcpus": null } }))),
        ),
        ("list_orphans", (Admin, None)),
        ("adopt_orphan", (Admin, None)),
        ("terminate_orphan", (Admin, None)),
        ("reconcile_now", (Admin, None)),
        ("get_user", (SelfOrAdmin, None)),
        ("update_user", (SelfOrAdmin, Some(json!({})))),
        ("create_webhook", (AlphaWrite, Some(webhook_body()))),
        ("list_webhooks", (Anyone, None)),
        ("get_webhook", (AlphaRead, None)),
        ("delete_webhook", (AlphaDelete, None)),
        ("create_email_subscription", (AlphaWrite, Some(email_body()))),
        ("list_email_subscriptions", (Anyone, None)),
        ("get_email_subscription", (AlphaRead, None)),
        ("delete_email_subscription", (AlphaDelete, None)),
        ("list_notifications", (Anyone, None)),
        ("retry_notification", (AlphaWrite, None)),
        ("create_key_pair", (AlphaWrite, Some(json!({ "name": "matrix", "namespace": "alpha" })))),
        ("list_key_pairs", (Anyone, None)),
        ("get_key_pair", (AlphaRead, None)),
        ("delete_key_pair", (AlphaDelete, None)),
        ("get_terraform_state", (AlphaWrite, None)),
    ])
}

fn webhook_body() -> Value {
    json!({ "url": "http://127.0.0.1:9/hook", "secret": "0123456789abcdef", "namespace": "alpha" })
}

fn email_body() -> Value {
    json!({ "email": "alpha@example.com", "namespace": "alpha" })
}

/// The kinds of caller, in the order they call each route.
const CALLERS: [&str; 8] = [
    "none",
    "wrong key",
    "expired token",
    "tampered token",
    "viewer",
    "stranger",
    "operator",
    "admin",
];

fn expected(rule: Rule, caller: &str, status: StatusCode) -> bool {
    use Rule::*;
    let denied = status == StatusCode::FORBIDDEN;
    let hidden = status == StatusCode::NOT_FOUND;
    let unauthenticated = status == StatusCode::UNAUTHORIZED;
    let allowed = !unauthenticated && !denied;
    match (rule, caller) {
        (Public, _) => allowed,
        (_, "none" | "wrong key" | "expired token" | "tampered token") => unauthenticated,
        (Anyone, _) => allowed,
        (AlphaRead, "stranger") => hidden,
        (AlphaRead, _) => allowed && !hidden,
        (AlphaWrite, "stranger") => hidden,
        (AlphaWrite, "viewer") => denied,
        (AlphaWrite, _) => allowed && !hidden,
        (Admin, "admin") => allowed,
        (Admin, _) => denied,
        (SelfOrAdmin, "viewer" | "admin") => allowed && !hidden,
        (SelfOrAdmin, _) => denied,
        (AlphaDelete, "stranger") => hidden,
        (AlphaDelete, "viewer") => denied,
        (AlphaDelete, "operator") => allowed && !hidden,
        (AlphaDelete, _) => allowed,
    }
}

#[tokio::test]
async fn every_route_answers_each_kind_of_caller_as_its_role_allows() {
    // Arrange: namespaces alpha and beta, a viewer and an operator of alpha, an operator of
    // beta (the stranger), and an instance with its job in alpha.
    // Notifications go nowhere (port 9 on loopback), which the subscriptions need allowed.
    let app = spawn_app_with(|settings| {
        settings.notify.webhook_allow_private = true;
        settings.notify.smtp_host = Some("127.0.0.1".to_string());
        settings.notify.smtp_port = Some(9);
        settings.notify.smtp_tls = corral::config::SmtpTls::None;
    })
    .await;
    app.create_namespaces(&["alpha", "beta"]).await;
    // Subscriptions of alpha to read and to delete, made before the instance so that its
    // creation leaves a delivery of alpha to retry.
    let mut ids = BTreeMap::new();
    for (read, delete, path, body) in [
        ("get_webhook", "delete_webhook", "/v1/webhooks", webhook_body()),
        (
            "get_email_subscription",
            "delete_email_subscription",
            "/v1/email-subscriptions",
            email_body(),
        ),
    ] {
        for operation in [read, delete] {
            let created: Value = app.post_json(path, &body, None).await.json().await.unwrap();
            ids.insert(operation, created["id"].as_str().unwrap().to_string());
        }
    }
    for (operation, name) in [("get_key_pair", "alpha-kept"), ("delete_key_pair", "alpha-doomed")] {
        let body = json!({ "name": name, "namespace": "alpha" });
        let response = app.post_json("/v1/keypairs", &body, None).await;
        assert_eq!(response.status(), StatusCode::CREATED, "key pair {name}");
        ids.insert(operation, name.to_string());
    }
    let viewer = app.user_key("viewer", json!({ "alpha": "viewer" })).await;
    let stranger = app.user_key("stranger", json!({ "beta": "operator" })).await;
    let operator = app.user_key("operator", json!({ "alpha": "operator" })).await;
    app.user_key("doomed", json!({})).await;
    let mut body = crate::helpers::create_body("target");
    body["namespace"] = json!("alpha");
    let job = app.create_running(&body).await;
    let instance_id = job["instances"][0]["id"].as_str().unwrap().to_string();
    let job_id = job["id"].as_str().unwrap().to_string();
    let deliveries: Value = app.get("/v1/notifications").await.json().await.unwrap();
    ids.insert("retry_notification", deliveries["items"][0]["id"].as_str().unwrap().to_string());
    ids.insert("get_job", job_id.clone());
    ids.insert("get_job_events", job_id.clone());
    ids.insert("get_terraform_state", job_id);
    ids.insert("revoke_api_key", "no-such-key".to_string());

    let token = crate::helpers::login(&app.address, "admin", crate::helpers::ADMIN_PASSWORD).await;
    let callers: BTreeMap<&str, reqwest::Client> = BTreeMap::from([
        ("none", crate::helpers::http()),
        ("wrong key", client_with("x-api-key", &format!("crl_AAAAAAAA_{}", "B".repeat(32)))),
        ("expired token", client_with("authorization", &format!("Bearer {}", expired_token()))),
        ("tampered token", client_with("authorization", &format!("Bearer {}", tamper(&token)))),
        ("viewer", client_with("x-api-key", &viewer)),
        ("stranger", client_with("x-api-key", &stranger)),
        ("operator", client_with("x-api-key", &operator)),
        ("admin", app.client.clone()),
    ]);

    // The routes, from the OpenAPI document.
    let openapi: Value = app.get("/openapi.json").await.json().await.unwrap();
    let mut operations = Vec::new();
    for (path, methods) in openapi["paths"].as_object().unwrap() {
        for (method, operation) in methods.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap().to_string();
            let public = operation["security"].as_array().is_some_and(|s| s == &[json!({})]);
            operations.push((method.to_uppercase(), path.clone(), id, public));
        }
    }
    let table = table();
    let listed: Vec<&str> = operations.iter().map(|(_, _, id, _)| id.as_str()).collect();
    let missing: Vec<&&str> = listed.iter().filter(|id| !table.contains_key(**id)).collect();
    assert!(missing.is_empty(), "operations without an access rule in this test: {missing:?}");
    assert_eq!(listed.len(), table.len(), "the table names operations the API no longer has");

    // Act and assert: every route, by every caller.
    let mut wrong = Vec::new();
    for (method, path, id, public) in &operations {
        let (rule, body) = &table[id.as_str()];
        assert_eq!(*public, *rule == Rule::Public, "{id}: the document and the table disagree");
        let object_id = ids.get(id.as_str()).unwrap_or(&instance_id);
        let url = app.url(&fill(path, id, object_id));
        for caller in CALLERS {
            let mut request =
                callers[caller].request(Method::from_bytes(method.as_bytes()).unwrap(), &url);
            if let Some(body) = body {
                let body: Value =
                    serde_json::from_str(&body.to_string().replace("{instance}", &instance_id))
                        .unwrap();
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED {
                assert!(response.headers().contains_key("www-authenticate"), "{id} as {caller}");
            }
            if !expected(*rule, caller, status) {
                let detail = response.text().await.unwrap_or_default();
                wrong.push(format!("{method} {path} ({id}) as {caller}: {status} {detail}"));
            }
        }
    }
    assert!(wrong.is_empty(), "unexpected answers:\n{}", wrong.join("\n"));
}

/// The path of an operation with its parameters filled in.
fn fill(path: &str, id: &str, object_id: &str) -> String {
    let username = if id == "delete_user" { "doomed" } else { "viewer" };
    path.replace("{id}", object_id)
        .replace("{cloud_id}", "i-0123456789abcdef0")
        .replace("{namespace}", "alpha")
        .replace("{name}", object_id)
        .replace("{workspace}", object_id)
        .replace("{username}", username)
}

/// A token signed with the server's key that expired an hour ago.
pub fn expired_token() -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = json!({ "sub": "anyone", "name": "admin", "iat": now - 7200, "exp": now - 3600, "iss": "corral" });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// The token with its claims changed (a different user) and its signature kept.
pub fn tamper(token: &str) -> String {
    use base64::Engine;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&engine.decode(parts[1]).unwrap()).unwrap();
    claims["sub"] = json!("someone-else");
    format!("{}.{}.{}", parts[0], engine.encode(claims.to_string()), parts[2])
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

#[tokio::test]
async fn a_terraform_run_token_opens_its_own_workspace_and_nothing_else() {
    let app = crate::helpers::spawn_app().await;
    let first = app.create_running(&crate::helpers::create_body("one")).await;
    let second = app.create_running(&crate::helpers::create_body("two")).await;
    let (mine, other) = (first["id"].as_str().unwrap(), second["id"].as_str().unwrap());
    let now = chrono::Utc::now().timestamp();
    let claims = json!({ "sub": format!("workspace:{mine}"), "name": "job:run-1",
                         "iat": now, "exp": now + 600, "iss": "corral" });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    // As Terraform sends it: HTTP Basic, the token as password.
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("corral:{token}"));
    let run = client_with("authorization", &format!("Basic {basic}"));

    let own = run.get(app.url(&format!("/v1/terraform/state/{mine}"))).send().await.unwrap();
    assert_eq!(own.status(), StatusCode::NO_CONTENT, "no state written yet");
    for path in [
        format!("/v1/terraform/state/{other}"),
        "/v1/instances".to_string(),
        format!("/v1/jobs/{mine}"),
    ] {
        let response = run.get(app.url(&path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
    }
    // An API key works as the Basic password too, for people running terraform themselves.
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("me:{}", app.admin_key));
    let person = client_with("authorization", &format!("Basic {basic}"));
    let response = person.get(app.url(&format!("/v1/terraform/state/{other}"))).send().await;
    assert_eq!(response.unwrap().status(), StatusCode::NO_CONTENT);
}
