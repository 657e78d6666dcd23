//! The `chatgpt-gateway` binary: parse the command line, set up logs, pick a mode.
//!
//! Under a Lambda runtime (`AWS_LAMBDA_RUNTIME_API` set) it serves Lambda
//! events; otherwise it runs the local HTTP server.

use std::process::ExitCode;

use chatgpt_gateway::cli::{self, TokensCommand};
use chatgpt_gateway::config::Settings;
use chatgpt_gateway::lambda::{self, InvokeMode};
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
    /// Manage gateway tokens: new, check, push.
    #[command(subcommand)]
    Tokens(TokensCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match cli.command {
        Some(Command::Serve { settings }) => settings,
        Some(Command::Tokens(command)) => return run_tokens(command),
        None => cli.settings,
    };
    let in_lambda = lambda::in_lambda();
    let json = settings
        .log_format
        .as_deref()
        .map_or(in_lambda, |f| f == "json");
    let _log_guard = telemetry::init(json, !in_lambda);
    let runtime = runtime(settings.worker_threads);
    let outcome = if in_lambda {
        runtime.block_on(run_lambda(settings))
    } else {
        runtime.block_on(serve(settings))
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!(error = %message, "stopped");
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// One worker thread runs everything on the current thread: no cross-thread
/// wake-ups between a client connection and its upstream connection.
fn runtime(worker_threads: Option<u16>) -> tokio::runtime::Runtime {
    let mut builder = match worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(usize::from(n));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().build().expect("tokio runtime")
}

fn run_tokens(command: TokensCommand) -> ExitCode {
    // Warnings only (e.g. from the AWS SDK), so the command's own output stays clean.
    telemetry::init_cli();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(cli::run(command)) {
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

async fn run_lambda(settings: Settings) -> Result<(), String> {
    let mode = InvokeMode::from_env()?;
    let gateway = startup::build(&settings, Mode::Lambda)
        .await
        .map_err(|e| e.to_string())?;
    gateway.proxy().warm_up().await;
    lambda::run(gateway, mode).await.map_err(|e| e.to_string())
}
