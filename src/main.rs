//! The `corral` binary: parses the command line and runs it, as the service (`serve`,
//! `migrate`: `startup`) or as a client of the API (everything else: `cli`).

use clap::Parser;
use corral::cli::{Cli, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Some(command @ (Command::Serve { .. } | Command::Migrate { .. })) => {
            match corral::startup::serve_command(command).await {
                Ok(()) => 0,
                Err(err) => {
                    eprintln!("error: {err:#}");
                    1
                }
            }
        }
        _ => corral::cli::run(cli).await as u8,
    };
    std::process::ExitCode::from(code)
}
