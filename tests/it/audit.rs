//! The audit log: requests and observed changes, by page, filtered, and by namespace.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{assert_problem, client_with, create_body, problem_fields, spawn_app};

#[tokio::test]
async fn requests_and_observed_state_changes_are_audited_with_actor_and_request_id() {
    let app = spawn_app().await;
    app.create_namespaces(&["alpha"]).await;
    let operator_key = app.user_key("olga", json!({ "alpha": "operator" })).await;
    let olga = client_with("x-api-key", &operator_key);
    let mut body = create_body("audited");
    body["namespace"] = json!("alpha");

    let response = olga
        .post(app.url("/v1/instances?wait=30"))
        .header("x-request-id", "req-create-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-create-1");
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["status"], "succeeded", "{job}");
    // People, not keys: the user acts, and which of their keys did is said beside.
    assert_eq!((&job["actor"], &job["credential"]), (&json!("olga"), &json!(operator_key[..12])));
    let instance_id = job["instances"][0]["id"].as_str().unwrap();

    let events: Value =
        app.get(&format!("/v1/audit?target={instance_id}&limit=100")).await.json().await.unwrap();
    let logs = events["logs"].as_array().unwrap();
    let create = logs.iter().find(|e| e["action"] == "instance.create").expect("create audited");
    assert_eq!(create["actor"], "olga", "an API key acts as its user");
    assert_eq!(create["credential"], operator_key[..12], "and is named as the credential");
    assert_eq!(create["namespace"], "alpha");
    assert_eq!(create["request_id"], "req-create-1");
    assert_eq!(create["new_value"]["job_id"], job["id"]);
    assert_eq!(create["new_value"]["instance_type"], "t3.micro");
    let observed: Vec<(&str, &str)> = logs
        .iter()
        .filter(|e| e["action"] == "instance.state")
        .map(|e| {
            assert_eq!(e["actor"], "system");
            (e["old_value"]["state"].as_str().unwrap(), e["new_value"]["state"].as_str().unwrap())
        })
        .collect();
    assert!(
        observed.contains(&("provisioning", "pending"))
            || observed.contains(&("provisioning", "running")),
        "{observed:?}"
    );
    assert_eq!(observed.first().unwrap().1, "running", "newest first");
    assert_eq!(events["total"], logs.len());

    // All of olga's actions are found by her name, whichever credential made them.
    let token = crate::helpers::login(&app.address, "olga", "olga-password-123").await;
    let by_token = client_with("authorization", &format!("Bearer {token}"));
    let tagged = by_token
        .patch(app.url(&format!("/v1/instances/{instance_id}?wait=30")))
        .json(&json!({ "tags": { "via": "token" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(tagged.status(), StatusCode::OK);
    let hers: Value = app.get("/v1/audit?actor=olga&limit=100").await.json().await.unwrap();
    let credentials: Vec<(&str, &str)> = hers["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["credential"].as_str().unwrap()))
        .collect();
    assert!(credentials.contains(&("instance.create", &operator_key[..12])), "{hers}");
    assert!(credentials.contains(&("instance.update", "token")), "{hers}");
}

#[tokio::test]
async fn patching_an_instance_records_old_and_new_values_and_retags_it_in_the_cloud() {
    let app = spawn_app().await;
    let mut body = create_body("before");
    body["tags"] = json!({ "team": "blue", "temp": "yes", "owner": "ops" });
    let job = app.create_running(&body).await;
    let instance = &job["instances"][0];
    let (id, cloud_id) = (instance["id"].as_str().unwrap(), instance["cloud_id"].as_str().unwrap());

    // A tag given changes, a null one goes, and the tag left out stays.
    let response = app
        .client
        .patch(app.url(&format!("/v1/instances/{id}?wait=30")))
        .json(&json!({ "name": "after", "tags": { "team": "red", "temp": null } }))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    let job: Value = response.json().await.unwrap();
    assert_eq!(
        (job["kind"].as_str(), job["status"].as_str()),
        (Some("tag_instances"), Some("succeeded")),
        "{job}"
    );
    let tags = crate::helpers::tags_of(&app.moto_instances().await[cloud_id]);
    assert_eq!(tags["Name"], "after");
    assert_eq!(tags["team"], "red");
    assert_eq!(tags["owner"], "ops", "a tag the request left out stays in the cloud");
    assert!(!tags.contains_key("temp"), "a removed tag is removed in the cloud");
    let stored: Value = app.get_instance(id).await.json().await.unwrap();
    assert_eq!(
        (stored["name"].as_str(), &stored["tags"]),
        (Some("after"), &json!({ "owner": "ops", "team": "red" }))
    );
    let audit: Value = app
        .get(&format!("/v1/audit?action=instance.update&target={id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["total"], 1);
    let event = &audit["logs"][0];
    assert_eq!(
        (&event["actor"], &event["credential"]),
        (&json!("admin"), &json!(app.admin_key[..12]))
    );
    assert_eq!(
        event["old_value"],
        json!({ "name": "before", "tags": { "owner": "ops", "team": "blue", "temp": "yes" } })
    );
    assert_eq!(event["new_value"]["name"], "after");
    assert_eq!(event["new_value"]["tags"], json!({ "owner": "ops", "team": "red" }));

    // Bad names and reserved tags are refused, naming the field, and change nothing.
    let bad = app
        .client
        .patch(app.url(&format!("/v1/instances/{id}")))
        .json(&json!({ "name": "", "tags": { "corral:x": "1" } }))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(bad, StatusCode::UNPROCESSABLE_ENTITY).await;
    let fields = problem_fields(&problem);
    assert_eq!(fields, ["name", "tags.corral:x"]);
    let stored: Value = app.get_instance(id).await.json().await.unwrap();
    assert_eq!(stored["name"], "after");
}

#[tokio::test]
async fn the_log_pages_newest_first_with_totals_and_viewers_see_only_their_namespaces() {
    let app = spawn_app().await;
    app.create_namespaces(&["alpha", "beta"]).await;
    for n in 0..7 {
        let body = json!({ "name": format!("ns-{n}"), "quota": { "instances": n } });
        assert_eq!(
            app.post_json("/v1/namespaces", &body, None).await.status(),
            StatusCode::CREATED
        );
    }
    let quota = json!({ "quota": { "instances": 3, "vcpus": null } });
    let patched =
        app.client.patch(app.url("/v1/namespaces/beta")).json(&quota).send().await.unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    let viewer = client_with("x-api-key", &app.user_key("vic", json!({ "beta": "viewer" })).await);

    // Admin: everything, newest first, page by page.
    let all: Value = app.get("/v1/audit?limit=100").await.json().await.unwrap();
    let total = all["total"].as_i64().unwrap();
    assert_eq!(total as usize, all["logs"].as_array().unwrap().len());
    let ids: Vec<i64> =
        all["logs"].as_array().unwrap().iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|pair| pair[0] > pair[1]), "newest first: {ids:?}");
    assert!(total > 8, "more than two pages of four: {total}");
    // Every page but the last is full, the last holds the rest, the one after it is empty, and
    // together, in page order, they hold every event once, newest first.
    let pages = (total + 3) / 4;
    let mut paged = Vec::new();
    for page in 1..=pages + 1 {
        let body: Value =
            app.get(&format!("/v1/audit?limit=4&page={page}")).await.json().await.unwrap();
        assert_eq!(
            (body["page"].as_i64(), body["limit"].as_i64(), body["total"].as_i64()),
            (Some(page), Some(4), Some(total))
        );
        let logs = body["logs"].as_array().unwrap();
        let expected = (total - 4 * (page - 1)).clamp(0, 4) as usize;
        assert_eq!(logs.len(), expected, "page {page} of {pages}: {body}");
        assert_eq!(body["next_cursor"].is_string(), page < pages, "page {page} of {pages}: {body}");
        paged.extend(logs.iter().map(|e| e["id"].as_i64().unwrap()));
    }
    assert_eq!(paged, ids, "every event on exactly one page, in order");

    // Filters.
    let created: Value =
        app.get("/v1/audit?action=namespace.create&limit=3").await.json().await.unwrap();
    assert_eq!(created["total"], 9);
    assert_eq!(created["logs"].as_array().unwrap().len(), 3);
    assert_eq!(created["logs"][0]["target"], "ns-6");
    let update: Value =
        app.get("/v1/audit?namespace=beta&action=namespace.update").await.json().await.unwrap();
    assert_eq!(update["total"], 1);
    assert_eq!(
        update["logs"][0]["old_value"],
        json!({ "quota": { "instances": null, "vcpus": null }, "default_backend": null })
    );
    assert_eq!(
        update["logs"][0]["new_value"],
        json!({ "quota": { "instances": 3, "vcpus": null }, "default_backend": null })
    );

    // A viewer of beta sees beta's events only, with totals to match.
    let seen: Value =
        viewer.get(app.url("/v1/audit?limit=100")).send().await.unwrap().json().await.unwrap();
    let namespaces: Vec<&str> =
        seen["logs"].as_array().unwrap().iter().map(|e| e["namespace"].as_str().unwrap()).collect();
    assert_eq!(namespaces, ["beta", "beta"], "the update and the creation of beta");
    assert_eq!(seen["total"], 2);
    let other: Value = viewer
        .get(app.url("/v1/audit?namespace=alpha"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((other["total"].as_i64(), other["logs"].as_array().unwrap().len()), (Some(0), 0));

    // Limits are checked.
    for query in ["limit=0", "limit=101", "page=0", "page=x", "sort=asc"] {
        assert_problem(app.get(&format!("/v1/audit?{query}")).await, StatusCode::BAD_REQUEST).await;
    }
}

/// Walks `query` (which names `limit`) page by page from the first, following `next_cursor`:
/// the ids seen, in order. Asserts along the way that every page is full but the last, that
/// only the last has no `next_cursor` (so no walk ends on an empty page), and that every page
/// reports the same total.
async fn walk(
    client: &reqwest::Client,
    app: &crate::helpers::TestApp,
    query: &str,
    cursor: Option<&str>,
) -> Vec<i64> {
    let page_url = |cursor: Option<&str>| match cursor {
        None => app.url(&format!("/v1/audit?{query}")),
        Some(cursor) => app.url(&format!("/v1/audit?{query}&cursor={cursor}")),
    };
    let mut ids = Vec::new();
    let mut url = page_url(cursor);
    let mut total = None;
    for _ in 0..1000 {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        let body: Value = response.json().await.unwrap();
        let logs = body["logs"].as_array().unwrap();
        let limit = body["limit"].as_u64().unwrap() as usize;
        assert!(logs.len() <= limit, "{body}");
        assert_eq!(body["page"], 1, "{body}");
        assert_eq!(*total.get_or_insert(body["total"].clone()), body["total"], "{url}");
        ids.extend(logs.iter().map(|event| event["id"].as_i64().unwrap()));
        match body["next_cursor"].as_str() {
            None => {
                assert!(body["next_cursor"].is_null() && body.get("next_cursor").is_some());
                return ids;
            }
            Some(cursor) => {
                assert_eq!(logs.len(), limit, "only a full page has a next one: {body}");
                url = page_url(Some(cursor));
            }
        }
    }
    panic!("{query}: more than 1000 pages");
}

/// The ids of every event of `query`, on one page.
async fn all_ids(client: &reqwest::Client, app: &crate::helpers::TestApp, query: &str) -> Vec<i64> {
    let url = app.url(&format!("/v1/audit?{query}&limit=100"));
    let body: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
    let ids: Vec<i64> = body["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["id"].as_i64().unwrap())
        .collect();
    assert_eq!(body["total"], ids.len(), "all of {query} fit on one page");
    ids
}

#[tokio::test]
async fn keyset_paging_walks_every_visible_event_once_with_every_filter() {
    let app = spawn_app().await;
    app.create_namespaces(&["alpha", "beta"]).await;
    for n in 1..=8 {
        for namespace in ["alpha", "beta"] {
            let quota = json!({ "quota": { "instances": n, "vcpus": null } });
            let url = app.url(&format!("/v1/namespaces/{namespace}"));
            let patched = app.client.patch(url).json(&quota).send().await.unwrap();
            assert_eq!(patched.status(), StatusCode::OK);
        }
    }
    let viewer = client_with("x-api-key", &app.user_key("vic", json!({ "beta": "viewer" })).await);
    let every_filter = "namespace=alpha&actor=admin&action=namespace.update&target=alpha";

    for (client, query, expected) in [
        (&app.client, "", None),
        (&app.client, "action=namespace.update", Some(16)),
        (&app.client, every_filter, Some(8)),
        (&viewer, "", Some(9)),
        (&viewer, "action=namespace.update", Some(8)),
        (&viewer, "namespace=alpha", Some(0)),
    ] {
        let all = all_ids(client, &app, query).await;
        if let Some(expected) = expected {
            assert_eq!(all.len(), expected, "{query}");
        }
        assert!(all.windows(2).all(|pair| pair[0] > pair[1]), "newest first: {all:?}");
        for limit in [1, 3, 8] {
            let walked = walk(client, &app, &format!("{query}&limit={limit}"), None).await;
            assert_eq!(walked, all, "{query} by {limit}: every event once, in order");
        }
    }
    let viewer_all = all_ids(&viewer, &app, "").await;

    // Offset pages hand over to the cursor.
    let everything = all_ids(&app.client, &app, "").await;
    let second: Value = app.get("/v1/audit?limit=3&page=2").await.json().await.unwrap();
    let cursor = second["next_cursor"].as_str().expect("more after page 2").to_string();
    let mut ids: Vec<i64> = second["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["id"].as_i64().unwrap())
        .collect();
    ids.extend(walk(&app.client, &app, "limit=3", Some(&cursor)).await);
    assert_eq!(ids, everything[3..].to_vec());
    let last_page = everything.len().div_ceil(3);
    let last: Value =
        app.get(&format!("/v1/audit?limit=3&page={last_page}")).await.json().await.unwrap();
    assert!(last["next_cursor"].is_null(), "{last}");

    // A cursor made from the admin's view shows a viewer still only what it sees.
    let first: Value = app.get("/v1/audit?limit=2").await.json().await.unwrap();
    let cursor = first["next_cursor"].as_str().unwrap();
    let seen: Value = viewer
        .get(app.url(&format!("/v1/audit?limit=100&cursor={cursor}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let older: Vec<i64> = viewer_all.iter().copied().filter(|id| *id < everything[1]).collect();
    let seen_ids: Vec<i64> = seen["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["id"].as_i64().unwrap())
        .collect();
    assert_eq!(seen_ids, older);
    assert!(seen["logs"].as_array().unwrap().iter().all(|event| event["namespace"] == "beta"));
    assert_eq!(seen["total"], viewer_all.len(), "the total counts every page");
}

#[tokio::test]
async fn deep_offset_pages_are_refused_pointing_to_the_cursor_and_the_cursor_is_documented() {
    let app = spawn_app().await;
    app.create_namespaces(&["alpha", "beta"]).await;

    for query in ["page=1000000", "page=1002", "limit=100&page=102", "limit=1&page=10002"] {
        let response = app.get(&format!("/v1/audit?{query}")).await;
        let problem = assert_problem(response, StatusCode::BAD_REQUEST).await;
        assert_eq!(problem_fields(&problem), ["page"], "{query}: {problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("10000") && detail.contains("cursor"), "{query}: {detail}");
    }
    for query in ["page=1001", "limit=100&page=101", "limit=1&page=10001"] {
        let response = app.get(&format!("/v1/audit?{query}")).await;
        assert_eq!(response.status(), StatusCode::OK, "{query}: as deep as pages go");
    }

    let first: Value = app.get("/v1/audit?limit=1").await.json().await.unwrap();
    let cursor = first["next_cursor"].as_str().expect("more than one event");
    let problem = assert_problem(
        app.get(&format!("/v1/audit?cursor={cursor}&page=2")).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(problem_fields(&problem), ["page"]);
    let with_page_one = app.get(&format!("/v1/audit?cursor={cursor}&page=1&limit=1")).await;
    assert_eq!(with_page_one.status(), StatusCode::OK);
    for bad in ["nonsense", "YWZ0ZXI6eA"] {
        // "YWZ0ZXI6eA" is a well-formed cursor naming "x", not an event id.
        let problem = assert_problem(
            app.get(&format!("/v1/audit?cursor={bad}")).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert_eq!(problem_fields(&problem), ["cursor"], "{bad}");
    }

    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    let operation = &doc["paths"]["/v1/audit"]["get"];
    let parameters = operation["parameters"].as_array().unwrap();
    let parameter = |name: &str| {
        parameters.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("no {name}"))
    };
    assert_eq!(parameter("cursor")["in"], "query");
    assert!(parameter("cursor")["description"].as_str().unwrap().contains("next_cursor"));
    assert!(parameter("page")["description"].as_str().unwrap().contains("cursor"));
    let page = &doc["components"]["schemas"]["AuditPage"]["properties"];
    for field in ["logs", "page", "limit", "total", "next_cursor"] {
        assert!(page.get(field).is_some(), "AuditPage documents {field}: {page}");
    }
}

/// The deepest offset page hands over to the cursor: with more than 10,000 events, page 10001
/// at limit 1 (10,000 events back, as deep as pages go) answers the 10,001st newest event and a
/// `next_cursor`; the cursor of page 10000 leads to that same event, and the cursor walks on
/// from it to the oldest event, each once. Page 10002 is refused.
#[tokio::test]
async fn the_deepest_offset_page_and_the_cursor_agree_and_the_cursor_goes_on() {
    // Arrange: 10,004 events of one action, written straight into the log (through the API they
    // would take minutes), with the log's count kept.
    let app = spawn_app().await;
    let seeded = 10_004;
    let now = chrono::Utc::now().timestamp_millis();
    execute(
        &app,
        &format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {seeded}) \
             INSERT INTO audit_events (at, actor, action, target) \
             SELECT {now} + i, 'seed', 'test.seeded', 'seeded' FROM n"
        ),
    )
    .await;
    execute(
        &app,
        &format!(
            "INSERT INTO audit_counts (namespace, total) VALUES ('', {seeded}) \
             ON CONFLICT (namespace) DO UPDATE SET total = audit_counts.total + excluded.total"
        ),
    )
    .await;
    // One statement in an idle log: the seeded ids follow each other.
    let (oldest, newest, count) = seeded_ids(&app).await;
    assert_eq!((newest - oldest + 1, count), (seeded, seeded));
    let query = "action=test.seeded&limit=1";

    // Act
    let deepest: Value =
        app.get(&format!("/v1/audit?{query}&page=10001")).await.json().await.unwrap();
    let before_it: Value =
        app.get(&format!("/v1/audit?{query}&page=10000")).await.json().await.unwrap();
    let cursor = before_it["next_cursor"].as_str().expect("page 10000 has a next page");
    let after_cursor: Value =
        app.get(&format!("/v1/audit?{query}&cursor={cursor}")).await.json().await.unwrap();
    let deepest_cursor = deepest["next_cursor"].as_str().expect("events older than page 10001");
    let rest = walk(&app.client, &app, query, Some(deepest_cursor)).await;

    // Assert
    let ids_of = |page: &Value| -> Vec<i64> {
        page["logs"].as_array().unwrap().iter().map(|e| e["id"].as_i64().unwrap()).collect()
    };
    assert_eq!(ids_of(&before_it), [newest - 9_999], "{before_it}");
    assert_eq!(ids_of(&deepest), [newest - 10_000], "{deepest}");
    assert_eq!(deepest["total"], seeded);
    assert_eq!(ids_of(&after_cursor), ids_of(&deepest), "offset and cursor agree at the boundary");
    assert_eq!(rest, [newest - 10_001, newest - 10_002, newest - 10_003]);
    assert_eq!(rest.last(), Some(&oldest));
    let beyond = app.get(&format!("/v1/audit?{query}&page=10002")).await;
    let problem = assert_problem(beyond, StatusCode::BAD_REQUEST).await;
    assert_eq!(problem_fields(&problem), ["page"]);
}

/// Runs one SQL statement on the app's database, for what the API cannot arrange.
async fn execute(app: &crate::helpers::TestApp, sql: &str) {
    if app.database_url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&app.database_url).await.unwrap();
        sqlx::query(sql).execute(&pool).await.unwrap();
    } else {
        let pool = sqlx::PgPool::connect(&app.database_url).await.unwrap();
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
}

/// The lowest and highest id of the seeded events, and how many there are.
async fn seeded_ids(app: &crate::helpers::TestApp) -> (i64, i64, i64) {
    let sql = "SELECT MIN(id), MAX(id), COUNT(*) FROM audit_events WHERE action = 'test.seeded'";
    if app.database_url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&app.database_url).await.unwrap();
        sqlx::query_as(sql).fetch_one(&pool).await.unwrap()
    } else {
        let pool = sqlx::PgPool::connect(&app.database_url).await.unwrap();
        sqlx::query_as(sql).fetch_one(&pool).await.unwrap()
    }
}

/// A password change is audited as `"password": "changed"` beside the user's admin flag and
/// roles, whether an admin resets it or the user changes their own; a change that leaves the
/// password alone says nothing about it; and no password is in the log or its table.
#[tokio::test]
async fn a_password_change_is_audited_as_changed_and_never_as_the_password() {
    // Arrange
    let app = spawn_app().await;
    app.create_namespaces(&["alpha"]).await;
    let passwords = ["pat's first password", "reset by the admin 1", "chosen by pat 2"];
    let user =
        json!({ "username": "pat", "password": passwords[0], "roles": { "alpha": "viewer" } });
    assert_eq!(app.post_json("/v1/users", &user, None).await.status(), StatusCode::CREATED);

    // Act: an admin resets the password, pat changes it, an admin changes pat's role.
    let patch = |client: &reqwest::Client, body: Value| {
        client.patch(app.url("/v1/users/pat")).json(&body).send()
    };
    let reset = patch(&app.client, json!({ "password": passwords[1] })).await.unwrap();
    assert_eq!(reset.status(), StatusCode::OK);
    let token = crate::helpers::login(&app.address, "pat", passwords[1]).await;
    let pat = client_with("authorization", &format!("Bearer {token}"));
    let own = json!({ "password": passwords[2], "current_password": passwords[1] });
    assert_eq!(patch(&pat, own).await.unwrap().status(), StatusCode::OK);
    let role = json!({ "roles": { "alpha": "operator" } });
    assert_eq!(patch(&app.client, role).await.unwrap().status(), StatusCode::OK);

    // Assert: newest first.
    let audit: Value =
        app.get("/v1/audit?action=user.update&target=pat").await.json().await.unwrap();
    assert_eq!(audit["total"], 3, "{audit}");
    let logs = audit["logs"].as_array().unwrap();
    let admin = "admin";
    let viewer = json!({ "admin": false, "roles": { "alpha": "viewer" } });
    let changed = json!({ "admin": false, "roles": { "alpha": "viewer" }, "password": "changed" });
    let operator = json!({ "admin": false, "roles": { "alpha": "operator" } });
    let seen: Vec<(&str, &Value, &Value)> = logs
        .iter()
        .map(|e| (e["actor"].as_str().unwrap(), &e["old_value"], &e["new_value"]))
        .collect();
    assert_eq!(
        seen,
        [(admin, &viewer, &operator), ("pat", &viewer, &changed), (admin, &viewer, &changed)]
    );
    let log = app.get("/v1/audit?limit=100").await.text().await.unwrap();
    let stored = audit_table(&app).await;
    for password in passwords {
        assert!(!log.contains(password), "a password is in the audit log: {log}");
        assert!(!stored.contains(password), "a password is in audit_events");
    }
}

/// Every old and new value of the audit table, as stored.
async fn audit_table(app: &crate::helpers::TestApp) -> String {
    let sql = "SELECT COALESCE(old_value, '') || COALESCE(new_value, '') FROM audit_events";
    let rows: Vec<(String,)> = if app.database_url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&app.database_url).await.unwrap();
        sqlx::query_as(sql).fetch_all(&pool).await.unwrap()
    } else {
        let pool = sqlx::PgPool::connect(&app.database_url).await.unwrap();
        sqlx::query_as(sql).fetch_all(&pool).await.unwrap()
    };
    rows.into_iter().map(|(text,)| text).collect::<Vec<_>>().join("\n")
}
