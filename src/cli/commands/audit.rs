//! `corral audit`: who did what, newest first, filtered and paged.

use clap::Args;

use super::{compact, query};
use crate::cli::client::{Client, Outcome};
use crate::cli::output::{Column, Out, cell};
use crate::wire::{AuditEventBody, AuditPage};

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[arg(long)]
    pub namespace: Option<String>,
    /// A username (or `system`): everything the user did, with any of their keys or tokens.
    #[arg(long)]
    pub actor: Option<String>,
    /// e.g. instance.create, instance.state, user.update
    #[arg(long)]
    pub action: Option<String>,
    #[arg(long)]
    pub target: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub page: i64,
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
}

const AUDIT_COLUMNS: &[Column<AuditEventBody>] = &[
    Column::new("ID", "id", |event| event.id.to_string()),
    Column::new("TIME", "timestamp", |event| cell(&event.timestamp)),
    Column::new("ACTOR", "actor", |event| event.actor.clone()),
    Column::new("VIA", "credential", |event: &AuditEventBody| cell(&event.credential)).wide(),
    Column::new("ACTION", "action", |event| event.action.clone()),
    Column::new("TARGET", "target", |event| event.target.clone()),
    Column::new("NAMESPACE", "namespace", |event| cell(&event.namespace)),
    Column::new("OLD", "old_value", |event: &AuditEventBody| compact(&event.old_value)).wide(),
    Column::new("NEW", "new_value", |event: &AuditEventBody| compact(&event.new_value)).wide(),
    Column::new("REQUEST", "request_id", |event: &AuditEventBody| cell(&event.request_id)).wide(),
];

pub async fn audit(client: &Client, out: &Out, args: AuditArgs) -> Outcome<()> {
    let path = format!(
        "/v1/audit{}",
        query(&[
            ("page", Some(args.page.to_string())),
            ("limit", Some(args.limit.to_string())),
            ("namespace", args.namespace),
            ("actor", args.actor),
            ("action", args.action),
            ("target", args.target),
        ])
    );
    let page: AuditPage = client.get(&path).await?;
    out.items(&page.logs, AUDIT_COLUMNS)?;
    if !out.quiet
        && matches!(
            out.format,
            crate::cli::output::Format::Table | crate::cli::output::Format::Wide
        )
    {
        let total = page.total;
        let pages = (total + args.limit - 1) / args.limit.max(1);
        eprintln!("page {} of {pages} ({total} events)", args.page);
    }
    Ok(())
}
