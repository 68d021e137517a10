//! The API answers as `/openapi.json` says: schemathesis (from the test venv) generates
//! requests from the document, valid and invalid, sends them one by one and in chains of
//! linked operations, and checks every answer against it (`--checks all`): no server error,
//! every status and content type documented, every answer's body and headers as described,
//! invalid requests refused and valid ones accepted. What JSON Schema cannot state is listed,
//! with its reason, in `tests/schemathesis.toml`. The run is bounded (a fixed seed, ten
//! examples per operation); `scripts/test` installs schemathesis.

use std::process::Stdio;

use crate::helpers::{ADMIN_PASSWORD, client_with, login, missing_prerequisite, spawn_app_with};

#[tokio::test]
async fn schemathesis_finds_no_answer_the_document_does_not_describe() {
    let schemathesis = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/schemathesis");
    if !std::path::Path::new(schemathesis).exists() {
        missing_prerequisite("SCHEMATHESIS", "schemathesis in .venv (scripts/venv installs it)");
        return;
    }
    let app = spawn_app_with(|settings| {
        // Email subscriptions are refused on a server that cannot send mail. Nothing is mailed
        // here: a delivery to a closed port only waits for its retry.
        settings.notify.smtp_host = Some("127.0.0.1".to_string());
        settings.notify.smtp_port = Some(9);
    })
    .await;
    // A token, not an API key: the stateful phase revokes the keys it finds listed.
    let token = login(&app.address, "admin", ADMIN_PASSWORD).await;
    let reports = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(schemathesis)
        .arg("--config-file")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis.toml"))
        .arg("run")
        .arg(format!("{}/openapi.json", app.address))
        .args(["--checks", "all", "--seed", "1", "--max-examples", "10"])
        .args(["--generation-database", "none", "--no-color"])
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        .current_dir(reports.path())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found answers the document does not describe ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    // The run reached the whole API: every operation of the document was tested, in every
    // phase.
    let figure = |label: &str| {
        stdout.lines().find_map(|line| line.trim().strip_prefix(label)).map(str::trim)
    };
    let selected = figure("Selected:").and_then(|s| s.split('/').nth(1)).expect("operations");
    assert_eq!(figure("Tested:"), Some(selected), "not every operation was tested:\n{stdout}");
    // The run kept its credentials to the end: had it lost them, every later answer would
    // have been a 401, which the checks accept.
    let admin = client_with("authorization", &format!("Bearer {token}"));
    let me = admin.get(format!("{}/v1/me", app.address)).send().await.unwrap();
    assert_eq!(me.status(), 200, "the run lost its credentials");
    for phase in ["Coverage", "Fuzzing", "Stateful"] {
        assert!(stdout.contains(&format!("✅ {phase}")), "phase {phase} did not pass:\n{stdout}");
    }
}
