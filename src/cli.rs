//! The command line. `corral serve` runs the service and `corral migrate` prepares its
//! database; every other command is a client of the HTTP API (`cli::client`), configured by
//! flags, the environment, a `.env` file and named profiles (`cli::profile`), printing tables
//! or the API's JSON (`cli::output`), following jobs live (`cli::wait`). `corral` alone on a
//! terminal opens an interactive menu (`cli::menu`). The client never touches storage, jobs or
//! the cloud.
//!
//! Exit codes: 0 success, 1 the operation failed, 2 usage error, 3 not found, 4 not
//! authenticated or not allowed, 130 stopped waiting (Ctrl-C).

mod client;
mod commands;
mod menu;
mod output;
mod profile;
mod wait;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};
use serde_json::json;

use crate::config::Settings;
use client::{Client, Credential, Failure, Outcome};
use commands::{
    ApiKeysCommand, AuditArgs, InstancesCommand, JobsCommand, KeyPairsCommand, NamespacesCommand,
    UsersCommand,
};
use output::{Format, Out};
use profile::{ConfigFile, Environment, Profile};

const EXAMPLES: &str = "\
Examples:
  corral login --server http://corral.internal:8080 --username dana
  corral instances list --state running
  corral instances create web --ami ami-04681a1dbd79675a5 --instance-type t3.micro --storage-gb 8 --wait
  corral instances stop i-0abc,i-0def --wait
  corral instances terminate i-0abc --yes
  corral jobs wait 0193a5c2-7b1e-7c3d-9f00-2a6b4c8d0e1f
  corral audit --namespace team-a --action instance.create

Connection: --server or CORRAL_SERVER, credentials from `corral login`, CORRAL_API_KEY or
CORRAL_TOKEN; a .env file in the working directory may set them too.";

#[derive(Debug, Parser)]
#[command(
    name = "corral",
    version,
    about = "Provision and govern cloud instances through policy guardrails",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// The corral server [env: CORRAL_SERVER; default: the profile's, else http://127.0.0.1:8080]
    #[arg(long, global = true)]
    pub server: Option<String>,
    /// A named profile of the config file [env: CORRAL_PROFILE; default: default]
    #[arg(long, global = true)]
    pub profile: Option<String>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value = "table")]
    pub output: Format,
    /// Print ids only.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Options every server-side command shares.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// TOML configuration file; `CORRAL_*` variables override it.
    #[arg(long, env = "CORRAL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Database URL: sqlite://./data/corral.db (created if missing) or postgres://USER:PASSWORD@HOST/DB.
    #[arg(long, env = "CORRAL_DATABASE_URL")]
    pub database: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the HTTP API and the job workers.
    ///
    /// Example: corral serve --listen 127.0.0.1:8080 --database sqlite://./data/corral.db
    Serve {
        #[command(flatten)]
        server: ServerArgs,
        /// Address to listen on.
        #[arg(long, env = "CORRAL_LISTEN")]
        listen: Option<std::net::SocketAddr>,
        /// api: the HTTP API only; worker: jobs and the reconciler (with /health and /ready);
        /// all: both. Split roles need a shared PostgreSQL database.
        #[arg(long, env = "CORRAL_ROLE", value_enum)]
        role: Option<crate::config::ProcessRole>,
    },
    /// Applies database migrations and exits.
    ///
    /// Example: corral migrate --database postgres://corral:secret@db/corral
    Migrate {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Logs in and keeps an API key (or, with --token-only, a 30-minute token) in the profile,
    /// replacing (and revoking) the key an earlier login kept there.
    ///
    /// Example: echo "$PASSWORD" | corral login --server http://corral:8080 --username dana
    Login {
        /// Asked for on a terminal when not given; else the profile's.
        #[arg(long)]
        username: Option<String>,
        /// Keep the access token instead of creating an API key for this machine.
        #[arg(long)]
        token_only: bool,
    },
    /// Forgets the profile's credentials (and revokes its API key).
    ///
    /// Example: corral logout --profile staging
    Logout,
    /// Instances and their lifecycle.
    #[command(subcommand, visible_alias = "i")]
    Instances(InstancesCommand),
    /// The durable jobs behind every change.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// The guardrails in force.
    ///
    /// Example: corral policy -o json
    Policy,
    /// Who did what, newest first.
    ///
    /// Example: corral audit --namespace team-a --action instance.create --limit 50
    Audit(AuditArgs),
    /// Namespaces and their quotas.
    #[command(subcommand)]
    Namespaces(NamespacesCommand),
    /// Users and their roles (admins).
    #[command(subcommand)]
    Users(UsersCommand),
    /// API keys for scripts.
    #[command(subcommand)]
    ApiKeys(ApiKeysCommand),
    /// SSH key pairs instances are created with.
    #[command(subcommand)]
    Keypairs(KeyPairsCommand),
    /// Prints a shell completion script.
    ///
    /// Example: corral completions bash > ~/.local/share/bash-completion/completions/corral
    Completions { shell: clap_complete::Shell },
    /// The interactive menu (what `corral` alone opens on a terminal).
    ///
    /// Example: corral interactive
    Interactive,
}

/// How the process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Success = 0,
    Failed = 1,
    Usage = 2,
    NotFound = 3,
    Auth = 4,
    Interrupted = 130,
}

/// Runs a parsed client command line and says how the process should end. (`serve` and
/// `migrate` are the service's: `startup::serve_command` runs them.)
pub async fn run(cli: Cli) -> ExitCode {
    crate::telemetry::init("error");
    match client(cli).await {
        Ok(()) => ExitCode::Success,
        // A closed pipe (`corral … | head`): the reader has what it wanted.
        Err(failure) if failure.code == ExitCode::Success => ExitCode::Success,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            failure.code
        }
    }
}

async fn client(cli: Cli) -> Outcome<()> {
    let env = Environment::load();
    let out = Out::new(cli.output, cli.quiet);
    let command = match cli.command {
        Some(command) => command,
        None if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() => {
            Command::Interactive
        }
        None => {
            Cli::command().print_help()?;
            return Err(Failure::usage("no command given"));
        }
    };
    if let Command::Completions { shell } = command {
        // Written whole, through an error the caller sees: clap_complete panics on a closed
        // pipe (`corral completions bash | head -1`).
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "corral", &mut script);
        let mut stdout = std::io::stdout().lock();
        std::io::Write::write_all(&mut stdout, &script)?;
        std::io::Write::flush(&mut stdout)?;
        return Ok(());
    }
    if let Command::Login { username, token_only } = command {
        return login(&env, cli.server.as_deref(), cli.profile.as_deref(), username, token_only)
            .await;
    }
    let (server, credential) =
        profile::resolve(&env, cli.server.as_deref(), cli.profile.as_deref())?;
    let client = Client::new(&server, credential)?;
    match command {
        Command::Logout => logout(&env, &client, cli.profile.as_deref()).await,
        Command::Instances(command) => commands::instances(&client, &out, command).await,
        Command::Jobs(command) => commands::jobs(&client, &out, command).await,
        Command::Policy => commands::policy(&client, &out).await,
        Command::Audit(args) => commands::audit(&client, &out, args).await,
        Command::Namespaces(command) => commands::namespaces(&client, &out, command).await,
        Command::Users(command) => commands::users(&client, &out, command).await,
        Command::ApiKeys(command) => commands::api_keys(&client, &out, command).await,
        Command::Keypairs(command) => commands::key_pairs(&client, &out, command).await,
        Command::Interactive => menu::run(&client).await,
        Command::Serve { .. } | Command::Migrate { .. } => {
            Err(Failure::usage("serve and migrate are run by the corral binary itself"))
        }
        Command::Login { .. } | Command::Completions { .. } => unreachable!("handled above"),
    }
}

/// Exchanges a password (read from stdin) for a token, then for an API key named after this
/// machine unless `token_only`, and keeps it in the profile.
async fn login(
    env: &Environment,
    server_flag: Option<&str>,
    profile_flag: Option<&str>,
    username: Option<String>,
    token_only: bool,
) -> Outcome<()> {
    let path = env.config_path()?;
    let mut config = ConfigFile::read(&path)?;
    let name = env.profile_name(profile_flag);
    let existing = config.profiles.get(&name).cloned().unwrap_or_default();
    let server = profile::login_server(env, server_flag, existing.server.as_deref())?;
    let username = match username {
        Some(username) => username,
        None if std::io::stdin().is_terminal() => commands::read_line("username")?,
        None => existing.username.clone().ok_or_else(|| {
            Failure::usage(
                "give --username: there is no terminal to ask on, and the profile names none",
            )
        })?,
    };
    let username = username.as_str();
    let password = commands::read_secret("password")?;
    let anonymous = Client::new(&server, Credential::None)?;
    let form =
        [("grant_type", "password"), ("username", username), ("password", password.as_str())];
    let token: serde_json::Value =
        anonymous.send(anonymous.request(reqwest::Method::POST, "/v1/token").form(&form)).await?;
    let token = token["access_token"].as_str().unwrap_or_default().to_string();
    let mut profile = Profile {
        server: Some(server.clone()),
        username: Some(username.to_string()),
        ..Profile::default()
    };
    if token_only {
        profile.token = Some(token);
    } else {
        let with_token = Client::new(&server, Credential::Token(token))?;
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        let key_name = format!("corral CLI on {}", host.trim()).trim().to_string();
        // The password lets the key outlive the 30-minute token that asks for it.
        let request = json!({ "name": key_name, "password": password });
        let created: serde_json::Value = with_token.post("/v1/api-keys", &request).await?;
        profile.api_key = created["key"].as_str().map(str::to_string);
    }
    config.profiles.insert(name.clone(), profile);
    config.write(&path)?;
    // The key an earlier login kept goes once the new credential is saved: logging in again
    // replaces it rather than piling keys up. It is revoked at the server it was made for.
    if let (Some(old), Some(old_server)) = (existing.api_key, existing.server) {
        let old_client = Client::new(&old_server, Credential::ApiKey(old.clone()))?;
        if revoke_own_key(&old_client, &old).await.unwrap_or(false) {
            eprintln!("revoked the API key the profile kept before");
        }
    }
    eprintln!("logged in to {server} as {username}; profile '{name}' saved in {}", path.display());
    Ok(())
}

/// Revokes the profile's API key (if the server still accepts it) and forgets its credentials.
async fn logout(env: &Environment, client: &Client, profile_flag: Option<&str>) -> Outcome<()> {
    let path = env.config_path()?;
    let mut config = ConfigFile::read(&path)?;
    let name = env.profile_name(profile_flag);
    let Some(profile) = config.profiles.get_mut(&name) else {
        return Err(Failure::usage(format!("no profile named '{name}'")));
    };
    if let Some(key) = profile.api_key.take() {
        revoke_own_key(client, &key).await?;
    }
    profile.token = None;
    config.write(&path)?;
    eprintln!("logged out of profile '{name}'");
    Ok(())
}

/// Revokes `key` through `client` if the server still lists it among the caller's keys;
/// answers whether it did.
async fn revoke_own_key(client: &Client, key: &str) -> Outcome<bool> {
    let prefix: String = key.split('_').take(2).collect::<Vec<_>>().join("_");
    let Ok(keys) = client.get::<serde_json::Value>("/v1/api-keys").await else { return Ok(false) };
    let mine =
        keys["items"].as_array().into_iter().flatten().find(|k| k["prefix"] == prefix.as_str());
    let Some(id) = mine.and_then(|k| k["id"].as_str()) else { return Ok(false) };
    let _: serde_json::Value = client.delete(&format!("/v1/api-keys/{id}")).await?;
    Ok(true)
}

impl ServerArgs {
    /// The settings these flags, the configuration file and the environment make.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let mut settings = Settings::load(self.config.as_deref())?;
        if let Some(database) = &self.database {
            settings.database_url = database.clone();
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// `text` split into words as a shell would: single and double quotes group, and are
    /// dropped.
    fn shell_words(text: &str) -> Vec<String> {
        let (mut words, mut word, mut quote, mut in_word) =
            (Vec::new(), String::new(), None, false);
        for c in text.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), c) => word.push(c),
                (None, '\'' | '"') => {
                    quote = Some(c);
                    in_word = true;
                }
                (None, c) if c.is_whitespace() => {
                    if in_word {
                        words.push(std::mem::take(&mut word));
                        in_word = false;
                    }
                }
                (None, c) => {
                    word.push(c);
                    in_word = true;
                }
            }
        }
        if in_word {
            words.push(word);
        }
        words
    }

    /// Every subcommand says what it does, and shows at least one example, each on a line of
    /// its own (`Example: …`), that pastes as it is: clap parses it (after a `|`, the part
    /// that runs corral; before a `>`, the command). No placeholders (`<id>`: a shell reads a
    /// redirection), and no `Examples:` block, whose lines clap would join into one.
    #[test]
    fn every_subcommand_has_a_description_and_examples_that_parse() {
        fn walk(command: &clap::Command, path: &mut Vec<String>, problems: &mut Vec<String>) {
            for sub in command.get_subcommands().filter(|sub| sub.get_name() != "help") {
                path.push(sub.get_name().to_string());
                let name = path.join(" ");
                if sub.get_about().is_none_or(|about| about.to_string().trim().is_empty()) {
                    problems.push(format!("corral {name}: no description"));
                }
                if !sub.has_subcommands() {
                    let long =
                        sub.get_long_about().map(|about| about.to_string()).unwrap_or_default();
                    let examples: Vec<&str> = long
                        .lines()
                        .filter_map(|line| line.trim().strip_prefix("Example: "))
                        .map(|line| line.rsplit("| ").next().unwrap_or(line))
                        .collect();
                    if examples.is_empty() {
                        problems.push(format!("corral {name}: no 'Example: ' line in its help"));
                    }
                    if long.contains("Examples:") {
                        problems.push(format!("corral {name}: an 'Examples:' block is joined"));
                    }
                    for example in examples {
                        let command = example.split(" > ").next().unwrap_or(example);
                        let words = shell_words(command);
                        if command.contains('<') || command.contains('#') {
                            problems.push(format!("corral {name}: '{example}' has a placeholder"));
                        } else if words.first().map(String::as_str) != Some("corral") {
                            problems
                                .push(format!("corral {name}: '{example}' does not run corral"));
                        } else if let Err(err) = Cli::command().try_get_matches_from(&words) {
                            problems.push(format!("corral {name}: '{example}': {}", err.kind()));
                        }
                    }
                }
                walk(sub, path, problems);
                path.pop();
            }
        }
        let mut problems = Vec::new();
        walk(&Cli::command(), &mut Vec::new(), &mut problems);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn shell_words_group_quotes() {
        assert_eq!(shell_words(r#"a 'b c' "d" e'f'"#), ["a", "b c", "d", "ef"]);
    }
}
