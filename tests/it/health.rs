//! Health, readiness, status and the API documentation.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{create_body, spawn_app};

#[tokio::test]
async fn health_and_ready_answer_ok() {
    let app = spawn_app().await;

    let health: Value = app.get("/health").await.json().await.unwrap();
    let ready = app.get("/ready").await;

    assert_eq!(health, serde_json::json!({ "status": "ok" }));
    assert_eq!(ready.status(), StatusCode::OK);
}

#[tokio::test]
async fn status_counts_instances_by_state_and_jobs_by_status() {
    let app = spawn_app().await;
    let job = app.create_running(&create_body("counted")).await;
    app.act(job["instances"][0]["id"].as_str().unwrap(), "stop", "?wait=30").await;

    let status: Value = app.get("/status").await.json().await.unwrap();

    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["uptime_seconds"].is_u64());
    // Times are written to the millisecond, as everywhere in the API.
    let timestamp = status["timestamp"].as_str().unwrap();
    let parsed = chrono::DateTime::parse_from_rfc3339(timestamp).unwrap();
    assert_eq!(parsed.timestamp_subsec_nanos() % 1_000_000, 0, "{timestamp}");
    // The default namespace dates from the first start, not from 1970.
    let default: Value = app.get("/v1/namespaces/default").await.json().await.unwrap();
    let created = chrono::DateTime::parse_from_rfc3339(default["created_at"].as_str().unwrap());
    let age = parsed.signed_duration_since(created.unwrap());
    assert!(age >= chrono::TimeDelta::zero() && age < chrono::TimeDelta::minutes(10), "{default}");
    assert_eq!(status["instances"], serde_json::json!({ "stopped": 1 }));
    assert_eq!(status["jobs"], serde_json::json!({ "succeeded": 2 }));
    assert!(status["cloud"].as_str().unwrap().contains("127.0.0.1"), "{status}");
}

/// HTTP methods, as a path item of an OpenAPI document names its operations.
const DOCUMENT_METHODS: [&str; 8] =
    ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// Ways to serve a request that bypass the route registry (`routes!`). Only the documentation's
/// own pages use them (`api/docs.rs`), and the Terraform state route, which takes the documented
/// `GET`'s place with every method (`api/terraform_state.rs`).
const PAST_THE_REGISTRY: [&str; 6] =
    [".route(", ".route_service(", ".nest(", ".nest_service(", ".fallback(", ".fallback_service("];

/// A route and its operation in `/openapi.json` come from one declaration (`routes!` on a
/// handler with its `#[utoipa::path]`, `src/api.rs`), so the document cannot miss a route made
/// that way. What is left to check: that no code adds a route past that registry (the calls of
/// `PAST_THE_REGISTRY`, or a `routes!` whose method router is swapped), that every operation of
/// the document is served (an admin's call of its method on its path is answered by a handler,
/// never with "no such route" or "method not allowed"), and that each operation has its own id.
#[tokio::test]
async fn every_documented_operation_is_served_and_every_route_is_documented() {
    let src = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    let mut files = vec![src.join("api.rs")];
    for entry in std::fs::read_dir(src.join("api")).unwrap() {
        files.push(entry.unwrap().path());
    }
    for path in files {
        let name = path.strip_prefix(src).unwrap().display().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        // Unit tests build routers of their own.
        let text = text.split("#[cfg(test)]").next().unwrap_or_default();
        let code: String = text
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n")
            .split_whitespace()
            .collect();
        if name != "api/docs.rs" {
            for call in PAST_THE_REGISTRY {
                assert!(!code.contains(call), "{name} serves requests past the registry: {call}");
            }
        }
        if name != "api/terraform_state.rs" {
            assert!(!code.contains("=routes!("), "{name} takes a routes! apart");
        }
    }

    let app = spawn_app().await;
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    let mut operation_ids = BTreeSet::new();
    let mut problems = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if !DOCUMENT_METHODS.contains(&method.as_str()) {
                continue;
            }
            let id = operation["operationId"].as_str();
            let id = id.unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            assert!(operation_ids.insert(id.to_string()), "two operations are called {id}");
            // Path parameters name nothing that exists: the call reaches the handler, which
            // finds nothing to act on (the admin's credentials get it past authentication).
            let concrete: String = path
                .split('/')
                .map(|segment| if segment.starts_with('{') { "probe-0" } else { segment })
                .collect::<Vec<_>>()
                .join("/");
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let answer =
                app.client.request(method.clone(), app.url(&concrete)).send().await.unwrap();
            let status = answer.status();
            let problem: Value = answer.json().await.unwrap_or_default();
            let unrouted = status == StatusCode::METHOD_NOT_ALLOWED
                || (status == StatusCode::NOT_FOUND && problem["detail"] == "no such route");
            if unrouted {
                problems.push(format!("{method} {path} is documented but not served: {problem}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(operation_ids.len() > 40, "{operation_ids:?}");
}

/// `/openapi.json` as clients generate from it, kept in `tests/it/snapshots/`: a change to the
/// API's wire form fails this test until the snapshot is updated with it
/// (`INSTA_UPDATE=always cargo nextest run -E 'test(openapi_document)'`, or `cargo insta`), so
/// that it is seen in review.
#[tokio::test]
async fn the_openapi_document_is_the_one_under_review() {
    let app = spawn_app().await;
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    insta::assert_json_snapshot!("openapi_document", doc);
}

#[tokio::test]
async fn swagger_ui_and_redoc_are_served_from_the_binary() {
    let app = spawn_app().await;

    let swagger = app.get("/docs/").await;
    assert_eq!(swagger.status(), StatusCode::OK);
    assert!(swagger.text().await.unwrap().contains("swagger-ui"));
    let initializer = app.get("/docs/swagger-initializer.js").await.text().await.unwrap();
    assert!(initializer.contains("/openapi.json"));

    let redoc = app.get("/redoc").await.text().await.unwrap();
    assert!(redoc.contains("/redoc/redoc.standalone.js") && !redoc.contains("cdn."));
    let bundle = app.get("/redoc/redoc.standalone.js").await;
    assert_eq!(bundle.status(), StatusCode::OK);
    assert!(bundle.bytes().await.unwrap().len() > 500_000);
}

/// The tags of an HTML page and the text of its inline scripts, read the way a browser reads
/// them: attributes with quoted or bare values, comments skipped, a script's text raw up to
/// `</script`.
struct ParsedHtml {
    /// Each tag's lowercased name and attributes (name lowercased, value as written).
    tags: Vec<(String, Vec<(String, String)>)>,
    inline_scripts: Vec<String>,
}

fn parse_html(html: &str) -> ParsedHtml {
    let bytes = html.as_bytes();
    let mut parsed = ParsedHtml { tags: Vec::new(), inline_scripts: Vec::new() };
    let mut i = 0;
    while i < bytes.len() {
        // Bytes, not `&html[i..]`: `i` steps through the text byte by byte.
        if bytes[i..].starts_with(b"<!--") {
            i = html[i..].find("-->").map_or(bytes.len(), |end| i + end + 3);
            continue;
        }
        if bytes[i] != b'<' || !bytes.get(i + 1).is_some_and(u8::is_ascii_alphabetic) {
            i += 1;
            continue;
        }
        i += 1;
        let start = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() && !b"/>".contains(&bytes[i]) {
            i += 1;
        }
        let name = html[start..i].to_ascii_lowercase();
        let mut attributes = Vec::new();
        loop {
            while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'/') {
                i += 1;
            }
            if i >= bytes.len() || bytes[i] == b'>' {
                i += 1;
                break;
            }
            let start = i;
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() && !b"=/>".contains(&bytes[i])
            {
                i += 1;
            }
            let attribute = html[start..i].to_ascii_lowercase();
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            let mut value = String::new();
            if bytes.get(i) == Some(&b'=') {
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                    i += 1;
                }
                if let Some(&quote) = bytes.get(i).filter(|b| **b == b'"' || **b == b'\'') {
                    let end = html[i + 1..].find(quote as char).map_or(bytes.len(), |e| i + 1 + e);
                    value = html[i + 1..end].to_string();
                    i = end + 1;
                } else {
                    let start = i;
                    while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'>' {
                        i += 1;
                    }
                    value = html[start..i].to_string();
                }
            }
            attributes.push((attribute, value));
        }
        i = i.min(bytes.len());
        if name == "script" {
            let end =
                html[i..].to_ascii_lowercase().find("</script").map_or(bytes.len(), |end| i + end);
            if !attributes.iter().any(|(attribute, _)| attribute == "src") {
                parsed.inline_scripts.push(html[i..end].to_string());
            }
            i = end;
        }
        parsed.tags.push((name, attributes));
    }
    parsed
}

/// A Content-Security-Policy as directive name → sources.
fn parse_csp(csp: &str) -> BTreeMap<String, Vec<String>> {
    csp.split(';')
        .filter_map(|directive| {
            let mut words = directive.split_ascii_whitespace();
            let name = words.next()?.to_ascii_lowercase();
            Some((name, words.map(str::to_string).collect()))
        })
        .collect()
}

/// What in `html` the policy `csp` would block, or what in the policy is too wide: inline
/// scripts whose hash it does not list, `'unsafe-inline'`/`'unsafe-eval'` scripts, inline
/// event handlers, assets from other origins, sources naming other origins.
fn csp_violations(html: &str, csp: &str) -> Vec<String> {
    use base64::Engine;
    use sha2::Digest;
    let policy = parse_csp(csp);
    let mut violations = Vec::new();
    if policy.get("default-src").map(Vec::as_slice) != Some(&["'none'".to_string()][..]) {
        violations.push(format!("default-src is not 'none': {csp}"));
    }
    if policy.get("frame-ancestors").map(Vec::as_slice) != Some(&["'none'".to_string()][..]) {
        violations.push(format!("frame-ancestors is not 'none': {csp}"));
    }
    let scripts =
        policy.get("script-src").or(policy.get("default-src")).cloned().unwrap_or_default();
    for wide in ["'unsafe-inline'", "'unsafe-eval'", "'unsafe-hashes'"] {
        if scripts.iter().any(|source| source == wide) {
            violations.push(format!("script-src allows {wide}"));
        }
    }
    for (directive, sources) in &policy {
        for source in sources {
            let other_origin = source.contains("://")
                || source.contains('*')
                || (source.ends_with(':') && !["data:", "blob:"].contains(&source.as_str()))
                || (!source.starts_with('\'') && !source.ends_with(':'));
            if other_origin {
                violations.push(format!("{directive} allows another origin: {source}"));
            }
        }
    }
    let parsed = parse_html(html);
    for script in &parsed.inline_scripts {
        let digest = sha2::Sha256::digest(script.as_bytes());
        let hash = format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest));
        if !scripts.contains(&hash) {
            violations.push(format!("inline script {hash} is not allowed: {script:?}"));
        }
    }
    for (tag, attributes) in &parsed.tags {
        for (attribute, value) in attributes {
            if attribute.starts_with("on") {
                violations.push(format!("<{tag} {attribute}=…>: inline handlers are blocked"));
            }
            if ["src", "href"].contains(&attribute.as_str()) {
                let elsewhere = value.starts_with("//")
                    || value.contains("://")
                    || value.to_ascii_lowercase().starts_with("javascript:");
                if elsewhere {
                    violations.push(format!("<{tag} {attribute}={value:?}> is not from corral"));
                }
            }
        }
    }
    violations
}

/// Asserts the docs' headers and returns the policy.
fn assert_docs_headers(response: &reqwest::Response) -> String {
    let headers = response.headers();
    let url = response.url();
    assert_eq!(
        headers.get("x-content-type-options").map(|v| v.as_bytes()),
        Some(&b"nosniff"[..]),
        "{url}"
    );
    assert_eq!(headers.get("x-frame-options").map(|v| v.as_bytes()), Some(&b"DENY"[..]), "{url}");
    let csp = headers
        .get("content-security-policy")
        .unwrap_or_else(|| panic!("{url} has no Content-Security-Policy"))
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(parse_csp(&csp).get("frame-ancestors"), Some(&vec!["'none'".to_string()]), "{csp}");
    csp
}

#[test]
fn the_policy_check_finds_what_a_browser_would_block() {
    let page = "<!-- <script>ignored()</script> --><div id=\"x\"></div>\
                <script src=\"./bundle.js\" charset=\"UTF-8\"> </script>\
                <SCRIPT type=\"text/javascript\">\n  start();\n</SCRIPT>";
    let parsed = parse_html(page);
    assert_eq!(parsed.inline_scripts, ["\n  start();\n"]);
    let tight = "default-src 'none'; script-src 'self'; frame-ancestors 'none'";
    assert_eq!(csp_violations(page, tight).len(), 1, "the inline script is not allowed");
    // printf '\n  start();\n' | openssl dgst -sha256 -binary | base64
    let hash = "'sha256-IwJ8HMQ0kEv4Hqeb/k0wwXXvuYWzywnUAuKiS02uiBk='";
    let allowed = format!("default-src 'none'; script-src 'self' {hash}; frame-ancestors 'none'");
    assert_eq!(csp_violations(page, &allowed), Vec::<String>::new());
    let inline = "default-src 'none'; script-src 'self' 'unsafe-inline'; frame-ancestors 'none'";
    assert!(!csp_violations(page, inline).is_empty(), "'unsafe-inline' is refused");
    let cdn = format!("{allowed}; img-src 'self' https://cdn.example.com");
    assert!(!csp_violations(page, &cdn).is_empty(), "another origin is refused");
    let framed = format!("default-src 'none'; script-src 'self' {hash}");
    assert!(!csp_violations(page, &framed).is_empty(), "frame-ancestors is required");
    let handler = "<body onload=\"start()\"></body>";
    assert!(!csp_violations(handler, &allowed).is_empty(), "inline handlers are blocked");
    let remote = "<script src=\"https://cdn.example.com/redoc.js\"></script>";
    assert!(!csp_violations(remote, &allowed).is_empty(), "scripts come from corral");
}

#[tokio::test]
async fn docs_send_nosniff_deny_and_a_policy_their_pages_satisfy() {
    let app = spawn_app().await;
    let tls = corral::tls_client_config().unwrap();
    let no_redirects = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    let redirect = no_redirects.get(app.url("/docs")).send().await.unwrap();
    assert!(redirect.status().is_redirection(), "{}", redirect.status());
    assert_docs_headers(&redirect);
    let location = redirect.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(location, "/docs/");

    let mut inline_scripts = 0;
    for path in [location.as_str(), "/docs/index.html", "/docs/oauth2-redirect.html", "/redoc"] {
        let response = app.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
        let csp = assert_docs_headers(&response);
        let html = response.text().await.unwrap();
        let violations = csp_violations(&html, &csp);
        assert!(violations.is_empty(), "{path} under {csp}: {violations:#?}");
        inline_scripts += parse_html(&html).inline_scripts.len();
    }
    assert!(inline_scripts > 0, "oauth2-redirect.html's inline script was checked against a hash");

    for path in [
        "/openapi.json",
        "/docs/swagger-initializer.js",
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-ui.css",
        "/redoc/redoc.standalone.js",
    ] {
        let response = app.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_docs_headers(&response);
    }
    let document = app.get("/openapi.json").await;
    assert!(document.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let initializer = app.get("/docs/swagger-initializer.js").await.text().await.unwrap();
    assert!(
        initializer.contains(r#""validatorUrl": "none""#),
        "no badge from validator.swagger.io: {initializer}"
    );
}
