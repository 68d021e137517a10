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

/// Only `cloud::aws` may use the AWS SDK, and only `storage` may hold SQL.
#[test]
fn boundaries_hold() {
    let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    let mut files = Vec::new();
    collect(src, &mut files);
    for path in files {
        let relative = path.strip_prefix(src).unwrap().display().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        if relative != "cloud/aws.rs" {
            assert!(
                !text.contains("aws_sdk_ec2::") && !text.contains("aws_config::"),
                "{relative} uses the AWS SDK"
            );
        }
        if !relative.starts_with("storage") {
            assert!(!text.contains("sqlx::query"), "{relative} runs SQL");
        }
    }
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
