//! The environment as a source of settings: which `CORRAL_*` variables set which keys (the
//! long form `CORRAL_SECTION__KEY` and the short names scripts rely on), the refusal of a
//! variable corral does not know, and the spelling of a key in errors as its source writes it.

use figment::Provider;
use figment::providers::Env;

use super::Renamed;

/// Top-level keys that environment variables may set.
const ENV_KEYS: [&str; 12] = [
    "listen",
    "server",
    "database_url",
    "data_dir",
    "role",
    "aws",
    "jobs",
    "reconcile",
    "policy",
    "auth",
    "notify",
    "terraform",
];

/// Short environment names and the keys they set.
const ENV_ALIASES: [(&str, &str); 15] = [
    ("default_backend", "terraform__default_backend"),
    ("terraform_cli_config", "terraform__cli_config"),
    ("terraform_state_url", "terraform__state_url"),
    ("admin_password", "auth__admin_password"),
    ("smtp_host", "notify__smtp_host"),
    ("smtp_port", "notify__smtp_port"),
    ("smtp_user", "notify__smtp_user"),
    ("smtp_password", "notify__smtp_password"),
    ("smtp_tls", "notify__smtp_tls"),
    ("smtp_from", "notify__smtp_from"),
    ("notify_email", "notify__email"),
    ("webhook_allow_private", "notify__webhook_allow_private"),
    ("job_max_attempts", "jobs__max_attempts"),
    ("job_retry_delay", "jobs__retry_delay_secs"),
    ("reconcile_interval", "reconcile__interval_secs"),
];

/// `CORRAL_*` variables that are not server settings: the CLI's (`cli::profile`), the
/// configuration file's, and the test harness's (`CORRAL_TEST_*`, `scripts/`).
const OTHER_VARIABLES: [&str; 6] = [
    "CORRAL_SERVER",
    "CORRAL_API_KEY",
    "CORRAL_TOKEN",
    "CORRAL_PROFILE",
    "CORRAL_CONFIG",
    "CORRAL_VENV_CACHE",
];
const HARNESS_PREFIX: &str = "CORRAL_TEST_";

/// Whether `name=value` is a service link Kubernetes (for a Service named `corral…`:
/// `CORRAL_SERVICE_HOST=10.0.0.7`, `CORRAL_PORT=tcp://10.0.0.7:8080`) or a Docker link gives
/// every container: not a setting, and not a mistake of the person who deploys corral. Name
/// and value must both have a link's shape, so that `CORRAL_PORT=9090` is still refused as
/// the typo it is; a known name (`CORRAL_SMTP_PORT`) is never a link.
fn is_service_link(name: &str, value: &str) -> bool {
    let Some(rest) = name.strip_prefix("CORRAL") else { return false };
    if name.starts_with("CORRAL_") && is_known(name) {
        return false;
    }
    let ip = value.parse::<std::net::IpAddr>().is_ok();
    let port = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    let protocols = ["tcp", "udp", "sctp"];
    let url = protocols.iter().any(|p| value.starts_with(&format!("{p}://")));
    if rest.ends_with("_SERVICE_HOST") {
        return ip;
    }
    if let Some((_, after)) = rest.split_once("_SERVICE_PORT") {
        return port && (after.is_empty() || after.starts_with('_'));
    }
    // `_PORT_<port>_<PROTOCOL>` and its `_ADDR`, `_PORT`, `_PROTO`.
    if let Some((_, link)) = rest.split_once("_PORT_") {
        let parts: Vec<&str> = link.split('_').collect();
        let shaped = parts.len() >= 2
            && parts[0].bytes().all(|b| b.is_ascii_digit())
            && protocols.iter().any(|p| p.eq_ignore_ascii_case(parts[1]));
        if shaped {
            return match parts.get(2).copied() {
                None => url,
                Some("ADDR") => ip,
                Some("PORT") => port,
                Some("PROTO") => protocols.contains(&value),
                Some(_) => false,
            };
        }
    }
    rest.ends_with("_PORT") && url
}

/// The variable that sets the key at `path` (`["jobs", "max_attempts"]`): the short name
/// (`ENV_ALIASES`) when that is the one set, else `CORRAL_JOBS__MAX_ATTEMPTS`.
pub(super) fn variable(path: &[&str]) -> String {
    let target = path.join("__").to_ascii_lowercase();
    ENV_ALIASES
        .iter()
        .filter(|(_, aliased)| *aliased == target)
        .map(|(alias, _)| format!("CORRAL_{}", alias.to_ascii_uppercase()))
        .find(|alias| std::env::var_os(alias).is_some())
        .unwrap_or_else(|| format!("CORRAL_{}", target.to_ascii_uppercase()))
}

/// The environment's settings: every `CORRAL_*` variable but `OTHER_VARIABLES`, the
/// harness's and service links, short names read as the keys they set.
pub(super) fn provider() -> impl Provider {
    let links: std::collections::HashSet<String> = variables()
        .filter(|(name, value)| is_service_link(name, value))
        .map(|(name, _)| name)
        .collect();
    let env = Env::prefixed("CORRAL_")
        .filter(move |key| {
            let variable = format!("CORRAL_{}", key.as_str().to_ascii_uppercase());
            !OTHER_VARIABLES.contains(&variable.as_str())
                && !variable.starts_with(HARNESS_PREFIX)
                && !links.contains(&variable)
        })
        .map(|key| {
            match ENV_ALIASES.iter().find(|(alias, _)| key.as_str().eq_ignore_ascii_case(alias)) {
                Some((_, target)) => (*target).into(),
                None => key.into(),
            }
        })
        .split("__");
    Renamed { source: env, spell: variable, origin: "the environment".to_string() }
}

/// The process's environment variables that are text.
pub(super) fn variables() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
}

/// Refuses the `CORRAL_*` variables among `variables` that corral does not read, each with the
/// known name closest to it, so that a typo (`CORRAL_SMTP_HOSTT`) never silently keeps a
/// default; service links pass (`is_service_link`). A variable of a known section
/// (`CORRAL_JOBS__…`) is left to the section's own check of its keys, which knows them all.
pub(super) fn check_names(variables: impl Iterator<Item = (String, String)>) -> Result<(), String> {
    let unknown: Vec<String> = variables
        .filter(|(name, _)| name.starts_with("CORRAL_") && !name.starts_with(HARNESS_PREFIX))
        .filter(|(name, value)| !is_service_link(name, value))
        .map(|(name, _)| name)
        .filter(|name| !is_known(name))
        .map(|name| {
            let key = name["CORRAL_".len()..].to_ascii_lowercase();
            if ENV_KEYS.contains(&key.as_str()) && is_section(&key) {
                return format!("{name} names a section: set its keys, as {name}__<KEY>");
            }
            match closest(&name, known_names()) {
                Some(known) => {
                    format!("unknown environment variable {name}: did you mean {known}?")
                }
                None => format!(
                    "unknown environment variable {name}: corral reads CORRAL_<SECTION>__<KEY> \
                     for a key of its configuration, and the short names in the README"
                ),
            }
        })
        .collect();
    if unknown.is_empty() { Ok(()) } else { Err(unknown.join("\n  ")) }
}

fn is_known(name: &str) -> bool {
    let key = name["CORRAL_".len()..].to_ascii_lowercase();
    let first = key.split("__").next().unwrap_or_default();
    OTHER_VARIABLES.contains(&name)
        || ENV_ALIASES.iter().any(|(alias, _)| *alias == key)
        || (ENV_KEYS.contains(&first) && (key.contains("__") || !is_section(first)))
}

/// Whether the top-level `key` is a table (`jobs`), which a variable sets key by key.
fn is_section(key: &str) -> bool {
    !matches!(key, "listen" | "database_url" | "data_dir" | "role")
}

/// Every variable name corral reads, for suggestions: the other variables, the short names,
/// the top-level settings and each key of each section.
fn known_names() -> Vec<String> {
    let defaults = serde_json::to_value(super::Settings::default()).unwrap_or_default();
    let mut names: Vec<String> = OTHER_VARIABLES.iter().map(|name| name.to_string()).collect();
    names.extend(
        ENV_ALIASES.iter().map(|(alias, _)| format!("CORRAL_{}", alias.to_ascii_uppercase())),
    );
    for key in ENV_KEYS {
        match defaults.get(key).and_then(|value| value.as_object()) {
            Some(section) if is_section(key) => names.extend(
                section.keys().map(|field| format!("CORRAL_{key}__{field}").to_ascii_uppercase()),
            ),
            _ => names.push(format!("CORRAL_{}", key.to_ascii_uppercase())),
        }
    }
    names
}

/// The candidate most like `name`, if one is a typo away from it: a few letters wrong,
/// missing or extra, more of them in a longer name.
pub(super) fn closest<S: AsRef<str>>(
    name: &str,
    candidates: impl IntoIterator<Item = S>,
) -> Option<S> {
    let allowed = (name.len() / 4).clamp(1, 3);
    candidates
        .into_iter()
        .map(|candidate| (strsim::levenshtein(name, candidate.as_ref()), candidate))
        .filter(|(distance, _)| *distance <= allowed)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}
