//! `corral api-keys`: keys for scripts, shown once when made.

use clap::Subcommand;
use serde_json::{Value, json};

use super::encode;
use crate::cli::client::{Client, Outcome};
use crate::cli::output::{Column, Out, field_column, scalar};

#[derive(Debug, Subcommand)]
pub enum ApiKeysCommand {
    /// Lists API keys (yours; everyone's for admins).
    ///
    /// Example: corral api-keys list -o wide
    List,
    /// Creates an API key acting as you; the key is printed this once.
    ///
    /// Example: corral api-keys create ci --expires-at 2027-06-30T00:00:00Z
    Create {
        name: String,
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// Revokes an API key at once.
    ///
    /// Example: corral api-keys revoke 0193a5c2-7b1e-7c3d-9f00-2a6b4c8d0e1f
    Revoke { id: String },
}

const API_KEY_COLUMNS: &[Column<Value>] = &[
    field_column!("ID", "id"),
    field_column!("PREFIX", "prefix"),
    field_column!("NAME", "name"),
    field_column!("USER", "username"),
    field_column!("EXPIRES", "expires_at"),
    field_column!("REVOKED", "revoked_at"),
    field_column!("KEY", "key"),
];

pub async fn api_keys(client: &Client, out: &Out, command: ApiKeysCommand) -> Outcome<()> {
    match command {
        ApiKeysCommand::List => {
            let list: Value = client.get("/v1/api-keys").await?;
            out.items(list["items"].as_array().map_or(&[][..], Vec::as_slice), API_KEY_COLUMNS)?;
        }
        ApiKeysCommand::Create { name, expires_at } => {
            let body = json!({ "name": name, "expires_at": expires_at });
            let created: Value = client.post("/v1/api-keys", &body).await?;
            if out.quiet {
                out.line(&scalar(&created["key"]))?;
            } else {
                out.item(&created, API_KEY_COLUMNS)?;
                eprintln!("the key is shown this once: keep it now");
            }
        }
        ApiKeysCommand::Revoke { id } => {
            let revoked: Value = client.delete(&format!("/v1/api-keys/{}", encode(&id))).await?;
            out.item(&revoked, API_KEY_COLUMNS)?;
        }
    }
    Ok(())
}
