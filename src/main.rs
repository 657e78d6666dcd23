//! The `chatgpt-gateway` binary: parse the command line, set up logs, pick a mode.
//!
//! Under a Lambda runtime (`AWS_LAMBDA_RUNTIME_API` set) it serves Lambda
//! events; otherwise it runs the local HTTP server.

use std::process::ExitCode;

use chatgpt_gateway::clock::Clock;
use chatgpt_gateway::commands::tokens::{self, TokensCommand};
use chatgpt_gateway::commands::usage::{self, UsageCommand};
use chatgpt_gateway::config::{self, Settings};
use chatgpt_gateway::{lambda, logging, server};
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
        settings: Box<Settings>,
    },
    /// Manage gateway tokens: new, check, push.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Usage and limits: init (create the store), report.
    #[command(subcommand)]
    Usage(UsageCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match cli.command {
        Some(Command::Serve { settings }) => *settings,
        Some(Command::Tokens(command)) => {
            // Warnings only (e.g. from the AWS SDK), so the command's own output stays clean.
            logging::init_cli();
            return exit(
                runtime(Some(1)).block_on(tokens::run(command, &Clock::system())),
                false,
            );
        }
        Some(Command::Usage(command)) => {
            logging::init_cli();
            return exit(
                runtime(Some(1)).block_on(usage::run(command, &Clock::system())),
                false,
            );
        }
        None => cli.settings,
    };
    let in_lambda = config::in_lambda();
    let _log_guard = logging::init(settings.log_format(in_lambda), !in_lambda);
    let outcome = if in_lambda {
        runtime(settings.worker_threads).block_on(lambda::run(settings))
    } else {
        // The server's worker threads run runtimes of their own; this one
        // starts up, accepts and refreshes.
        runtime(Some(1)).block_on(server::run(settings))
    };
    exit(outcome, true)
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

fn exit<E: std::fmt::Display>(outcome: Result<(), E>, log: bool) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if log {
                tracing::error!(error = %error, "stopped");
            }
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
