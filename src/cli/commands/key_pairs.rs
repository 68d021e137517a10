//! `corral keypairs`: SSH key pairs, imported or generated (the private half written once to
//! a file only its owner can read).

use clap::Subcommand;
use serde_json::{Value, json};

use super::{encode, job_result};
use crate::cli::client::{Client, Failure, Outcome};
use crate::cli::output::{Column, Out, field_column};

#[derive(Debug, Subcommand)]
pub enum KeyPairsCommand {
    /// Lists key pairs of the namespaces you can see.
    ///
    /// Example: corral keypairs list
    List,
    /// Shows a key pair: its namespace, type, fingerprint and public key.
    ///
    /// Example: corral keypairs get deploy -o yaml
    Get { name: String },
    /// Generates a key pair and saves its private key to a new file (mode 0600); corral keeps
    /// only the public key. With --public-key-file, registers that key instead.
    ///
    /// Example: corral keypairs create deploy
    ///
    /// Example: corral keypairs create laptop --public-key-file ~/.ssh/id_ed25519.pub
    Create {
        name: String,
        #[arg(long)]
        namespace: Option<String>,
        /// An OpenSSH public key to register (ssh-ed25519 or ssh-rsa).
        #[arg(long, value_name = "FILE")]
        public_key_file: Option<std::path::PathBuf>,
        /// Where the generated private key goes (default NAME.pem); never overwritten.
        #[arg(long, value_name = "FILE")]
        private_key_file: Option<std::path::PathBuf>,
    },
    /// Forgets a key pair and deletes it in every region (a job).
    ///
    /// Example: corral keypairs delete retired-key --wait
    Delete {
        name: String,
        #[arg(long)]
        wait: bool,
    },
}

const KEY_PAIR_COLUMNS: &[Column<Value>] = &[
    field_column!("NAME", "name"),
    field_column!("NAMESPACE", "namespace"),
    field_column!("TYPE", "key_type"),
    field_column!("FINGERPRINT", "fingerprint"),
    field_column!("CREATED", "created_at"),
];

pub async fn key_pairs(client: &Client, out: &Out, command: KeyPairsCommand) -> Outcome<()> {
    match command {
        KeyPairsCommand::List => {
            let list: Value = client.get("/v1/keypairs").await?;
            out.items(list["items"].as_array().map_or(&[][..], Vec::as_slice), KEY_PAIR_COLUMNS)?;
        }
        KeyPairsCommand::Get { name } => {
            let pair: Value = client.get(&format!("/v1/keypairs/{}", encode(&name))).await?;
            out.item(&pair, KEY_PAIR_COLUMNS)?;
        }
        KeyPairsCommand::Create { name, namespace, public_key_file, private_key_file } => {
            let mut body = json!({ "name": name, "namespace": namespace });
            let mut private_file = None;
            match public_key_file {
                Some(path) => {
                    let key = std::fs::read_to_string(&path).map_err(|err| {
                        Failure::usage(format!("--public-key-file {}: {err}", path.display()))
                    })?;
                    body["public_key"] = json!(key.trim());
                }
                None => {
                    // Opened before the request, so that a key is never made with nowhere to go.
                    let path = private_key_file.unwrap_or_else(|| format!("{name}.pem").into());
                    let file = new_private_file(&path)?;
                    private_file = Some((path, file));
                }
            }
            let created: Value = match client.post("/v1/keypairs", &body).await {
                Ok(created) => created,
                Err(failure) => {
                    if let Some((path, _)) = &private_file {
                        let _ = std::fs::remove_file(path);
                    }
                    return Err(failure);
                }
            };
            if let (Some((path, mut file)), Some(key)) =
                (private_file, created["private_key"].as_str())
            {
                std::io::Write::write_all(&mut file, key.as_bytes())?;
                eprintln!(
                    "private key saved to {} (mode 0600); corral does not keep it",
                    path.display()
                );
            }
            out.item(&created, KEY_PAIR_COLUMNS)?;
        }
        KeyPairsCommand::Delete { name, wait } => {
            let job = client.delete(&format!("/v1/keypairs/{}", encode(&name))).await?;
            job_result(client, out, job, wait).await?;
        }
    }
    Ok(())
}

/// A new file only its owner can read; an existing file is never overwritten.
fn new_private_file(path: &std::path::Path) -> Outcome<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(|err| {
        Failure::usage(format!("cannot write the private key to {}: {err}", path.display()))
    })
}
