//! Results of `lab bench` runs and their markdown rendering.

use super::loadgen::LoadOutcome;
use super::utilization::{Busiest, CEILING};
use hdrhistogram::Histogram;
use std::fmt::Write;
use std::time::Duration;

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
    /// Of this pod's answers, the share that were errors (its own 503s).
    pub error_ratio: f64,
}

/// CPU used by each process of the run over the measured part, in cores.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessCpu {
    /// Every Envoy of the run together.
    pub envoy: f64,
    /// The load generator (this process).
    pub load_generator: f64,
    /// The emulated fleet.
    pub emulator: f64,
    /// VictoriaMetrics (pull) or vmagent (stream).
    pub victoria: f64,
    /// adaptive-eds (0 when not in the loop).
    pub server: f64,
    /// The whole machine, every process: above the stack's total is other work sharing it.
    pub machine: f64,
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
    /// When the scenario's first event happened, from the start of the measured part.
    pub event: Option<Duration>,
    /// The busiest pod of each window of the measured part (`None`: a counter read failed).
    pub busiest: Vec<Option<Busiest>>,
    /// A rolling restart's start and end, from the start of the measured part.
    pub restart: Option<(Duration, Duration)>,
    /// The new steady state after the event is measured from this many seconds after it
    /// ([`SETTLED_AFTER`], longer for slow pipelines).
    pub settled_after: u64,
}

/// How a run's p99 came back after a scenario event, from 1 s buckets of latencies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recovery {
    /// p99 (ms) of everything from the settling time past the event to the end: the new steady state.
    pub steady_p99: f64,
    /// Seconds after the event until the first [`SPAN`] window whose p99 is within
    /// [`TOLERANCE`] of the steady state (`None`: never).
    pub seconds: Option<u64>,
    /// The worst p99 of any later window over the steady state (oscillation shows here).
    pub worst_later: f64,
}

/// The new steady state is measured from at least this long after the event, seconds.
pub const SETTLED_AFTER: u64 = 15;
/// Length of the sliding windows, seconds (a 1 s window at 1,000 rps holds 10 requests above p99).
pub const SPAN: u64 = 5;
/// "Back" means within this factor of the steady-state p99 (the 1.2x).
pub const TOLERANCE: f64 = 1.2;

/// p99 in ms of the 1 s buckets `from..to` merged (0 when empty).
fn merged_p99(seconds: &[Histogram<u64>], from: usize, to: usize) -> f64 {
    let mut merged = Histogram::<u64>::new_from(&seconds[0]);
    for bucket in &seconds[from.min(seconds.len())..to.min(seconds.len())] {
        // Same bounds and precision (all made by the load generator), so adding cannot fail.
        let _ = merged.add(bucket);
    }
    quantile_ms(&merged, 0.99)
}

/// The recovery after an event `event` seconds into `seconds` (1 s latency buckets), the new
/// steady state measured from `settled_after` seconds after it: `None` when the run is too
/// short to see it.
pub fn recovery(
    seconds: &[Histogram<u64>],
    event: Duration,
    settled_after: u64,
) -> Option<Recovery> {
    let event = event.as_secs() as usize;
    let settled = event + settled_after as usize;
    if seconds.is_empty() || settled + SPAN as usize > seconds.len() {
        return None;
    }
    let steady_p99 = merged_p99(seconds, settled, seconds.len());
    let span = SPAN as usize;
    let ratios: Vec<f64> = (event..=seconds.len() - span)
        .map(|start| merged_p99(seconds, start, start + span) / steady_p99)
        .collect();
    let back = ratios.iter().position(|ratio| *ratio <= TOLERANCE);
    let worst_later = back.map_or(f64::NAN, |back| {
        ratios[back..].iter().copied().fold(0.0, f64::max)
    });
    Some(Recovery {
        steady_p99,
        seconds: back.map(|back| back as u64),
        worst_later,
    })
}

/// How a run's share of requests not served settled after a scenario event (a pod failing),
/// from the 1 s counts of requests sent and not served.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErrorsSettled {
    /// Share not served from the settling time past the event to the end: the new steady state.
    pub steady_share: f64,
    /// Seconds after the event until the first [`SPAN`] window whose share is within
    /// [`ERRORS_TOLERANCE`] of the steady state (`None`: never): when a failing pod was held.
    pub seconds: Option<u64>,
}

/// "Settled" means at most twice the steady share, plus 0.1 percentage point so that a steady
/// state without any error does not make one unlucky request count as unsettled.
pub const ERRORS_TOLERANCE: (f64, f64) = (2.0, 0.001);

/// The settling of the share not served after `event`, from per-second `sent` and `failed`
/// counts, the new steady state measured from `settled_after` seconds after it: `None` when the
/// run is too short to see it.
pub fn errors_settled(
    sent: &[u64],
    failed: &[u64],
    event: Duration,
    settled_after: u64,
) -> Option<ErrorsSettled> {
    let seconds = sent.len().min(failed.len());
    let event = event.as_secs() as usize;
    let settled = event + settled_after as usize;
    let span = SPAN as usize;
    if settled + span > seconds {
        return None;
    }
    let share = |from: usize, to: usize| {
        let sent: u64 = sent[from..to].iter().sum();
        let failed: u64 = failed[from..to].iter().sum();
        failed as f64 / sent.max(1) as f64
    };
    let steady_share = share(settled, seconds);
    let bound = steady_share * ERRORS_TOLERANCE.0 + ERRORS_TOLERANCE.1;
    let back = (event..=seconds - span).position(|start| share(start, start + span) <= bound);
    Some(ErrorsSettled {
        steady_share,
        seconds: back.map(|back| back as u64),
    })
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

    /// Served (2xx) requests per second.
    pub fn achieved_rate(&self) -> f64 {
        (self.load.sent - self.load.failed()) as f64 / self.seconds.max(1e-9)
    }

    /// True when some request of the run was not served or some pod answered an error.
    pub fn has_errors(&self) -> bool {
        self.load.failed() > 0 || self.pods.iter().any(|pod| pod.error_ratio > 0.0)
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
    error_windows(&mut text, runs);
    busiest(&mut text, runs);
    restarts(&mut text, runs);
    recoveries(&mut text, runs);
    text
}

/// The busiest pod of each window, beside adaptive-eds's default utilization ceiling.
fn busiest(text: &mut String, runs: &[RunOutcome]) {
    let count = runs.iter().map(|run| run.busiest.len()).max().unwrap_or(0);
    if count == 0 {
        return;
    }
    let _ = writeln!(
        text,
        "\nBusiest pod of each window: its utilization (CPU in use / cores) and name; adaptive-eds's default ceiling is {CEILING}\n"
    );
    let _ = write!(text, "| window (busiest pod) |");
    for run in runs {
        let _ = write!(text, " {} |", run.policy);
    }
    let _ = writeln!(text, "\n|---|{}", "---|".repeat(runs.len()));
    for index in 0..count {
        let _ = write!(text, "| {index} |");
        for run in runs {
            match run.busiest.get(index).and_then(Option::as_ref) {
                Some(busiest) => {
                    let _ = write!(text, " {:.2} {} |", busiest.utilization, busiest.pod);
                }
                None => text.push_str(" - |"),
            }
        }
        text.push('\n');
    }
    let _ = write!(text, "| highest |");
    for run in runs {
        let highest = run
            .busiest
            .iter()
            .flatten()
            .map(|busiest| busiest.utilization)
            .fold(0.0, f64::max);
        let _ = write!(text, " {highest:.2} |");
    }
    text.push('\n');
}

/// What a rolling restart did: p99 during it against the steady p99 before it, the requests
/// not served during it and the busiest pod of the windows it spans.
fn restarts(text: &mut String, runs: &[RunOutcome]) {
    if !runs.iter().any(|run| run.restart.is_some()) {
        return;
    }
    let _ = writeln!(
        text,
        "\nRolling restart: p99 of the seconds during it against the p99 of the measured seconds before it, requests not served during it, and the busiest pod of the windows it spans (ceiling {CEILING})\n"
    );
    let _ = writeln!(
        text,
        "| policy | from s | to s | steady p99 ms | p99 during ms | during / steady | not served during | highest utilization during | windows above the ceiling |"
    );
    let _ = writeln!(text, "|---|---|---|---|---|---|---|---|---|");
    for run in runs {
        let Some((from, to)) = run.restart else {
            continue;
        };
        // A restart that ran past the measured part (or began after it) is cut to it.
        let measured = run.load.sent_per_second.len();
        let last = (to.as_secs_f64().ceil() as usize).min(measured);
        let first = (from.as_secs() as usize).min(last);
        let steady = if first > 0 {
            merged_p99(&run.load.seconds, 0, first)
        } else {
            f64::NAN
        };
        let during = merged_p99(&run.load.seconds, first, last);
        let span = first..last;
        let sent: u64 = run.load.sent_per_second[span.clone()].iter().sum();
        let failed: u64 = run.load.failed_per_second[span].iter().sum();
        let window = run.load.seconds.len() as f64 / run.busiest.len().max(1) as f64;
        let spanned: Vec<&Busiest> = run
            .busiest
            .iter()
            .enumerate()
            .filter(|(index, _)| {
                let (start, end) = (*index as f64 * window, (*index + 1) as f64 * window);
                end > from.as_secs_f64() && start < to.as_secs_f64()
            })
            .filter_map(|(_, busiest)| busiest.as_ref())
            .collect();
        let highest = spanned
            .iter()
            .map(|busiest| busiest.utilization)
            .fold(0.0, f64::max);
        let above = spanned
            .iter()
            .filter(|busiest| busiest.utilization > CEILING)
            .count();
        let _ = writeln!(
            text,
            "| {} | {:.0} | {:.0} | {steady:.2} | {during:.2} | {:.2} | {failed} of {sent} | {highest:.2} | {above} of {} |",
            run.policy,
            from.as_secs_f64(),
            to.as_secs_f64(),
            during / steady,
            spanned.len(),
        );
    }
}

fn recoveries(text: &mut String, runs: &[RunOutcome]) {
    let rows: Vec<(&str, Recovery)> = runs
        .iter()
        .filter_map(|run| {
            let event = run.event?;
            Some((
                run.policy.as_str(),
                recovery(&run.load.seconds, event, run.settled_after)?,
            ))
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let settled = runs.first().map_or(SETTLED_AFTER, |run| run.settled_after);
    let _ = writeln!(
        text,
        "\nRecovery after the scenario's event: seconds until the p99 of a {SPAN} s window starting \
         then is within {TOLERANCE}x of the steady state (p99 from {settled} s after the event \
         to the end), and the worst later {SPAN} s window over that steady state\n"
    );
    let _ = writeln!(
        text,
        "| policy | steady p99 ms | back after s | worst later window / steady |"
    );
    let _ = writeln!(text, "|---|---|---|---|");
    for (policy, recovery) in rows {
        let back = recovery
            .seconds
            .map_or("never".to_owned(), |seconds| seconds.to_string());
        let _ = writeln!(
            text,
            "| {policy} | {:.2} | {back} | {:.2} |",
            recovery.steady_p99, recovery.worst_later
        );
    }
    errors_after_event(text, runs);
    around_event(text, runs);
}

/// When the share of requests not served settled after the event (runs with any), for the
/// time a failing pod took to be held.
fn errors_after_event(text: &mut String, runs: &[RunOutcome]) {
    if !runs.iter().any(|run| run.load.failed() > 0) {
        return;
    }
    let rows: Vec<(&str, ErrorsSettled)> = runs
        .iter()
        .filter_map(|run| {
            let settled = errors_settled(
                &run.load.sent_per_second,
                &run.load.failed_per_second,
                run.event?,
                run.settled_after,
            )?;
            Some((run.policy.as_str(), settled))
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let settled = runs.first().map_or(SETTLED_AFTER, |run| run.settled_after);
    let (factor, points) = ERRORS_TOLERANCE;
    let _ = writeln!(
        text,
        "\nRequests not served after the event: the share from {settled} s after it to the end, \
         and seconds until a {SPAN} s window starting then is within {factor}x of it (+{} \
         percentage point): for a failing pod, when it was held\n",
        points * 100.0
    );
    let _ = writeln!(
        text,
        "| policy | not served, new steady state | settled after s |"
    );
    let _ = writeln!(text, "|---|---|---|");
    for (policy, settled) in rows {
        let back = settled
            .seconds
            .map_or("never".to_owned(), |seconds| seconds.to_string());
        let _ = writeln!(
            text,
            "| {policy} | {} | {back} |",
            percent(settled.steady_share)
        );
    }
}

/// Seconds shown around an event: from `AROUND.0` before to `AROUND.1` after.
const AROUND: (u64, u64) = (2, 10);

/// p99 of each 1 s bucket around the event (a second at 1,000 rps holds ~10 requests above p99,
/// so single seconds are noisy; they show when the tail left, not how low it went).
fn around_event(text: &mut String, runs: &[RunOutcome]) {
    let Some(event) = runs.iter().find_map(|run| run.event) else {
        return;
    };
    let event = event.as_secs();
    let from = event.saturating_sub(AROUND.0);
    let _ = writeln!(
        text,
        "\np99 ms of each second around the event (second 0 holds the event)\n"
    );
    let _ = write!(text, "| policy |");
    for second in from..=event + AROUND.1 {
        let _ = write!(text, " {} |", second as i64 - event as i64);
    }
    let _ = writeln!(
        text,
        "\n|---|{}",
        "---|".repeat((event + AROUND.1 - from + 1) as usize)
    );
    for run in runs.iter().filter(|run| run.event.is_some()) {
        let _ = write!(text, "| {} |", run.policy);
        for second in from..=event + AROUND.1 {
            let p99 = run
                .load
                .seconds
                .get(second as usize)
                .map_or(0.0, |bucket| quantile_ms(bucket, 0.99));
            let _ = write!(text, " {p99:.1} |");
        }
        text.push('\n');
    }
    if !runs.iter().any(|run| run.load.failed() > 0) {
        return;
    }
    let _ = writeln!(
        text,
        "\nRequests not served in each second around the event, % of those sent\n"
    );
    let _ = write!(text, "| policy |");
    for second in from..=event + AROUND.1 {
        let _ = write!(text, " {} |", second as i64 - event as i64);
    }
    let _ = writeln!(
        text,
        "\n|---|{}",
        "---|".repeat((event + AROUND.1 - from + 1) as usize)
    );
    for run in runs.iter().filter(|run| run.event.is_some()) {
        let _ = write!(text, "| {} |", run.policy);
        for second in from..=event + AROUND.1 {
            let index = second as usize;
            let sent = run.load.sent_per_second.get(index).copied().unwrap_or(0);
            let failed = run.load.failed_per_second.get(index).copied().unwrap_or(0);
            let _ = write!(text, " {:.1} |", failed as f64 * 100.0 / sent.max(1) as f64);
        }
        text.push('\n');
    }
}

fn summary(text: &mut String, runs: &[RunOutcome]) {
    let baseline = runs.iter().find(|run| run.policy == "least_request");
    let base_p99 = baseline.map_or(f64::NAN, RunOutcome::p99);
    let base_cpu = baseline.map_or(f64::NAN, |run| run.fleet_cpu);
    let base_errors = baseline.map_or(f64::NAN, |run| run.load.non_2xx_rate());
    let _ = writeln!(
        text,
        "Latency is that of served (2xx) requests; `non-2xx` is the share of the measured \
         requests answered with another status (a pod's 503, or Envoy's own); client errors \
         (no answer: connection or protocol) and timeouts are counted apart.\n"
    );
    let _ = writeln!(text, "| policy | p50 ms | p90 ms | p99 ms | non-2xx | client errors / timeouts | p99.9 ms | p99 / LR | non-2xx / LR | rate rps | fleet CPU cores | CPU / LR | util max | util min | max/min |");
    let _ = writeln!(
        text,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for run in runs {
        let histogram = &run.load.overall;
        let (max, min) = run.utilization_range();
        let _ = writeln!(
            text,
            "| {} | {:.2} | {:.2} | {:.2} | {} | {} / {} | {:.2} | {:.2} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {:.3} | {:.1} |",
            run.policy,
            quantile_ms(histogram, 0.5),
            quantile_ms(histogram, 0.9),
            run.p99(),
            percent(run.load.non_2xx_rate()),
            run.load.client_errors,
            run.load.timeouts,
            quantile_ms(histogram, 0.999),
            run.p99() / base_p99,
            ratio(run.load.non_2xx_rate(), base_errors),
            run.achieved_rate(),
            run.fleet_cpu,
            run.fleet_cpu / base_cpu,
            max,
            min,
            max / min.max(1e-9),
        );
    }
}

/// Cores of the machine the bench runs on (the stack's CPU is reported as a share of them).
pub const MACHINE_CORES: f64 = 2.0;

fn machine(text: &mut String, runs: &[RunOutcome]) {
    let _ = writeln!(
        text,
        "\nMachine cost over the measured part, cores (of 2)\n"
    );
    let _ = writeln!(text, "| policy | envoy (all) | load generator | emulator | metrics (VictoriaMetrics or vmagent) | adaptive-eds | total | stack / 2 cores | whole machine | send lateness us |");
    let _ = writeln!(text, "|---|---|---|---|---|---|---|---|---|---|");
    for run in runs {
        let cpu = &run.process_cpu;
        let total = cpu.envoy + cpu.load_generator + cpu.emulator + cpu.victoria + cpu.server;
        let _ = writeln!(
            text,
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0}% | {:.2} | {:.0} |",
            run.policy,
            cpu.envoy,
            cpu.load_generator,
            cpu.emulator,
            cpu.victoria,
            cpu.server,
            total,
            total / MACHINE_CORES * 100.0,
            cpu.machine,
            run.load.mean_send_lateness_us
        );
    }
}

fn pods(text: &mut String, runs: &[RunOutcome]) {
    // The error share only shows when some run had errors, so healthy tables keep their shape.
    let errors = runs.iter().any(RunOutcome::has_errors);
    let _ = writeln!(
        text,
        "\nShare of requests / utilization / final Envoy weight{}, each pod\n",
        if errors {
            " / share of the pod's answers that were errors"
        } else {
            ""
        }
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
                        " {:.1}% / {:.2} / {}",
                        pod.share * 100.0,
                        pod.utilization,
                        pod.final_weight
                    );
                    if errors {
                        let _ = write!(text, " / {:.0}% err", pod.error_ratio * 100.0);
                    }
                    text.push_str(" |");
                }
                None => text.push_str(" - |"),
            }
        }
        text.push('\n');
    }
}

/// A share as a percentage with enough digits to tell 0.05% from 0.
fn percent(share: f64) -> String {
    if share == 0.0 {
        "0%".to_owned()
    } else if share < 0.01 {
        format!("{:.3}%", share * 100.0)
    } else {
        format!("{:.2}%", share * 100.0)
    }
}

/// `value / base`, or `-` when the base is zero (a baseline without errors).
fn ratio(value: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:.3}", value / base)
    } else {
        "-".to_owned()
    }
}

/// Share of the requests sent in each window that were not served, when some run had any.
fn error_windows(text: &mut String, runs: &[RunOutcome]) {
    if !runs.iter().any(|run| run.load.failed() > 0) {
        return;
    }
    let _ = writeln!(
        text,
        "\nRequests not served (non-2xx, client errors, timeouts) per window, % of those sent\n"
    );
    let _ = write!(text, "| window (errors %) |");
    for run in runs {
        let _ = write!(text, " {} |", run.policy);
    }
    let _ = writeln!(text, "\n|---|{}", "---|".repeat(runs.len()));
    let count = runs
        .iter()
        .map(|run| run.load.sent_per_window.len())
        .max()
        .unwrap_or(0);
    for index in 0..count {
        let _ = write!(text, "| {index} |");
        for run in runs {
            let sent = run.load.sent_per_window.get(index).copied().unwrap_or(0);
            let failed = run.load.failed_per_window.get(index).copied().unwrap_or(0);
            let _ = write!(text, " {} |", percent(failed as f64 / sent.max(1) as f64));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// 40 one-second buckets of 1,000 requests at 5 ms, except `slow` seconds from second 5 on,
    /// whose 1,000 requests take 20 ms.
    fn run(slow: usize) -> Vec<Histogram<u64>> {
        (0..40)
            .map(|second| {
                let mut bucket = Histogram::new_with_bounds(1, 60_000_000, 3).unwrap();
                let micros = if (5..5 + slow).contains(&second) {
                    20_000
                } else {
                    5_000
                };
                bucket.record_n(micros, 1000).unwrap();
                bucket
            })
            .collect()
    }

    fn outcome(policy: &str, sent: u64, non_2xx: u64, pod_errors: f64) -> RunOutcome {
        let mut overall = Histogram::new_with_bounds(1, 60_000_000, 3).unwrap();
        overall.record_n(5_000, sent - non_2xx).unwrap();
        RunOutcome {
            policy: policy.to_owned(),
            load: LoadOutcome {
                overall: overall.clone(),
                windows: vec![overall.clone()],
                seconds: vec![overall],
                sent,
                non_2xx,
                client_errors: 1,
                timeouts: 0,
                sent_per_second: vec![sent],
                failed_per_second: vec![non_2xx + 1],
                sent_per_window: vec![sent],
                failed_per_window: vec![non_2xx + 1],
                mean_send_lateness_us: 0.0,
            },
            seconds: 1.0,
            pods: vec![PodOutcome {
                name: "p-0".to_owned(),
                share: 1.0,
                utilization: 0.1,
                final_weight: 1,
                error_ratio: pod_errors,
            }],
            fleet_cpu: 1.0,
            process_cpu: ProcessCpu::default(),
            event: None,
            busiest: Vec::new(),
            restart: None,
            settled_after: SETTLED_AFTER,
        }
    }

    #[test]
    fn error_rates_show_beside_p99_with_their_ratio_to_least_request() {
        let text = render_markdown(&[
            outcome("least_request", 1000, 80, 0.08),
            outcome("eds_capacity_latency", 1000, 4, 0.004),
        ]);
        assert!(
            text.contains("| least_request | 5.00 | 5.00 | 5.00 | 8.00% | 1 / 0 |"),
            "{text}"
        );
        assert!(
            text.contains("| 0.400% | 1 / 0 | 5.00 | 1.00 | 0.050 |"),
            "{text}"
        );
        assert!(text.contains("/ 8% err |"), "{text}");
        assert!(text.contains("| window (errors %) |"), "{text}");
        assert!(text.contains("| 0 | 8.10% | 0.500% |"), "{text}");
    }

    #[test]
    fn the_machine_table_gives_the_stack_as_a_share_of_the_two_cores() {
        let mut run = outcome("least_request", 10, 0, 0.0);
        run.process_cpu = ProcessCpu {
            envoy: 0.5,
            load_generator: 0.3,
            emulator: 0.4,
            victoria: 0.1,
            server: 0.2,
            machine: 1.9,
        };
        let text = render_markdown(&[run]);
        assert!(text.contains("| 1.50 | 75% | 1.90 |"), "{text}");
    }

    #[test]
    fn a_rolling_restart_compares_p99_during_it_with_the_steady_state() {
        let seconds = run(10);
        let mut outcome = outcome("least_request", 10, 0, 0.0);
        outcome.load.seconds = seconds;
        outcome.load.sent_per_second = vec![100; 40];
        outcome.load.failed_per_second = vec![0; 40];
        outcome.load.failed_per_second[7] = 3;
        outcome.busiest = (0..8)
            .map(|index| {
                Some(Busiest {
                    pod: format!("p-{index}"),
                    utilization: 0.1 * index as f64,
                })
            })
            .collect();
        outcome.restart = Some((Duration::from_secs(5), Duration::from_secs(15)));
        let text = render_markdown(&[outcome]);
        // Seconds 0-4 at 5 ms, 5-14 at 20 ms; windows 1 and 2 (5-15 s) span the restart.
        assert!(
            text.contains(
                "| least_request | 5 | 15 | 5.00 | 20.02 | 4.00 | 3 of 1000 | 0.20 | 0 of 2 |"
            ),
            "{text}"
        );
        assert!(text.contains("| 7 | 0.70 p-7 |"), "{text}");
        assert!(text.contains("| highest | 0.70 |"), "{text}");
    }

    #[test]
    fn a_rolling_restart_past_the_measured_part_is_cut_to_it() {
        let mut outcome = outcome("least_request", 10, 0, 0.0);
        outcome.load.seconds = run(10);
        outcome.load.sent_per_second = vec![100; 40];
        outcome.load.failed_per_second = vec![0; 40];
        outcome.restart = Some((Duration::from_secs(75), Duration::from_secs(105)));
        let text = render_markdown(&[outcome]);
        assert!(text.contains("| least_request | 75 | 105 |"), "{text}");
        assert!(text.contains("| 0 of 0 |"), "{text}");
    }

    #[test]
    fn recovery_counts_the_seconds_until_a_window_is_back() {
        let found = recovery(&run(3), Duration::from_secs(5), SETTLED_AFTER).unwrap();
        assert!((found.steady_p99 - 5.0).abs() < 0.01, "{found:?}");
        // Windows starting at 5, 6, 7 hold slow seconds; the one at 8 is clean.
        assert_eq!(found.seconds, Some(3));
        assert!((found.worst_later - 1.0).abs() < 0.01, "{found:?}");
        let instant = recovery(&run(0), Duration::from_secs(5), SETTLED_AFTER).unwrap();
        assert_eq!(instant.seconds, Some(0));
    }

    #[test]
    fn errors_settle_when_a_window_is_within_twice_the_new_steady_share() {
        // 1000 requests a second; from second 5 a fifth fail until second 12, then 1%.
        let sent = vec![1000; 40];
        let failed: Vec<u64> = (0..40)
            .map(|second| match second {
                0..5 => 0,
                5..12 => 200,
                _ => 10,
            })
            .collect();
        let found = errors_settled(&sent, &failed, Duration::from_secs(5), SETTLED_AFTER).unwrap();
        assert!((found.steady_share - 0.01).abs() < 1e-9, "{found:?}");
        // The window starting at 12 is the first without a failing second: 7 s after the event.
        assert_eq!(found.seconds, Some(7));
        // Failing the same share throughout (LEAST_REQUEST) is settled at once.
        let steady: Vec<u64> = (0..40)
            .map(|second| if second < 5 { 0 } else { 100 })
            .collect();
        let at_once = errors_settled(&sent, &steady, Duration::from_secs(5), SETTLED_AFTER);
        assert_eq!(at_once.map(|found| found.seconds), Some(Some(0)));
        assert!(errors_settled(&sent, &failed, Duration::from_secs(25), SETTLED_AFTER).is_none());
        let mut outcome = outcome("least_request", 40_000, 1_570, 0.0);
        outcome.load.seconds = run(0);
        outcome.load.sent_per_second = sent;
        outcome.load.failed_per_second = failed;
        outcome.event = Some(Duration::from_secs(5));
        let text = render_markdown(&[outcome]);
        assert!(text.contains("| least_request | 1.00% | 7 |"), "{text}");
    }

    #[test]
    fn a_lasting_change_is_the_new_steady_state_and_a_short_run_says_nothing() {
        let found = recovery(&run(35), Duration::from_secs(5), SETTLED_AFTER).unwrap();
        // Everything after the event is slow: the steady state is the slow one, back at once.
        assert_eq!(found.seconds, Some(0));
        assert!(recovery(&run(3), Duration::from_secs(25), SETTLED_AFTER).is_none());
    }
}
