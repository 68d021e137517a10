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
    ///
    /// Example: corral users list -q
    List,
    /// Shows a user with their roles.
    ///
    /// Example: corral users get dana
    Get { username: String },
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
    /// Changes a user's roles, admin flag or (with --password) password, read from stdin;
    /// what it does not name stays.
    ///
    /// Example: corral users update dana --role team-b=viewer --remove-role team-a
    Update {
        username: String,
        #[arg(long)]
        admin: Option<bool>,
        /// Gives the user a role in a namespace (repeatable); other roles stay.
        #[arg(long = "role", value_name = "NAMESPACE=ROLE")]
        roles: Vec<String>,
        /// Takes the user's role in a namespace away (repeatable).
        #[arg(long = "remove-role", value_name = "NAMESPACE")]
        remove_roles: Vec<String>,
        /// Read a new password from stdin; for one's own account, the current password
        /// first (asked for, or the line before the new one).
        #[arg(long)]
        password: bool,
    },
    /// Deletes a user with their roles and API keys (admins), after asking (or --yes).
    ///
    /// Example: corral users delete former-colleague
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
        UsersCommand::Update { username, admin, roles, remove_roles, password } => {
            let mut body = json!({});
            if let Some(admin) = admin {
                body["admin"] = json!(admin);
            }
            let mut changes: serde_json::Map<String, Value> =
                pairs("role", &roles)?.into_iter().map(|(ns, role)| (ns, json!(role))).collect();
            for namespace in remove_roles {
                if changes.insert(namespace.clone(), Value::Null).is_some_and(|was| !was.is_null())
                {
                    return Err(Failure::usage(format!(
                        "--role and --remove-role both name '{namespace}'"
                    )));
                }
            }
            if !changes.is_empty() {
                body["roles"] = Value::Object(changes);
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
