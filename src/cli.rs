//! The command line: `corral serve` runs the service, `corral migrate` prepares the database.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::startup::Application;
use crate::storage::Store;

#[derive(Debug, Parser)]
#[command(
    name = "corral",
    version,
    about = "Provision and govern cloud instances through policy guardrails"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
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
        role: Option<crate::config::Role>,
    },
    /// Applies database migrations and exits.
    Migrate {
        #[command(flatten)]
        server: ServerArgs,
    },
}

impl ServerArgs {
    fn settings(&self) -> anyhow::Result<Settings> {
        let mut settings = Settings::load(self.config.as_deref())?;
        if let Some(database) = &self.database {
            settings.database_url = database.clone();
        }
        Ok(settings)
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { server, listen, role } => {
            let mut settings = server.settings()?;
            if let Some(listen) = listen {
                settings.listen = listen;
            }
            if let Some(role) = role {
                settings.role = role;
            }
            let app = Application::build(settings).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            app.run_until_stopped(shutdown).await
        }
        Command::Migrate { server } => {
            let settings = server.settings()?;
            Store::connect(&settings.database_url).await?;
            tracing::info!(
                database = %crate::storage::redact_url(&settings.database_url),
                "migrations applied"
            );
            Ok(())
        }
    }
}

/// Cancels `shutdown` on SIGINT (Ctrl-C) or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
    tracing::info!("shutdown requested: finishing running jobs");
    shutdown.cancel();
}
