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
    assert!(status["timestamp"].is_string());
    assert_eq!(status["instances"], serde_json::json!({ "stopped": 1 }));
    assert_eq!(status["jobs"], serde_json::json!({ "succeeded": 2 }));
    assert!(status["cloud"].as_str().unwrap().contains("127.0.0.1"), "{status}");
}

/// Routes served but left out of the OpenAPI document on purpose: the pages of the
/// documentation itself. (Swagger UI's `/docs/…` and `/openapi.json` are added by
/// `SwaggerUi`, not by `.route(…)`, so they are in neither list.)
const UNDOCUMENTED: [(&str, &str); 2] = [("GET", "/redoc"), ("GET", "/redoc/redoc.standalone.js")];

/// HTTP methods, as a path item of an OpenAPI document names its operations.
const DOCUMENT_METHODS: [&str; 8] =
    ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// The document and the routers agree both ways: every method and path the routers declare
/// (`declared_routes`, read from their source) is in `/openapi.json` and every operation there
/// is served, but for the documentation's own pages; each operation has its own id.
#[tokio::test]
async fn openapi_document_lists_exactly_the_routes_the_routers_serve() {
    let app = spawn_app().await;
    let declared = declared_routes();

    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();

    let mut documented = BTreeSet::new();
    let mut operation_ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if !DOCUMENT_METHODS.contains(&method.as_str()) {
                continue;
            }
            documented.insert((method.to_uppercase(), path.clone()));
            let id = operation["operationId"].as_str();
            let id = id.unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            assert!(operation_ids.insert(id.to_string()), "two operations are called {id}");
        }
    }
    let mut problems = Vec::new();
    for (method, path) in &declared {
        // `any(…)` is Terraform's state protocol (GET, POST, DELETE, LOCK, UNLOCK): OpenAPI
        // cannot name LOCK or UNLOCK, and the document lists the route by its GET.
        let listed = if method == "ANY" {
            documented.iter().any(|(_, documented_path)| documented_path == path)
        } else {
            documented.contains(&(method.clone(), path.clone()))
        };
        match (listed, UNDOCUMENTED.contains(&(method.as_str(), path.as_str()))) {
            (false, false) => {
                problems.push(format!("{method} {path} is missing from the document"))
            }
            (true, true) => problems.push(format!("{method} {path} is documented after all")),
            _ => {}
        }
    }
    for (method, path) in &documented {
        let served = declared.contains(&(method.clone(), path.clone()))
            || declared.contains(&("ANY".to_string(), path.clone()));
        if !served {
            problems.push(format!("{method} {path} is documented but no router serves it"));
        }
    }
    for (method, path) in UNDOCUMENTED {
        if !declared.contains(&(method.to_string(), path.to_string())) {
            problems.push(format!("{method} {path} is listed as undocumented but not served"));
        }
    }
    assert!(
        problems.is_empty(),
        "the routers and /openapi.json disagree:\n{}",
        problems.join("\n")
    );
}

/// Method routers a route is made with, as axum names them.
const ROUTER_METHODS: [&str; 9] =
    ["get", "post", "put", "patch", "delete", "head", "options", "trace", "any"];
/// Calls on a method router that add no method to it.
const ROUTER_MODIFIERS: [&str; 3] = ["layer", "route_layer", "with_state"];

/// Every (method, path) corral's API routers declare, read from their source: each
/// `.route("PATH", METHOD(handler)…)` in the functions of `src/api/*.rs` that return a
/// `Router` (test modules left out), under the prefix `api::router` in `src/api.rs` mounts that
/// function at. A method router made with `any(…)` is `ANY`.
fn declared_routes() -> BTreeSet<(String, String)> {
    let root = env!("CARGO_MANIFEST_DIR");
    let api = std::fs::read_to_string(format!("{root}/src/api.rs")).unwrap();
    let mounts = router_mounts(&api, &blank_literals(&api));
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(format!("{root}/src/api"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "rs"))
        .collect();
    files.sort();
    let mut routes = BTreeSet::new();
    for file in files {
        let module = file.file_stem().unwrap().to_str().unwrap().to_string();
        let original = std::fs::read_to_string(&file).unwrap();
        let code = blank_literals(&original);
        let end = test_module_start(&code);
        let (original, code) = (&original[..end], &code[..end]);
        let mut calls = 0;
        for (function, open, close) in router_functions(code) {
            let declared = routes_in(original, code, open, close);
            if declared.is_empty() {
                continue;
            }
            let key = format!("{module}::{function}");
            let prefixes = mounts.get(&key);
            let prefixes = prefixes.unwrap_or_else(|| panic!("src/api.rs mounts {key} nowhere"));
            calls += declared.len();
            for (path, methods) in declared {
                for prefix in prefixes {
                    for method in &methods {
                        routes.insert((method.clone(), format!("{prefix}{path}")));
                    }
                }
            }
        }
        let found = code.matches(".route(").count();
        assert_eq!(calls, found, "src/api/{module}.rs has a .route( outside a router function");
    }
    routes
}

/// Where `fn router` of `src/api.rs` mounts each router function (`module::function`): the
/// prefixes of the `.nest(…)` calls it sits in, through the routers bound by `let`.
fn router_mounts(original: &str, code: &str) -> BTreeMap<String, Vec<String>> {
    let functions = router_functions(code);
    let (_, open, close) =
        functions.iter().find(|(name, _, _)| name == "router").expect("src/api.rs has fn router");
    // (router, what it merges or nests: a `let` name or `module::function`, at which prefix);
    // the router served (the body's last expression) is "".
    let mut edges: Vec<(String, String, String)> = Vec::new();
    for (start, end) in split_top_level(code, open + 1, *close, b';') {
        let start = start + (code[start..end].len() - code[start..end].trim_start().len());
        let statement = &code[start..end];
        let (router, expression) = match statement.strip_prefix("let ") {
            Some(rest) => {
                let rest = rest.strip_prefix("mut ").unwrap_or(rest);
                let name: String =
                    rest.bytes().take_while(|b| is_ident(*b)).map(char::from).collect();
                (name, start + statement.find('=').expect("a let has an ="))
            }
            None => (String::new(), start),
        };
        for call in [".merge(", ".nest("] {
            let mut at = expression;
            while let Some(found) = find_from(&code.as_bytes()[..end], at, call.as_bytes()) {
                let open = found + call.len() - 1;
                let close = closing_bracket(code, open);
                let arguments = split_top_level(code, open + 1, close, b',');
                let (prefix, child) = match (call, arguments.as_slice()) {
                    (".merge(", &[child]) => (String::new(), child),
                    (".nest(", &[prefix, child]) => (string_literal(original, code, prefix), child),
                    _ => panic!("src/api.rs: cannot follow {}", &original[found..=close]),
                };
                let child: String =
                    code[child.0..child.1].chars().filter(|c| !c.is_whitespace()).collect();
                let function =
                    child.strip_suffix("()").filter(|f| f.contains("::")).map(str::to_string);
                let child = match function {
                    Some(function) => function,
                    None => {
                        assert!(child.bytes().all(is_ident), "src/api.rs mounts {child}");
                        child
                    }
                };
                edges.push((router.clone(), child, prefix));
                at = close;
            }
        }
    }
    let mut mounts = BTreeMap::new();
    mount(&edges, "", "", &mut mounts);
    mounts
}

/// Records where the routers merged or nested into `router` (mounted at `base`) are mounted.
fn mount(
    edges: &[(String, String, String)],
    router: &str,
    base: &str,
    mounts: &mut BTreeMap<String, Vec<String>>,
) {
    for (parent, child, prefix) in edges {
        if parent.as_str() != router {
            continue;
        }
        let at = format!("{base}{prefix}");
        if child.contains("::") {
            mounts.entry(child.clone()).or_default().push(at);
        } else {
            mount(edges, child, &at, mounts);
        }
    }
}

/// The `.route(…)` calls between `from` and `to`: each path, with the methods of its method
/// router. `code` is `original` with its literals blanked.
fn routes_in(original: &str, code: &str, from: usize, to: usize) -> Vec<(String, Vec<String>)> {
    let mut routes = Vec::new();
    let mut at = from;
    while let Some(call) = find_from(&code.as_bytes()[..to], at, b".route(") {
        let open = call + ".route".len();
        let close = closing_bracket(code, open);
        let arguments = split_top_level(code, open + 1, close, b',');
        let &[path, method_router] = arguments.as_slice() else {
            panic!("a route of other than two arguments: {}", &original[call..=close]);
        };
        routes.push((string_literal(original, code, path), router_methods(code, method_router)));
        at = close;
    }
    routes
}

/// The methods of a method router such as `get(a).post(b)` or `any(c).layer(d)`: the calls
/// outside any bracket, uppercased.
fn router_methods(code: &str, (start, end): (usize, usize)) -> Vec<String> {
    let bytes = code.as_bytes();
    let mut methods = Vec::new();
    let (mut depth, mut at) = (0i32, start);
    while at < end {
        let byte = bytes[at];
        if matches!(byte, b'(' | b'[' | b'{') {
            depth += 1;
            at += 1;
        } else if matches!(byte, b')' | b']' | b'}') {
            depth -= 1;
            at += 1;
        } else if depth == 0 && is_ident(byte) {
            let word_end = at + bytes[at..end].iter().take_while(|b| is_ident(**b)).count();
            let word = &code[at..word_end];
            if bytes.get(word_end) == Some(&b'(') {
                if ROUTER_METHODS.contains(&word) {
                    methods.push(word.to_uppercase());
                } else {
                    let router = code[start..end].trim();
                    assert!(
                        ROUTER_MODIFIERS.contains(&word),
                        "what does {word} route in {router}?"
                    );
                }
            }
            at = word_end;
        } else {
            at += 1;
        }
    }
    assert!(!methods.is_empty(), "no method in {}", code[start..end].trim());
    methods
}

/// The text of the string literal that `code[start..end]` is.
fn string_literal(original: &str, code: &str, (start, end): (usize, usize)) -> String {
    let text = code[start..end].trim();
    let quoted = text.len() >= 2 && text.starts_with('"') && text.ends_with('"');
    assert!(quoted, "not a string literal: {}", original[start..end].trim());
    let open = start + code[start..end].find('"').unwrap();
    let close = start + code[start..end].rfind('"').unwrap();
    original[open + 1..close].to_string()
}

/// The functions of `code` that return a `Router`: each name, and the offsets of the braces
/// of its body.
fn router_functions(code: &str) -> Vec<(String, usize, usize)> {
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = find_from(bytes, from, b"fn ") {
        from = at + 3;
        if at > 0 && is_ident(bytes[at - 1]) {
            continue;
        }
        let name_end = from + bytes[from..].iter().take_while(|b| is_ident(**b)).count();
        let Some(open) = find_from(bytes, name_end, b"{") else { break };
        let signature = &code[name_end..open];
        if signature.contains(';') || !signature.contains("-> Router") {
            continue;
        }
        let close = closing_bracket(code, open);
        found.push((code[at + 3..name_end].to_string(), open, close));
        from = close;
    }
    found
}

/// Where the test module of `code` begins (its routes are the tests' own), else its end.
fn test_module_start(code: &str) -> usize {
    let mut from = 0;
    while let Some(at) = code[from..].find("#[cfg(test)]").map(|at| at + from) {
        if code[at + "#[cfg(test)]".len()..].trim_start().starts_with("mod ") {
            return at;
        }
        from = at + 1;
    }
    code.len()
}

/// The offsets of `code[from..to]` split at each `separator` outside brackets; empty parts
/// (after a trailing separator) left out.
fn split_top_level(code: &str, from: usize, to: usize, separator: u8) -> Vec<(usize, usize)> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, from);
    for (at, byte) in code.bytes().enumerate().take(to).skip(from) {
        match byte {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            _ if byte == separator && depth == 0 => {
                parts.push((start, at));
                start = at + 1;
            }
            _ => {}
        }
    }
    parts.push((start, to));
    parts.retain(|&(start, end)| !code[start..end].trim().is_empty());
    parts
}

/// The offset of the bracket that closes the one at `open`.
fn closing_bracket(code: &str, open: usize) -> usize {
    let mut depth = 0i32;
    for (at, byte) in code.bytes().enumerate().skip(open) {
        match byte {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                depth -= 1;
                if depth == 0 {
                    return at;
                }
            }
            _ => {}
        }
    }
    panic!("nothing closes the bracket at offset {open}");
}

/// `code` with the text of its comments, string literals (raw ones too) and character literals
/// replaced by spaces, byte for byte, so that brackets, commas and calls can be found in it at
/// the offsets they have in `code`.
fn blank_literals(code: &str) -> String {
    let bytes = code.as_bytes();
    let mut out = bytes.to_vec();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"//") {
            let end = find_from(bytes, i, b"\n").unwrap_or(bytes.len());
            blank(&mut out, i, end);
            i = end;
        } else if bytes[i..].starts_with(b"/*") {
            let end = find_from(bytes, i + 2, b"*/").map_or(bytes.len(), |at| at + 2);
            blank(&mut out, i, end);
            i = end;
        } else if let Some(hashes) = raw_string_hashes(bytes, i) {
            let quote = i + 1 + hashes;
            let closing: Vec<u8> =
                std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
            let end = find_from(bytes, quote + 1, &closing).unwrap_or(bytes.len());
            blank(&mut out, quote + 1, end);
            i = end + closing.len();
        } else if bytes[i] == b'"' {
            let mut end = i + 1;
            while end < bytes.len() && bytes[end] != b'"' {
                end += if bytes[end] == b'\\' { 2 } else { 1 };
            }
            blank(&mut out, i + 1, end);
            i = end + 1;
        } else if bytes[i] == b'\'' {
            // A character literal ('x', '\'', '\n'); otherwise a lifetime, left as it is.
            if bytes.get(i + 1) == Some(&b'\\') {
                let end = find_from(bytes, i + 3, b"'").unwrap_or(bytes.len());
                blank(&mut out, i + 1, end);
                i = end + 1;
            } else if bytes.get(i + 2) == Some(&b'\'') {
                blank(&mut out, i + 1, i + 2);
                i += 3;
            } else {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8(out).expect("whole characters are blanked")
}

/// Replaces `out[from..to]` by spaces, but for line ends.
fn blank(out: &mut [u8], from: usize, to: usize) {
    let to = to.min(out.len());
    for byte in &mut out[from.min(to)..to] {
        if *byte != b'\n' {
            *byte = b' ';
        }
    }
}

/// How many `#` a raw string literal that starts at `at` (`r"…"`, `r#"…"#`) has, if one does.
fn raw_string_hashes(bytes: &[u8], at: usize) -> Option<usize> {
    if bytes[at] != b'r' || (at > 0 && is_ident(bytes[at - 1])) {
        return None;
    }
    let hashes = bytes[at + 1..].iter().take_while(|b| **b == b'#').count();
    (bytes.get(at + 1 + hashes) == Some(&b'"')).then_some(hashes)
}

fn is_ident(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

/// Where `needle` first occurs in `haystack` from `from` on.
fn find_from(haystack: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    let rest = haystack.get(from..)?;
    rest.windows(needle.len()).position(|window| window == needle).map(|at| at + from)
}

#[test]
fn the_route_reader_skips_comments_and_literals_and_follows_chains_lines_and_nesting() {
    let module = r##"//! .route("/in-a-comment", get(nothing))
const PAGE: &str = r#"<a href="x">.route("/in-a-raw-string", get(x))</a>"#;
/// Its routes; a "quote" in a comment.
pub fn router() -> Router<ApiContext> {
    let brace = '{';
    Router::new()
        .route("/one", get(read).post(write))
        .route(
            "/two/{id}",
            get(|| async { "a \"quoted\" ) brace {" }).delete(remove),
        )
        .route("/state", any(state).layer(DefaultBodyLimit::max(1024)))
}
fn helper(text: &'static str) -> usize { text.len() }
#[cfg(test)]
mod tests {
    fn router() -> Router { Router::new().route("/slow", get(slow)) }
}
"##;
    let code = blank_literals(module);
    assert_eq!(code.len(), module.len());
    let end = test_module_start(&code);
    let (module, code) = (&module[..end], &code[..end]);
    assert_eq!(code.matches(".route(").count(), 3, "{code}");
    let functions = router_functions(code);
    let names: Vec<&str> = functions.iter().map(|(name, _, _)| name.as_str()).collect();
    assert_eq!(names, ["router"]);
    let (_, open, close) = &functions[0];
    let routes: Vec<String> = routes_in(module, code, *open, *close)
        .into_iter()
        .map(|(path, methods)| format!("{} {path}", methods.join(",")))
        .collect();
    assert_eq!(routes, ["GET,POST /one", "GET,DELETE /two/{id}", "ANY /state"]);

    let api = r#"pub fn health_router(ctx: ApiContext) -> Router { health::router().with_state(ctx) }
pub fn router(ctx: ApiContext) -> Router {
    let v1 = Router::new().merge(alpha::router()).merge(beta::router());
    let protected = Router::new()
        .nest("/v1", v1)
        .merge(health::status_router())
        .route_layer(layer(|request| { let id = "}"; id }));
    Router::new().merge(protected).nest("/v1", auth::public_router()).merge(docs::router())
}
"#;
    let mounts = router_mounts(api, &blank_literals(api));
    let expected: BTreeMap<String, Vec<String>> = [
        ("alpha::router", "/v1"),
        ("auth::public_router", "/v1"),
        ("beta::router", "/v1"),
        ("docs::router", ""),
        ("health::status_router", ""),
    ]
    .into_iter()
    .map(|(function, prefix)| (function.to_string(), vec![prefix.to_string()]))
    .collect();
    assert_eq!(mounts, expected);
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
