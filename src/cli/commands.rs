//! The client commands: one clap subcommand per API resource, each a thin layer over the HTTP
//! API that prints what it answered.

mod api_keys;
mod audit;
mod instances;
mod jobs;
mod key_pairs;
mod namespaces;
mod policy;
mod users;

use std::collections::BTreeMap;
use std::io::IsTerminal;

use serde_json::Value;

use crate::cli::client::{Client, Failure, Outcome};
use crate::cli::output::{Column, Out, scalar};
use crate::cli::wait;

pub use api_keys::{ApiKeysCommand, api_keys};
pub use audit::{AuditArgs, audit};
pub use instances::{Action, Ids, InstancesCommand, ListInstances, Terminate, instances};
use jobs::JOB_COLUMNS;
pub use jobs::{JobsCommand, jobs};
pub use key_pairs::{KeyPairsCommand, key_pairs};
pub use namespaces::{NamespacesCommand, namespaces};
pub use policy::policy;
pub use users::{UsersCommand, users};

fn limit(value: &Value) -> String {
    if value.is_null() { "∞".to_string() } else { scalar(value) }
}

fn compact(value: &Value) -> String {
    if value.is_null() { String::new() } else { value.to_string() }
}

/// Ids from arguments that may each hold several, comma-separated.
pub fn split_ids(args: &[String]) -> Vec<String> {
    args.iter()
        .flat_map(|arg| arg.split(','))
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .collect()
}

/// `KEY=VALUE` arguments as a map, naming the flag of a malformed one.
fn pairs(flag: &str, args: &[String]) -> Outcome<BTreeMap<String, String>> {
    args.iter()
        .map(|arg| match arg.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
            _ => Err(Failure::usage(format!("--{flag} '{arg}': expected KEY=VALUE"))),
        })
        .collect()
}

fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// `?a=b&c=d` from the pairs whose value is set.
fn query(params: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = params
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|value| format!("{name}={}", encode(value))))
        .collect();
    if parts.is_empty() { String::new() } else { format!("?{}", parts.join("&")) }
}

/// Whether progress can be drawn live (stderr is a terminal).
fn live() -> bool {
    std::io::stderr().is_terminal()
}

/// Prints a job just stored: at once, or after following it with `--wait`; a failed job is a
/// failed command.
pub async fn job_result(client: &Client, out: &Out, job: Value, wait: bool) -> Outcome<()> {
    let job = if wait && !is_finished(&job) {
        wait::follow(client, job["id"].as_str().unwrap_or_default(), live()).await?
    } else {
        job
    };
    print_job(out, &job, wait)?;
    if job["status"] == "failed" {
        return Err(Failure::failed(format!(
            "job {} failed: {}",
            scalar(&job["id"]),
            scalar(&job["error"])
        )));
    }
    Ok(())
}

fn is_finished(job: &Value) -> bool {
    matches!(job["status"].as_str(), Some("succeeded" | "failed"))
}

/// A job: as JSON/YAML; or in a table, followed (once finished) by its instances with their
/// addresses and SSH commands.
fn print_job(out: &Out, job: &Value, finished: bool) -> std::io::Result<()> {
    if out.quiet
        || !matches!(
            out.format,
            crate::cli::output::Format::Table | crate::cli::output::Format::Wide
        )
    {
        return out.item(job, JOB_COLUMNS);
    }
    out.item(job, JOB_COLUMNS)?;
    if !finished {
        return out.line(&format!("follow it with: corral jobs wait {}", scalar(&job["id"])));
    }
    let instances = job["instances"].as_array().cloned().unwrap_or_default();
    if instances.is_empty() {
        return Ok(());
    }
    out.line("")?;
    const FINISHED_COLUMNS: &[Column] = &[
        Column::field("ID", "id"),
        Column::field("CLOUD ID", "cloud_id"),
        Column::field("NAME", "name"),
        Column::field("STATE", "state"),
        Column::field("PUBLIC IP", "public_ip"),
        Column::field("PRIVATE IP", "private_ip"),
    ];
    out.items(&instances, FINISHED_COLUMNS)?;
    for instance in &instances {
        if let Some(ssh) = instance["ssh_command"].as_str()
            && instance["state"] == "running"
        {
            out.line(&format!("{ssh}    # {}", scalar(&instance["name"])))?;
        }
    }
    Ok(())
}

/// Refuses to destroy without a terminal to ask on (the caller skips this with `--yes`).
fn require_terminal(verb: &str, count: usize) -> Outcome<()> {
    if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        return Ok(());
    }
    Err(Failure::usage(format!(
        "refusing to {verb} {count} instance(s) without confirmation: no terminal to ask on; \
         pass --yes"
    )))
}

/// Shows what is about to be destroyed and asks.
fn confirm(doomed: &[Value], verb: &str) -> Outcome<()> {
    let headers: Vec<String> =
        ["ID", "CLOUD ID", "NAME", "STATE", "NAMESPACE"].iter().map(|h| h.to_string()).collect();
    let rows: Vec<Vec<String>> = doomed
        .iter()
        .map(|i| {
            ["id", "cloud_id", "name", "state", "namespace"]
                .iter()
                .map(|f| scalar(&i[*f]))
                .collect()
        })
        .collect();
    eprint!("{}", crate::cli::output::table(&headers, &rows));
    if ask(&format!("{verb} these {} instance(s)?", doomed.len()))? {
        Ok(())
    } else {
        Err(Failure::failed("nothing was changed"))
    }
}

/// One item as an item, several as a list.
fn show_many(out: &Out, items: &[Value], columns: &[Column]) -> std::io::Result<()> {
    match items {
        [one] => out.item(one, columns),
        many => out.items(many, columns),
    }
}

/// A yes/no question on the terminal.
fn ask(question: &str) -> Outcome<bool> {
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

/// A secret: asked for without echo on a terminal, else one line of stdin.
pub fn read_secret(what: &str) -> Outcome<String> {
    let secret = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("{what}: "))?
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    if secret.is_empty() {
        return Err(Failure::usage(format!("no {what} given")));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_may_be_spaced_or_comma_separated() {
        let args = vec!["i-1,i-2".to_string(), " i-3 ".to_string(), ",".to_string()];
        assert_eq!(split_ids(&args), ["i-1", "i-2", "i-3"]);
    }

    #[test]
    fn tags_must_be_key_value_pairs() {
        let good = pairs("tag", &["team=blue".to_string(), "empty=".to_string()]).unwrap();
        assert_eq!(good["team"], "blue");
        assert_eq!(good["empty"], "");
        let bad = pairs("tag", &["team".to_string()]).unwrap_err();
        assert!(bad.message.contains("--tag 'team'"), "{}", bad.message);
    }
}
