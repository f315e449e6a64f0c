//! `lab simulate`: run the discrete-event simulator and print a markdown table.

use super::Switch;
use adaptive_eds::weighting::{Algorithm, Objective, Params};
use anyhow::Context;
use clap::{Args, ValueEnum};
use lab::bench::capacity::OfferedLoad;
use lab::bench::pipeline::PipelinePreset;
use lab::fleet::{load_fleet, load_scenario, Fleet, Scenario};
use lab::sim::{
    render_markdown, simulate, EngineWeights, EqualWeights, InverseCpuPerRequest, KnownCapacity,
    Policy, Scrape, SimConfig, TimedReport, WeightProvider,
};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Which example weight provider feeds EDS weights to the simulated clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
enum Weights {
    /// Every weight stays 1.
    None,
    /// Example provider: cores * rps / cpu from (delayed) samples.
    InverseCpu,
    /// Oracle: true capacity from the fleet file.
    KnownCapacity,
    /// The real engine: `distance`.
    Distance,
    /// The real engine: `capacity` with the `balance` objective.
    CapacityBalance,
    /// The real engine: `capacity` with the `latency` objective.
    CapacityLatency,
}

/// Arguments of `lab simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Fleet file (YAML).
    #[arg(long)]
    fleet: PathBuf,
    /// Optional scenario file (slowdowns and load changes over time).
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Balancer(s) to compare, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "least_request")]
    policy: Vec<Policy>,
    /// Base offered load, requests per second (default 1000; not with --load).
    #[arg(long, conflicts_with = "load")]
    rps: Option<f64>,
    /// Base offered load as a fraction of the fleet's capacity (cores / mean service time,
    /// after --time-scale), as `lab bench --load`.
    #[arg(long)]
    load: Option<f64>,
    /// Multiplies every service time (default 1; with --load, the scale `lab bench --load`
    /// picks, so the same cell is simulated).
    #[arg(long)]
    time_scale: Option<f64>,
    /// Simulated time, such as `60s`.
    #[arg(long, default_value = "60s", value_parser = super::parse_duration)]
    duration: Duration,
    /// Start of the run left out of the latency figures (the weights converge), as `lab bench`
    /// does with its warm-up.
    #[arg(long, default_value = "0s", value_parser = super::parse_duration)]
    warmup: Duration,
    /// Random seed: the same seed gives the same result.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of Envoy clients (`--envoys`, as in `lab bench`).
    #[arg(long, visible_alias = "envoys", default_value_t = 10)]
    clients: u32,
    /// The metric pipeline of `lab bench --pipeline`: samples are rates over a window of
    /// scrapes (fast: 1 s scrapes, 5 s window, tick 1 s; prod and stream-prod: 15 s scrapes,
    /// 1 m window, tick 10 s; lrs: 1 s reports, 2 s window, tick 1 s). Not with --tick.
    #[arg(long, value_enum, conflicts_with = "tick")]
    pipeline: Option<PipelinePreset>,
    /// EDS weight provider(s), comma separated (ignored by cswrr, which uses ORCA).
    #[arg(long, value_delimiter = ',', default_value = "none")]
    weights: Vec<Weights>,
    /// How often the weight provider runs (default 1s).
    #[arg(long, value_parser = super::parse_duration)]
    tick: Option<Duration>,
    /// Age of the CPU samples the weight provider sees.
    #[arg(long, default_value = "0s", value_parser = super::parse_duration)]
    metrics_delay: Duration,
    /// CSWRR blackout period.
    #[arg(long, default_value = "10s", value_parser = super::parse_duration)]
    blackout: Duration,
    /// LEAST_REQUEST active_request_bias.
    #[arg(long, default_value_t = 1.0)]
    active_request_bias: f64,
    /// Length of the windows of the p99-over-time table.
    #[arg(long, default_value = "5s", value_parser = super::parse_duration)]
    window: Duration,
    /// Engine `probe_share` for the engine providers (default: the engine's own default).
    #[arg(long)]
    probe_share: Option<f64>,
    /// Engine `surge_headroom` for the engine providers (default: the engine's own default).
    #[arg(long)]
    surge_headroom: Option<f64>,
    /// Whether the engine providers see each endpoint's error rate (as an `error_query` or
    /// load reports give it) or CPU and request rates only.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    error_signal: Switch,
    /// The endpoints' ORCA reports also carry `eps` (errors per second), which CSWRR turns
    /// into a penalty (`error_utilization_penalty` 1.0, Envoy's default).
    #[arg(long)]
    orca_eps: bool,
}

fn provider(
    weights: Weights,
    fleet: &Fleet,
    args: &SimulateArgs,
) -> (Box<dyn WeightProvider>, &'static str) {
    let sample_age = args.metrics_delay;
    let engine = |algorithm, objective| -> Box<dyn WeightProvider> {
        let defaults = Params::default();
        let params = Params {
            algorithm,
            objective,
            probe_share: args.probe_share.unwrap_or(defaults.probe_share),
            surge_headroom: args.surge_headroom.unwrap_or(defaults.surge_headroom),
            ..defaults
        };
        Box::new(
            EngineWeights::new(fleet.pods().len(), params, sample_age)
                .with_error_signal(args.error_signal == Switch::On),
        )
    };
    match weights {
        Weights::Distance => (engine(Algorithm::Distance, Objective::Latency), "distance"),
        Weights::CapacityBalance => (
            engine(Algorithm::Capacity, Objective::Balance),
            "capacity_balance",
        ),
        Weights::CapacityLatency => (
            engine(Algorithm::Capacity, Objective::Latency),
            "capacity_latency",
        ),
        Weights::None => (Box::new(EqualWeights), "none"),
        Weights::InverseCpu => (Box::new(InverseCpuPerRequest), "inverse_cpu"),
        Weights::KnownCapacity => {
            let pods = fleet.pods();
            let capacities = pods
                .iter()
                .map(|pod| (pod.cores, pod.service_time.overall_mean_ms()));
            (Box::new(KnownCapacity::new(capacities)), "known_capacity")
        }
    }
}

/// The sampling a bench pipeline stands for: tick and scrape (interval, rate window). Load
/// reports are modelled as 1 s scrapes over the 2 reports the server's window keeps.
fn pipeline_sampling(preset: PipelinePreset) -> (Duration, Scrape) {
    let pipeline = preset.pipeline();
    let (interval, window) = match preset {
        PipelinePreset::Lrs => (pipeline.report_seconds, 2 * pipeline.report_seconds),
        _ => (pipeline.scrape_seconds, pipeline.rate_window),
    };
    (
        Duration::from_secs(pipeline.tick_seconds),
        Scrape {
            interval: Duration::from_secs(interval),
            rate_window: Duration::from_secs(window),
        },
    )
}

fn config(args: &SimulateArgs, policy: Policy, rate: f64) -> SimConfig {
    let (tick, scrape) = match args.pipeline {
        Some(preset) => {
            let (tick, scrape) = pipeline_sampling(preset);
            (tick, Some(scrape))
        }
        None => (args.tick.unwrap_or(Duration::from_secs(1)), None),
    };
    let mut config = SimConfig {
        policy,
        clients: args.clients,
        requests_per_second: rate,
        duration: args.duration,
        warmup: args.warmup,
        seed: args.seed,
        tick,
        metrics_delay: args.metrics_delay,
        scrape,
        report_window: args.window,
        ..SimConfig::default()
    };
    config.cswrr.blackout_period = args.blackout;
    config.least_request.active_request_bias = args.active_request_bias;
    config
}

/// Runs every policy and weight-provider combination asked for and prints the tables.
pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let unscaled = load_fleet(&args.fleet).context("loading the fleet")?;
    let scenario = match &args.scenario {
        Some(path) => load_scenario(path, &unscaled).context("loading the scenario")?,
        None => Scenario {
            name: "steady".to_owned(),
            events: Vec::new(),
        },
    };
    let offered = OfferedLoad::resolve(
        &unscaled,
        args.rps,
        args.load,
        args.time_scale,
        scenario.peak_load_factor(),
    )?;
    let mut fleet = unscaled.scaled(offered.time_scale);
    fleet.orca_eps |= args.orca_eps;
    let mut runs = Vec::new();
    for &policy in &args.policy {
        // CSWRR ignores EDS weights, so one run is enough for it.
        let providers: &[Weights] = if policy == Policy::Cswrr {
            &[Weights::None]
        } else {
            &args.weights
        };
        for &weights in providers {
            let (mut provider, name) = provider(weights, &fleet, &args);
            let started = Instant::now();
            let report = simulate(
                &fleet,
                &scenario,
                &config(&args, policy, offered.rate),
                provider.as_mut(),
                name,
            )
            .with_context(|| format!("simulating {}", policy.name()))?;
            let wall = started.elapsed();
            tracing::info!(
                policy = policy.name(),
                weights = name,
                wall_ms = wall.as_millis() as u64,
                "run finished"
            );
            runs.push(TimedReport { report, wall });
        }
    }
    let pipeline = args.pipeline.map_or(String::new(), |preset| {
        let (tick, scrape) = pipeline_sampling(preset);
        format!(
            ", pipeline `{}` ({:?} scrapes, rates over {:?}, tick {:?})",
            preset.name(),
            scrape.interval,
            scrape.rate_window,
            tick
        )
    });
    println!(
        "Fleet {} ({} pods), {} clients, {:?} simulated, seed {}{pipeline}. {}\n",
        args.fleet.display(),
        fleet.pods().len(),
        args.clients,
        args.duration,
        args.seed,
        offered.summary(),
    );
    print!("{}", render_markdown(&runs));
    Ok(())
}
