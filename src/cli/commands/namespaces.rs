//! `corral namespaces`: namespaces, their quotas and default backend, and ending every
//! instance of one.

use clap::Subcommand;
use serde_json::json;

use super::{confirm, encode, job_result, limit, require_terminal};
use crate::cli::client::{Client, Failure, Outcome};
use crate::cli::output::{Column, Out, cell};
use crate::domain::Backend;
use crate::wire::{InstanceBody, NamespaceBody, NamespaceList};

#[derive(Debug, Subcommand)]
pub enum NamespacesCommand {
    /// Lists namespaces with their quotas and use.
    ///
    /// Example: corral namespaces list -o wide
    List,
    /// Shows a namespace: its quotas, what it uses, its default backend.
    ///
    /// Example: corral namespaces get team-a
    Get { name: String },
    /// Creates a namespace (admins).
    ///
    /// Example: corral namespaces create team-a --max-instances 20 --max-vcpus 40
    Create {
        name: String,
        #[arg(long)]
        max_instances: Option<i64>,
        #[arg(long)]
        max_vcpus: Option<i64>,
        /// Backend of create requests that name none (default: the server's).
        #[arg(long, value_parser = ["aws", "terraform"])]
        default_backend: Option<String>,
    },
    /// Changes the settings given and keeps the others; says what changed.
    ///
    /// Example: corral namespaces update team-a --max-instances 5 --max-vcpus none
    Update {
        name: String,
        /// Most instances, or none for no limit.
        #[arg(long, value_name = "N|none", value_parser = limit_arg)]
        max_instances: Option<Limit>,
        /// Most vCPUs, or none for no limit.
        #[arg(long, value_name = "N|none", value_parser = limit_arg)]
        max_vcpus: Option<Limit>,
        /// Backend of create requests that name none; "server" follows the server's default.
        #[arg(long, value_parser = ["aws", "terraform", "server"])]
        default_backend: Option<String>,
    },
    /// Terminates every instance of a namespace after showing them and asking (or --yes).
    ///
    /// Example: corral namespaces terminate sandbox-old --wait
    Terminate {
        name: String,
        #[arg(short, long)]
        yes: bool,
        #[arg(long)]
        wait: bool,
    },
}

const NAMESPACE_COLUMNS: &[Column<NamespaceBody>] = &[
    Column::new("NAME", "name", |ns| ns.name.clone()),
    Column::new("INSTANCES", "instances", |ns| {
        format!("{}/{}", ns.usage.instances, limit(ns.quota.instances))
    }),
    Column::new("VCPUS", "vcpus", |ns| format!("{}/{}", ns.usage.vcpus, limit(ns.quota.vcpus))),
    Column::new("BACKEND", "default_backend", |ns| {
        ns.default_backend.map_or("(server)", Backend::as_str).to_string()
    }),
    Column::new("CREATED", "created_at", |ns| cell(&ns.created_at)),
];

pub async fn namespaces(client: &Client, out: &Out, command: NamespacesCommand) -> Outcome<()> {
    match command {
        NamespacesCommand::List => {
            let list: NamespaceList = client.get("/v1/namespaces").await?;
            out.items(&list.items, NAMESPACE_COLUMNS)?;
        }
        NamespacesCommand::Get { name } => {
            out.item(
                &client.get(&format!("/v1/namespaces/{}", encode(&name))).await?,
                NAMESPACE_COLUMNS,
            )?;
        }
        NamespacesCommand::Create { name, max_instances, max_vcpus, default_backend } => {
            let body = json!({
                "name": name,
                "quota": { "instances": max_instances, "vcpus": max_vcpus },
                "default_backend": default_backend,
            });
            out.item(&client.post("/v1/namespaces", &body).await?, NAMESPACE_COLUMNS)?;
        }
        NamespacesCommand::Update { name, max_instances, max_vcpus, default_backend } => {
            let mut quota = serde_json::Map::new();
            for (field, limit) in [("instances", max_instances), ("vcpus", max_vcpus)] {
                if let Some(Limit(limit)) = limit {
                    quota.insert(field.to_string(), json!(limit));
                }
            }
            let mut body = serde_json::Map::new();
            if !quota.is_empty() {
                body.insert("quota".to_string(), quota.into());
            }
            if let Some(backend) = default_backend.as_deref() {
                body.insert(
                    "default_backend".to_string(),
                    json!((backend != "server").then_some(backend)),
                );
            }
            if body.is_empty() {
                return Err(Failure::usage(
                    "nothing to change: give --max-instances, --max-vcpus or --default-backend",
                ));
            }
            let path = format!("/v1/namespaces/{}", encode(&name));
            let before: NamespaceBody = client.get(&path).await?;
            let after: NamespaceBody = client.patch(&path, &body).await?;
            out.item(&after, NAMESPACE_COLUMNS)?;
            if !out.quiet {
                let changes = changes(&before, &after);
                if changes.is_empty() {
                    eprintln!("{name}: no change");
                }
                for change in changes {
                    eprintln!("{name}: {change}");
                }
            }
        }
        NamespacesCommand::Terminate { name, yes, wait } => {
            if !yes {
                let path = format!("/v1/instances?namespace={}", encode(&name));
                let doomed: Vec<InstanceBody> = client
                    .list_all(&path, None)
                    .await?
                    .into_iter()
                    .filter(|i: &InstanceBody| !matches!(i.state.as_str(), "terminated" | "failed"))
                    .collect();
                if !doomed.is_empty() {
                    require_terminal("terminate", doomed.len())?;
                    confirm(&doomed, "terminate")?;
                }
            }
            let job = client.delete(&format!("/v1/namespaces/{}/instances", encode(&name))).await?;
            job_result(client, out, job, wait).await?;
        }
    }
    Ok(())
}

/// A quota given on the command line: a number of 0 or more, or `none` for no limit.
#[derive(Debug, Clone, Copy)]
pub struct Limit(Option<i64>);

fn limit_arg(text: &str) -> Result<Limit, String> {
    match text {
        "none" | "unlimited" => Ok(Limit(None)),
        number => number
            .parse::<i64>()
            .ok()
            .filter(|number| *number >= 0)
            .map(|n| Limit(Some(n)))
            .ok_or_else(|| format!("'{text}' is not a limit: give a number of 0 or more, or none")),
    }
}

/// What an update changed, one line per setting: `quota.instances: 30 → 5`.
fn changes(before: &NamespaceBody, after: &NamespaceBody) -> Vec<String> {
    let backend = |ns: &NamespaceBody| ns.default_backend.map_or("(server)", Backend::as_str);
    [
        ("quota.instances", limit(before.quota.instances), limit(after.quota.instances)),
        ("quota.vcpus", limit(before.quota.vcpus), limit(after.quota.vcpus)),
        ("default_backend", backend(before).to_string(), backend(after).to_string()),
    ]
    .into_iter()
    .filter(|(_, was, is)| was != is)
    .map(|(setting, was, is)| format!("{setting}: {was} → {is}"))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_is_a_count_or_none() {
        assert_eq!(limit_arg("5").unwrap().0, Some(5));
        assert_eq!(limit_arg("none").unwrap().0, None);
        assert!(limit_arg("-1").unwrap_err().contains("'-1' is not a limit"));
        assert!(limit_arg("lots").is_err());
    }
}
