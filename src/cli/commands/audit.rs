//! `corral audit`: who did what, newest first, filtered and paged.

use clap::Args;

use super::{compact, query};
use crate::cli::client::{Client, Outcome};
use crate::cli::output::{Column, Out};

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[arg(long)]
    pub namespace: Option<String>,
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

const AUDIT_COLUMNS: &[Column] = &[
    Column::field("ID", "id"),
    Column::field("TIME", "timestamp"),
    Column::field("ACTOR", "actor"),
    Column::field("ACTION", "action"),
    Column::field("TARGET", "target"),
    Column::field("NAMESPACE", "namespace"),
    Column::computed("OLD", "old_value", |event| compact(&event["old_value"])).wide(),
    Column::computed("NEW", "new_value", |event| compact(&event["new_value"])).wide(),
    Column::field("REQUEST", "request_id").wide(),
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
    let page = client.get(&path).await?;
    let logs = page["logs"].as_array().cloned().unwrap_or_default();
    out.items(&logs, AUDIT_COLUMNS)?;
    if !out.quiet
        && matches!(
            out.format,
            crate::cli::output::Format::Table | crate::cli::output::Format::Wide
        )
    {
        let total = page["total"].as_i64().unwrap_or_default();
        let pages = (total + args.limit - 1) / args.limit.max(1);
        eprintln!("page {} of {pages} ({total} events)", args.page);
    }
    Ok(())
}
