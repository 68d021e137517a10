//! `corral users`: users, their roles per namespace, passwords.

use std::io::IsTerminal;

use clap::Subcommand;
use serde_json::{Value, json};

use super::{ask, encode, pairs, read_secret};
use crate::cli::client::{Client, Failure, Outcome};
use crate::cli::output::{Column, Out, field_column};

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Lists users (admins).
    List,
    Get {
        username: String,
    },
    /// Creates a user; the password is read from stdin (or asked for on a terminal).
    ///
    /// Example: echo 'a long passphrase' | corral users create dana --role team-a=operator
    Create {
        username: String,
        #[arg(long)]
        admin: bool,
        /// A role in a namespace, operator or viewer (repeatable).
        #[arg(long = "role", value_name = "NAMESPACE=ROLE")]
        roles: Vec<String>,
    },
    /// Changes a user's roles, admin flag or (with --password) password, read from stdin.
    Update {
        username: String,
        #[arg(long)]
        admin: Option<bool>,
        /// Replaces the user's roles (repeatable).
        #[arg(long = "role", value_name = "NAMESPACE=ROLE")]
        roles: Vec<String>,
        /// Read a new password from stdin; for one's own account, the current password
        /// first (asked for, or the line before the new one).
        #[arg(long)]
        password: bool,
    },
    Delete {
        username: String,
        #[arg(short, long)]
        yes: bool,
    },
}

const USER_COLUMNS: &[Column<Value>] = &[
    field_column!("USERNAME", "username"),
    field_column!("ADMIN", "admin"),
    field_column!("ROLES", "roles"),
    field_column!("CREATED", "created_at"),
];

pub async fn users(client: &Client, out: &Out, command: UsersCommand) -> Outcome<()> {
    match command {
        UsersCommand::List => {
            let list: Value = client.get("/v1/users").await?;
            out.items(list["items"].as_array().map_or(&[][..], Vec::as_slice), USER_COLUMNS)?;
        }
        UsersCommand::Get { username } => {
            out.item(
                &client.get(&format!("/v1/users/{}", encode(&username))).await?,
                USER_COLUMNS,
            )?;
        }
        UsersCommand::Create { username, admin, roles } => {
            let password = read_secret("password for the new user")?;
            let body = json!({ "username": username, "password": password, "admin": admin, "roles": pairs("role", &roles)? });
            out.item(&client.post("/v1/users", &body).await?, USER_COLUMNS)?;
        }
        UsersCommand::Update { username, admin, roles, password } => {
            let mut body = json!({});
            if let Some(admin) = admin {
                body["admin"] = json!(admin);
            }
            if !roles.is_empty() {
                body["roles"] = json!(pairs("role", &roles)?);
            }
            if password {
                let me: Value = client.get("/v1/me").await?;
                if me["username"].as_str() == Some(username.as_str()) {
                    body["current_password"] = json!(read_secret("current password")?);
                }
                body["password"] = json!(read_secret("new password")?);
            }
            let path = format!("/v1/users/{}", encode(&username));
            out.item(&client.patch(&path, &body).await?, USER_COLUMNS)?;
        }
        UsersCommand::Delete { username, yes } => {
            let confirmed = yes
                || (std::io::stdin().is_terminal() && ask(&format!("delete user {username}?"))?);
            if !confirmed {
                return Err(Failure::usage(format!(
                    "not deleting {username} without confirmation; pass --yes"
                )));
            }
            let _: Value = client.delete(&format!("/v1/users/{}", encode(&username))).await?;
            if !out.quiet {
                eprintln!("deleted user {username}");
            }
        }
    }
    Ok(())
}
