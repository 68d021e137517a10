//! Reaching what corral creates: key pairs (generated once or imported), ingress rules realised
//! as a security group of the request's own, and user_data passed through, against moto.

use aws_sdk_ec2::types::Filter;
use base64::Engine;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    assert_problem, create_body, moto_url, problem_fields, spawn_app, spawn_app_with,
};
use crate::proxy::FaultProxy;

/// Every value of every column of every table of the database at `url` (SQLite or
/// PostgreSQL), one `table.column: value` line each.
async fn database_dump(url: &str) -> String {
    let mut dump = String::new();
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let columns: Vec<(String, String)> = sqlx::query_as(
            "SELECT m.name, p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p \
             WHERE m.type = 'table'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        for (table, column) in columns {
            let sql = format!("SELECT CAST(\"{column}\" AS BLOB) FROM \"{table}\"");
            let values: Vec<Option<Vec<u8>>> =
                sqlx::query_scalar(&sql).fetch_all(&pool).await.unwrap();
            for value in values.into_iter().flatten() {
                let text = String::from_utf8_lossy(&value);
                dump.push_str(&format!("{table}.{column}: {text}\n"));
            }
        }
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let columns: Vec<(String, String)> = sqlx::query_as(
            "SELECT table_name::text, column_name::text FROM information_schema.columns \
             WHERE table_schema = 'public'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        for (table, column) in columns {
            let sql = format!("SELECT \"{column}\"::text FROM \"{table}\"");
            let values: Vec<Option<String>> =
                sqlx::query_scalar(&sql).fetch_all(&pool).await.unwrap();
            for value in values.into_iter().flatten() {
                dump.push_str(&format!("{table}.{column}: {value}\n"));
            }
        }
        pool.close().await;
    }
    dump
}

/// A generated key pair's private half is answered once, in the create answer, and kept
/// nowhere: not in later answers, not in any column of any table of the database (SQLite or
/// PostgreSQL). Its public half is imported into the region by the first instance that uses
/// it (one ImportKeyPair call), never again by the next, and deleted with the key pair.
#[tokio::test]
async fn a_generated_private_key_is_answered_once_and_launches_instances() {
    let proxy = FaultProxy::start(moto_url(), 0.0).await;
    let app = spawn_app_with(|settings| settings.aws.endpoint_url = Some(proxy.url.clone())).await;

    let response = app.post_json("/v1/keypairs", &json!({ "name": "deploy" }), None).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    let private_key = created["private_key"].as_str().unwrap().to_string();
    assert!(private_key.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"), "{private_key}");
    let parsed = ssh_key::PrivateKey::from_openssh(&private_key).unwrap();
    assert_eq!(parsed.public_key().to_openssh().unwrap(), created["public_key"].as_str().unwrap());
    assert!(created["fingerprint"].as_str().unwrap().starts_with("SHA256:"));

    // Never again: not in the database, whichever it is ...
    let dump = database_dump(&app.database_url).await;
    let public_key = created["public_key"].as_str().unwrap();
    assert!(dump.contains(public_key), "the dump reads the key pairs: {dump}");
    assert!(!dump.contains("PRIVATE KEY"), "a private key is in the database");
    for line in private_key.lines().filter(|line| !line.starts_with("-----") && line.len() >= 20) {
        assert!(!dump.contains(line), "the private key is in the database: {line}");
    }
    // ... nor in the key pair or the list.
    let fetched: Value = app.get("/v1/keypairs/deploy").await.json().await.unwrap();
    assert_eq!(fetched["fingerprint"], created["fingerprint"]);
    assert!(fetched.get("private_key").is_none(), "{fetched}");
    let listed = app.get("/v1/keypairs").await.text().await.unwrap();
    assert!(listed.contains("deploy") && !listed.contains("PRIVATE KEY"), "{listed}");
    assert_eq!(proxy.calls_of("ImportKeyPair"), 0, "registering calls no cloud");

    // A second key pair of that name is refused; the first is intact.
    let again = app.post_json("/v1/keypairs", &json!({ "name": "deploy" }), None).await;
    let problem = assert_problem(again, StatusCode::CONFLICT).await;
    assert!(problem.to_string().contains("a key pair named 'deploy' exists already"), "{problem}");

    // An instance with the key: the public key is imported into the region, and the instance
    // shows how to log in.
    let mut body = create_body("keyed");
    body["key_name"] = json!("deploy");
    let job = app.create_running(&body).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(proxy.calls_of("ImportKeyPair"), 1, "imported once: {:?}", proxy.calls());
    let steps = app.job_steps(job["id"].as_str().unwrap()).await;
    assert!(steps.contains("imported key pair deploy into us-east-1"), "{steps}");
    let pairs = app.ec2.describe_key_pairs().key_names("deploy").send().await.unwrap();
    let pair = &pairs.key_pairs()[0];
    assert!(pair.tags().iter().any(|t| t.key() == Some("corral:namespace")));
    let cloud_id = job["instances"][0]["cloud_id"].as_str().unwrap();
    let described = app.ec2.describe_instances().instance_ids(cloud_id).send().await.unwrap();
    let instance = &described.reservations()[0].instances()[0];
    assert_eq!(instance.key_name(), Some("deploy"));
    let ssh = job["instances"][0]["ssh_command"].as_str().unwrap();
    assert!(ssh.starts_with("ssh -i deploy.pem ") && ssh.contains('@'), "{ssh}");

    // A second instance does not import it again: the region has it.
    body["name"] = json!("keyed-2");
    let job = app.create_running(&body).await;
    assert_eq!(proxy.calls_of("ImportKeyPair"), 1, "imported again: {:?}", proxy.calls());
    let steps = app.job_steps(job["id"].as_str().unwrap()).await;
    assert!(!steps.contains("imported key pair"), "{steps}");
    let cloud_id = job["instances"][0]["cloud_id"].as_str().unwrap();
    let described = app.ec2.describe_instances().instance_ids(cloud_id).send().await.unwrap();
    assert_eq!(described.reservations()[0].instances()[0].key_name(), Some("deploy"));

    // Deleting forgets it and deletes it in the cloud.
    let response = app.client.delete(app.url("/v1/keypairs/deploy?wait=30")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let deleted: Value = response.json().await.unwrap();
    assert_eq!(deleted["status"], "succeeded", "{deleted}");
    let filter = Filter::builder().name("key-name").values("deploy").build();
    let left = app.ec2.describe_key_pairs().filters(filter).send().await.unwrap();
    assert!(left.key_pairs().is_empty());
    assert_eq!(app.get("/v1/keypairs/deploy").await.status(), StatusCode::NOT_FOUND);

    // A same-named key pair that corral did not import is never deleted by it.
    app.ec2.create_key_pair().key_name("shared").send().await.unwrap();
    let response = app.post_json("/v1/keypairs", &json!({ "name": "shared" }), None).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = app.client.delete(app.url("/v1/keypairs/shared?wait=30")).send().await.unwrap();
    let deleted: Value = response.json().await.unwrap();
    assert_eq!(deleted["status"], "succeeded", "{deleted}");
    let kept = app.ec2.describe_key_pairs().key_names("shared").send().await.unwrap();
    assert_eq!(kept.key_pairs().len(), 1, "someone else's key pair was deleted");
}

#[tokio::test]
async fn an_imported_public_key_is_checked_and_kept_as_given() {
    let app = spawn_app().await;
    let key =
        ssh_key::PrivateKey::random(&mut rand::rngs::OsRng, ssh_key::Algorithm::Ed25519).unwrap();
    let public = key.public_key().to_openssh().unwrap();

    let body = json!({ "name": "laptop", "public_key": format!("{public} me@laptop\n") });
    let response = app.post_json("/v1/keypairs", &body, None).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    assert!(created.get("private_key").is_none());
    assert_eq!(created["public_key"], public.as_str());
    assert_eq!(created["key_type"], "ssh-ed25519");
    assert_eq!(
        created["fingerprint"],
        key.public_key().fingerprint(ssh_key::HashAlg::Sha256).to_string()
    );

    let bad = json!({ "name": "broken", "public_key": "ssh-ed25519 not-base64" });
    let response = app.post_json("/v1/keypairs", &bad, None).await;
    let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(problem.to_string().contains("public_key"), "{problem}");
    let bad_name = json!({ "name": "tab\there" });
    let response = app.post_json("/v1/keypairs", &bad_name, None).await;
    let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(problem.to_string().contains("printable ASCII"), "{problem}");
    let listed: Value = app.get("/v1/keypairs").await.json().await.unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
}

/// Ingress rules become one security group of the request's own (`"caller"`: the client's
/// address), with the user_data passed through; a terminate leaves the group while another
/// instance of the request uses it, and the last one's terminate deletes it.
#[tokio::test]
async fn ingress_from_the_caller_is_one_address_and_its_group_goes_with_the_last_instance() {
    let app = spawn_app().await;
    let mut body = create_body("web");
    body["name"] = Value::Null;
    body["name_prefix"] = json!("web");
    body["count"] = json!(2);
    body["ingress"] = json!([
        { "port": 22, "cidr": "caller" },
        { "port": 8080, "protocol": "udp", "cidr": "198.51.100.0/24" },
    ]);
    body["user_data"] = json!("#!/bin/sh\ndocker run -d -p 80:80 nginx\n");
    let job = app.create_running(&body).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let job_id = job["id"].as_str().unwrap();

    let filter = Filter::builder().name("tag:corral:job-id").values(job_id).build();
    let groups = app.ec2.describe_security_groups().filters(filter.clone()).send().await.unwrap();
    let [group] = groups.security_groups() else { panic!("one group per request: {groups:?}") };
    let mut rules: Vec<String> = group
        .ip_permissions()
        .iter()
        .flat_map(|p| {
            p.ip_ranges().iter().map(move |r| {
                format!(
                    "{}/{}-{} {}",
                    p.ip_protocol().unwrap(),
                    p.from_port().unwrap(),
                    p.to_port().unwrap(),
                    r.cidr_ip().unwrap()
                )
            })
        })
        .collect();
    rules.sort();
    assert_eq!(rules, ["tcp/22-22 127.0.0.1/32", "udp/8080-8080 198.51.100.0/24"]);

    let group_id = group.group_id().unwrap();
    let mut launched: Vec<(String, String)> = Vec::new();
    for instance in job["instances"].as_array().unwrap() {
        let cloud_id = instance["cloud_id"].as_str().unwrap().to_string();
        let described = app.ec2.describe_instances().instance_ids(&cloud_id).send().await.unwrap();
        let groups: Vec<&str> = described.reservations()[0].instances()[0]
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id())
            .collect();
        assert!(groups.contains(&group_id), "{cloud_id} is not in {group_id}: {groups:?}");
        let user_data = app
            .ec2
            .describe_instance_attribute()
            .instance_id(&cloud_id)
            .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
            .send()
            .await
            .unwrap();
        let encoded = user_data.user_data().and_then(|v| v.value()).unwrap();
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), body["user_data"].as_str().unwrap());
        launched.push((instance["id"].as_str().unwrap().to_string(), cloud_id));
    }

    // The group stays while one instance uses it: the first instance is gone from the cloud,
    // its group is not.
    let first = app.act(&launched[0].0, "terminate", "?wait=30").await;
    assert_eq!(first.status(), StatusCode::OK);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["status"], "succeeded", "{first}");
    assert_eq!(app.moto_state(&launched[0].1).await, "terminated");
    assert_eq!(app.moto_state(&launched[1].1).await, "running");
    let steps = app.job_steps(first["id"].as_str().unwrap()).await;
    assert!(!steps.contains("deleted security group"), "{steps}");
    let groups = app.ec2.describe_security_groups().filters(filter.clone()).send().await.unwrap();
    let kept: Vec<&str> = groups.security_groups().iter().filter_map(|g| g.group_id()).collect();
    assert_eq!(kept, [group_id], "deleted while an instance uses it");
    // It goes with the last one.
    let last: Value = app.act(&launched[1].0, "terminate", "?wait=30").await.json().await.unwrap();
    assert_eq!(last["status"], "succeeded", "{last}");
    assert_eq!(app.moto_state(&launched[1].1).await, "terminated");
    let steps = app.job_steps(last["id"].as_str().unwrap()).await;
    assert!(steps.contains(&format!("deleted security group {group_id}")), "{steps}");
    let groups = app.ec2.describe_security_groups().filters(filter).send().await.unwrap();
    assert!(groups.security_groups().is_empty(), "{groups:?}");
}

#[tokio::test]
async fn bad_ingress_rules_are_refused_naming_each() {
    let app = spawn_app().await;
    let mut body = create_body("web");
    body["ingress"] =
        json!([{ "port": 70000, "cidr": "caller" }, { "port": 22, "cidr": "anywhere" }]);
    let response = app.post_instances(&body, "").await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = response.json().await.unwrap();
    let fields = problem_fields(&problem);
    assert_eq!(fields, ["ingress[0].port", "ingress[1].cidr"], "{problem}");
}

#[tokio::test]
async fn a_launch_that_fails_for_good_leaves_no_security_group_behind() {
    let app = spawn_app().await;
    let mut body = create_body("unreachable");
    body["key_name"] = json!("no-such-key");
    body["ingress"] = json!([{ "port": 22, "cidr": "caller" }]);

    let response = app.post_instances(&body, "?wait=30").await;

    assert_eq!(response.status(), StatusCode::CREATED);
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["status"], "failed", "{job}");
    assert!(job["error"].as_str().unwrap().contains("InvalidKeyPair.NotFound"), "{job}");
    let steps = app.job_steps(job["id"].as_str().unwrap()).await;
    assert!(steps.contains("nothing launched"), "{steps}");
    let filter =
        Filter::builder().name("tag:corral:job-id").values(job["id"].as_str().unwrap()).build();
    let groups = app.ec2.describe_security_groups().filters(filter).send().await.unwrap();
    assert!(groups.security_groups().is_empty(), "{groups:?}");
}
