//! `lab emulate`: serve a fleet until Ctrl-C or the given duration.

use anyhow::Context;
use clap::Args;
use lab::emulator::{run_scenario, start_fleet};
use lab::fleet::{load_fleet, load_scenario};
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `lab emulate`.
#[derive(Debug, Args)]
pub struct EmulateArgs {
    /// Fleet file (YAML).
    #[arg(long)]
    fleet: PathBuf,
    /// Port of the first pod; pod i listens on base-port + i (0 picks free ports).
    #[arg(long, default_value_t = 19001)]
    base_port: u16,
    /// Stop after this long (for example `60s`); runs until Ctrl-C when absent.
    #[arg(long, value_parser = super::parse_duration)]
    duration: Option<Duration>,
    /// Optional scenario file whose slowdown events are applied over time.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Time allowed for open requests to finish when stopping.
    #[arg(long, default_value = "5s", value_parser = super::parse_duration)]
    grace: Duration,
}

/// Runs the emulator on a multi-threaded tokio runtime.
pub fn run(args: EmulateArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(emulate(args))
}

async fn emulate(args: EmulateArgs) -> anyhow::Result<()> {
    let fleet = load_fleet(&args.fleet).context("loading the fleet")?;
    let scenario = args
        .scenario
        .as_deref()
        .map(|path| load_scenario(path, &fleet))
        .transpose()
        .context("loading the scenario")?;
    let running = start_fleet(&fleet, args.base_port)
        .await
        .context("starting the fleet")?;
    for node in running.nodes() {
        println!("{}\thttp://{}", node.node.name(), node.address);
    }
    tracing::info!(
        pods = running.nodes().len(),
        orca = fleet.orca,
        "fleet is serving"
    );
    let scenario_task = scenario.map(|scenario| {
        tokio::spawn(run_scenario(
            running.nodes().to_vec(),
            scenario,
            tokio::time::Instant::now(),
        ))
    });
    wait_for_stop(args.duration).await?;
    if let Some(task) = scenario_task {
        task.abort();
    }
    running.shutdown(args.grace).await;
    tracing::info!("fleet stopped");
    Ok(())
}

async fn wait_for_stop(duration: Option<Duration>) -> anyhow::Result<()> {
    let deadline = async {
        match duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        signal = tokio::signal::ctrl_c() => signal.context("listening for Ctrl-C"),
        () = deadline => Ok(()),
    }
}
