//! `corral namespaces`: namespaces, their quotas and default backend, and ending every
//! instance of one.

use clap::Subcommand;
use serde_json::json;

use super::{confirm, encode, job_result, limit, require_terminal};
use crate::cli::client::{Client, Outcome};
use crate::cli::output::{Column, Out, cell};
use crate::domain::Backend;
use crate::wire::{InstanceBody, NamespaceBody, NamespaceList};

#[derive(Debug, Subcommand)]
pub enum NamespacesCommand {
    /// Lists namespaces with their quotas and use.
    List,
    Get {
        name: String,
    },
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
    /// Sets a namespace's quotas (an omitted one becomes unlimited) and, with
    /// --default-backend only, keeps the quotas and changes the default backend.
    ///
    /// Example: corral namespaces update team-a --default-backend terraform
    Update {
        name: String,
        #[arg(long)]
        max_instances: Option<i64>,
        #[arg(long)]
        max_vcpus: Option<i64>,
        /// Backend of create requests that name none; "server" follows the server's default.
        #[arg(long, value_parser = ["aws", "terraform", "server"])]
        default_backend: Option<String>,
    },
    /// Terminates every instance of a namespace after showing them and asking (or --yes).
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
            let quota = json!({ "instances": max_instances, "vcpus": max_vcpus });
            let body = match default_backend.as_deref() {
                None => json!({ "quota": quota }),
                Some(backend) => {
                    let backend = (backend != "server").then_some(backend);
                    if max_instances.is_none() && max_vcpus.is_none() {
                        json!({ "default_backend": backend })
                    } else {
                        json!({ "quota": quota, "default_backend": backend })
                    }
                }
            };
            let path = format!("/v1/namespaces/{}", encode(&name));
            out.item(&client.patch(&path, &body).await?, NAMESPACE_COLUMNS)?;
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
