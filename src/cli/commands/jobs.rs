//! `corral jobs`: list, show, follow (`wait`) and the history of the durable jobs.

use clap::Subcommand;

use super::{Ids, encode, job_result, query, show_many, split_ids};
use crate::cli::client::{Client, Outcome};
use crate::cli::output::{Column, Format, Out, cell, printable};
use crate::wire::{JobBody, JobEventBody, JobEventList};

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Lists jobs, newest first.
    ///
    /// Example: corral jobs list --status failed
    List {
        /// queued, running, succeeded or failed
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Shows jobs, with their instances and, for a failed one, its error.
    ///
    /// Example: corral jobs get 0193a5c2-7b1e-7c3d-9f00-2a6b4c8d0e1f -o yaml
    Get(Ids),
    /// Follows a job until it ends; exits 1 if it failed.
    ///
    /// Example: corral jobs wait 0193a5c2-7b1e-7c3d-9f00-2a6b4c8d0e1f
    Wait { id: String },
    /// Shows a job's history in full: each step (a Terraform command with all its output),
    /// error and outcome, oldest first.
    ///
    /// Example: corral jobs events 0193a5c2-7b1e-7c3d-9f00-2a6b4c8d0e1f
    Events { id: String },
}

const EVENT_COLUMNS: &[Column<JobEventBody>] = &[
    Column::new("SEQ", "seq", |event| event.seq.to_string()),
    Column::new("AT", "at", |event| cell(&event.at)),
    Column::new("ATTEMPT", "attempt", |event| event.attempt.to_string()),
    Column::new("KIND", "kind", |event| event.kind.clone()),
    Column::new("MESSAGE", "message", |event| event.message.clone()),
];

pub(super) const JOB_COLUMNS: &[Column<JobBody>] = &[
    Column::new("ID", "id", |job| job.id.clone()),
    Column::new("KIND", "kind", |job| job.kind.clone()),
    Column::new("STATUS", "status", |job| job.status.clone()),
    Column::new("ATTEMPTS", "attempts", |job| job.attempts.to_string()),
    Column::new("NAMESPACE", "namespace", |job| cell(&job.namespace)),
    Column::new("INSTANCES", "instances", |job| {
        let names: Vec<&str> = job.instances.iter().map(|i| i.name.as_str()).collect();
        names.join(",")
    }),
    Column::new("CREATED", "created_at", |job| cell(&job.created_at)),
    Column::new("ACTOR", "actor", |job: &JobBody| job.actor.clone()).wide(),
    Column::new("VIA", "credential", |job: &JobBody| cell(&job.credential)).wide(),
    Column::new("FINISHED", "finished_at", |job: &JobBody| cell(&job.finished_at)).wide(),
    Column::new("ERROR", "error", |job: &JobBody| cell(&job.error)).wide(),
];

pub async fn jobs(client: &Client, out: &Out, command: JobsCommand) -> Outcome<()> {
    match command {
        JobsCommand::List { status, limit } => {
            let items = client
                .list_all(&format!("/v1/jobs{}", query(&[("status", status)])), limit)
                .await?;
            out.items(&items, JOB_COLUMNS)?;
        }
        JobsCommand::Get(ids) => {
            let mut items = Vec::new();
            for id in split_ids(&ids.ids) {
                items.push(client.get(&format!("/v1/jobs/{}", encode(&id))).await?);
            }
            show_many(out, &items, JOB_COLUMNS)?;
        }
        JobsCommand::Wait { id } => {
            let job = client.get(&format!("/v1/jobs/{}", encode(&id))).await?;
            job_result(client, out, job, true).await?;
        }
        JobsCommand::Events { id } => {
            let events: JobEventList =
                client.get(&format!("/v1/jobs/{}/events", encode(&id))).await?;
            match out.format {
                // Messages keep their lines: Terraform's output reads as Terraform wrote it.
                Format::Table | Format::Wide if !out.quiet => {
                    for event in &events.items {
                        let mut lines = event.message.lines();
                        let first = lines.next().unwrap_or_default();
                        let at = cell(&event.at);
                        out.line(&printable(&format!("{at}  {}: {first}", event.kind)))?;
                        for line in lines {
                            out.line(&format!("    {}", printable(line)))?;
                        }
                    }
                }
                _ => out.items(&events.items, EVENT_COLUMNS)?,
            }
        }
    }
    Ok(())
}
