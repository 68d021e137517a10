//! The `corral` binary: parses the command line and runs it.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = corral::cli::Cli::parse();
    let code = corral::cli::run(cli).await;
    std::process::ExitCode::from(code as u8)
}
