//! `corral policy`: the guardrails in force.

use serde_json::Value;

use crate::cli::client::{Client, Outcome};
use crate::cli::output::Out;

pub async fn policy(client: &Client, out: &Out) -> Outcome<()> {
    let policy: Value = client.get("/v1/policy").await?;
    match out.format {
        crate::cli::output::Format::Json => out.item(&policy, &[])?,
        _ => out.line(crate::cli::output::yaml(&policy).trim_end())?,
    }
    Ok(())
}
