//! The `adaptive-eds` command line: parse, wire the pipeline, handle shutdown.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};

/// An xDS control plane that weights Envoy endpoints by their real load.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "ADAPTIVE_EDS_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve xDS and the admin endpoints.
    Serve {
        /// The YAML config file (watched for changes).
        #[arg(long, short, env = "ADAPTIVE_EDS_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file: exit 0 if valid, 1 with every problem listed.
    Check {
        /// The YAML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn check(config: &std::path::Path) -> ExitCode {
    match adaptive_eds::config::load(config) {
        Ok(valid) => {
            println!(
                "{}: valid ({} clusters, {} endpoints)",
                config.display(),
                valid.clusters.len(),
                valid.clusters.values().map(Vec::len).sum::<usize>()
            );
            // Valid, so exit 0; but say what will probably not work as meant.
            for warning in valid.warnings() {
                eprintln!(
                    "{}: {}: warning: {}",
                    config.display(),
                    warning.field,
                    warning.message
                );
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutdown requested");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Serve { config } => {
            init_logging(cli.log_format);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("cannot start the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(adaptive_eds::server::serve(
                config,
                shutdown_signal(),
                |_| {},
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    eprintln!("adaptive-eds: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
