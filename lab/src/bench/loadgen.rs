//! Open-loop load generator: Poisson arrivals on absolute times, latency from the intended send time.

use crate::fleet::Scenario;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// What load to offer and which part of it to measure.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Base arrival rate, requests per second, before scenario load factors.
    pub rate: f64,
    /// Warm-up excluded from the figures.
    pub warmup: Duration,
    /// Measured time after the warm-up.
    pub measure: Duration,
    /// Length of the p99-over-time windows.
    pub window: Duration,
    /// Seed of the arrival process.
    pub seed: u64,
    /// Give up on a request after this long (counted as an error).
    pub timeout: Duration,
}

/// Latencies and counts of the measured part of a run (microseconds in the histograms).
#[derive(Debug, Clone)]
pub struct LoadOutcome {
    /// Every measured request that got a 2xx answer (errors are counted, not timed: a fast
    /// 503 would pull the percentiles down).
    pub overall: Histogram<u64>,
    /// Per window after the warm-up, by intended send time.
    pub windows: Vec<Histogram<u64>>,
    /// Per second after the warm-up, by intended send time (for recovery times).
    pub seconds: Vec<Histogram<u64>>,
    /// Requests sent in the measured part.
    pub sent: u64,
    /// Of those, answered with a status other than 2xx (a pod's 503, or Envoy's own).
    pub non_2xx: u64,
    /// Of those, failed without an answer: connection or protocol errors on the client side.
    pub client_errors: u64,
    /// Of those, not answered within the plan's timeout.
    pub timeouts: u64,
    /// Requests sent per second after the warm-up, by intended send time.
    pub sent_per_second: Vec<u64>,
    /// Of those, not served (non-2xx, client error or timeout), per second.
    pub failed_per_second: Vec<u64>,
    /// Requests sent per window (as `windows`).
    pub sent_per_window: Vec<u64>,
    /// Of those, not served, per window.
    pub failed_per_window: Vec<u64>,
    /// Mean lateness of the sender behind the schedule, microseconds (a generator-fidelity figure).
    pub mean_send_lateness_us: f64,
}

impl LoadOutcome {
    /// Requests of the measured part that were not served: non-2xx, client errors and timeouts.
    pub fn failed(&self) -> u64 {
        self.non_2xx + self.client_errors + self.timeouts
    }

    /// Share of the measured requests answered with a non-2xx status.
    pub fn non_2xx_rate(&self) -> f64 {
        self.non_2xx as f64 / self.sent.max(1) as f64
    }
}

fn histogram() -> Histogram<u64> {
    // 1 us .. 60 s, 3 significant digits: constant, valid bounds (not input).
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
}

#[derive(Debug)]
struct Recorder {
    outcome: LoadOutcome,
    lateness_total_us: f64,
    lateness_count: u64,
}

impl Recorder {
    fn new(plan: &LoadPlan) -> Self {
        let windows = plan.measure.as_secs_f64() / plan.window.as_secs_f64();
        Self {
            outcome: LoadOutcome {
                overall: histogram(),
                windows: (0..windows.ceil() as usize).map(|_| histogram()).collect(),
                seconds: (0..plan.measure.as_secs_f64().ceil() as usize)
                    .map(|_| histogram())
                    .collect(),
                sent: 0,
                non_2xx: 0,
                client_errors: 0,
                timeouts: 0,
                sent_per_second: vec![0; plan.measure.as_secs_f64().ceil() as usize],
                failed_per_second: vec![0; plan.measure.as_secs_f64().ceil() as usize],
                sent_per_window: vec![0; windows.ceil() as usize],
                failed_per_window: vec![0; windows.ceil() as usize],
                mean_send_lateness_us: 0.0,
            },
            lateness_total_us: 0.0,
            lateness_count: 0,
        }
    }

    fn record(&mut self, offset: Duration, plan: &LoadPlan, result: Exchange, latency: Duration) {
        let Some(measured) = offset.checked_sub(plan.warmup) else {
            return;
        };
        let second = measured.as_secs() as usize;
        let window = (measured.as_secs_f64() / plan.window.as_secs_f64()) as usize;
        self.outcome.sent += 1;
        for (counts, index) in [
            (&mut self.outcome.sent_per_second, second),
            (&mut self.outcome.sent_per_window, window),
        ] {
            if let Some(count) = counts.get_mut(index) {
                *count += 1;
            }
        }
        let counter = match result {
            Exchange::Served => None,
            Exchange::Status => Some(&mut self.outcome.non_2xx),
            Exchange::ClientError => Some(&mut self.outcome.client_errors),
            Exchange::TimedOut => Some(&mut self.outcome.timeouts),
        };
        if let Some(counter) = counter {
            *counter += 1;
            for (counts, index) in [
                (&mut self.outcome.failed_per_second, second),
                (&mut self.outcome.failed_per_window, window),
            ] {
                if let Some(count) = counts.get_mut(index) {
                    *count += 1;
                }
            }
            return;
        }
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.outcome.overall.saturating_record(micros);
        if let Some(window) = self.outcome.windows.get_mut(window) {
            window.saturating_record(micros);
        }
        if let Some(second) = self.outcome.seconds.get_mut(second) {
            second.saturating_record(micros);
        }
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exchange {
    /// A 2xx answer with its whole body.
    Served,
    /// A whole answer with another status.
    Status,
    /// No answer: the connection or the protocol failed.
    ClientError,
    /// No answer within the timeout.
    TimedOut,
}

/// Sends one GET and tells how it ended.
async fn send(client: &HttpClient, uri: hyper::Uri, timeout: Duration) -> Exchange {
    let exchange = async {
        let response = client.get(uri).await.ok()?;
        let ok = response.status().is_success();
        response.into_body().collect().await.ok()?;
        Some(ok)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Some(true)) => Exchange::Served,
        Ok(Some(false)) => Exchange::Status,
        Ok(None) => Exchange::ClientError,
        Err(_) => Exchange::TimedOut,
    }
}

/// Arrival offsets (from the start) of a Poisson process following the scenario's load
/// factors, each with the listener (of `listeners`) it goes to: drawn at random, so each
/// listener's share is a Poisson process of `1 / listeners` of the rate.
fn arrivals(plan: &LoadPlan, scenario: &Scenario, listeners: usize) -> Vec<(Duration, usize)> {
    let mut random = ChaCha8Rng::seed_from_u64(plan.seed);
    // A second stream, so the arrival times are the same whatever the number of listeners.
    let mut spread = ChaCha8Rng::seed_from_u64(plan.seed.wrapping_add(0x5eed));
    let total = plan.warmup + plan.measure;
    let mut offsets = Vec::new();
    let mut offset = Duration::ZERO;
    loop {
        let rate = plan.rate * scenario.load_factor_at(offset);
        let gap = Exp::new(rate)
            .map(|exp| exp.sample(&mut random))
            .unwrap_or(1.0);
        offset += Duration::from_secs_f64(gap);
        if offset >= total {
            return offsets;
        }
        let listener = if listeners > 1 {
            spread.random_range(0..listeners)
        } else {
            0
        };
        offsets.push((offset, listener));
    }
}

/// Sends each arrival's offset at its time from an OS thread: `thread::sleep` wakes within
/// tens of microseconds, where tokio's timer wheel rounds up to the next millisecond.
fn pace(
    offsets: Vec<(Duration, usize)>,
    start: std::time::Instant,
    sender: tokio::sync::mpsc::UnboundedSender<(Duration, usize)>,
) {
    for (offset, listener) in offsets {
        let intended = start + offset;
        let now = std::time::Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        if sender.send((offset, listener)).is_err() {
            return;
        }
    }
}

/// Offers Poisson load spread at random over `uris` (one per Envoy listener; none given, no
/// load) following `plan` and the scenario's load factors, into one set of histograms.
///
/// Arrivals are scheduled on absolute times from the start; the next request never waits for
/// an answer, and latency is measured from the intended send time, so a stalled sender shows
/// as latency instead of hiding it (no coordinated omission).
pub async fn drive(uris: &[hyper::Uri], plan: &LoadPlan, scenario: &Scenario) -> LoadOutcome {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(512)
        .build(connector);
    let recorder = Arc::new(Mutex::new(Recorder::new(plan)));
    let offsets = if uris.is_empty() {
        Vec::new()
    } else {
        arrivals(plan, scenario, uris.len())
    };
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let start = Instant::now();
    let start_std = start.into_std();
    let pacer = std::thread::spawn(move || pace(offsets, start_std, sender));
    let mut tasks = tokio::task::JoinSet::new();
    while let Some((offset, listener)) = receiver.recv().await {
        let intended = start + offset;
        let lateness = Instant::now().saturating_duration_since(intended);
        let Some(uri) = uris.get(listener).cloned() else {
            continue;
        };
        let (client, recorder, plan) = (client.clone(), recorder.clone(), plan.clone());
        tasks.spawn(async move {
            let result = send(&client, uri, plan.timeout).await;
            let latency = Instant::now().saturating_duration_since(intended);
            if let Ok(mut recorder) = recorder.lock() {
                recorder.lateness_total_us += lateness.as_secs_f64() * 1e6;
                recorder.lateness_count += 1;
                recorder.record(offset, &plan, result, latency);
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    let _ = pacer.join();
    while tasks.join_next().await.is_some() {}
    let recorder = recorder.lock().map(|recorder| {
        let mut outcome = recorder.outcome.clone();
        outcome.mean_send_lateness_us =
            recorder.lateness_total_us / recorder.lateness_count.max(1) as f64;
        outcome
    });
    recorder.unwrap_or_else(|poisoned| poisoned.into_inner().outcome.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_follow_the_rate_and_the_load_factor() {
        let plan = LoadPlan {
            rate: 1000.0,
            warmup: Duration::from_secs(1),
            measure: Duration::from_secs(9),
            window: Duration::from_secs(5),
            seed: 3,
            timeout: Duration::from_secs(1),
        };
        let scenario = Scenario {
            name: "rises".to_owned(),
            events: vec![crate::fleet::Event {
                at: Duration::from_secs(5),
                action: crate::fleet::Action::SetLoadFactor { factor: 3.0 },
            }],
        };
        let offsets = arrivals(&plan, &scenario, 1);
        let before = offsets
            .iter()
            .filter(|(offset, _)| offset.as_secs() < 5)
            .count();
        let after = offsets.len() - before;
        assert!((4700..5300).contains(&before), "{before}");
        assert!((14_000..16_000).contains(&after), "{after}");
        assert!(offsets.windows(2).all(|pair| pair[0].0 <= pair[1].0));
        assert!(offsets.iter().all(|(_, listener)| *listener == 0));
    }

    #[test]
    fn arrivals_spread_evenly_over_listeners_at_the_same_times() {
        let plan = LoadPlan {
            rate: 1000.0,
            warmup: Duration::ZERO,
            measure: Duration::from_secs(20),
            window: Duration::from_secs(5),
            seed: 3,
            timeout: Duration::from_secs(1),
        };
        let one = arrivals(&plan, &Scenario::default(), 1);
        let four = arrivals(&plan, &Scenario::default(), 4);
        assert_eq!(one.len(), four.len());
        assert!(one.iter().zip(&four).all(|(a, b)| a.0 == b.0));
        for listener in 0..4 {
            let count = four.iter().filter(|(_, to)| *to == listener).count();
            assert!((4700..5300).contains(&count), "{listener}: {count}");
        }
    }
}
