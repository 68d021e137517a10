//! The README's shell examples, run as a reader would paste them: every ```sh block, in order,
//! as one bash script (`set -euo pipefail`), against a fresh server with the sandbox's admin
//! password, `localhost:8080` pointing at it and `corral` the built binary. Blocks fenced
//! ```sh no-run configure or start servers and are left out. The script must end with exit 0,
//! so that the README cannot drift from the code.

use std::path::Path;
use std::process::Stdio;

use crate::helpers::{spawn_server, terraform_mirror};

/// A public key for the README's "register a public key you already have".
const PUBLIC_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBxRb7TiELnbM1ND25tHPOjS9iOz8hr5+M305fJZF6xi readme";

/// The ```sh blocks of `markdown`, in order, without those marked `no-run`. A fence of
/// another shell (`bash`, `shell`, `console`) or another mark is refused, so that no example
/// is left out unseen.
fn shell_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match &mut current {
            Some(block) if line.trim_start().starts_with("```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None if line.trim() == "```sh" => current = Some(String::new()),
            None if line.trim() == "```sh no-run" => current = None,
            None => {
                let info = line.trim().strip_prefix("```").unwrap_or_default();
                let shell = ["sh", "bash", "shell", "console", "zsh"];
                assert!(
                    !shell.iter().any(|name| info.starts_with(name)),
                    "README fence ```{info}: use ```sh, or ```sh no-run for what the test skips"
                );
            }
        }
    }
    blocks
}

#[test]
fn only_plain_sh_blocks_are_taken() {
    let markdown = "text\n```sh\necho one\n```\n```sh no-run\nrm -rf /\n```\n```toml\nx = 1\n```\n```sh\necho two\n```\n";
    assert_eq!(shell_blocks(markdown), ["echo one\n", "echo two\n"]);
    let unseen = std::panic::catch_unwind(|| shell_blocks("```bash\necho lost\n```\n"));
    assert!(unseen.is_err(), "a bash fence would be skipped unseen");
}

#[tokio::test]
async fn the_readmes_shell_examples_run_in_order_against_a_fresh_server() {
    // The tour creates an instance with the Terraform backend.
    if terraform_mirror().is_none() {
        return;
    }
    // A server as scripts/run's sandbox is: its password, and no SMTP server.
    let server = spawn_server(|settings| {
        settings.auth.admin_password = Some("sandbox-password".into());
    })
    .await;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let host = server.address.trim_start_matches("http://");
    let blocks = shell_blocks(&readme);
    assert!(blocks.len() >= 5, "the README's shell examples were not found");
    let script = format!(
        "set -euo pipefail\n{}",
        blocks
            .join("\n")
            .replace("localhost:8080", host)
            .replace("http://127.0.0.1:8080", &server.address)
    );

    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::write(home.join(".ssh/id_ed25519.pub"), format!("{PUBLIC_KEY}\n")).unwrap();
    let bin = work.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_corral"), bin.join("corral")).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let script_file = work.path().join("readme.sh");
    std::fs::write(&script_file, &script).unwrap();

    let output = tokio::process::Command::new("bash")
        .arg("-x")
        .arg(&script_file)
        .current_dir(work.path())
        .env_clear()
        .env("PATH", path)
        .env("HOME", &home)
        .env("CORRAL_SERVER", &server.address)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(600), output)
        .await
        .expect("the README's examples end")
        .unwrap();
    let tail = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    assert!(
        output.status.success(),
        "the README's examples failed ({}):\n--- stderr (last lines) ---\n{}\n--- stdout ---\n{}",
        output.status,
        tail(&output.stderr),
        tail(&output.stdout),
    );
    assert!(Path::new(&work.path().join("main.tf")).exists(), "the export wrote main.tf");

    // What the script cannot tell from exit codes: `?wait=` answers a failed job with 200 too,
    // and the requests the README shows refused must have been.
    let admin = crate::helpers::login(&server.address, "admin", "sandbox-password").await;
    let admin = crate::helpers::client_with("authorization", &format!("Bearer {admin}"));
    let get = |path: &str| {
        let request = admin.get(format!("{}{path}", server.address));
        async move { request.send().await.unwrap().json::<serde_json::Value>().await.unwrap() }
    };
    let failed = get("/v1/jobs?status=failed").await;
    assert_eq!(failed["items"], serde_json::json!([]), "no job of the README failed: {failed}");
    let big = get("/v1/instances?name=big&all=true").await;
    assert_eq!(big["items"], serde_json::json!([]), "the policy refused 'big': {big}");
    for refused in ["/v1/webhooks", "/v1/email-subscriptions"] {
        let listed = get(refused).await;
        assert_eq!(listed["items"], serde_json::json!([]), "{refused} was refused: {listed}");
    }
    let blue = get("/v1/instances?tag=team:blue").await;
    assert_eq!(blue["items"], serde_json::json!([]), "every blue instance was terminated: {blue}");
}
