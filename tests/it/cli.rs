//! The CLI, driven as a user would: the built `corral` binary against a `spawn_app()` server
//! and moto, with a home directory of its own, stdin and stdout as pipes.

use std::process::{Output, Stdio};

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::helpers::{TestApp, spawn_app};

/// Runs `corral` with a home directory of its own, talking to a test server as its admin.
struct Corral {
    home: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Corral {
    fn new(app: &TestApp) -> Corral {
        let env = vec![
            ("CORRAL_SERVER".to_string(), app.address.clone()),
            ("CORRAL_API_KEY".to_string(), app.admin_key.clone()),
        ];
        Corral { home: tempfile::tempdir().unwrap(), env }
    }

    /// Without the environment's server and key: only what a profile or `.env` give.
    fn bare() -> Corral {
        Corral { home: tempfile::tempdir().unwrap(), env: Vec::new() }
    }

    async fn run_with(&self, args: &[&str], stdin: &str) -> Output {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_corral"));
        command
            .args(args)
            .current_dir(self.home.path())
            .env_clear()
            .env("HOME", self.home.path())
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (name, value) in &self.env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        // corral may end, refusing, before it reads input it was not asked for.
        if let Err(err) = input.write_all(stdin.as_bytes()).await {
            assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe, "{err}");
        }
        drop(input);
        tokio::time::timeout(std::time::Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("corral ends")
            .unwrap()
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, "").await
    }

    /// Runs and expects success; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args).await;
        assert!(output.status.success(), "corral {args:?}: {}", describe(&output));
        String::from_utf8(output.stdout).unwrap()
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        let stdout = self.ok(&args).await;
        serde_json::from_str(&stdout).unwrap_or_else(|err| panic!("{err}: {stdout}"))
    }
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn code(output: &Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

const CREATE: [&str; 8] = [
    "--ami",
    crate::helpers::AMI_X86,
    "--instance-type",
    "t3.micro",
    "--storage-gb",
    "8",
    "--tag",
    "team=blue",
];

#[tokio::test]
async fn instances_go_through_their_whole_life_from_the_command_line() {
    let app = spawn_app().await;
    let corral = Corral::new(&app);

    // create --wait -o json prints the finished job as the API returns it.
    let mut args = vec!["instances", "create", "web", "--count", "2", "--wait"];
    args.extend(CREATE);
    let job = corral.json(&args).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let from_api: Value = app.get_job(job["id"].as_str().unwrap()).await.json().await.unwrap();
    assert_eq!(job["id"], from_api["id"]);
    assert_eq!(job["instances"], from_api["instances"]);
    let ids: Vec<String> = job["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    let cloud_ids: Vec<String> = job["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["cloud_id"].as_str().unwrap().to_string())
        .collect();

    // list in every format; JSON equals the API's answer.
    let listed = corral.json(&["instances", "list", "--tag", "team=blue"]).await;
    let api: Value = app.get_instances("?tag=team:blue").await.json().await.unwrap();
    assert_eq!(listed, api["items"]);
    let quiet = corral.ok(&["instances", "list", "-q"]).await;
    let mut quiet_ids: Vec<&str> = quiet.lines().collect();
    quiet_ids.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(quiet_ids, expected);
    let table = corral.ok(&["instances", "list"]).await;
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains("web-1") && table.contains("running"), "{table}");
    let wide = corral.ok(&["instances", "list", "-o", "wide"]).await;
    assert!(wide.contains("PRIVATE IP") && wide.contains("team=blue"), "{wide}");
    let csv = corral.ok(&["instances", "list", "-o", "csv"]).await;
    let mut rows = csv.lines();
    assert!(rows.next().unwrap().starts_with("id,cloud_id,name,state"), "{csv}");
    assert_eq!(rows.count(), 2);
    let yaml = corral.ok(&["instances", "list", "-o", "yaml"]).await;
    assert_eq!(crate::helpers::parse_yaml(&yaml).await, listed);
    let limited = corral.json(&["instances", "list", "--limit", "1"]).await;
    assert_eq!(limited.as_array().unwrap().len(), 1);

    // get by EC2 id; read by a person, a line per field, every field shown.
    let got = corral.json(&["instances", "get", &cloud_ids[0]]).await;
    assert_eq!(got["id"], ids[0].as_str());
    let detail = corral.ok(&["instances", "get", &cloud_ids[0]]).await;
    for field in ["ID:", "KEY:", "SSH:", "TAGS:", "SECURITY GROUPS:"] {
        assert!(detail.lines().any(|line| line.starts_with(field)), "{field} in {detail}");
    }
    assert!(detail.lines().any(|line| line.ends_with(" team=blue")), "{detail}");

    // stop both at once, comma-separated, and wait; then start, reboot, update.
    let both = format!("{},{}", ids[0], cloud_ids[1]);
    let stopped = corral.json(&["instances", "stop", &both, "--wait"]).await;
    assert_eq!(stopped["status"], "succeeded");
    assert!(stopped["instances"].as_array().unwrap().iter().all(|i| i["state"] == "stopped"));
    assert_eq!(app.moto_state(&cloud_ids[1]).await, "stopped");
    let started = corral.json(&["instances", "start", &ids[0], &ids[1], "--wait"]).await;
    assert!(started["instances"].as_array().unwrap().iter().all(|i| i["state"] == "running"));
    let rebooted = corral.json(&["instances", "reboot", &ids[0], "--wait"]).await;
    assert_eq!(rebooted["status"], "succeeded");
    let update = ["instances", "update", &ids[0], "--name", "web-blue", "--tag", "owner=ops"];
    let queued = corral.json(&update).await;
    assert!(queued["id"].is_string());
    corral.ok(&["jobs", "wait", queued["id"].as_str().unwrap()]).await;
    let renamed: Value = app.get_instance(&ids[0]).await.json().await.unwrap();
    assert_eq!(renamed["name"], "web-blue");
    assert_eq!(renamed["tags"], json!({ "owner": "ops", "team": "blue" }), "tags merge");
    // No ids is nothing to do, not a mistake: a list that came back empty.
    for args in [&["instances", "stop"][..], &["instances", "terminate", "--yes"]] {
        let output = corral.run(args).await;
        assert!(output.status.success(), "{args:?}: {}", describe(&output));
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains(&format!("nothing to {}", args[1])), "{said}");
    }
    let clash = ["instances", "update", &ids[0], "--tag", "team=red", "--remove-tag", "team"];
    let refused = corral.run(&clash).await;
    assert_eq!(code(&refused), 2, "{}", describe(&refused));

    // terminate: refused without a terminal and without --yes, done with it.
    let refused = corral.run(&["instances", "terminate", &ids[0]]).await;
    assert_eq!(code(&refused), 2, "{}", describe(&refused));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    assert_eq!(app.moto_state(&cloud_ids[0]).await, "running");
    let ended = corral.json(&["instances", "terminate", &both, "--yes", "--wait"]).await;
    assert_eq!(ended["status"], "succeeded");
    assert_eq!(app.moto_state(&cloud_ids[0]).await, "terminated");

    // jobs, their history, policy, audit.
    let jobs = corral.json(&["jobs", "list"]).await;
    let created = jobs.as_array().unwrap().last().unwrap()["id"].as_str().unwrap().to_string();
    let history = corral.ok(&["jobs", "events", &created]).await;
    assert!(history.lines().any(|line| line.contains("outcome: ")), "{history}");
    let events = corral.json(&["jobs", "events", &created]).await;
    assert_eq!(events.as_array().unwrap().last().unwrap()["kind"], "outcome", "{events}");
    // create, stop, start, reboot, update, terminate (the refused terminate made none).
    assert_eq!(jobs.as_array().unwrap().len(), 6, "{jobs}");
    let policy = corral.json(&["policy"]).await;
    assert_eq!(policy, app.get("/v1/policy").await.json::<Value>().await.unwrap());
    let readable = corral.ok(&["policy"]).await;
    let max_count = format!("MAX COUNT: {}", policy["max_count"]);
    assert!(
        readable
            .lines()
            .any(|line| line.split_whitespace().collect::<Vec<_>>().join(" ") == max_count),
        "{readable}"
    );
    let audit = corral.json(&["audit", "--action", "instance.stop"]).await;
    assert_eq!(audit.as_array().unwrap().len(), 2, "{audit}");
}

#[tokio::test]
async fn exit_codes_say_what_went_wrong() {
    let app = spawn_app().await;
    let corral = Corral::new(&app);

    let unknown = corral.run(&["instances", "get", "i-0123456789abcdef0"]).await;
    assert_eq!(code(&unknown), 3, "{}", describe(&unknown));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("i-0123456789abcdef0"));

    // Credentials refused by the check each fails, an auth failure (4) with the server's reason:
    // the admin key's prefix with another secret (the digest), the admin's own claims expired
    // (the expiry), the admin's token with a later exp (the signature). The token itself, and
    // its claims signed anew unexpired, are accepted.
    let token = crate::helpers::login(&app.address, "admin", crate::helpers::ADMIN_PASSWORD).await;
    let now = chrono::Utc::now().timestamp();
    for accepted in [token.clone(), crate::access::resigned_with_exp(&token, now + 600)] {
        let mut with_token = Corral::new(&app);
        with_token.env[1] = ("CORRAL_TOKEN".to_string(), accepted);
        with_token.ok(&["instances", "list"]).await;
    }
    for (variable, credential, reason) in [
        ("CORRAL_API_KEY", crate::access::with_wrong_secret(&app.admin_key), "invalid API key"),
        (
            "CORRAL_TOKEN",
            crate::access::resigned_with_exp(&token, now - 3600),
            "the token has expired",
        ),
        ("CORRAL_TOKEN", crate::access::with_tampered_exp(&token), "the token is invalid"),
    ] {
        let mut refused = Corral::new(&app);
        refused.env[1] = (variable.to_string(), credential);
        let rejected = refused.run(&["instances", "list"]).await;
        assert_eq!(code(&rejected), 4, "{variable}: {}", describe(&rejected));
        let said = format!("error: {reason}");
        let stderr = String::from_utf8_lossy(&rejected.stderr);
        assert!(stderr.contains(said.as_str()), "{variable}: {}", describe(&rejected));
    }

    let usage = corral.run(&["instances", "create", "x", "--no-such-flag"]).await;
    assert_eq!(code(&usage), 2);

    // The policy's own words on stderr, each violation named.
    let mut args = vec!["instances", "create", "big", "--ami", crate::helpers::AMI_X86];
    args.extend(["--instance-type", "m5.large", "--storage-gb", "100"]);
    let refused = corral.run(&args).await;
    assert_eq!(code(&refused), 2, "{}", describe(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("instance_type") && stderr.contains("storage_gb"), "{stderr}");

    // A job that fails is a failed command (the key pair does not exist).
    let mut args = vec!["instances", "create", "keyless", "--key-name", "no-such-key", "--wait"];
    args.extend(CREATE);
    let failed = corral.run(&args).await;
    assert_eq!(code(&failed), 1, "{}", describe(&failed));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("failed"));

    let mut nowhere = Corral::new(&app);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    nowhere.env[0].1 = format!("http://{closed}");
    let unreachable = nowhere.run(&["instances", "list"]).await;
    assert_eq!(code(&unreachable), 1);
    assert!(
        String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach the corral server")
    );
}

#[tokio::test]
async fn waiting_when_piped_prints_plain_progress_and_the_final_addresses() {
    let app = spawn_app().await;
    app.ec2.create_key_pair().key_name("deploy").send().await.unwrap();
    let corral = Corral::new(&app);
    let mut args = vec!["instances", "create", "piped", "--key-name", "deploy", "--wait"];
    args.extend(CREATE);
    let output = corral.run(&args).await;
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    // Progress goes to stderr as plain lines (no terminal), the result to stdout.
    assert!(stderr.lines().any(|line| line.starts_with("step: ")), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "no terminal escapes when piped: {stderr:?}");
    let instance: Value = app.get_instances("").await.json().await.unwrap();
    let ip = instance["items"][0]["public_ip"].as_str().unwrap();
    let ssh = format!("ssh -i deploy.pem ec2-user@{ip}");
    assert_eq!(instance["items"][0]["ssh_command"], ssh.as_str(), "the API shows it too");
    assert!(stdout.contains("succeeded") && stdout.contains(ip), "{stdout}");
    assert!(stdout.contains(&format!("ssh -i deploy.pem ec2-user@{ip}")), "{stdout}");
}

#[tokio::test]
async fn interactive_mode_reads_its_answers_from_a_pipe_and_ends_at_eof() {
    let app = spawn_app().await;
    app.create_running(&crate::helpers::create_body("menu-item")).await;
    let corral = Corral::new(&app);

    // List, then the end of input in the middle of the menu.
    let output = corral.run_with(&["interactive"], "1\n").await;
    assert!(output.status.success(), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("menu-item"));

    // Create with the policy's defaults, then exit. A missing AMI and a count past the policy
    // are asked again at once, saying why.
    let answers = format!("3\nfrom-menu\n\n{}\n\n\n\n\n\n\n999\n\n0\n", crate::helpers::AMI_X86);
    let output = corral.run_with(&["interactive"], &answers).await;
    assert!(output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("an AMI id looks like ami-"), "{stderr}");
    assert!(stderr.contains("give a whole number from 1 to"), "{stderr}");
    let instances: Value = app.get_instances("?name=from-menu").await.json().await.unwrap();
    assert_eq!(instances["items"][0]["state"], "running", "{instances}");
    let policy: Value = app.get("/v1/policy").await.json().await.unwrap();
    assert_eq!(instances["items"][0]["instance_type"], policy["instance_types"][0]);

    // A terminate by name shows what it will destroy first; "no" is an answer, not an error.
    let output = corral.run_with(&["interactive"], "7\nfrom-menu\nno\n0\n").await;
    assert!(output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("this destroys, with their disks:\n  from-menu  i-"), "{stderr}");
    assert!(stderr.contains("nothing was terminated"), "{stderr}");
    let still: Value = app.get_instances("?name=from-menu").await.json().await.unwrap();
    assert_eq!(still["items"][0]["state"], "running", "{still}");

    // Nothing at all on stdin.
    let output = corral.run_with(&["interactive"], "").await;
    assert!(output.status.success(), "{}", describe(&output));
}

#[tokio::test]
async fn login_keeps_a_key_in_a_private_profile_and_dotenv_and_profiles_configure_the_rest() {
    let app = spawn_app().await;
    let corral = Corral::bare();

    // Without credentials: an auth failure that says how to log in.
    let anonymous = corral.run(&["instances", "list", "--server", &app.address]).await;
    assert_eq!(code(&anonymous), 4);
    assert!(String::from_utf8_lossy(&anonymous.stderr).contains("corral login"));

    // Log in to a named profile with the password on stdin.
    let password = format!("{}\n", crate::helpers::ADMIN_PASSWORD);
    let args = ["login", "--server", &app.address, "--username", "admin", "--profile", "lab"];
    let output = corral.run_with(&args, &password).await;
    assert!(output.status.success(), "{}", describe(&output));
    let config = corral.home.path().join(".config/corral/config.toml");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("[profiles.lab]") && text.contains("crl_"), "{text}");
    assert!(!text.contains(crate::helpers::ADMIN_PASSWORD));
    let listed = corral.json(&["instances", "list", "--profile", "lab"]).await;
    assert_eq!(listed, json!([]));
    // Logging in again replaces the profile's key, revoking the old one: keys do not pile up.
    let key_of = |text: &str| {
        text.lines().find_map(|line| line.trim().strip_prefix("api_key = ")).unwrap().to_string()
    };
    let first_key = key_of(&text);
    let cli_keys = |app: &crate::helpers::TestApp| {
        let client = app.client.clone();
        let url = app.url("/v1/api-keys");
        async move {
            let keys: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            keys["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|k| k["name"].as_str().unwrap().starts_with("corral CLI"))
                .filter(|k| k["revoked_at"].is_null())
                .count()
        }
    };
    assert_eq!(cli_keys(&app).await, 1);
    let again = ["login", "--profile", "lab"];
    let output = corral.run_with(&again, &password).await;
    assert!(output.status.success(), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("revoked the API key"));
    let second_key = key_of(&std::fs::read_to_string(&config).unwrap());
    assert_ne!(first_key, second_key);
    assert_eq!(cli_keys(&app).await, 1, "the old key is gone, the new one kept");
    let old = crate::helpers::client_with("x-api-key", first_key.trim_matches('"'));
    let refused = old.get(app.url("/v1/me")).send().await.unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::UNAUTHORIZED);
    let unknown = corral.run(&["instances", "list", "--profile", "nope"]).await;
    assert_eq!(code(&unknown), 2);

    // A .env file in the working directory configures a run without flags.
    let key = crate::helpers::create_api_key(&app.client, &app.address).await;
    std::fs::write(
        corral.home.path().join(".env"),
        format!("CORRAL_SERVER={}\nexport CORRAL_API_KEY=\"{key}\"\n", app.address),
    )
    .unwrap();
    assert_eq!(corral.json(&["jobs", "list"]).await, json!([]));

    // Logging out revokes the profile's key.
    let before: Value = app.get("/v1/api-keys").await.json().await.unwrap();
    let active = |keys: &Value| {
        keys["items"].as_array().unwrap().iter().filter(|k| k["revoked_at"].is_null()).count()
    };
    std::fs::remove_file(corral.home.path().join(".env")).unwrap();
    corral.ok(&["logout", "--profile", "lab"]).await;
    let after: Value = app.get("/v1/api-keys").await.json().await.unwrap();
    assert_eq!(active(&after), active(&before) - 1);
}

#[tokio::test]
async fn a_closed_pipe_is_not_an_error_and_completions_are_printed() {
    let app = spawn_app().await;
    let corral = Corral::new(&app);
    for args in [
        &["policy", "-o", "yaml"][..],
        &["completions", "bash"],
        &["completions", "zsh"],
        &["completions", "fish"],
    ] {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_corral"));
        command
            .args(args)
            .env("CORRAL_SERVER", &app.address)
            .env("CORRAL_API_KEY", &app.admin_key)
            .env("HOME", corral.home.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        drop(child.stdout.take()); // the reader goes away before anything is written
        let output = child.wait_with_output().await.unwrap();
        assert!(output.status.success(), "{args:?}: {}", describe(&output));
        assert!(output.stderr.is_empty(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }

    for shell in ["bash", "zsh", "fish"] {
        let script = corral.ok(&["completions", shell]).await;
        assert!(script.contains("corral") && script.contains("instances"), "{shell}");
    }
    let help = corral.ok(&["instances", "create", "--help"]).await;
    assert!(help.contains("Example") && help.contains("--instance-type"), "{help}");
}

#[tokio::test]
async fn corral_alone_on_a_terminal_opens_the_menu() {
    let app = spawn_app().await;
    let corral = Corral::new(&app);
    // A pseudo-terminal from Python's pty module: corral sees a terminal on stdin and stdout.
    let script = r#"
import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1]])
os.write(fd, b"1\n0\n")
seen = b""
while True:
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    seen += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    let mut command = tokio::process::Command::new(python);
    command.args(["-c", script, env!("CARGO_BIN_EXE_corral")]).env("HOME", corral.home.path());
    for (name, value) in &corral.env {
        command.env(name, value);
    }
    let output = tokio::time::timeout(std::time::Duration::from_secs(60), command.output())
        .await
        .expect("the menu ends")
        .unwrap();
    let seen = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(seen.contains("pick a number") && seen.contains("list instances"), "{seen}");
    assert!(seen.contains("ID") && seen.contains("NAME"), "the list ran: {seen}");
}

#[tokio::test]
async fn namespaces_users_and_api_keys_are_managed_from_the_command_line() {
    let app = spawn_app().await;
    let corral = Corral::new(&app);

    // Namespaces with quotas, listed with their use.
    let created = corral.json(&["namespaces", "create", "team-a", "--max-instances", "3"]).await;
    assert_eq!(created["quota"]["instances"], 3);
    let updated = corral
        .json(&["namespaces", "update", "team-a", "--max-instances", "5", "--max-vcpus", "8"])
        .await;
    assert_eq!(
        (updated["quota"]["instances"].as_i64(), updated["quota"]["vcpus"].as_i64()),
        (Some(5), Some(8))
    );
    let table = corral.ok(&["namespaces", "list"]).await;
    assert!(
        table.lines().any(|line| line.starts_with("team-a") && line.contains("0/5")),
        "{table}"
    );
    assert_eq!(corral.json(&["namespaces", "get", "team-a"]).await["name"], "team-a");
    // A default backend alone keeps the quotas; "server" hands the choice back.
    let updated =
        corral.json(&["namespaces", "update", "team-a", "--default-backend", "aws"]).await;
    assert_eq!(
        (updated["quota"]["instances"].as_i64(), &updated["default_backend"]),
        (Some(5), &json!("aws"))
    );
    // One item reads as a line per field.
    let table = corral.ok(&["namespaces", "get", "team-a"]).await;
    assert!(table.lines().any(|line| line == "BACKEND:    aws"), "{table}");
    let updated =
        corral.json(&["namespaces", "update", "team-a", "--default-backend", "server"]).await;
    assert_eq!(updated["default_backend"], Value::Null);
    assert_eq!(updated["quota"]["vcpus"], 8);
    // One quota changes alone, "none" lifts it, and the command says what changed.
    let output = corral.run(&["namespaces", "update", "team-a", "--max-vcpus", "none"]).await;
    assert!(output.status.success(), "{output:?}");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("team-a: quota.vcpus: 8 → ∞"), "{said}");
    assert!(!said.contains("quota.instances"), "only what changed is said: {said}");
    let now = corral.json(&["namespaces", "get", "team-a"]).await;
    assert_eq!(now["quota"], json!({ "instances": 5, "vcpus": null }));

    // Users: the password comes from stdin, never from the command line.
    let args = ["users", "create", "dana", "--role", "team-a=operator", "-o", "json"];
    let output = corral.run_with(&args, "a long passphrase\n").await;
    assert!(output.status.success(), "{}", describe(&output));
    let dana: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(dana["roles"], json!({ "team-a": "operator" }));
    let token = crate::helpers::login(&app.address, "dana", "a long passphrase").await;
    assert!(!token.is_empty());
    let promoted = corral.json(&["users", "update", "dana", "--role", "team-a=viewer"]).await;
    assert_eq!(promoted["roles"], json!({ "team-a": "viewer" }));
    // A role in another namespace keeps the first; --remove-role takes one away.
    corral.ok(&["namespaces", "create", "team-b"]).await;
    let both = corral.json(&["users", "update", "dana", "--role", "team-b=operator"]).await;
    assert_eq!(both["roles"], json!({ "team-a": "viewer", "team-b": "operator" }));
    let one = corral.json(&["users", "update", "dana", "--remove-role", "team-a"]).await;
    assert_eq!(one["roles"], json!({ "team-b": "operator" }));
    let names = corral.ok(&["users", "list", "-q"]).await;
    assert_eq!(names.lines().collect::<Vec<_>>(), ["admin", "dana"]);
    let refused = corral.run(&["users", "delete", "dana"]).await;
    assert_eq!(code(&refused), 2, "no terminal, no --yes: {}", describe(&refused));
    corral.ok(&["users", "delete", "dana", "--yes"]).await;
    let gone = corral.run(&["users", "get", "dana"]).await;
    assert_eq!(code(&gone), 3);

    // API keys: the key is printed once, then only its prefix; a revoked key stops working.
    let key = corral.ok(&["api-keys", "create", "ci", "-q"]).await.trim().to_string();
    assert!(key.starts_with("crl_"), "{key}");
    let keys = corral.json(&["api-keys", "list"]).await;
    let listed = keys.as_array().unwrap().iter().find(|k| k["name"] == "ci").unwrap().clone();
    assert!(listed.get("key").is_none() && key.starts_with(listed["prefix"].as_str().unwrap()));
    let mut with_key = Corral::new(&app);
    with_key.env[1].1 = key.clone();
    with_key.ok(&["policy"]).await;
    corral.ok(&["api-keys", "revoke", listed["id"].as_str().unwrap()]).await;
    let revoked = with_key.run(&["policy"]).await;
    assert_eq!(code(&revoked), 4, "{}", describe(&revoked));
    assert!(
        String::from_utf8_lossy(&revoked.stderr).contains("the API key has been revoked"),
        "{}",
        describe(&revoked)
    );

    // A namespace's instances end in one job, after --yes.
    let mut args = vec!["instances", "create", "doomed", "--namespace", "team-a", "--wait"];
    args.extend(CREATE);
    corral.ok(&args).await;
    let refused = corral.run(&["namespaces", "terminate", "team-a"]).await;
    assert_eq!(code(&refused), 2, "{}", describe(&refused));
    let job = corral.json(&["namespaces", "terminate", "team-a", "--yes", "--wait"]).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["instances"][0]["state"], "terminated");
}

#[tokio::test]
async fn a_generated_key_pair_is_saved_privately_and_instances_use_it_with_ingress() {
    use std::os::unix::fs::PermissionsExt;
    let app = spawn_app().await;
    let corral = Corral::new(&app);

    let created = corral.json(&["keypairs", "create", "deploy"]).await;
    assert!(created.get("private_key").is_some(), "-o json shows the answer as it came");
    let pem = corral.home.path().join("deploy.pem");
    let saved = std::fs::read_to_string(&pem).unwrap();
    assert!(saved.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"), "{saved}");
    assert_eq!(std::fs::metadata(&pem).unwrap().permissions().mode() & 0o777, 0o600);

    // An existing file is never overwritten, and no key pair is made for nowhere.
    let again =
        corral.run(&["keypairs", "create", "other", "--private-key-file", "deploy.pem"]).await;
    assert_eq!(code(&again), 2, "{}", describe(&again));
    assert_eq!(std::fs::read_to_string(&pem).unwrap(), saved);
    let listed = corral.ok(&["keypairs", "list", "-q"]).await;
    assert_eq!(listed.trim(), "deploy");

    let job = corral
        .json(&[
            "instances",
            "create",
            "reachable",
            "--ami",
            crate::helpers::AMI_X86,
            "--instance-type",
            "t3.micro",
            "--key-name",
            "deploy",
            "--ingress",
            "22",
            "--ingress",
            "53/udp=10.0.0.0/8",
            "--wait",
        ])
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let job_id = job["id"].as_str().unwrap();
    let filter =
        aws_sdk_ec2::types::Filter::builder().name("tag:corral:job-id").values(job_id).build();
    let groups = app.ec2.describe_security_groups().filters(filter).send().await.unwrap();
    let mut rules: Vec<String> = groups.security_groups()[0]
        .ip_permissions()
        .iter()
        .map(|p| {
            let cidr = p.ip_ranges()[0].cidr_ip().unwrap();
            format!("{}/{} {cidr}", p.ip_protocol().unwrap(), p.from_port().unwrap())
        })
        .collect();
    rules.sort();
    assert_eq!(rules, ["tcp/22 127.0.0.1/32", "udp/53 10.0.0.0/8"]);
    let ssh = job["instances"][0]["ssh_command"].as_str().unwrap();
    assert!(ssh.starts_with("ssh -i deploy.pem"), "{ssh}");

    let bad = corral
        .run(&[
            "instances",
            "create",
            "x",
            "--ami",
            "ami-1",
            "--instance-type",
            "t3.micro",
            "--ingress",
            "ssh",
        ])
        .await;
    assert_eq!(code(&bad), 2, "{}", describe(&bad));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--ingress ssh"), "{}", describe(&bad));
}

/// A loopback listener that records every request's head, answering each `401`.
async fn recording_server() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buffer = vec![0u8; 64 * 1024];
            let n = stream.read(&mut buffer).await.unwrap_or(0);
            log.lock().unwrap().push(String::from_utf8_lossy(&buffer[..n]).into_owned());
            let _ = stream
                .write_all(
                    b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
        }
    });
    (url, seen)
}

#[tokio::test]
async fn a_cloned_repositorys_dotenv_cannot_send_the_stored_key_or_a_password_elsewhere() {
    let app = spawn_app().await;
    let corral = Corral::bare();
    let password = format!("{}\n", crate::helpers::ADMIN_PASSWORD);
    let login = ["login", "--server", &app.address, "--username", "admin"];
    assert!(corral.run_with(&login, &password).await.status.success());
    let config = std::fs::read_to_string(corral.home.path().join(".config/corral/config.toml"));
    let stored = config.unwrap();
    let key_start = stored.find("crl_").unwrap();
    let key = &stored[key_start..key_start + 45];

    // The repository's .env points the CLI at a server of the attacker's.
    let (attacker, seen) = recording_server().await;
    std::fs::write(corral.home.path().join(".env"), format!("CORRAL_SERVER={attacker}\n")).unwrap();
    let listed = corral.run(&["instances", "list"]).await;
    assert_eq!(code(&listed), 4, "{}", describe(&listed));
    let stderr = String::from_utf8_lossy(&listed.stderr);
    assert!(stderr.contains("only sent to the server it was stored for"), "{stderr}");
    let relogin = corral.run_with(&["login", "--username", "admin"], &password).await;
    assert_ne!(code(&relogin), 0, "{}", describe(&relogin));
    let received = seen.lock().unwrap().join("\n");
    assert!(!received.contains(key), "the stored key reached the attacker: {received}");
    assert!(!received.contains(crate::helpers::ADMIN_PASSWORD), "{received}");
    assert!(received.is_empty(), "nothing at all should reach it: {received}");
}

#[tokio::test]
async fn csv_cells_a_spreadsheet_would_run_are_defused() {
    let app = spawn_app().await;
    let corral = Corral::new(&app);
    let mut body = crate::helpers::create_body("sheet");
    // The tags cell starts with its first key: a formula. (Control characters never get this
    // far: the policy refuses them, and `cli::output` strips them from tables.)
    body["tags"] = json!({ "=HYPERLINK(\"http://evil.example\";\"x\")": "1" });
    app.create_running(&body).await;

    let csv = corral.ok(&["instances", "list", "-o", "csv"]).await;
    let row = csv.lines().nth(1).expect("one row");
    assert!(!row.contains(",=HYPERLINK") && !row.contains(",\"=HYPERLINK"), "{csv}");
    assert!(row.contains("'=HYPERLINK"), "{csv}");
}
