//! `lab bench`: the emulated fleet, VictoriaMetrics, adaptive-eds and a real Envoy, under open-loop load.

mod counters;
mod rolling;

use super::Switch;
use anyhow::{bail, Context};
use clap::Args;
use counters::{fleet_counters, Counters, Stopped};
use lab::bench::capacity::{OfferedLoad, MACHINE_RPS};
use lab::bench::loadgen::{drive, LoadPlan};
use lab::bench::pipeline::{Pipeline, PipelinePreset};
use lab::bench::plot::{series_from_report, write_plots, PlotSeries};
use lab::bench::process::{
    cpu_seconds, free_port, get_ok, http, machine_busy_seconds, wait_for, Process,
};
use lab::bench::report::{render_markdown, PodOutcome, ProcessCpu, RunOutcome};
use lab::bench::setup::{
    envoy_bootstrap, pod_nodes, scrape_config, server_config, BenchPolicy, EnvoyExtras,
    EnvoyReports, MetricsPath, MetricsSource, ServerSettings, CLUSTER,
};
use lab::bench::utilization::busiest_per_window;
use lab::fleet::{load_fleet, load_scenario, Action, Pod, RestartNode, Scenario};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Arguments of `lab bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Fleet file (YAML).
    #[arg(long)]
    fleet: PathBuf,
    /// Optional scenario (slowdowns applied through the pods' admin endpoint, load factors by the generator).
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Policies to compare, comma separated (default: all six).
    #[arg(long, value_delimiter = ',')]
    policy: Vec<BenchPolicy>,
    /// Base offered load through Envoy, requests per second (default 1000; not with --load).
    #[arg(long, conflicts_with = "load")]
    rate: Option<f64>,
    /// Base offered load as a fraction of the fleet's capacity (sum over pods of cores / mean
    /// service time, after --time-scale), e.g. 0.7; replaces --rate.
    #[arg(long)]
    load: Option<f64>,
    /// Multiplies every service time, so a lower rate keeps the fleet's utilization pattern
    /// (default 1; with --load, the smallest of 1, 2, 5, 10, 20, ... at which the whole
    /// capacity is within the ~1,500 rps this machine drives through Envoy).
    #[arg(long)]
    time_scale: Option<f64>,
    /// Warm-up excluded from the figures (weights converge).
    #[arg(long, default_value = "25s", value_parser = super::parse_duration)]
    warmup: Duration,
    /// Measured time per policy.
    #[arg(long, default_value = "40s", value_parser = super::parse_duration)]
    measure: Duration,
    /// Length of the p99-over-time windows.
    #[arg(long, default_value = "5s", value_parser = super::parse_duration)]
    window: Duration,
    /// Port of the first pod.
    #[arg(long, default_value_t = 21001)]
    base_port: u16,
    /// Envoy processes (`--concurrency 1` each), all fed by the same adaptive-eds, each with its
    /// own listener getting a random 1/K of the arrivals (a Poisson process of rate/K); the
    /// latency figures are those of all of them together.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    envoys: u16,
    /// Seed of the arrival process.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Results folder (default `lab/results/<date>-<fleet>[-<scenario>]`).
    #[arg(long)]
    results: Option<PathBuf>,
    /// adaptive-eds `weighting.probe_share` (default: the server's own default).
    #[arg(long)]
    probe_share: Option<f64>,
    /// adaptive-eds `weighting.surge_headroom` (default: the server's own default).
    #[arg(long)]
    surge_headroom: Option<f64>,
    /// How pod metrics reach adaptive-eds: `pull` (VictoriaMetrics + PromQL), `stream`
    /// (vmagent remote-write, CPU limits from the pods' limit gauge), `lrs` (Envoy's load
    /// reports every second, ORCA CPU riding along; no metrics store), `pull+lrs`, `stream+lrs`.
    /// Default `pull`; not with --pipeline.
    #[arg(long, value_enum)]
    metrics: Option<MetricsPath>,
    /// A named metric pipeline: `fast` (VictoriaMetrics scraping every 1 s, PromQL over 5 s,
    /// tick 1 s: the default), `prod` (scrapes every 15 s, PromQL `rate[1m]`, tick 10 s),
    /// `stream-prod` (vmagent scraping every 15 s and remote-writing, rates over 1 m, tick
    /// 10 s), `lrs` (Envoy load reports every 1 s, tick 1 s). Not with --metrics or --rate-window.
    #[arg(long, value_enum, conflicts_with_all = ["metrics", "rate_window"])]
    pipeline: Option<PipelinePreset>,
    /// Give the pulled or streamed metrics an error signal (`error_query` on the request
    /// counter's 5xx codes, or remote-write `error_labels`); `off` measures CPU and request
    /// rates only. Load reports always carry errors, so `off` needs `pull` or `stream`.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    error_signal: Switch,
    /// Window of the counter rates adaptive-eds reads (whole seconds, at least 2: scrapes are
    /// 1 s apart; default 5s). Not with --pipeline.
    #[arg(long, value_parser = super::parse_duration)]
    rate_window: Option<Duration>,
    /// adaptive-eds `tick` (whole seconds), in place of the pipeline's (1 s for `fast` and
    /// `lrs`, 10 s for `prod` and `stream-prod`).
    #[arg(long, value_parser = super::parse_duration)]
    tick: Option<Duration>,
    /// The pods' ORCA header also carries `eps` (errors per second), which CSWRR turns into a
    /// penalty; off, as in the fleet file, the header has CPU and request rate only.
    #[arg(long)]
    orca_eps: bool,
    /// Every Envoy, for every policy, also runs its own outlier detection on the fleet cluster
    /// (Envoy's defaults: 5 consecutive 5xx eject a host for 30 s, at most 10% of the hosts).
    #[arg(long)]
    outlier_detection: bool,
    /// Only redraw the PNG plots of an existing results folder from its `report.md`.
    #[arg(long)]
    replot: bool,
    /// adaptive-eds binary (default: next to this `lab` binary).
    #[arg(long)]
    server: Option<PathBuf>,
}

/// Everything a single policy run needs.
struct RunContext {
    /// Every pod the emulator serves (with a rolling restart, the replacements after the
    /// originals), index-aligned with `ports`.
    pods: Vec<Pod>,
    /// Each pod's node, index-aligned with `pods` (see `setup::pod_nodes`).
    nodes: Vec<String>,
    /// How many of `pods` form the endpoint set at the start (the originals).
    initial: usize,
    /// A rolling restart's start and step interval.
    rolling: Option<(Duration, Duration)>,
    namespace: String,
    fleet_file: PathBuf,
    scenario: Scenario,
    plan: LoadPlan,
    ports: Vec<u16>,
    server: PathBuf,
    lab: PathBuf,
    results: PathBuf,
    probe_share: Option<f64>,
    surge_headroom: Option<f64>,
    pipeline: Pipeline,
    envoys: usize,
    time_scale: f64,
    offered: OfferedLoad,
    error_signal: bool,
    orca: bool,
    outlier_detection: bool,
}

/// Runs the bench on a two-thread tokio runtime (the machine has two cores).
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(bench(args))
}

fn results_folder(args: &BenchArgs) -> PathBuf {
    if let Some(path) = &args.results {
        return path.clone();
    }
    let stem = |path: &Path| {
        path.file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let mut name = format!("{}-{}", &date[..10], stem(&args.fleet));
    if let Some(scenario) = &args.scenario {
        name.push('-');
        name.push_str(&stem(scenario));
    }
    if let Some(load) = args.load {
        name.push_str(&format!("-load{:.0}", load * 100.0));
    }
    if let Some(preset) = args.pipeline {
        name.push('-');
        name.push_str(preset.name());
    }
    if let Some(metrics) = args.metrics.filter(|metrics| *metrics != MetricsPath::Pull) {
        name.push('-');
        name.push_str(&metrics.name().replace('+', "-"));
    }
    if args.error_signal == Switch::Off {
        name.push_str("-no-error-signal");
    }
    if args.orca_eps {
        name.push_str("-orca-eps");
    }
    if args.outlier_detection {
        name.push_str("-outlier-detection");
    }
    if args.envoys > 1 {
        name.push_str(&format!("-envoys{}", args.envoys));
    }
    Path::new("lab/results").join(name)
}

fn context(args: &BenchArgs) -> anyhow::Result<RunContext> {
    let fleet = load_fleet(&args.fleet).context("loading the fleet")?;
    let scenario = match &args.scenario {
        Some(path) => load_scenario(path, &fleet).context("loading the scenario")?,
        None => Scenario {
            name: "steady".to_owned(),
            events: Vec::new(),
        },
    };
    let offered = OfferedLoad::resolve(
        &fleet,
        args.rate,
        args.load,
        args.time_scale,
        scenario.peak_load_factor(),
    )?;
    if offered.beyond_machine() {
        tracing::warn!(
            peak_rps = offered.peak_rate(),
            machine_rps = MACHINE_RPS,
            "the offered rate is more than this machine drives through Envoy: raise --time-scale"
        );
    }
    let pipeline = pipeline(args)?;
    if args.error_signal == Switch::Off && pipeline.metrics.load_reports() {
        bail!(
            "--error-signal off needs --metrics pull or stream: load reports always carry errors"
        );
    }
    let results = results_folder(args);
    std::fs::create_dir_all(&results).with_context(|| format!("creating {}", results.display()))?;
    let mut scaled = fleet.scaled(offered.time_scale);
    scaled.orca_eps |= args.orca_eps;
    let initial = scaled.pods().len();
    let rolling = scenario.rolling_restart();
    if rolling.is_some() {
        scaled = scaled.with_replacements();
    }
    let fleet_file = results.join("fleet-scaled.yaml");
    let text = serde_norway::to_string(&scaled).context("writing the scaled fleet")?;
    std::fs::write(&fleet_file, text)
        .with_context(|| format!("writing {}", fleet_file.display()))?;
    let lab = std::env::current_exe().context("locating the lab binary")?;
    let server = match &args.server {
        Some(path) => path.clone(),
        None => lab.with_file_name("adaptive-eds"),
    };
    if !server.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p adaptive-eds` or pass --server",
            server.display()
        );
    }
    let pods = scaled.pods();
    let count = u16::try_from(pods.len()).context("too many pods")?;
    Ok(RunContext {
        ports: (0..count).map(|index| args.base_port + index).collect(),
        nodes: pod_nodes(&pods, initial, scenario.restart_node()),
        pods,
        initial,
        rolling,
        namespace: scaled.namespace.clone(),
        fleet_file,
        scenario,
        plan: LoadPlan {
            rate: offered.rate,
            warmup: args.warmup,
            measure: args.measure,
            window: args.window,
            seed: args.seed,
            timeout: Duration::from_secs(10),
        },
        server,
        lab,
        results,
        probe_share: args.probe_share,
        surge_headroom: args.surge_headroom,
        pipeline,
        envoys: usize::from(args.envoys),
        time_scale: offered.time_scale,
        offered,
        error_signal: args.error_signal == Switch::On,
        orca: fleet.orca,
        outlier_detection: args.outlier_detection,
    })
}

/// The run's metric pipeline: the preset, or the fast one with `--metrics` and `--rate-window`;
/// `--tick` replaces its tick.
fn pipeline(args: &BenchArgs) -> anyhow::Result<Pipeline> {
    let mut pipeline = match args.pipeline {
        Some(preset) => preset.pipeline(),
        None => {
            let window = args.rate_window.unwrap_or(Duration::from_secs(5));
            if window.subsec_nanos() != 0 {
                bail!("--rate-window must be whole seconds, not {window:?}");
            }
            Pipeline::custom(args.metrics.unwrap_or_default(), window.as_secs())
        }
    };
    pipeline.validate().context("--rate-window")?;
    if let Some(tick) = args.tick {
        if tick.subsec_nanos() != 0 || tick.is_zero() {
            bail!("--tick must be whole seconds, at least 1, not {tick:?}");
        }
        pipeline.tick_seconds = tick.as_secs();
    }
    Ok(pipeline)
}

fn replot(args: &BenchArgs) -> anyhow::Result<()> {
    let folder = results_folder(args);
    let path = folder.join("report.md");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    write_plots(&series_from_report(&text), &folder)?;
    println!("plots written to {}", folder.display());
    Ok(())
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    if args.replot {
        return replot(&args);
    }
    let context = context(&args)?;
    println!("{}", context.offered.describe());
    let policies = if args.policy.is_empty() {
        BenchPolicy::ALL.to_vec()
    } else {
        args.policy.clone()
    };
    let mut outcomes = Vec::new();
    for policy in policies {
        tracing::info!(policy = policy.name(), "run starting");
        let outcome = tokio::select! {
            outcome = run_policy(&context, policy) => outcome.with_context(|| format!("running {}", policy.name()))?,
            signal = super::stop_signal() => bail!("{signal}: every process of the run was stopped"),
        };
        tracing::info!(
            policy = policy.name(),
            p99_ms = outcome.p99(),
            "run finished"
        );
        outcomes.push(outcome);
        write_report(&args, &context, &outcomes)?;
    }
    let series: Vec<PlotSeries> = outcomes.iter().map(PlotSeries::of).collect();
    if let Err(error) = write_plots(&series, &context.results) {
        tracing::warn!(%error, "plots not written");
    }
    print!("{}", render_markdown(&outcomes));
    println!("\nresults in {}", context.results.display());
    Ok(())
}

fn write_report(
    args: &BenchArgs,
    context: &RunContext,
    outcomes: &[RunOutcome],
) -> anyhow::Result<()> {
    let command: Vec<String> = std::env::args().collect();
    let header = format!(
        "# lab bench: {} / {}\n\nCommand: `{}`\n\n{}\n\nWarm-up {:?}, measured {:?} per policy, seed {}, probe_share {}, surge_headroom {}, metrics {}. {}, all on 127.0.0.1.\n\n",
        args.fleet.display(),
        context.scenario.name,
        command.join(" "),
        context.offered.describe(),
        args.warmup,
        args.measure,
        args.seed,
        args.probe_share
            .map_or("default".to_owned(), |share| share.to_string()),
        args.surge_headroom
            .map_or("default".to_owned(), |headroom| headroom.to_string()),
        metrics_description(args, &context.pipeline),
        envoys_description(context.envoys),
    ) + &rolling_description(context);
    let path = context.results.join("report.md");
    std::fs::write(&path, header + &render_markdown(outcomes))
        .with_context(|| format!("writing {}", path.display()))
}

/// What the report's header says of a rolling restart (nothing without one).
fn rolling_description(context: &RunContext) -> String {
    let node = match context.scenario.restart_node() {
        RestartNode::New => "on a node never measured (`node-<new pod>`)",
        RestartNode::Same => "on the node of the pod it replaces (`node-<old pod>`)",
    };
    match context.rolling {
        Some((at, every)) => format!(
            "Rolling restart from {at:?}, one pod every {every:?}: pod `<group>-<i>` replaced by `<group>-v2-<i>` (new port) {node}, added to the endpoint set once it answers, the old one removed once every Envoy routes to the new one, then stopped once no Envoy routes to it. Every policy gets EDS from adaptive-eds during it (the baselines with `algorithm: static`, equal weights).\n\n"
        ),
        None => String::new(),
    }
}

/// How the report's header names the Envoys.
fn envoys_description(envoys: usize) -> String {
    if envoys == 1 {
        "One Envoy (`--concurrency 1`)".to_owned()
    } else {
        format!("{envoys} Envoys (`--concurrency 1` each, one listener each, a random 1/{envoys} of the arrivals each; latency over all of them)")
    }
}

/// How the report's header names the metrics pipeline and its error signal.
fn metrics_description(args: &BenchArgs, pipeline: &Pipeline) -> String {
    let errors = match (args.error_signal, pipeline.metrics.load_reports()) {
        (_, true) => {
            "errors from the load reports (and the error query / labels of the other source)"
        }
        (Switch::On, false) => "error signal on (5xx rate of the request counter)",
        (Switch::Off, false) => "no error signal (CPU and request rates only)",
    };
    let eps = if args.orca_eps {
        "; the pods' ORCA headers carry eps (errors per second)"
    } else {
        ""
    };
    let ejection = if args.outlier_detection {
        "; every Envoy also ejects hosts by outlier detection (5 consecutive 5xx, 30 s)"
    } else {
        ""
    };
    format!("{}; {errors}{eps}{ejection}", pipeline.describe())
}

/// The processes of one run; dropping it stops them all.
struct Stack {
    emulator: Process,
    /// VictoriaMetrics or vmagent; none when load reports are the only source.
    victoria: Option<Process>,
    server: Option<Process>,
    server_xds_port: Option<u16>,
    /// The server's config file, rewritten by a rolling restart.
    server_file: Option<ServerFile>,
    /// The Envoys, each with its admin port and listener port.
    envoys: Vec<Envoy>,
}

/// One Envoy of a run.
struct Envoy {
    process: Process,
    admin: u16,
    listener: u16,
}

async fn start_stack(
    context: &RunContext,
    policy: BenchPolicy,
    directory: &Path,
) -> anyhow::Result<Stack> {
    let total = context.plan.warmup + context.plan.measure + Duration::from_secs(120);
    let emulator = Process::spawn(
        "lab emulate",
        Command::new(&context.lab)
            .arg("emulate")
            .arg("--fleet")
            .arg(&context.fleet_file)
            .arg("--base-port")
            .arg(context.ports[0].to_string())
            .arg("--duration")
            .arg(format!("{}s", total.as_secs())),
        &directory.join("emulator.log"),
    )?;
    for port in &context.ports {
        let url = format!("http://127.0.0.1:{port}/metrics");
        wait_for(Duration::from_secs(20), &url, || get_ok(&url)).await?;
    }
    // The metrics process: VictoriaMetrics (pull, and the baselines of a stream run, which read
    // no metrics), vmagent started once the server it writes to is up (stream), or none when
    // Envoy's load reports are the only source.
    // adaptive-eds is in the loop for our policies, and for every policy during a rolling
    // restart (the baselines then get EDS from it with `algorithm: static`, equal weights).
    let ours = policy.weighting().is_some() || context.rolling.is_some();
    let (victoria, server) = if ours && context.pipeline.metrics.streams() {
        let server = start_server(context, policy, directory, None).await?;
        let vmagent = start_vmagent(context, directory, server.1.admin_port).await?;
        (Some(vmagent), Some(server))
    } else if context.pipeline.metrics == MetricsPath::Lrs {
        let server = if ours {
            Some(start_server(context, policy, directory, None).await?)
        } else {
            None
        };
        (None, server)
    } else {
        let victoria = start_victoria(context, directory).await?;
        let port = victoria.1;
        let server = if ours {
            Some(start_server(context, policy, directory, Some(port)).await?)
        } else {
            None
        };
        (Some(victoria.0), server)
    };
    let reports = if context.pipeline.metrics.load_reports() {
        EnvoyReports::LoadReports { orca: context.orca }
    } else {
        EnvoyReports::None
    };
    let extras = EnvoyExtras {
        reports,
        outlier_detection: context.outlier_detection,
    };
    let mut envoys = Vec::with_capacity(context.envoys);
    for index in 0..context.envoys {
        let (admin, listener) = (free_port()?, free_port()?);
        let bootstrap = envoy_bootstrap(
            policy,
            index,
            admin,
            listener,
            server.as_ref().map(|server| server.1.xds_port),
            &context.ports[..context.initial],
            extras,
        );
        let path = directory.join(format!("envoy-{index}.yaml"));
        std::fs::write(&path, bootstrap).with_context(|| format!("writing {}", path.display()))?;
        let process = harness::envoy::spawn(
            &format!("envoy {index}"),
            &path,
            &["--concurrency", "1", "--log-level", "warn"],
            &directory.join(format!("envoy-{index}.log")),
        )?;
        envoys.push(Envoy {
            process,
            admin,
            listener,
        });
    }
    let count = context.initial;
    for envoy in &mut envoys {
        let admin = envoy.admin;
        wait_for(
            Duration::from_secs(30),
            "every Envoy to know every pod",
            || async {
                envoy_weights(admin)
                    .await
                    .filter(|weights| weights.len() == count)
            },
        )
        .await?;
        envoy.process.check_running()?;
    }
    Ok(Stack {
        emulator,
        victoria,
        server_xds_port: server.as_ref().map(|server| server.1.xds_port),
        server_file: server.as_ref().map(|server| server.1.clone()),
        server: server.map(|server| server.0),
        envoys,
    })
}

async fn start_victoria(context: &RunContext, directory: &Path) -> anyhow::Result<(Process, u16)> {
    let port = free_port()?;
    let scrape = directory.join("scrape.yaml");
    std::fs::write(
        &scrape,
        scrape_config(&context.ports, context.pipeline.scrape_seconds),
    )
    .with_context(|| format!("writing {}", scrape.display()))?;
    let process = harness::victoria::spawn_victoria_metrics(
        &directory.join("victoria"),
        port,
        &scrape,
        &directory.join("victoria.log"),
    )?;
    let url = format!("http://127.0.0.1:{port}/health");
    wait_for(Duration::from_secs(20), "VictoriaMetrics /health", || {
        get_ok(&url)
    })
    .await?;
    Ok((process, port))
}

/// vmagent scraping every pod each second and remote-writing to adaptive-eds's admin listener.
async fn start_vmagent(
    context: &RunContext,
    directory: &Path,
    admin_port: u16,
) -> anyhow::Result<Process> {
    let scrape = directory.join("scrape.yaml");
    std::fs::write(
        &scrape,
        scrape_config(&context.ports, context.pipeline.scrape_seconds),
    )
    .with_context(|| format!("writing {}", scrape.display()))?;
    let port = free_port()?;
    let process = Process::spawn(
        "vmagent",
        Command::new("vmagent")
            .arg(format!("-promscrape.config={}", scrape.display()))
            .arg(format!(
                "-remoteWrite.url=http://127.0.0.1:{admin_port}/api/v1/write"
            ))
            .arg(format!(
                "-remoteWrite.tmpDataPath={}",
                directory.join("vmagent").display()
            ))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .args(["-remoteWrite.flushInterval=200ms", "-loggerLevel=WARN"]),
        &directory.join("vmagent.log"),
    )?;
    let url = format!("http://127.0.0.1:{port}/health");
    wait_for(Duration::from_secs(20), "vmagent /health", || get_ok(&url)).await?;
    Ok(process)
}

/// Where a run's adaptive-eds config lives and what it is made of, so the endpoint set can be
/// rewritten during the run (the server polls the file).
#[derive(Debug, Clone)]
struct ServerFile {
    path: PathBuf,
    policy: BenchPolicy,
    xds_port: u16,
    admin_port: u16,
    victoria_url: Option<String>,
}

/// Writes the server config with `endpoints` (indices into the context's pods) as the endpoint
/// set, through a temporary file and a rename so the server never reads half a file.
fn write_server_config(
    context: &RunContext,
    file: &ServerFile,
    endpoints: &[usize],
) -> anyhow::Result<()> {
    let metrics = MetricsSource {
        pull: file.victoria_url.as_deref(),
        stream: context.pipeline.metrics.streams(),
        load_reports: context.pipeline.metrics.load_reports(),
    };
    let config = server_config(&ServerSettings {
        policy: file.policy,
        namespace: &context.namespace,
        pods: &context.pods,
        ports: &context.ports,
        nodes: &context.nodes,
        endpoints,
        xds_port: file.xds_port,
        admin_port: file.admin_port,
        metrics,
        probe_share: context.probe_share,
        surge_headroom: context.surge_headroom,
        rate_window: context.pipeline.rate_window,
        tick_seconds: context.pipeline.tick_seconds,
        error_signal: context.error_signal,
    });
    let temporary = file.path.with_extension("yaml.new");
    std::fs::write(&temporary, config)
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, &file.path)
        .with_context(|| format!("renaming {} into place", temporary.display()))
}

/// Starts adaptive-eds pulling from VictoriaMetrics on `victoria_port` and/or taking
/// remote-write and load reports, as the run's metrics path says, serving the initial endpoint
/// set; returns the process and its config file.
async fn start_server(
    context: &RunContext,
    policy: BenchPolicy,
    directory: &Path,
    victoria_port: Option<u16>,
) -> anyhow::Result<(Process, ServerFile)> {
    let file = ServerFile {
        path: directory.join("adaptive-eds.yaml"),
        policy,
        xds_port: free_port()?,
        admin_port: free_port()?,
        victoria_url: victoria_port.map(|port| format!("http://127.0.0.1:{port}")),
    };
    let initial: Vec<usize> = (0..context.initial).collect();
    write_server_config(context, &file, &initial)?;
    let mut process = Process::spawn(
        "adaptive-eds",
        Command::new(&context.server)
            .arg("serve")
            .arg("--config")
            .arg(&file.path)
            .env("RUST_LOG", "info"),
        &directory.join("adaptive-eds.log"),
    )?;
    let url = format!("http://127.0.0.1:{}/readyz", file.admin_port);
    let ready = wait_for(Duration::from_secs(20), "adaptive-eds /readyz", || {
        get_ok(&url)
    })
    .await;
    process.check_running()?;
    ready?;
    Ok((process, file))
}

/// Envoy's weight per upstream port for the fleet cluster.
async fn envoy_weights(admin_port: u16) -> Option<BTreeMap<u16, u64>> {
    let body = get_ok(&format!(
        "http://127.0.0.1:{admin_port}/clusters?format=json"
    ))
    .await?;
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    let status = json["cluster_statuses"]
        .as_array()?
        .iter()
        .find(|status| status["name"] == CLUSTER)?;
    status["host_statuses"]
        .as_array()?
        .iter()
        .map(|host| {
            let port = host["address"]["socket_address"]["port_value"].as_u64()?;
            Some((
                u16::try_from(port).ok()?,
                host["weight"].as_u64().unwrap_or(1),
            ))
        })
        .collect()
}

/// CPU seconds of each process, in `ProcessCpu` field order.
fn process_seconds(stack: &Stack) -> [f64; 6] {
    let of = |pid: u32| cpu_seconds(&pid.to_string()).unwrap_or(0.0);
    [
        stack
            .envoys
            .iter()
            .map(|envoy| of(envoy.process.pid()))
            .sum(),
        cpu_seconds("self").unwrap_or(0.0),
        of(stack.emulator.pid()),
        stack
            .victoria
            .as_ref()
            .map_or(0.0, |victoria| of(victoria.pid())),
        stack.server.as_ref().map_or(0.0, |server| of(server.pid())),
        machine_busy_seconds().unwrap_or(0.0),
    ]
}

/// Applies the scenario's slowdowns and failures through the pods' admin endpoints, on the
/// load's clock (failure times scaled like service times).
async fn apply_pod_events(context: &RunContext, start: tokio::time::Instant) {
    for event in &context.scenario.events {
        let (pod, path, body) = match &event.action {
            Action::SetSlowdown { pod, factor } => (pod, "slowdown", factor.to_string()),
            Action::SetFailing {
                pod,
                ratio,
                after_ms,
            } => (
                pod,
                "failing",
                format!("{ratio} {}", after_ms * context.time_scale),
            ),
            Action::SetLoadFactor { .. } | Action::RollingRestart { .. } => continue,
        };
        let Some(index) = context
            .pods
            .iter()
            .position(|candidate| &candidate.name == pod)
        else {
            continue;
        };
        tokio::time::sleep_until(start + event.at).await;
        let url = format!("http://127.0.0.1:{}/admin/{path}", context.ports[index]);
        if let Err(error) = http(hyper::Method::POST, &url, &body).await {
            tracing::warn!(%error, pod, path, "pod event not applied");
        }
    }
}

async fn run_policy(context: &RunContext, policy: BenchPolicy) -> anyhow::Result<RunOutcome> {
    let directory = context.results.join("runs").join(policy.name());
    std::fs::create_dir_all(&directory)
        .with_context(|| format!("creating {}", directory.display()))?;
    let mut stack = start_stack(context, policy, &directory).await?;
    let uris: Vec<hyper::Uri> = stack
        .envoys
        .iter()
        .map(|envoy| {
            format!("http://127.0.0.1:{}/", envoy.listener)
                .parse()
                .context("building a listener URI")
        })
        .collect::<anyhow::Result<_>>()?;
    let stopped = Stopped::default();
    let counters = || fleet_counters(&context.pods, &context.ports, &stopped);
    let start = tokio::time::Instant::now();
    let load = drive(&uris, &context.plan, &context.scenario);
    let measure_start = async {
        tokio::time::sleep_until(start + context.plan.warmup).await;
        (counters().await, process_seconds(&stack))
    };
    let edges = async {
        let windows =
            (context.plan.measure.as_secs_f64() / context.plan.window.as_secs_f64()).ceil() as u32;
        let mut samples = Vec::new();
        for edge in 0..=windows {
            tokio::time::sleep_until(start + context.plan.warmup + context.plan.window * edge)
                .await;
            samples.push(counters().await.ok().map(|counters| counters.cpu));
        }
        samples
    };
    let pod_events = apply_pod_events(context, start);
    let restart = rolling::restart(context, &stack, start, &stopped);
    let total = context.plan.warmup + context.plan.measure;
    let (load, (before, cpu_before), samples, _, restart) = tokio::join!(
        load,
        measure_start,
        edges,
        tokio::time::timeout(total, pod_events),
        restart
    );
    let seconds = start.elapsed().as_secs_f64() - context.plan.warmup.as_secs_f64();
    let after = counters().await?;
    let cpu_after = process_seconds(&stack);
    let before = before?;
    let restart = restart.context("rolling restart")?;
    let cores_by_pod: BTreeMap<String, u32> = context
        .pods
        .iter()
        .map(|pod| (pod.name.clone(), pod.cores))
        .collect();
    let first_admin = stack.envoys.first().map_or(0, |envoy| envoy.admin);
    let weights = envoy_weights(first_admin).await.unwrap_or_default();
    save_server_view(&stack, &directory).await;
    for envoy in &mut stack.envoys {
        envoy.process.check_running()?;
    }
    let cores: Vec<f64> = cpu_after
        .iter()
        .zip(cpu_before)
        .map(|(after, before)| (after - before) / seconds)
        .collect();
    Ok(RunOutcome {
        policy: policy.name().to_owned(),
        load,
        seconds: context.plan.measure.as_secs_f64(),
        pods: pod_outcomes(context, &before, &after, &weights, seconds),
        fleet_cpu: sum_delta(&before.cpu, &after.cpu) / seconds,
        process_cpu: ProcessCpu {
            envoy: cores[0],
            load_generator: cores[1],
            emulator: cores[2],
            victoria: cores[3],
            server: cores[4],
            machine: cores[5],
        },
        event: context
            .scenario
            .events
            .iter()
            .map(|event| event.at)
            .min()
            .and_then(|at| at.checked_sub(context.plan.warmup)),
        busiest: busiest_per_window(&samples, &cores_by_pod, context.plan.window.as_secs_f64()),
        settled_after: context.pipeline.settled_after(),
        restart: restart.map(|(from, to)| {
            (
                from.saturating_sub(context.plan.warmup),
                to.saturating_sub(context.plan.warmup),
            )
        }),
    })
}

fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, pod: &str) -> f64 {
    after.get(pod).copied().unwrap_or(0.0) - before.get(pod).copied().unwrap_or(0.0)
}

fn sum_delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> f64 {
    after.keys().map(|pod| delta(before, after, pod)).sum()
}

fn pod_outcomes(
    context: &RunContext,
    before: &Counters,
    after: &Counters,
    weights: &BTreeMap<u16, u64>,
    seconds: f64,
) -> Vec<PodOutcome> {
    let total = sum_delta(&before.requests, &after.requests).max(1.0);
    context
        .pods
        .iter()
        .zip(&context.ports)
        .map(|(pod, port)| PodOutcome {
            name: pod.name.clone(),
            share: delta(&before.requests, &after.requests, &pod.name) / total,
            utilization: delta(&before.cpu, &after.cpu, &pod.name) / seconds / f64::from(pod.cores),
            error_ratio: delta(&before.errors, &after.errors, &pod.name)
                / delta(&before.requests, &after.requests, &pod.name).max(1.0),
            final_weight: weights.get(port).copied().unwrap_or(0),
        })
        .collect()
}

/// Keeps Envoy's final cluster view and, when our server is in the loop, its `Inspect`
/// explanation of the weights (through grpcurl, if installed) next to the run's logs.
async fn save_server_view(stack: &Stack, directory: &Path) {
    for (index, envoy) in stack.envoys.iter().enumerate() {
        let url = format!("http://127.0.0.1:{}/clusters", envoy.admin);
        if let Some(body) = get_ok(&url).await {
            let _ = std::fs::write(directory.join(format!("envoy-{index}-clusters.txt")), body);
        }
    }
    let Some(port) = stack.server_xds_port else {
        return;
    };
    let request = format!("{{\"name\":\"{CLUSTER}\"}}");
    let output = Command::new("grpcurl")
        .args(["-plaintext", "-d", &request])
        .arg(format!("127.0.0.1:{port}"))
        .arg("adaptive_eds.inspect.v1.Inspect/GetCluster")
        .output();
    match output {
        Ok(output) => {
            let _ = std::fs::write(directory.join("inspect-cluster.json"), output.stdout);
        }
        Err(error) => tracing::warn!(%error, "grpcurl not run; Inspect view not saved"),
    }
}
