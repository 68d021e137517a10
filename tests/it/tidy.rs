//! Checks on the source tree itself.

use std::path::Path;

/// Every module opens with a `//!` doc saying what it is for.
#[test]
fn every_module_has_a_doc_comment() {
    let mut files = Vec::new();
    collect(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")), &mut files);
    let missing: Vec<_> = files
        .iter()
        .filter(|path| !std::fs::read_to_string(path).unwrap().starts_with("//!"))
        .collect();
    assert!(missing.is_empty(), "modules without a //! doc: {missing:?}");
}

/// The boundaries ARCHITECTURE.md draws, as far as a search of the source can check them:
/// only `cloud::aws` uses the AWS SDK; only `storage` uses sqlx (holds SQL) and makes ids;
/// `domain` does no IO and knows no framework; API handlers never reach the cloud provider
/// (jobs do); the command-line client reaches corral through its HTTP API only, never its
/// storage, its start-up, its jobs or the cloud.
#[test]
fn boundaries_hold() {
    let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    let mut files = Vec::new();
    collect(src, &mut files);
    for path in files {
        let relative = path.strip_prefix(src).unwrap().display().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let code = without_comments(&text);
        if !relative.starts_with("cloud/aws") {
            for sdk in ["aws_sdk_", "aws_config", "aws_smithy"] {
                assert!(!code.contains(sdk), "{relative} uses the AWS SDK ({sdk})");
            }
        }
        if relative != "storage.rs" && !relative.starts_with("storage/") {
            assert!(!code.contains("sqlx"), "{relative} uses sqlx: SQL lives in storage");
            assert!(!code.contains("Uuid::now_v7"), "{relative} makes ids: use storage::new_id");
        }
        if relative.starts_with("domain") {
            for framework in
                ["tokio", "sqlx", "axum", "reqwest", "hyper", "std::fs", "std::net::Tcp"]
            {
                assert!(!code.contains(framework), "{relative} uses {framework}");
            }
        }
        if relative.starts_with("api") {
            assert!(!code.contains("Provider"), "{relative} reaches the cloud provider");
        }
        if relative == "wire.rs" || relative.starts_with("wire/") {
            for module in ["axum", "sqlx", "reqwest", "storage::", "jobs::", "cloud::", "api::"] {
                assert!(!code.contains(module), "{relative} uses {module}: wire types are shared");
            }
        }
        if relative == "cli.rs" || relative.starts_with("cli/") {
            for module in ["storage", "startup", "jobs", "cloud", "terraform", "notify"] {
                assert!(
                    !code.contains(&format!("crate::{module}")),
                    "{relative} reaches crate::{module}: the client goes through the HTTP API"
                );
            }
        }
    }
}

/// `text` without its line comments (`//`, `///`, `//!`), which may name what the code must not
/// use.
fn without_comments(text: &str) -> String {
    text.lines().filter(|line| !line.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// Each change to the schema is made in both dialects: the two migration folders hold the same
/// files, and each pair says the same once comments, spacing and the known differences of type
/// are set aside (PostgreSQL's `BIGINT` for SQLite's 64-bit `INTEGER`, and its identity column
/// where SQLite's `INTEGER PRIMARY KEY` numbers rows by itself).
#[test]
fn both_dialects_migrate_alike() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"));
    let names = |dialect: &str| {
        let mut names: Vec<String> = std::fs::read_dir(root.join(dialect))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let (sqlite, postgres) = (names("sqlite"), names("postgres"));
    assert_eq!(sqlite, postgres, "the migration folders hold different files");
    assert!(!sqlite.is_empty());
    for name in &sqlite {
        let read = |dialect: &str| std::fs::read_to_string(root.join(dialect).join(name)).unwrap();
        let postgres = normalized_sql(&read("postgres"))
            .replace("BIGINT", "INTEGER")
            .replace(" GENERATED ALWAYS AS IDENTITY", "");
        assert_eq!(normalized_sql(&read("sqlite")), postgres, "{name} differs between dialects");
    }
}

/// `sql` without its comments, its words separated by single spaces.
fn normalized_sql(sql: &str) -> String {
    sql.lines()
        .map(|line| line.split("--").next().unwrap_or_default())
        .flat_map(str::split_whitespace)
        .collect::<Vec<_>>()
        .join(" ")
}

fn collect(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}
