//! `lab matrix`: the cells of a bench matrix, their run time, and the tables drawn from their reports.

use super::pipeline::PipelinePreset;
use super::setup::BenchPolicy;
use std::fmt::Write;
use std::time::Duration;

/// The scenario without events.
pub const STEADY: &str = "steady";

/// Warm-up the shipped scenarios' event times are written for (the bench's default): runs with
/// a longer warm-up shift every event by the difference, so events fall in the measured part.
pub const SCENARIO_WARMUP: Duration = Duration::from_secs(25);

/// Time a policy run spends outside its warm-up and measured part (starting the emulator,
/// VictoriaMetrics, adaptive-eds, waiting for Envoy), measured ~2-5 s; per Envoy beyond the first.
const RUN_OVERHEAD: Duration = Duration::from_secs(6);
const ENVOY_OVERHEAD: Duration = Duration::from_secs(1);

/// One cell: a `lab bench` run of every policy under one set of conditions.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// Offered load, a fraction of the fleet's capacity.
    pub load: f64,
    /// Metric pipeline.
    pub pipeline: PipelinePreset,
    /// Envoy processes.
    pub envoys: u16,
    /// Scenario name (`steady`, or a file `lab/scenarios/<name>.yaml`).
    pub scenario: String,
}

impl Cell {
    /// Folder and row name, e.g. `load50-fast-k1-steady`.
    pub fn name(&self) -> String {
        format!(
            "load{:.0}-{}-k{}-{}",
            self.load * 100.0,
            self.pipeline.name(),
            self.envoys,
            self.scenario
        )
    }
}

/// What to run: the axes, the base point the star design varies them from, and the timings.
#[derive(Debug, Clone)]
pub struct MatrixPlan {
    /// Policies compared in every cell.
    pub policies: Vec<BenchPolicy>,
    /// Loads (first: none special; the base load is `base_load`).
    pub loads: Vec<f64>,
    /// Pipelines; the first is the base.
    pub pipelines: Vec<PipelinePreset>,
    /// Envoy counts; the first is the base.
    pub envoys: Vec<u16>,
    /// Scenarios (`steady` is the base and always run).
    pub scenarios: Vec<String>,
    /// Highest load factor of each scenario that raises the load (others: 1).
    pub peaks: Vec<(String, f64)>,
    /// Load of the cells that vary another axis.
    pub base_load: f64,
    /// Full cross product instead of the star.
    pub cross: bool,
    /// Warm-up and measured time of the 1 s pipelines (`fast`, `lrs`).
    pub fast_times: (Duration, Duration),
    /// Warm-up and measured time of the 15 s pipelines (`prod`, `stream-prod`).
    pub prod_times: (Duration, Duration),
}

impl MatrixPlan {
    /// The cells, without duplicates, in run order. The star design: every load (base pipeline,
    /// base K, steady), every K (base load and pipeline, steady), every pipeline (base load and K,
    /// steady), and every other scenario with every pipeline (base load and K). `cross`: every
    /// combination.
    pub fn cells(&self) -> Vec<Cell> {
        let mut cells: Vec<Cell> = Vec::new();
        let mut add = |load: f64, pipeline: PipelinePreset, envoys: u16, scenario: &str| {
            let cell = Cell {
                load,
                pipeline,
                envoys,
                scenario: scenario.to_owned(),
            };
            if !cells.contains(&cell) {
                cells.push(cell);
            }
        };
        let (Some(&pipeline), Some(&envoys)) = (self.pipelines.first(), self.envoys.first()) else {
            return Vec::new();
        };
        if self.cross {
            for &load in &self.loads {
                for &pipeline in &self.pipelines {
                    for &envoys in &self.envoys {
                        for scenario in &self.scenarios {
                            add(load, pipeline, envoys, scenario);
                        }
                    }
                }
            }
            return cells;
        }
        for &load in &self.loads {
            add(load, pipeline, envoys, STEADY);
        }
        for &count in &self.envoys {
            add(self.base_load, pipeline, count, STEADY);
        }
        for &preset in &self.pipelines {
            add(self.base_load, preset, envoys, STEADY);
        }
        for scenario in self.scenarios.iter().filter(|name| *name != STEADY) {
            for &preset in &self.pipelines {
                add(self.scenario_load(scenario), preset, envoys, scenario);
            }
        }
        cells
    }

    /// Load of a scenario's cells: the base load, or lower when the scenario raises the load
    /// past the highest of `loads` (load-rises' 3x from 0.3 peaks at 0.9).
    pub fn scenario_load(&self, scenario: &str) -> f64 {
        let peak = self
            .peaks
            .iter()
            .find(|(name, _)| name == scenario)
            .map_or(1.0, |(_, peak)| *peak);
        let highest = self.loads.iter().copied().fold(self.base_load, f64::max);
        if self.base_load * peak > highest {
            highest / peak
        } else {
            self.base_load
        }
    }

    /// Warm-up and measured time of a cell's runs.
    pub fn times(&self, cell: &Cell) -> (Duration, Duration) {
        match cell.pipeline {
            PipelinePreset::Fast | PipelinePreset::Lrs => self.fast_times,
            PipelinePreset::Prod | PipelinePreset::StreamProd => self.prod_times,
        }
    }

    /// Expected run time of one cell: each policy's warm-up, measured part and start-up.
    pub fn cell_time(&self, cell: &Cell) -> Duration {
        let (warmup, measure) = self.times(cell);
        let per_run = warmup + measure + RUN_OVERHEAD + ENVOY_OVERHEAD * u32::from(cell.envoys - 1);
        per_run * u32::try_from(self.policies.len()).unwrap_or(u32::MAX)
    }

    /// Expected run time of the whole matrix.
    pub fn estimate(&self) -> Duration {
        self.cells().iter().map(|cell| self.cell_time(cell)).sum()
    }
}

/// What the matrix keeps of one policy's run, read back from a cell's `report.md`.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyFigures {
    /// Policy name as in the report.
    pub policy: String,
    /// p99 of the served requests, ms.
    pub p99: f64,
    /// Share of the measured requests answered non-2xx, in [0, 1].
    pub non_2xx: f64,
    /// Highest over lowest pod utilization.
    pub util_spread: f64,
    /// Stack CPU as a share of the 2 cores, in [0, 1] (NaN when absent).
    pub stack_cpu: f64,
}

fn cells_of(line: &str) -> Vec<&str> {
    line.trim()
        .trim_matches('|')
        .split('|')
        .map(str::trim)
        .collect()
}

fn percent(cell: &str) -> Option<f64> {
    cell.strip_suffix('%')?
        .parse::<f64>()
        .ok()
        .map(|value| value / 100.0)
}

/// The figures of a cell an earlier run of the matrix finished, to keep instead of running it
/// again: its report was written by `lab bench` with the same arguments (`bench_args`, the
/// command line after the binary) and holds every one of `policies` (a bench stopped part way
/// has written only the policies before it).
pub fn finished_cell(
    report: &str,
    bench_args: &str,
    policies: &[String],
) -> Option<Vec<PolicyFigures>> {
    let command = report
        .lines()
        .find_map(|line| line.strip_prefix("Command: `"))?
        .strip_suffix('`')?;
    let (_binary, args) = command.split_once(' ')?;
    if args != bench_args {
        return None;
    }
    let figures = figures_from_report(report);
    policies
        .iter()
        .all(|policy| figures.iter().any(|entry| &entry.policy == policy))
        .then_some(figures)
}

/// Reads each policy's figures from a bench report (summary and machine-cost tables, columns
/// found by their names).
pub fn figures_from_report(text: &str) -> Vec<PolicyFigures> {
    let mut figures: Vec<PolicyFigures> = Vec::new();
    let mut header: Vec<String> = Vec::new();
    for line in text.lines() {
        if !line.starts_with('|') {
            header.clear();
            continue;
        }
        if line.starts_with("|---") {
            continue;
        }
        let row = cells_of(line);
        if row.first() == Some(&"policy") {
            header = row.iter().map(|cell| (*cell).to_owned()).collect();
            continue;
        }
        let column = |name: &str| {
            header
                .iter()
                .position(|cell| cell == name)
                .and_then(|index| row.get(index).copied())
        };
        if let (Some(p99), Some(non_2xx)) = (column("p99 ms"), column("non-2xx")) {
            figures.push(PolicyFigures {
                policy: row[0].to_owned(),
                p99: p99.parse().unwrap_or(f64::NAN),
                non_2xx: percent(non_2xx).unwrap_or(f64::NAN),
                util_spread: column("max/min")
                    .and_then(|cell| cell.parse().ok())
                    .unwrap_or(f64::NAN),
                stack_cpu: f64::NAN,
            });
        } else if let Some(share) = column("stack / 2 cores").and_then(percent) {
            if let Some(entry) = figures.iter_mut().find(|entry| entry.policy == row[0]) {
                entry.stack_cpu = share;
            }
        }
    }
    figures
}

/// One cell's outcome for the tables: its figures, or why it has none.
#[derive(Debug, Clone)]
pub struct CellOutcome {
    /// The cell.
    pub cell: Cell,
    /// Per policy, or the error that stopped the cell.
    pub figures: Result<Vec<PolicyFigures>, String>,
}

fn ratio_to_lr(figures: &[PolicyFigures], value: impl Fn(&PolicyFigures) -> f64) -> Vec<f64> {
    let base = figures
        .iter()
        .find(|entry| entry.policy == "least_request")
        .map_or(f64::NAN, &value);
    figures.iter().map(|entry| value(entry) / base).collect()
}

fn fmt_ratio(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.2}")
    } else {
        "-".to_owned()
    }
}

/// One figure of a policy's run, for a pivot table.
type Figure = fn(&PolicyFigures) -> f64;

/// The matrix's markdown: one table of every cell (p99 and its ratio to LEAST_REQUEST, non-2xx
/// and its ratio, utilization max/min, stack CPU per policy), then one pivot per figure.
pub fn render(outcomes: &[CellOutcome], policies: &[String]) -> String {
    let mut text = String::new();
    let pivots: [(&str, Figure, bool); 4] = [
        ("p99 ms", |entry| entry.p99, false),
        ("p99 / LEAST_REQUEST", |entry| entry.p99, true),
        ("non-2xx / LEAST_REQUEST", |entry| entry.non_2xx, true),
        ("utilization max/min", |entry| entry.util_spread, false),
    ];
    for (title, value, relative) in pivots {
        let _ = writeln!(text, "\n### {title}\n");
        let _ = write!(text, "| cell |");
        for policy in policies {
            let _ = write!(text, " {policy} |");
        }
        let _ = writeln!(text, "\n|---|{}", "---|".repeat(policies.len()));
        for outcome in outcomes {
            let _ = write!(text, "| {} |", outcome.cell.name());
            match &outcome.figures {
                Ok(figures) => {
                    let values: Vec<f64> = if relative {
                        ratio_to_lr(figures, value)
                    } else {
                        figures.iter().map(value).collect()
                    };
                    for policy in policies {
                        let cell = figures
                            .iter()
                            .position(|entry| &entry.policy == policy)
                            .map_or("-".to_owned(), |index| fmt_ratio(values[index]));
                        let _ = write!(text, " {cell} |");
                    }
                }
                Err(error) => {
                    let _ = write!(text, " failed: {} |", error.replace('|', "/"));
                    text.push_str(&" |".repeat(policies.len().saturating_sub(1)));
                }
            }
            text.push('\n');
        }
    }
    let _ = writeln!(
        text,
        "\n### non-2xx share and stack CPU (share of the 2 cores)\n"
    );
    let _ = write!(text, "| cell |");
    for policy in policies {
        let _ = write!(text, " {policy} |");
    }
    let _ = writeln!(text, "\n|---|{}", "---|".repeat(policies.len()));
    for outcome in outcomes {
        let Ok(figures) = &outcome.figures else {
            continue;
        };
        let _ = write!(text, "| {} |", outcome.cell.name());
        for policy in policies {
            match figures.iter().find(|entry| &entry.policy == policy) {
                Some(entry) => {
                    let _ = write!(
                        text,
                        " {:.3}% / {:.0}% |",
                        entry.non_2xx * 100.0,
                        entry.stack_cpu * 100.0
                    );
                }
                None => text.push_str(" - |"),
            }
        }
        text.push('\n');
    }
    text
}

/// Formats a run time as hours and minutes.
pub fn hours_minutes(duration: Duration) -> String {
    let minutes = duration.as_secs().div_ceil(60);
    format!("{} h {:02} min", minutes / 60, minutes % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_plan(cross: bool) -> MatrixPlan {
        MatrixPlan {
            policies: vec![
                BenchPolicy::LeastRequest,
                BenchPolicy::Cswrr,
                BenchPolicy::CapacityBalance,
                BenchPolicy::CapacityLatency,
            ],
            loads: vec![0.3, 0.5, 0.7, 0.9],
            pipelines: PipelinePreset::ALL.to_vec(),
            envoys: vec![1, 4, 8],
            scenarios: [
                "steady",
                "pod-fails",
                "node-slows",
                "load-rises",
                "rolling-restart",
            ]
            .map(str::to_owned)
            .to_vec(),
            peaks: vec![("load-rises".to_owned(), 3.0)],
            base_load: 0.5,
            cross,
            fast_times: (Duration::from_secs(25), Duration::from_secs(40)),
            prod_times: (Duration::from_secs(90), Duration::from_secs(60)),
        }
    }

    #[test]
    fn the_star_varies_one_axis_at_a_time_and_crosses_scenarios_with_pipelines() {
        let plan = default_plan(false);
        let cells = plan.cells();
        let names: Vec<String> = cells.iter().map(Cell::name).collect();
        // 4 loads + K 4 and 8 + 3 more pipelines + 4 scenarios x 4 pipelines.
        assert_eq!(cells.len(), 4 + 2 + 3 + 16, "{names:?}");
        assert_eq!(names[0], "load30-fast-k1-steady");
        assert!(names.contains(&"load50-fast-k8-steady".to_owned()));
        assert!(names.contains(&"load50-stream-prod-k1-pod-fails".to_owned()));
        assert!(
            names.contains(&"load30-lrs-k1-load-rises".to_owned()),
            "{names:?}"
        );
        assert!(!names.contains(&"load90-prod-k1-steady".to_owned()));
        assert_eq!(plan.times(&cells[0]), plan.fast_times);
        // A fast cell: 4 x (25 + 40 + 6) s; a prod cell: 4 x (90 + 60 + 6) s.
        assert_eq!(plan.cell_time(&cells[0]), Duration::from_secs(284));
        let total = plan.estimate().as_secs();
        assert!((9000..12_000).contains(&total), "{total}");
        assert_eq!(default_plan(true).cells().len(), 4 * 4 * 3 * 5);
    }

    #[test]
    fn figures_are_read_back_from_a_report_and_rendered_against_least_request() {
        let report = "| policy | p50 ms | p90 ms | p99 ms | non-2xx | client errors / timeouts | p99.9 ms | p99 / LR | non-2xx / LR | rate rps | fleet CPU cores | CPU / LR | util max | util min | max/min |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n| least_request | 1 | 2 | 10.00 | 2.00% | 0 / 0 | 12 | 1.00 | 1.000 | 700 | 9 | 1 | 0.6 | 0.3 | 2.0 |\n| eds_capacity_latency | 1 | 2 | 4.00 | 0.500% | 0 / 0 | 6 | 0.40 | 0.250 | 700 | 8 | 0.9 | 0.7 | 0.1 | 7.0 |\n\nMachine cost\n\n| policy | envoy (all) | load generator | emulator | metrics (VictoriaMetrics or vmagent) | adaptive-eds | total | stack / 2 cores | whole machine | send lateness us |\n|---|---|---|---|---|---|---|---|---|---|\n| least_request | 0.3 | 0.2 | 0.3 | 0.1 | 0.0 | 0.9 | 45% | 1.0 | 10 |\n";
        let figures = figures_from_report(report);
        assert_eq!(figures.len(), 2);
        assert_eq!(figures[0].p99, 10.0);
        assert!((figures[1].non_2xx - 0.005).abs() < 1e-12);
        assert!((figures[0].stack_cpu - 0.45).abs() < 1e-12);
        assert!(figures[1].stack_cpu.is_nan());
        let cell = Cell {
            load: 0.5,
            pipeline: PipelinePreset::Fast,
            envoys: 1,
            scenario: STEADY.to_owned(),
        };
        let outcomes = [
            CellOutcome {
                cell: cell.clone(),
                figures: Ok(figures),
            },
            CellOutcome {
                cell: Cell { envoys: 4, ..cell },
                figures: Err("envoy exited".to_owned()),
            },
        ];
        let policies = [
            "least_request".to_owned(),
            "eds_capacity_latency".to_owned(),
        ];
        let text = render(&outcomes, &policies);
        assert!(
            text.contains("| load50-fast-k1-steady | 1.00 | 0.40 |"),
            "{text}"
        );
        assert!(
            text.contains("| load50-fast-k1-steady | 1.00 | 0.25 |"),
            "{text}"
        );
        assert!(
            text.contains("| load50-fast-k4-steady | failed: envoy exited | |"),
            "{text}"
        );
        assert!(text.contains("| 2.000% / 45% |"), "{text}");
        assert_eq!(
            hours_minutes(Duration::from_secs(3 * 3600 + 61)),
            "3 h 02 min"
        );
    }

    #[test]
    fn a_cell_is_kept_only_when_the_same_bench_wrote_every_policy() {
        let table =
            "| policy | p99 ms | non-2xx |\n|---|---|---|\n| least_request | 10.00 | 2.00% |\n";
        let second = "| eds_capacity_latency | 4.00 | 0.500% |\n";
        let args = "bench --fleet f.yaml --policy least_request,capacity_latency --load 0.5";
        let report = format!("# lab bench\n\nCommand: `/x/lab {args}`\n\n{table}{second}");
        let policies = [
            "least_request".to_owned(),
            "eds_capacity_latency".to_owned(),
        ];
        let kept = finished_cell(&report, args, &policies).map(|figures| figures.len());
        assert_eq!(kept, Some(2));
        // Stopped after the first policy.
        let partial = format!("Command: `/x/lab {args}`\n\n{table}");
        assert_eq!(finished_cell(&partial, args, &policies), None);
        // Written by another command (here another load).
        let other = args.replace("0.5", "0.7");
        assert_eq!(finished_cell(&report, &other, &policies), None);
        assert_eq!(finished_cell("no report", args, &policies), None);
    }
}
