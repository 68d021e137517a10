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

use serde::Serialize;
use serde_json::Value;

use crate::cli::client::{Client, Failure, Outcome};
use crate::cli::output::{Column, Out, cell};
use crate::cli::wait;
use crate::wire::{InstanceBody, JobBody, JobInstanceBody};

pub use api_keys::{ApiKeysCommand, api_keys};
pub use audit::{AuditArgs, audit};
pub use instances::{Action, Ids, InstancesCommand, ListInstances, Terminate, instances};
use jobs::JOB_COLUMNS;
pub use jobs::{JobsCommand, jobs};
pub use key_pairs::{KeyPairsCommand, key_pairs};
pub use namespaces::{NamespacesCommand, namespaces};
pub use policy::policy;
pub use users::{UsersCommand, users};

/// A quota: its figure, or ∞ for none.
fn limit(value: Option<i64>) -> String {
    value.map_or_else(|| "∞".to_string(), |value| value.to_string())
}

/// A JSON value on one line; nothing for none.
fn compact(value: &Option<Value>) -> String {
    value.as_ref().map(Value::to_string).unwrap_or_default()
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

pub fn encode(value: &str) -> String {
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
pub async fn job_result(client: &Client, out: &Out, job: JobBody, wait: bool) -> Outcome<()> {
    let job =
        if wait && !job.is_finished() { wait::follow(client, &job.id, live()).await? } else { job };
    print_job(out, &job, wait)?;
    if job.status == "failed" {
        return Err(Failure::failed(format!(
            "job {} failed: {}",
            job.id,
            job.error.as_deref().unwrap_or_default()
        )));
    }
    Ok(())
}

/// A job: as JSON/YAML; or in a table, followed (once finished) by its instances with their
/// addresses and SSH commands.
fn print_job(out: &Out, job: &JobBody, finished: bool) -> std::io::Result<()> {
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
        return out.line(&format!("follow it with: corral jobs wait {}", job.id));
    }
    if job.instances.is_empty() {
        return Ok(());
    }
    out.line("")?;
    const FINISHED_COLUMNS: &[Column<JobInstanceBody>] = &[
        Column::new("ID", "id", |i| i.id.clone()),
        Column::new("CLOUD ID", "cloud_id", |i| cell(&i.cloud_id)),
        Column::new("NAME", "name", |i| i.name.clone()),
        Column::new("STATE", "state", |i| i.state.clone()),
        Column::new("PUBLIC IP", "public_ip", |i| cell(&i.public_ip)),
        Column::new("PRIVATE IP", "private_ip", |i| cell(&i.private_ip)),
    ];
    out.items(&job.instances, FINISHED_COLUMNS)?;
    for instance in &job.instances {
        if let Some(ssh) = &instance.ssh_command
            && instance.state == "running"
        {
            out.line(&format!("{ssh}    # {}", instance.name))?;
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
fn confirm(doomed: &[InstanceBody], verb: &str) -> Outcome<()> {
    let headers: Vec<String> =
        ["ID", "CLOUD ID", "NAME", "STATE", "NAMESPACE"].iter().map(|h| h.to_string()).collect();
    let rows: Vec<Vec<String>> = doomed
        .iter()
        .map(|i| {
            vec![
                i.id.clone(),
                cell(&i.cloud_id),
                i.name.clone(),
                i.state.clone(),
                i.namespace.clone(),
            ]
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
fn show_many<T: Serialize>(out: &Out, items: &[T], columns: &[Column<T>]) -> std::io::Result<()> {
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

/// One line asked for on the terminal.
pub fn read_line(what: &str) -> Outcome<String> {
    eprint!("{what}: ");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let line = line.trim().to_string();
    if line.is_empty() {
        return Err(Failure::usage(format!("no {what} given")));
    }
    Ok(line)
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
