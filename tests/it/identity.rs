//! Users, tokens, API keys, namespaces and their quotas, as clients see them.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_PASSWORD, AMI_X86, assert_problem, client_with, create_body, login, problem_fields,
    spawn_app,
};

#[tokio::test]
async fn a_token_from_the_password_grant_works_as_form_or_json_and_names_its_user() {
    let app = spawn_app().await;
    let http = crate::helpers::http();

    let form = http
        .post(app.url("/v1/token"))
        .form(&[("grant_type", "password"), ("username", "admin"), ("password", ADMIN_PASSWORD)])
        .send()
        .await
        .unwrap();
    let json_answer = http
        .post(app.url("/v1/token"))
        .json(&json!({ "username": "admin", "password": ADMIN_PASSWORD }))
        .send()
        .await
        .unwrap();

    for response in [form, json_answer] {
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["token_type"], "bearer");
        assert_eq!(body["expires_in"], 1800);
        let token = body["access_token"].as_str().unwrap();
        let me: Value = client_with("authorization", &format!("Bearer {token}"))
            .get(app.url("/v1/me"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(me["username"], "admin");
        assert_eq!(me["admin"], true);
        assert_eq!(me["authenticated_with"], "password");
    }
}

#[tokio::test]
async fn wrong_passwords_are_401s_and_repeated_ones_are_slowed_down_with_429() {
    let app = spawn_app_with_login_limit(3).await;
    let http = crate::helpers::http();
    let attempt = |password: &'static str| {
        http.post(app.url("/v1/token"))
            .form(&[("username", "admin"), ("password", password)])
            .send()
    };

    for _ in 0..3 {
        let response = attempt("not the password").await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().contains_key("www-authenticate"));
    }
    // Even the right password waits now.
    let throttled = attempt(ADMIN_PASSWORD).await.unwrap();
    let retry_after: u64 = throttled.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=300).contains(&retry_after), "{retry_after}");
    assert_problem(throttled, StatusCode::TOO_MANY_REQUESTS).await;

    // An unknown user is refused the same way as a wrong password.
    let unknown = http
        .post(app.url("/v1/token"))
        .form(&[("username", "nobody"), ("password", "whatever")])
        .send()
        .await
        .unwrap();
    let problem = assert_problem(unknown, StatusCode::UNAUTHORIZED).await;
    assert_eq!(problem["detail"], "wrong username or password");
}

async fn spawn_app_with_login_limit(failures: u32) -> crate::helpers::TestApp {
    crate::helpers::spawn_app_with(|settings| settings.auth.login_failures_per_user = failures)
        .await
}

#[tokio::test]
async fn an_api_key_is_shown_once_stored_hashed_and_stops_working_when_revoked_or_expired() {
    let app = spawn_app().await;

    // Created: the key is in the answer, and never again.
    let created: Value =
        app.post_json("/v1/api-keys", &json!({ "name": "ci" }), None).await.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    let prefix = created["prefix"].as_str().unwrap();
    assert!(key.starts_with(prefix) && key.len() > prefix.len() + 20);
    let listed = app.get("/v1/api-keys").await.text().await.unwrap();
    assert!(listed.contains(prefix) && !listed.contains(&key));
    assert!(!database_dump(&app).await.contains(&key), "the key itself is not stored");

    // It authenticates as its user, under its prefix.
    let with_key = client_with("x-api-key", &key);
    let me: Value = with_key.get(app.url("/v1/me")).send().await.unwrap().json().await.unwrap();
    assert_eq!(me["username"], "admin");
    assert_eq!(me["api_key_prefix"], prefix);

    // Revoked: refused at once.
    let id = created["id"].as_str().unwrap();
    let revoked = app.client.delete(app.url(&format!("/v1/api-keys/{id}"))).send().await.unwrap();
    assert_eq!(revoked.status(), StatusCode::OK);
    let refused = with_key.get(app.url("/v1/me")).send().await.unwrap();
    let problem = assert_problem(refused, StatusCode::UNAUTHORIZED).await;
    assert_eq!(problem["detail"], "the API key has been revoked");

    // Expired: refused once its time has passed; a past expiry is refused at creation.
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let expiring: Value = app
        .post_json("/v1/api-keys", &json!({ "name": "short", "expires_at": soon }), None)
        .await
        .json()
        .await
        .unwrap();
    let expiring = client_with("x-api-key", expiring["key"].as_str().unwrap());
    assert_eq!(expiring.get(app.url("/v1/me")).send().await.unwrap().status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let problem = assert_problem(
        expiring.get(app.url("/v1/me")).send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(problem["detail"], "the API key has expired");
    let past = (chrono::Utc::now() - chrono::Duration::seconds(5)).to_rfc3339();
    let response =
        app.post_json("/v1/api-keys", &json!({ "name": "past", "expires_at": past }), None).await;
    let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(problem["errors"][0]["field"], "expires_at");
}

/// Every text value of the tables that hold credentials.
async fn database_dump(app: &crate::helpers::TestApp) -> String {
    let sql = "SELECT id || prefix || key_hash || name FROM api_keys \
               UNION ALL SELECT username || password_hash FROM users \
               UNION ALL SELECT COALESCE(old_value, '') || COALESCE(new_value, '') FROM audit_events";
    let rows: Vec<(String,)> = if app.database_url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&app.database_url).await.unwrap();
        sqlx::query_as(sql).fetch_all(&pool).await.unwrap()
    } else {
        let pool = sqlx::PgPool::connect(&app.database_url).await.unwrap();
        sqlx::query_as(sql).fetch_all(&pool).await.unwrap()
    };
    rows.into_iter().map(|(text,)| text).collect::<Vec<_>>().join("\n")
}

#[tokio::test]
async fn users_are_validated_unique_and_the_last_admin_stays() {
    let app = spawn_app().await;
    app.create_namespaces(&["alpha"]).await;

    let bad = json!({ "username": "Bad Name", "password": "short", "roles": { "alpha": "owner", "ghost": "viewer" } });
    let problem = assert_problem(
        app.post_json("/v1/users", &bad, None).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(
        problem["errors"],
        json!([
            { "field": "username",
              "message": "must be 1-63 characters of lowercase letters, digits, '.', '_' and '-'" },
            { "field": "password", "message": "must have at least 12 characters" },
            { "field": "roles.alpha", "message": "unknown role 'owner'; allowed: operator, viewer" },
        ]),
        "{problem}"
    );

    let ghost = json!({ "username": "ann", "password": "long enough password", "roles": { "ghost": "viewer" } });
    let problem = assert_problem(
        app.post_json("/v1/users", &ghost, None).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "roles.ghost");
    assert_eq!(app.get("/v1/users/ann").await.status(), StatusCode::NOT_FOUND);

    let ann = json!({ "username": "ann", "password": "long enough password", "roles": { "alpha": "operator" } });
    assert_eq!(app.post_json("/v1/users", &ann, None).await.status(), StatusCode::CREATED);
    assert_problem(app.post_json("/v1/users", &ann, None).await, StatusCode::CONFLICT).await;
    let user: Value = app.get("/v1/users/ann").await.json().await.unwrap();
    assert_eq!(user["roles"], json!({ "alpha": "operator" }));
    assert!(user.get("password_hash").is_none() && user.get("password").is_none());

    // The only admin can neither lose the role nor be deleted.
    let demote = app
        .client
        .patch(app.url("/v1/users/admin"))
        .json(&json!({ "admin": false }))
        .send()
        .await
        .unwrap();
    assert_problem(demote, StatusCode::CONFLICT).await;
    let delete = app.client.delete(app.url("/v1/users/admin")).send().await.unwrap();
    assert_problem(delete, StatusCode::CONFLICT).await;

    // A user changes their own password, and then logs in with it only.
    let token = login(&app.address, "ann", "long enough password").await;
    let ann_client = client_with("authorization", &format!("Bearer {token}"));
    let changed = ann_client
        .patch(app.url("/v1/users/ann"))
        .json(&json!({ "password": "a brand new password",
                       "current_password": "long enough password" }))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    let token = login(&app.address, "ann", "a brand new password").await;
    let ann_client = client_with("authorization", &format!("Bearer {token}"));
    let old = crate::helpers::http()
        .post(app.url("/v1/token"))
        .form(&[("username", "ann"), ("password", "long enough password")])
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), StatusCode::UNAUTHORIZED);
    // ... but cannot make themselves admin.
    let escalate = ann_client
        .patch(app.url("/v1/users/ann"))
        .json(&json!({ "admin": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(escalate.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn namespaces_filter_what_a_user_sees() {
    let app = spawn_app().await;
    app.create_namespaces(&["alpha", "beta"]).await;
    let alpha_key = app.user_key("alice", json!({ "alpha": "operator" })).await;
    let alice = client_with("x-api-key", &alpha_key);
    let mut in_alpha = create_body("mine");
    in_alpha["namespace"] = json!("alpha");
    let mut in_beta = create_body("theirs");
    in_beta["namespace"] = json!("beta");
    let mine = app.create_running(&in_alpha).await;
    let theirs = app.create_running(&in_beta).await;

    let listed: Value =
        alice.get(app.url("/v1/instances")).send().await.unwrap().json().await.unwrap();
    let names: Vec<&str> =
        listed["items"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["mine"]);
    let asked_for_beta: Value = alice
        .get(app.url("/v1/instances?namespace=beta"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(asked_for_beta["items"], json!([]));
    let namespaces: Value =
        alice.get(app.url("/v1/namespaces")).send().await.unwrap().json().await.unwrap();
    assert_eq!(namespaces["items"].as_array().unwrap().len(), 1);
    assert_eq!(namespaces["items"][0]["name"], "alpha");
    assert_eq!(namespaces["items"][0]["usage"]["instances"], 1);

    // Beta's instance and job do not exist for alice, by corral id or by EC2 id.
    let beta_instance = &theirs["instances"][0];
    for id in [beta_instance["id"].as_str().unwrap(), beta_instance["cloud_id"].as_str().unwrap()] {
        let response = alice.get(app.url(&format!("/v1/instances/{id}"))).send().await.unwrap();
        assert_problem(response, StatusCode::NOT_FOUND).await;
    }
    let job = alice
        .get(app.url(&format!("/v1/jobs/{}", theirs["id"].as_str().unwrap())))
        .send()
        .await
        .unwrap();
    assert_problem(job, StatusCode::NOT_FOUND).await;
    let jobs: Value = alice.get(app.url("/v1/jobs")).send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> =
        jobs["items"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [mine["id"].as_str().unwrap()]);
    // A bulk action naming both is refused as if beta's instance did not exist, and acts on
    // none: no job is made, and once nothing is queued or running both instances still run.
    let jobs_before = job_ids(&app).await;
    let both =
        json!({ "action": "stop", "ids": [mine["instances"][0]["id"], beta_instance["id"]] });
    let response = alice.post(app.url("/v1/instances/actions")).json(&both).send().await.unwrap();
    let problem = assert_problem(response, StatusCode::NOT_FOUND).await;
    let beta_id = beta_instance["id"].as_str().unwrap();
    assert_eq!(problem["detail"], format!("no instance with id or name '{beta_id}'"));
    wait_until_no_job_is_queued_or_running(&app).await;
    assert_eq!(job_ids(&app).await, jobs_before, "the refused request made no job");
    for job in [&mine, &theirs] {
        let cloud_id = job["instances"][0]["cloud_id"].as_str().unwrap();
        assert_eq!(app.moto_state(cloud_id).await, "running", "{cloud_id}");
    }
}

/// The ids of every job, as the admin lists them.
async fn job_ids(app: &crate::helpers::TestApp) -> Vec<String> {
    let jobs: Value = app.get_jobs("?limit=100").await.json().await.unwrap();
    let items = jobs["items"].as_array().unwrap();
    items.iter().map(|job| job["id"].as_str().unwrap().to_string()).collect()
}

/// Waits (up to 30 s) until no job is queued or running.
async fn wait_until_no_job_is_queued_or_running(app: &crate::helpers::TestApp) {
    for _ in 0..300 {
        let mut busy = 0;
        for status in ["queued", "running"] {
            let jobs: Value =
                app.get_jobs(&format!("?status={status}")).await.json().await.unwrap();
            busy += jobs["items"].as_array().unwrap().len();
        }
        if busy == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("jobs still queued or running after 30 s");
}

#[tokio::test]
async fn two_hundred_parallel_creates_against_a_quota_of_twenty_admit_exactly_twenty() {
    let app = spawn_app().await;
    let quota = json!({ "name": "capped", "quota": { "instances": 20 } });
    assert_eq!(app.post_json("/v1/namespaces", &quota, None).await.status(), StatusCode::CREATED);

    let requests = (0..200).map(|n| {
        let client = app.client.clone();
        let url = app.url("/v1/instances");
        async move {
            let body = json!({ "name": format!("q-{n}"), "ami": AMI_X86, "instance_type": "t3.micro", "namespace": "capped" });
            let response = client.post(url).json(&body).send().await.unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap())
        }
    });
    let answers = futures_util::future::join_all(requests).await;

    let admitted = answers.iter().filter(|(status, _)| *status == StatusCode::ACCEPTED).count();
    assert_eq!(admitted, 20);
    let refused: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::UNPROCESSABLE_ENTITY)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(refused.len(), 180, "every other request is refused by the quota");
    assert_eq!(refused[0]["type"], "urn:corral:problem:quota-exceeded");
    assert_eq!(
        refused[0]["detail"],
        "namespace 'capped' allows 20 instances; 20 in use, 1 requested"
    );
    let namespace: Value = app.get("/v1/namespaces/capped").await.json().await.unwrap();
    assert_eq!(namespace["usage"]["instances"], 20);
}

#[tokio::test]
async fn a_vcpu_quota_counts_the_vcpus_the_cloud_reports_for_the_type() {
    let app = spawn_app().await;
    let quota = json!({ "name": "small", "quota": { "vcpus": 5 } });
    assert_eq!(app.post_json("/v1/namespaces", &quota, None).await.status(), StatusCode::CREATED);
    let mut body = create_body("cpu");
    body["namespace"] = json!("small");
    body["name"] = Value::Null;
    body["name_prefix"] = json!("cpu");

    // t3.micro has 2 vCPUs: two instances fit in 5, three do not.
    body["count"] = json!(3);
    let refused = app.post_instances(&body, "").await;
    let problem = assert_problem(refused, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(problem["detail"], "namespace 'small' allows 5 vcpus; 0 in use, 6 requested");
    body["count"] = json!(2);
    assert_eq!(app.post_instances(&body, "").await.status(), StatusCode::ACCEPTED);
    body["count"] = json!(1);
    let problem =
        assert_problem(app.post_instances(&body, "").await, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(problem["detail"], "namespace 'small' allows 5 vcpus; 4 in use, 2 requested");

    // Raising the quota admits it.
    let raised = app
        .client
        .patch(app.url("/v1/namespaces/small"))
        .json(&json!({ "quota": { "instances": null, "vcpus": 6 } }))
        .send()
        .await
        .unwrap();
    assert_eq!(raised.status(), StatusCode::OK);
    assert_eq!(app.post_instances(&body, "").await.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_namespace_update_changes_only_what_it_names() {
    let app = spawn_app().await;
    let body = json!({ "name": "team", "quota": { "instances": 4 }, "default_backend": "aws" });
    let created: Value = app.post_json("/v1/namespaces", &body, None).await.json().await.unwrap();
    assert_eq!(
        (created["quota"]["instances"].as_i64(), &created["default_backend"]),
        (Some(4), &json!("aws"))
    );
    let patch = |body: Value| {
        let request = app.client.patch(app.url("/v1/namespaces/team")).json(&body).send();
        async move { request.await.unwrap() }
    };

    // One quota keeps the other and the backend; the backend alone keeps the quotas; null
    // lifts a quota, or returns the backend to the server's.
    let changed: Value = patch(json!({ "quota": { "vcpus": 8 } })).await.json().await.unwrap();
    assert_eq!(changed["quota"], json!({ "instances": 4, "vcpus": 8 }));
    assert_eq!(changed["default_backend"], "aws");
    let changed: Value = patch(json!({ "default_backend": null })).await.json().await.unwrap();
    assert_eq!(changed["quota"], json!({ "instances": 4, "vcpus": 8 }));
    assert_eq!(changed["default_backend"], Value::Null);
    let changed: Value =
        patch(json!({ "quota": { "instances": null } })).await.json().await.unwrap();
    assert_eq!(changed["quota"], json!({ "instances": null, "vcpus": 8 }));

    // Bad changes are refused whole, each named; nothing changes.
    let problem = assert_problem(
        patch(json!({ "quota": { "instances": -1 }, "default_backend": "ansible" })).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let fields = problem_fields(&problem);
    assert_eq!(fields, ["quota.instances", "default_backend"], "{problem}");
    assert!(problem.to_string().contains("unknown backend 'ansible'"), "{problem}");
    let problem = assert_problem(patch(json!({})).await, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(problem.to_string().contains("nothing to change"), "{problem}");
    for quota in [json!({}), Value::Null] {
        let response = patch(json!({ "quota": quota, "default_backend": "aws" })).await;
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(problem_fields(&problem), ["quota"], "{problem}");
    }
    let now: Value = app.get("/v1/namespaces/team").await.json().await.unwrap();
    assert_eq!((&now["quota"], &now["default_backend"]), (&changed["quota"], &Value::Null));

    // The audit log keeps each setting before and after.
    let audit: Value =
        app.get("/v1/audit?namespace=team&action=namespace.update").await.json().await.unwrap();
    assert_eq!(audit["total"], 3);
    assert_eq!(audit["logs"][1]["old_value"]["default_backend"], "aws");
    assert_eq!(audit["logs"][1]["new_value"]["default_backend"], Value::Null);
    assert_eq!(audit["logs"][0]["old_value"]["quota"], json!({ "instances": 4, "vcpus": 8 }));
    assert_eq!(audit["logs"][0]["new_value"]["quota"], json!({ "instances": null, "vcpus": 8 }));
}

/// A role given changes that namespace only, null takes one away, and the other roles stay.
#[tokio::test]
async fn a_user_update_changes_only_the_roles_it_names() {
    let app = spawn_app().await;
    app.create_namespaces(&["alpha", "beta"]).await;
    let body = json!({ "username": "kim", "password": "long enough password", "roles": { "alpha": "operator" } });
    assert_eq!(app.post_json("/v1/users", &body, None).await.status(), StatusCode::CREATED);
    let patch = |body: Value| {
        let request = app.client.patch(app.url("/v1/users/kim")).json(&body).send();
        async move { request.await.unwrap().json::<Value>().await.unwrap() }
    };

    let user = patch(json!({ "roles": { "beta": "viewer" } })).await;
    assert_eq!(user["roles"], json!({ "alpha": "operator", "beta": "viewer" }), "{user}");
    let user = patch(json!({ "roles": { "alpha": null } })).await;
    assert_eq!(user["roles"], json!({ "beta": "viewer" }), "{user}");
    let user = patch(json!({ "admin": false })).await;
    assert_eq!(user["roles"], json!({ "beta": "viewer" }), "{user}");

    // A role to take away that the user does not hold, or a bad role, is refused, naming it,
    // and nothing changes.
    for (body, field) in [
        (json!({ "roles": { "alpha": null, "beta": null } }), "roles.alpha"),
        (json!({ "roles": { "beta": "owner" } }), "roles.beta"),
        (json!({ "roles": { "ghost": "viewer" } }), "roles.ghost"),
    ] {
        let response = app.client.patch(app.url("/v1/users/kim")).json(&body).send().await;
        let problem = assert_problem(response.unwrap(), StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(problem_fields(&problem), [field], "{problem}");
    }
    let user: Value = app.get("/v1/users/kim").await.json().await.unwrap();
    assert_eq!(user["roles"], json!({ "beta": "viewer" }), "{user}");
}

#[tokio::test]
async fn terminating_a_namespace_ends_every_instance_in_one_job_and_an_empty_one_finishes_at_once()
{
    let app = spawn_app().await;
    app.create_namespaces(&["doomed", "empty", "kept"]).await;
    let mut body = json!({ "name_prefix": "d", "count": 3, "ami": AMI_X86, "instance_type": "t3.micro", "namespace": "doomed" });
    let doomed = app.create_running(&body).await;
    body["namespace"] = json!("kept");
    body["count"] = json!(1);
    let kept = app.create_running(&body).await;

    let response =
        app.client.delete(app.url("/v1/namespaces/doomed/instances?wait=30")).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["kind"], "terminate_instances");
    assert_eq!(job["instances"].as_array().unwrap().len(), 3);
    for instance in doomed["instances"].as_array().unwrap() {
        assert_eq!(app.moto_state(instance["cloud_id"].as_str().unwrap()).await, "terminated");
    }
    assert_eq!(app.moto_state(kept["instances"][0]["cloud_id"].as_str().unwrap()).await, "running");

    let empty = app.client.delete(app.url("/v1/namespaces/empty/instances")).send().await.unwrap();
    assert_eq!(empty.status(), StatusCode::OK);
    let job: Value = empty.json().await.unwrap();
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["instances"], json!([]));
    let missing = app.client.delete(app.url("/v1/namespaces/nope/instances")).send().await.unwrap();
    assert_problem(missing, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn no_secret_reaches_the_log_the_audit_log_or_an_answer_after_creation() {
    // Arrange: the real binary, logging at debug level to a file.
    let (aws_key, aws_secret) = crate::helpers::new_moto_account().await;
    let dir = tempfile::tempdir().unwrap();
    let database = crate::helpers::fresh_database_url(dir.path()).await;
    let log_path = dir.path().join("corral.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let admin_password = "admin-secret-in-env-7319";
    let smtp_password = "smtp-secret-in-env-4410";
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--database", &database])
        .env("AWS_ENDPOINT_URL", crate::helpers::moto_url())
        .env("AWS_ACCESS_KEY_ID", &aws_key)
        .env("AWS_SECRET_ACCESS_KEY", &aws_secret)
        .env("AWS_REGION", "us-east-1")
        .env("CORRAL_ADMIN_PASSWORD", admin_password)
        .env("CORRAL_SMTP_HOST", "127.0.0.1")
        .env("CORRAL_SMTP_PORT", nobody.to_string())
        .env("CORRAL_SMTP_USER", "corral")
        .env("CORRAL_SMTP_PASSWORD", smtp_password)
        .env("CORRAL_NOTIFY_EMAIL", "ops@example.com")
        .env("CORRAL_WEBHOOK_ALLOW_PRIVATE", "true")
        .env("CORRAL_NOTIFY__POLL_INTERVAL_MS", "50")
        .env("RUST_LOG", "debug")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..200 {
        if crate::helpers::http().get(format!("{base}/health")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "corral started");

    // Act: log in, fail to log in, make a key and a user, use them, and make a job fail.
    let token = login(&base, "admin", admin_password).await;
    let admin = client_with("authorization", &format!("Bearer {token}"));
    let wrong_password = "wrong-guess-5521";
    let failed = crate::helpers::http()
        .post(format!("{base}/v1/token"))
        .form(&[("username", "admin"), ("password", wrong_password)])
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), StatusCode::UNAUTHORIZED);
    let key = crate::helpers::create_api_key(&admin, &base).await;
    let user_password = "user-secret-password-8842";
    let user =
        json!({ "username": "sam", "password": user_password, "roles": { "default": "operator" } });
    let created = admin.post(format!("{base}/v1/users")).json(&user).send().await.unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let sam_token = login(&base, "sam", user_password).await;
    let with_key = client_with("x-api-key", &key);
    let webhook_secret = "webhook-signing-secret-6630";
    let hook =
        json!({ "url": format!("http://127.0.0.1:{nobody}/hook"), "secret": webhook_secret });
    let hooked = admin.post(format!("{base}/v1/webhooks")).json(&hook).send().await.unwrap();
    assert_eq!(hooked.status(), StatusCode::CREATED);
    let mut body = create_body("secretive");
    body["ami"] = json!("ami-00000000deadbeef0");
    let job: Value = with_key
        .post(format!("{base}/v1/instances?wait=30"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(job["status"], "failed", "{job}");
    let audit =
        admin.get(format!("{base}/v1/audit?limit=100")).send().await.unwrap().text().await.unwrap();
    let users = admin.get(format!("{base}/v1/users")).send().await.unwrap().text().await.unwrap();
    let keys = admin.get(format!("{base}/v1/api-keys")).send().await.unwrap().text().await.unwrap();
    let jobs = admin.get(format!("{base}/v1/jobs")).send().await.unwrap().text().await.unwrap();
    let webhooks =
        admin.get(format!("{base}/v1/webhooks")).send().await.unwrap().text().await.unwrap();
    // The job's failure is mailed and posted: wait until both were tried (and failed).
    let mut notifications = String::new();
    for _ in 0..200 {
        let url = format!("{base}/v1/notifications");
        let page: Value = admin.get(url).send().await.unwrap().json().await.unwrap();
        notifications = page.to_string();
        let items = page["items"].as_array().unwrap();
        if items.len() == 2 && items.iter().all(|d| d["last_error"].is_string()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(notifications.contains("SMTP"), "{notifications}");
    std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    child.wait().unwrap();

    // Assert
    let logged = std::fs::read_to_string(&log_path).unwrap();
    assert!(logged.contains("failed login"), "the log is captured: {logged}");
    let secrets = [
        ("admin password", admin_password),
        ("wrong password", wrong_password),
        ("user password", user_password),
        ("API key", key.as_str()),
        ("token", token.as_str()),
        ("user's token", sam_token.as_str()),
        ("AWS secret key", aws_secret.as_str()),
        ("SMTP password", smtp_password),
        ("webhook secret", webhook_secret),
    ];
    for (place, text) in [
        ("log", &logged),
        ("audit", &audit),
        ("users", &users),
        ("api-keys", &keys),
        ("jobs", &jobs),
        ("webhooks", &webhooks),
        ("notifications", &notifications),
    ] {
        for (name, secret) in secrets {
            assert!(!text.contains(secret), "the {name} appears in the {place}");
        }
    }
}

/// Two admins demoting each other at the same moment leave exactly one admin, round after
/// round with fresh admins: one request wins, and the other is refused as the last admin (409)
/// when both callers were admitted as admins together, or as no admin any more (403) when its
/// caller had lost the role before it was authenticated. At least one round must have raced for
/// real (a 409), or the rounds proved nothing about the race.
#[tokio::test]
async fn two_admins_demoting_each_other_at_once_leave_one_admin() {
    let app = spawn_app().await;
    let password = "long enough password";
    // The admin the previous round left, by username, with a client acting as it.
    let mut survivor = ("admin".to_string(), app.client.clone());
    let (mut rounds, mut raced) = (0, 0);
    while rounds < 5 || (raced == 0 && rounds < 20) {
        rounds += 1;
        // Arrange: a second admin, and a warm connection for each of the two.
        let name = format!("admin-{rounds}");
        let body = json!({ "username": name, "password": password, "admin": true });
        let created = survivor.1.post(app.url("/v1/users")).json(&body).send().await.unwrap();
        assert_eq!(created.status(), StatusCode::CREATED, "round {rounds}");
        let token = login(&app.address, &name, password).await;
        let newcomer = (name, client_with("authorization", &format!("Bearer {token}")));
        for (username, client) in [&survivor, &newcomer] {
            let me: Value =
                client.get(app.url("/v1/me")).send().await.unwrap().json().await.unwrap();
            assert_eq!(
                (me["username"].as_str(), me["admin"].as_bool()),
                (Some(username.as_str()), Some(true)),
                "round {rounds}"
            );
        }

        // Act: each demotes the other, both requests released at once.
        let demote = |client: &reqwest::Client, username: &str| {
            client.patch(app.url(&format!("/v1/users/{username}"))).json(&json!({ "admin": false }))
        };
        let barrier = tokio::sync::Barrier::new(2);
        let (by_survivor, by_newcomer) = tokio::join!(
            send_together(demote(&survivor.1, &newcomer.0), &barrier),
            send_together(demote(&newcomer.1, &survivor.0), &barrier),
        );

        // Assert
        let survivor_won = by_survivor.0 == StatusCode::OK;
        let (won, lost) =
            if survivor_won { (&by_survivor, &by_newcomer) } else { (&by_newcomer, &by_survivor) };
        assert_eq!(won.0, StatusCode::OK, "round {rounds}: {by_survivor:?} {by_newcomer:?}");
        assert_eq!(won.1["admin"], false, "round {rounds}: {won:?}");
        if lost.0 == StatusCode::CONFLICT {
            assert_eq!(
                lost.1["detail"], "corral needs at least one admin; make another user admin first",
                "round {rounds}"
            );
            raced += 1;
        } else {
            assert_eq!(
                (lost.0, lost.1["detail"].as_str()),
                (StatusCode::FORBIDDEN, Some("this needs the admin role")),
                "round {rounds}: exactly one of the two succeeds: {by_survivor:?} {by_newcomer:?}"
            );
        }
        if !survivor_won {
            survivor = newcomer;
        }
        // Exactly one admin is left, the winner.
        let users: Value =
            survivor.1.get(app.url("/v1/users")).send().await.unwrap().json().await.unwrap();
        let admins: Vec<&str> = users["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|user| user["admin"] == true)
            .map(|user| user["username"].as_str().unwrap())
            .collect();
        assert_eq!(admins, [survivor.0.as_str()], "round {rounds}: {users}");
    }
    assert!(raced > 0, "in {rounds} rounds the two requests never overlapped");
}

/// Sends `request` once every party has reached `barrier`; answers its status and JSON body.
async fn send_together(
    request: reqwest::RequestBuilder,
    barrier: &tokio::sync::Barrier,
) -> (StatusCode, Value) {
    barrier.wait().await;
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// Every change to a principal applies at the very next request, on the process `reader` even
/// when `writer` made it (another replica on PostgreSQL): roles given and taken, the admin
/// flag, a password change (which ends the user's tokens), a revoked key, a deleted user. Each
/// credential is used on `reader` before each change, so that what `reader` keeps of it in
/// memory is what the change must end.
pub async fn principal_changes_apply_at_the_next_request(
    writer: &crate::helpers::TestApp,
    reader: &str,
) {
    writer.create_namespaces(&["alpha"]).await;
    let body = json!({ "username": "kim", "password": "long enough password",
                       "roles": { "alpha": "operator" } });
    assert_eq!(writer.post_json("/v1/users", &body, None).await.status(), StatusCode::CREATED);
    let token = login(reader, "kim", "long enough password").await;
    let by_token = client_with("authorization", &format!("Bearer {token}"));
    let key = crate::helpers::create_api_key(&by_token, reader).await;
    let spare = crate::helpers::create_api_key(&by_token, reader).await;
    let (by_key, by_spare) = (client_with("x-api-key", &key), client_with("x-api-key", &spare));
    let me = |client: &reqwest::Client| {
        let request = client.get(format!("{reader}/v1/me")).send();
        async move { request.await.unwrap() }
    };
    let roles_of = |client: &reqwest::Client| {
        let response = me(client);
        async move {
            let response = response.await;
            assert_eq!(response.status(), StatusCode::OK);
            let body: Value = response.json().await.unwrap();
            (body["roles"].clone(), body["admin"].clone())
        }
    };
    let patch = |body: Value| {
        let request = writer.client.patch(writer.url("/v1/users/kim")).json(&body).send();
        async move { assert_eq!(request.await.unwrap().status(), StatusCode::OK) }
    };
    for client in [&by_token, &by_key, &by_spare] {
        assert_eq!(roles_of(client).await, (json!({ "alpha": "operator" }), json!(false)));
    }

    // A role changed, then taken away.
    patch(json!({ "roles": { "alpha": "viewer" } })).await;
    for client in [&by_token, &by_key] {
        assert_eq!(roles_of(client).await, (json!({ "alpha": "viewer" }), json!(false)));
    }
    patch(json!({ "roles": { "alpha": null } })).await;
    assert_eq!(roles_of(&by_key).await, (json!({}), json!(false)));
    let hidden = by_key.get(format!("{reader}/v1/namespaces/alpha")).send().await.unwrap();
    assert_eq!(hidden.status(), StatusCode::NOT_FOUND);

    // Made admin, then not.
    let users = |client: &reqwest::Client| {
        let request = client.get(format!("{reader}/v1/users")).send();
        async move { request.await.unwrap().status() }
    };
    assert_eq!(users(&by_key).await, StatusCode::FORBIDDEN);
    patch(json!({ "admin": true })).await;
    assert_eq!(users(&by_key).await, StatusCode::OK);
    assert_eq!(users(&by_token).await, StatusCode::OK);
    patch(json!({ "admin": false })).await;
    assert_eq!(users(&by_key).await, StatusCode::FORBIDDEN);
    assert_eq!(users(&by_token).await, StatusCode::FORBIDDEN);

    // A new password ends the token; the keys stay.
    patch(json!({ "password": "another long password" })).await;
    let problem = assert_problem(me(&by_token).await, StatusCode::UNAUTHORIZED).await;
    assert!(problem["detail"].as_str().unwrap().contains("password changed"), "{problem}");
    assert_eq!(me(&by_key).await.status(), StatusCode::OK);

    // A revoked key.
    let keys: Value = writer.get("/v1/api-keys").await.json().await.unwrap();
    let id = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|listed| key.starts_with(listed["prefix"].as_str().unwrap()))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let revoked = writer.client.delete(writer.url(&format!("/v1/api-keys/{id}"))).send().await;
    assert_eq!(revoked.unwrap().status(), StatusCode::OK);
    let problem = assert_problem(me(&by_key).await, StatusCode::UNAUTHORIZED).await;
    assert_eq!(problem["detail"], "the API key has been revoked");
    assert_eq!(me(&by_spare).await.status(), StatusCode::OK);

    // A deleted user: its other key with it.
    let deleted = writer.client.delete(writer.url("/v1/users/kim")).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_problem(me(&by_spare).await, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn a_principal_change_applies_at_the_next_request() {
    let app = spawn_app().await;
    principal_changes_apply_at_the_next_request(&app, &app.address).await;
}
