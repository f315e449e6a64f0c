//! Command-line arguments and dispatch to the subcommands.

mod bench;
mod emulate;
mod matrix;
mod simulate;

use clap::{Parser, Subcommand, ValueEnum};

/// Lab tools for adaptive-eds: emulate a fleet of backends or simulate Envoy balancing.
#[derive(Debug, Parser)]
#[command(name = "lab", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run every pod of a fleet as an HTTP server on 127.0.0.1.
    Emulate(emulate::EmulateArgs),
    /// Simulate Envoy clients balancing over a fleet and print a markdown table.
    Simulate(simulate::SimulateArgs),
    /// Compare balancing policies through a real Envoy in front of the emulated fleet.
    Bench(bench::BenchArgs),
    /// Run `lab bench` over a matrix of loads, pipelines, Envoy counts and scenarios, and write
    /// the tables and plots into one folder.
    Matrix(matrix::MatrixArgs),
}

impl Cli {
    /// Runs the chosen subcommand.
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Emulate(args) => emulate::run(args),
            Command::Simulate(args) => simulate::run(args),
            Command::Bench(args) => bench::run(args),
            Command::Matrix(args) => matrix::run(args),
        }
    }
}

/// Parses a human duration such as `60s` or `1m30s` for clap.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

/// A flag that is on or off (`--error-signal on|off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// On.
    On,
    /// Off.
    Off,
}

/// Waits for Ctrl-C or SIGTERM and names it; the caller's early return drops (stops) every process.
pub async fn stop_signal() -> &'static str {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted (Ctrl-C)",
        () = terminate => "terminated (SIGTERM)",
    }
}
