//! The `chatgpt-gateway` binary: parse the command line, set up logs, pick a mode.

use std::process::ExitCode;

use chatgpt_gateway::config::Settings;
use chatgpt_gateway::startup::{self, Mode};
use chatgpt_gateway::{server, telemetry};
use clap::{Parser, Subcommand};

/// An authenticated, streaming OpenAI API gateway.
#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Subcommand)]
enum Command {
    /// Run the local HTTP server (the default).
    Serve {
        #[command(flatten)]
        settings: Settings,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match cli.command {
        Some(Command::Serve { settings }) => settings,
        None => cli.settings,
    };
    telemetry::init(settings.log_format == "json");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(serve(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> Result<(), String> {
    let gateway = startup::build(&settings, Mode::Local)
        .await
        .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%address, "listening");
    server::serve(
        listener,
        gateway,
        server::shutdown_signal(),
        settings.shutdown_grace(),
    )
    .await;
    Ok(())
}
