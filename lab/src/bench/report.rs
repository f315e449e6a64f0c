//! Results of `lab bench` runs and their markdown rendering.

use super::loadgen::LoadOutcome;
use hdrhistogram::Histogram;
use std::fmt::Write;

/// What one pod did during the measured part of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct PodOutcome {
    /// Pod name.
    pub name: String,
    /// Fraction of the fleet's answered requests.
    pub share: f64,
    /// CPU in use over cores (busy slots over slots).
    pub utilization: f64,
    /// Envoy's weight for this pod at the end of the run (1 when unweighted).
    pub final_weight: u64,
}

/// CPU used by each process of the run over the measured part, in cores.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessCpu {
    /// Envoy.
    pub envoy: f64,
    /// The load generator (this process).
    pub load_generator: f64,
    /// The emulated fleet.
    pub emulator: f64,
    /// VictoriaMetrics.
    pub victoria: f64,
    /// adaptive-eds (0 when not in the loop).
    pub server: f64,
}

/// Outcome of one policy's run.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// Policy name.
    pub policy: String,
    /// Latencies and counts.
    pub load: LoadOutcome,
    /// Measured seconds.
    pub seconds: f64,
    /// Per pod, in fleet order.
    pub pods: Vec<PodOutcome>,
    /// Cores used by the fleet (sum of the emulator's CPU counter rates).
    pub fleet_cpu: f64,
    /// Machine cost of the run.
    pub process_cpu: ProcessCpu,
}

/// Milliseconds at `quantile` of a microsecond histogram (0 when empty).
pub fn quantile_ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    if histogram.is_empty() {
        return 0.0;
    }
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

impl RunOutcome {
    /// p99 in milliseconds.
    pub fn p99(&self) -> f64 {
        quantile_ms(&self.load.overall, 0.99)
    }

    /// Answered requests per second.
    pub fn achieved_rate(&self) -> f64 {
        (self.load.sent - self.load.errors) as f64 / self.seconds.max(1e-9)
    }

    /// Highest and lowest pod utilization.
    pub fn utilization_range(&self) -> (f64, f64) {
        let values = self.pods.iter().map(|pod| pod.utilization);
        let max = values.clone().fold(0.0, f64::max);
        let min = values.fold(f64::INFINITY, f64::min);
        (max, if min.is_finite() { min } else { 0.0 })
    }
}

/// Renders the runs: summary with ratios to LEAST_REQUEST, machine cost, pods, p99 per window.
pub fn render_markdown(runs: &[RunOutcome]) -> String {
    let mut text = String::new();
    summary(&mut text, runs);
    machine(&mut text, runs);
    pods(&mut text, runs);
    windows(&mut text, runs);
    text
}

fn summary(text: &mut String, runs: &[RunOutcome]) {
    let baseline = runs.iter().find(|run| run.policy == "least_request");
    let base_p99 = baseline.map_or(f64::NAN, RunOutcome::p99);
    let base_cpu = baseline.map_or(f64::NAN, |run| run.fleet_cpu);
    let _ = writeln!(text, "| policy | p50 ms | p90 ms | p99 ms | p99.9 ms | p99 / LR | rate rps | errors | fleet CPU cores | CPU / LR | util max | util min | max/min |");
    let _ = writeln!(
        text,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for run in runs {
        let histogram = &run.load.overall;
        let (max, min) = run.utilization_range();
        let _ = writeln!(
            text,
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {:.2} | {:.2} | {:.2} | {:.3} | {:.1} |",
            run.policy,
            quantile_ms(histogram, 0.5),
            quantile_ms(histogram, 0.9),
            run.p99(),
            quantile_ms(histogram, 0.999),
            run.p99() / base_p99,
            run.achieved_rate(),
            run.load.errors,
            run.fleet_cpu,
            run.fleet_cpu / base_cpu,
            max,
            min,
            max / min.max(1e-9),
        );
    }
}

fn machine(text: &mut String, runs: &[RunOutcome]) {
    let _ = writeln!(
        text,
        "\nMachine cost over the measured part, cores (of 2)\n"
    );
    let _ = writeln!(text, "| policy | envoy | load generator | emulator | victoria-metrics | adaptive-eds | total | send lateness us |");
    let _ = writeln!(text, "|---|---|---|---|---|---|---|---|");
    for run in runs {
        let cpu = &run.process_cpu;
        let total = cpu.envoy + cpu.load_generator + cpu.emulator + cpu.victoria + cpu.server;
        let _ = writeln!(
            text,
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} |",
            run.policy,
            cpu.envoy,
            cpu.load_generator,
            cpu.emulator,
            cpu.victoria,
            cpu.server,
            total,
            run.load.mean_send_lateness_us
        );
    }
}

fn pods(text: &mut String, runs: &[RunOutcome]) {
    let _ = writeln!(
        text,
        "\nShare of requests / utilization / final Envoy weight, each pod\n"
    );
    let _ = write!(text, "| pod |");
    for run in runs {
        let _ = write!(text, " {} |", run.policy);
    }
    let _ = writeln!(text, "\n|---|{}", "---|".repeat(runs.len()));
    let names = runs.first().map(|run| run.pods.clone()).unwrap_or_default();
    for (index, pod) in names.iter().enumerate() {
        let _ = write!(text, "| {} |", pod.name);
        for run in runs {
            match run.pods.get(index) {
                Some(pod) => {
                    let _ = write!(
                        text,
                        " {:.1}% / {:.2} / {} |",
                        pod.share * 100.0,
                        pod.utilization,
                        pod.final_weight
                    );
                }
                None => text.push_str(" - |"),
            }
        }
        text.push('\n');
    }
}

fn windows(text: &mut String, runs: &[RunOutcome]) {
    let _ = writeln!(text, "\np99 ms per window (after the warm-up)\n");
    let _ = write!(text, "| window |");
    for run in runs {
        let _ = write!(text, " {} |", run.policy);
    }
    let _ = writeln!(text, "\n|---|{}", "---|".repeat(runs.len()));
    let count = runs
        .iter()
        .map(|run| run.load.windows.len())
        .max()
        .unwrap_or(0);
    for index in 0..count {
        let _ = write!(text, "| {index} |");
        for run in runs {
            let p99 = run
                .load
                .windows
                .get(index)
                .map_or(0.0, |window| quantile_ms(window, 0.99));
            let _ = write!(text, " {p99:.2} |");
        }
        text.push('\n');
    }
}
