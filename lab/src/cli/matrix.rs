//! `lab matrix`: every cell of a bench matrix as a `lab bench` child, then tables and plots in one folder.

use anyhow::{bail, Context};
use clap::Args;
use lab::bench::matrix::{
    figures_from_report, finished_cell, hours_minutes, render, Cell, CellOutcome, MatrixPlan,
    PolicyFigures, SCENARIO_WARMUP, STEADY,
};
use lab::bench::pipeline::PipelinePreset;
use lab::bench::plot::write_line_chart;
use lab::bench::process::Process;
use lab::bench::setup::BenchPolicy;
use lab::fleet::{load_fleet, load_scenario};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Arguments of `lab matrix`.
#[derive(Debug, Args)]
pub struct MatrixArgs {
    /// Fleet file (YAML).
    #[arg(long, default_value = "lab/fleets/seed.yaml")]
    fleet: PathBuf,
    /// Policies compared in every cell.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "least_request,cswrr,capacity_balance,capacity_latency"
    )]
    policies: Vec<BenchPolicy>,
    /// Offered loads, fractions of the fleet's capacity.
    #[arg(long, value_delimiter = ',', default_value = "0.3,0.5,0.7,0.9")]
    loads: Vec<f64>,
    /// Metric pipelines; the first is the base of the cells that vary another axis.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fast,prod,stream-prod,lrs"
    )]
    pipelines: Vec<PipelinePreset>,
    /// Envoy counts; the first is the base.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
    envoys: Vec<u16>,
    /// Scenarios: `steady` (no events) or names of `<scenario-dir>/<name>.yaml`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "steady,pod-fails,node-slows,load-rises,rolling-restart"
    )]
    scenarios: Vec<String>,
    /// Folder of the scenario files.
    #[arg(long, default_value = "lab/scenarios")]
    scenario_dir: PathBuf,
    /// Load of the cells that vary the Envoys, the pipeline or the scenario.
    #[arg(long, default_value_t = 0.5)]
    base_load: f64,
    /// Every combination of the lists instead of one axis at a time from the base.
    #[arg(long)]
    cross: bool,
    /// Warm-up of the 1 s pipelines (fast, lrs).
    #[arg(long, default_value = "25s", value_parser = super::parse_duration)]
    warmup: Duration,
    /// Measured time of the 1 s pipelines.
    #[arg(long, default_value = "40s", value_parser = super::parse_duration)]
    measure: Duration,
    /// Warm-up of the 15 s pipelines (prod, stream-prod): the 1 m rate window and a few 10 s
    /// ticks. Scenario events move later by the warm-up beyond 25 s.
    #[arg(long, default_value = "90s", value_parser = super::parse_duration)]
    prod_warmup: Duration,
    /// Measured time of the 15 s pipelines.
    #[arg(long, default_value = "60s", value_parser = super::parse_duration)]
    prod_measure: Duration,
    /// Service-time multiplier (default: the one `--load` picks for the fleet).
    #[arg(long)]
    time_scale: Option<f64>,
    /// Port of the first pod (passed to every `lab bench`).
    #[arg(long, default_value_t = 21001)]
    base_port: u16,
    /// Results folder (default `lab/results/<date>-matrix-<fleet>`).
    #[arg(long)]
    results: Option<PathBuf>,
    /// adaptive-eds binary (passed to every `lab bench`).
    #[arg(long)]
    server: Option<PathBuf>,
    /// Every Envoy of every cell also runs Envoy's outlier detection (passed to every `lab bench`).
    #[arg(long)]
    outlier_detection: bool,
    /// Keep the cells an earlier run into the same results folder finished (a report written by
    /// the same bench command, with every policy) and run the others: a matrix stopped part way
    /// goes on where it stopped.
    #[arg(long)]
    resume: bool,
    /// Only print the cells and the run-time estimate.
    #[arg(long)]
    dry_run: bool,
}

impl MatrixArgs {
    fn plan(&self) -> anyhow::Result<MatrixPlan> {
        let fleet = load_fleet(&self.fleet).context("loading the fleet")?;
        let mut peaks = Vec::new();
        for name in self.scenarios.iter().filter(|name| *name != STEADY) {
            let path = self.scenario_path(name);
            let scenario = load_scenario(&path, &fleet)
                .with_context(|| format!("loading {}", path.display()))?;
            peaks.push((name.clone(), scenario.peak_load_factor()));
        }
        Ok(MatrixPlan {
            policies: self.policies.clone(),
            loads: self.loads.clone(),
            pipelines: self.pipelines.clone(),
            envoys: self.envoys.clone(),
            scenarios: self.scenarios.clone(),
            peaks,
            base_load: self.base_load,
            cross: self.cross,
            fast_times: (self.warmup, self.measure),
            prod_times: (self.prod_warmup, self.prod_measure),
        })
    }
}

impl MatrixArgs {
    /// The file of a scenario name.
    fn scenario_path(&self, name: &str) -> PathBuf {
        self.scenario_dir.join(format!("{name}.yaml"))
    }
}

/// Runs the matrix on a small tokio runtime (for the signals while a child runs).
pub fn run(args: MatrixArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(matrix(args))
}

fn results_folder(args: &MatrixArgs) -> PathBuf {
    if let Some(path) = &args.results {
        return path.clone();
    }
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let fleet = args
        .fleet
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    Path::new("lab/results").join(format!("{}-matrix-{fleet}", &date[..10]))
}

/// The scenario file a cell's bench reads: none for `steady`, the shipped file, or a copy with
/// every event moved later by the warm-up beyond [`SCENARIO_WARMUP`].
fn scenario_file(
    args: &MatrixArgs,
    name: &str,
    warmup: Duration,
    folder: &Path,
) -> anyhow::Result<Option<PathBuf>> {
    if name == STEADY {
        return Ok(None);
    }
    let path = args.scenario_path(name);
    let shift = warmup.saturating_sub(SCENARIO_WARMUP);
    if shift.is_zero() {
        return Ok(Some(path));
    }
    let fleet = load_fleet(&args.fleet).context("loading the fleet")?;
    let scenario = load_scenario(&path, &fleet).context("loading the scenario")?;
    let shifted = folder.join(format!("{name}-later-{}s.yaml", shift.as_secs()));
    let text = serde_norway::to_string(&scenario.shifted(shift))
        .context("writing the shifted scenario")?;
    std::fs::write(&shifted, text).with_context(|| format!("writing {}", shifted.display()))?;
    Ok(Some(shifted))
}

fn bench_command(
    args: &MatrixArgs,
    plan: &MatrixPlan,
    cell: &Cell,
    scenario: Option<&Path>,
    results: &Path,
) -> anyhow::Result<Command> {
    let lab = std::env::current_exe().context("locating the lab binary")?;
    let (warmup, measure) = plan.times(cell);
    let policies: Vec<&str> = args
        .policies
        .iter()
        .map(|policy| policy_flag(*policy))
        .collect();
    let mut command = Command::new(lab);
    command
        .arg("bench")
        .arg("--fleet")
        .arg(&args.fleet)
        .args(["--policy", &policies.join(",")])
        .args(["--load", &cell.load.to_string()])
        .args(["--pipeline", cell.pipeline.name()])
        .args(["--envoys", &cell.envoys.to_string()])
        .args(["--warmup", &format!("{}s", warmup.as_secs())])
        .args(["--measure", &format!("{}s", measure.as_secs())])
        .args(["--base-port", &args.base_port.to_string()])
        .arg("--results")
        .arg(results);
    if let Some(scenario) = scenario {
        command.arg("--scenario").arg(scenario);
    }
    if let Some(scale) = args.time_scale {
        command.args(["--time-scale", &scale.to_string()]);
    }
    if let Some(server) = &args.server {
        command.arg("--server").arg(server);
    }
    if args.outlier_detection {
        command.arg("--outlier-detection");
    }
    Ok(command)
}

/// The `--policy` spelling of a policy (clap's value name).
fn policy_flag(policy: BenchPolicy) -> &'static str {
    match policy {
        BenchPolicy::RoundRobin => "round_robin",
        BenchPolicy::LeastRequest => "least_request",
        BenchPolicy::Cswrr => "cswrr",
        BenchPolicy::Distance => "distance",
        BenchPolicy::CapacityBalance => "capacity_balance",
        BenchPolicy::CapacityLatency => "capacity_latency",
        BenchPolicy::CapacityLatencyRoundRobin => "capacity_latency_round_robin",
    }
}

/// Runs one cell's bench to its end; Ctrl-C or SIGTERM stops it (the child is killed on drop).
async fn run_cell(command: &mut Command, log: &Path, report: &Path) -> anyhow::Result<String> {
    let mut child = Process::spawn("lab bench", command, log)?;
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            signal = super::stop_signal() => bail!("{signal}: the running cell was stopped"),
        }
        if let Some(status) = child.exited() {
            if !status.success() {
                bail!("lab bench exited with {status}: {}", child.log_tail(6));
            }
            return std::fs::read_to_string(report)
                .with_context(|| format!("reading {}", report.display()));
        }
    }
}

async fn matrix(args: MatrixArgs) -> anyhow::Result<()> {
    let plan = args.plan()?;
    let cells = plan.cells();
    if cells.is_empty() {
        bail!("no cells: give at least one load, pipeline, Envoy count and scenario");
    }
    println!("{} cells x {} policies:", cells.len(), plan.policies.len());
    for cell in &cells {
        println!(
            "  {:<40} {}",
            cell.name(),
            hours_minutes(plan.cell_time(cell))
        );
    }
    let estimate = plan.estimate();
    println!("estimated run time: {}", hours_minutes(estimate));
    if args.dry_run {
        return Ok(());
    }
    let folder = results_folder(&args);
    std::fs::create_dir_all(folder.join("cells"))
        .with_context(|| format!("creating {}", folder.display()))?;
    let names: Vec<String> = plan
        .policies
        .iter()
        .map(|policy| policy.name().to_owned())
        .collect();
    let mut progress = Progress {
        planned: cells.len(),
        kept: 0,
        estimate,
        started: Instant::now(),
    };
    let mut outcomes = Vec::new();
    for (index, cell) in cells.iter().enumerate() {
        let results = folder.join("cells").join(cell.name());
        let (warmup, _) = plan.times(cell);
        let scenario = scenario_file(&args, &cell.scenario, warmup, &folder)?;
        let mut command = bench_command(&args, &plan, cell, scenario.as_deref(), &results)?;
        let kept = args
            .resume
            .then(|| earlier_figures(&command, &results.join("report.md"), &names))
            .flatten();
        if let Some(figures) = kept {
            tracing::info!(cell = cell.name(), "cell kept from an earlier run");
            progress.kept += 1;
            outcomes.push(CellOutcome {
                cell: cell.clone(),
                figures: Ok(figures),
            });
            write_matrix(&args, &folder, &outcomes, &names, &progress)?;
            continue;
        }
        tracing::info!(
            cell = cell.name(),
            step = index + 1,
            of = cells.len(),
            elapsed_s = progress.started.elapsed().as_secs(),
            "cell starting"
        );
        let log = folder.join("cells").join(format!("{}.log", cell.name()));
        let figures = match run_cell(&mut command, &log, &results.join("report.md")).await {
            Ok(report) => Ok(figures_from_report(&report)),
            Err(error) if error.to_string().contains("was stopped") => return Err(error),
            Err(error) => {
                tracing::warn!(cell = cell.name(), %error, "cell failed");
                Err(format!("{error:#}").lines().next().unwrap_or("").to_owned())
            }
        };
        outcomes.push(CellOutcome {
            cell: cell.clone(),
            figures,
        });
        write_matrix(&args, &folder, &outcomes, &names, &progress)?;
    }
    plots(&plan, &outcomes, &names, &folder);
    println!("matrix written to {}", folder.join("matrix.md").display());
    Ok(())
}

/// How far the matrix has come, for the header of `matrix.md`.
struct Progress {
    planned: usize,
    /// Cells kept from an earlier run (`--resume`).
    kept: usize,
    estimate: Duration,
    started: Instant,
}

/// The figures of the cell an earlier run wrote to `report`, when the same bench command wrote
/// every policy of it.
fn earlier_figures(
    command: &Command,
    report: &Path,
    names: &[String],
) -> Option<Vec<PolicyFigures>> {
    let text = std::fs::read_to_string(report).ok()?;
    let args: Vec<String> = command
        .get_args()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    finished_cell(&text, &args.join(" "), names)
}

fn write_matrix(
    args: &MatrixArgs,
    folder: &Path,
    outcomes: &[CellOutcome],
    names: &[String],
    progress: &Progress,
) -> anyhow::Result<()> {
    let command: Vec<String> = std::env::args().collect();
    let kept = match progress.kept {
        0 => String::new(),
        kept => format!(" ({kept} of them kept from an earlier run)"),
    };
    let header = format!(
        "# lab matrix: {}\n\nCommand: `{}`\n\n{} cells run of {} planned{kept}, {} so far (estimated {} in all). Each cell is one `lab bench` (its report in `cells/<cell>/report.md`); ratios are to least_request in the same cell. Cell names: load (% of capacity), pipeline, Envoys, scenario.\n",
        args.fleet.display(),
        command.join(" "),
        outcomes.len(),
        progress.planned,
        hours_minutes(progress.started.elapsed()),
        hours_minutes(progress.estimate),
    );
    let path = folder.join("matrix.md");
    std::fs::write(&path, header + &render(outcomes, names))
        .with_context(|| format!("writing {}", path.display()))
}

/// p99 by load and by Envoy count, one line per policy, from the star's base cells.
fn plots(plan: &MatrixPlan, outcomes: &[CellOutcome], names: &[String], folder: &Path) {
    let (Some(&pipeline), Some(&envoys)) = (plan.pipelines.first(), plan.envoys.first()) else {
        return;
    };
    let p99 = |cell: &Cell, policy: &str| {
        outcomes
            .iter()
            .find(|outcome| &outcome.cell == cell)
            .and_then(|outcome| outcome.figures.as_ref().ok())
            .and_then(|figures| figures.iter().find(|entry| entry.policy == policy))
            .map_or(0.0, |entry| entry.p99)
    };
    let by_load: Vec<Cell> = plan
        .loads
        .iter()
        .map(|&load| Cell {
            load,
            pipeline,
            envoys,
            scenario: STEADY.to_owned(),
        })
        .collect();
    let by_envoys: Vec<Cell> = plan
        .envoys
        .iter()
        .map(|&count| Cell {
            load: plan.base_load,
            pipeline,
            envoys: count,
            scenario: STEADY.to_owned(),
        })
        .collect();
    let charts = [
        (
            "p99-by-load.png",
            "p99 (ms) by offered load",
            format!("load index: {:?} of capacity", plan.loads),
            by_load,
        ),
        (
            "p99-by-envoys.png",
            "p99 (ms) by number of Envoys",
            format!("Envoys index: {:?}", plan.envoys),
            by_envoys,
        ),
    ];
    for (file, title, x_label, cells) in charts {
        let series: Vec<(String, Vec<f64>)> = names
            .iter()
            .map(|policy| {
                (
                    policy.clone(),
                    cells.iter().map(|cell| p99(cell, policy)).collect(),
                )
            })
            .collect();
        if let Err(error) = write_line_chart(&folder.join(file), title, &x_label, &series) {
            tracing::warn!(%error, file, "plot not written");
        }
    }
}
