//! Results of a simulation run and their markdown rendering.

use super::balancer::Policy;
use super::latency::LatencySummary;
use std::fmt::Write;
use std::time::Duration;

/// Per-endpoint outcome of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointReport {
    /// Pod name.
    pub name: String,
    /// Servers.
    pub cores: u32,
    /// Mean service time (tail included), milliseconds, before slowdowns.
    pub mean_ms: f64,
    /// Fraction of all completed requests (errors included) answered here, over the whole run.
    pub share: f64,
    /// Of this endpoint's completed requests, the fraction answered with an error.
    pub error_ratio: f64,
    /// Busy fraction of the endpoint's cores over the run.
    pub utilization: f64,
    /// Weight in force at the end (EDS weight, or client 0's CSWRR weight).
    pub final_weight: u32,
}

/// Outcome of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    /// Balancer the clients ran.
    pub policy: Policy,
    /// Name of the weight provider.
    pub provider: String,
    /// Name of the scenario.
    pub scenario: String,
    /// Simulated time.
    pub simulated: Duration,
    /// Requests that arrived.
    pub arrivals: u64,
    /// Latency over the run after the warm-up (requests served without error only).
    pub latency: LatencySummary,
    /// Requests answered with an error after the warm-up (not in `latency`).
    pub errors: u64,
    /// Per endpoint, in fleet order.
    pub endpoints: Vec<EndpointReport>,
    /// Latency per report window, in time order.
    pub windows: Vec<LatencySummary>,
    /// Length of each report window.
    pub window: Duration,
}

impl SimReport {
    /// Share of the requests completed after the warm-up that were answered with an error.
    pub fn error_rate(&self) -> f64 {
        let answered = self.latency.count + self.errors;
        self.errors as f64 / answered.max(1) as f64
    }

    /// True when some endpoint answered an error during the run.
    pub fn has_errors(&self) -> bool {
        self.endpoints
            .iter()
            .any(|endpoint| endpoint.error_ratio > 0.0)
    }
}

/// A report with the wall time its run took.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedReport {
    /// The run's outcome.
    pub report: SimReport,
    /// Wall time spent simulating.
    pub wall: Duration,
}

impl TimedReport {
    /// Simulated seconds per wall-clock second.
    pub fn speed(&self) -> f64 {
        self.report.simulated.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }
}

fn label(report: &SimReport) -> String {
    format!("{} / {}", report.policy.name(), report.provider)
}

/// Renders runs as markdown: a summary, per-endpoint share and utilization, p99 over time.
pub fn render_markdown(runs: &[TimedReport]) -> String {
    let mut text = String::new();
    render_summary(&mut text, runs);
    render_endpoints(&mut text, runs);
    render_windows(&mut text, runs);
    text
}

fn render_summary(text: &mut String, runs: &[TimedReport]) {
    let _ = writeln!(text, "| policy / weights | scenario | arrivals | served | mean ms | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | max util | sim s per wall s |");
    let _ = writeln!(text, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for run in runs {
        let report = &run.report;
        let latency = &report.latency;
        let max_utilization = report
            .endpoints
            .iter()
            .map(|endpoint| endpoint.utilization)
            .fold(0.0, f64::max);
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}% | {:.2} | {:.1} |",
            label(report),
            report.scenario,
            report.arrivals,
            latency.count,
            latency.mean_ms,
            latency.p50_ms,
            latency.p90_ms,
            latency.p99_ms,
            latency.p999_ms,
            report.error_rate() * 100.0,
            max_utilization,
            run.speed()
        );
    }
}

/// Most endpoints listed per table; larger fleets show their busiest endpoints only.
const MAX_ENDPOINT_ROWS: usize = 20;

fn busiest_endpoints(report: &SimReport) -> Vec<usize> {
    let mut order: Vec<usize> = (0..report.endpoints.len()).collect();
    if order.len() > MAX_ENDPOINT_ROWS {
        order.sort_by(|&left, &right| {
            report.endpoints[right]
                .utilization
                .total_cmp(&report.endpoints[left].utilization)
        });
        order.truncate(MAX_ENDPOINT_ROWS);
    }
    order
}

fn render_endpoints(text: &mut String, runs: &[TimedReport]) {
    let Some(first) = runs.first() else { return };
    let rows = busiest_endpoints(&first.report);
    let title = if rows.len() < first.report.endpoints.len() {
        format!("the {} busiest endpoints of the first run", rows.len())
    } else {
        "each endpoint".to_owned()
    };
    // The error ratio only shows when some run had errors, so the tables of healthy fleets
    // keep their shape.
    let errors = runs.iter().any(|run| run.report.has_errors());
    let columns = if errors {
        "Share of requests / utilization / final weight / error ratio"
    } else {
        "Share of requests / utilization / final weight"
    };
    let _ = write!(text, "\n{columns}, {title}\n\n| pod | cores | mean ms |");
    for run in runs {
        let _ = write!(text, " {} |", label(&run.report));
    }
    let _ = write!(text, "\n|---|---|---|");
    for _ in runs {
        let _ = write!(text, "---|");
    }
    for index in rows {
        let endpoint = &first.report.endpoints[index];
        let _ = write!(
            text,
            "\n| {} | {} | {:.1} |",
            endpoint.name, endpoint.cores, endpoint.mean_ms
        );
        for run in runs {
            if let Some(other) = run.report.endpoints.get(index) {
                let _ = write!(
                    text,
                    " {:.2}% / {:.2} / {}",
                    other.share * 100.0,
                    other.utilization,
                    other.final_weight
                );
                if errors {
                    let _ = write!(text, " / {:.0}%", other.error_ratio * 100.0);
                }
                text.push_str(" |");
            }
        }
    }
    text.push('\n');
}

fn render_windows(text: &mut String, runs: &[TimedReport]) {
    let Some(first) = runs.first() else { return };
    let window = first.report.window.as_secs_f64();
    let _ = write!(
        text,
        "\np99 ms per {window:.0} s window\n\n| window start s |"
    );
    for run in runs {
        let _ = write!(text, " {} |", label(&run.report));
    }
    let _ = write!(text, "\n|---|");
    for _ in runs {
        let _ = write!(text, "---|");
    }
    let count = runs
        .iter()
        .map(|run| run.report.windows.len())
        .max()
        .unwrap_or(0);
    for index in 0..count {
        let _ = write!(text, "\n| {:.0} |", index as f64 * window);
        for run in runs {
            let p99 = run
                .report
                .windows
                .get(index)
                .map_or(0.0, |summary| summary.p99_ms);
            let _ = write!(text, " {p99:.2} |");
        }
    }
    text.push('\n');
}
