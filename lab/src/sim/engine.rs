//! The discrete-event loop: Poisson arrivals, balancer picks, queues, periodic timers.

use super::balancer::{Balancer, Policy};
use super::config::{ConfigError, SimConfig};
use super::cswrr::OrcaWeights;
use super::endpoint::{Endpoint, Mark, Waiting};
use super::latency::{HistogramError, LatencyRecorder};
use super::report::{EndpointReport, SimReport};
use super::scrape::{Scrape, ScrapeHistory};
use super::weights::{EndpointSample, WeightProvider};
use crate::fleet::{Action, Fleet, Scenario};
use crate::service_time::ServiceTimeError;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::Exp1;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The configuration is out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A pod's service time is unusable.
    #[error("pod {pod}: {source}")]
    Pod {
        /// Pod name.
        pod: String,
        /// What is wrong.
        source: ServiceTimeError,
    },
    /// The scenario names a pod the fleet lacks.
    #[error("scenario names pod {0}, which is not in the fleet")]
    UnknownPod(String),
    /// Histogram set-up failed.
    #[error(transparent)]
    Histogram(#[from] HistogramError),
    /// The scenario asks for something the simulator does not model.
    #[error("the simulator does not model {0}")]
    Unsupported(&'static str),
    /// More endpoints or clients than indices can hold.
    #[error("too many endpoints or clients")]
    TooLarge,
}

/// A request in service, due to finish at `time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Completion {
    time: u64,
    endpoint: u32,
    client: u32,
    arrival: u64,
    failed: bool,
}

/// One Envoy: its balancer and its own view of active requests.
#[derive(Debug, Clone)]
struct Client {
    seed: u32,
    balancer: Balancer,
    active: Vec<u32>,
    orca: Option<OrcaWeights>,
    cswrr_weights: Vec<u32>,
}

/// A scheduled change, already resolved against the fleet.
#[derive(Debug, Clone, Copy)]
enum Change {
    Slowdown {
        endpoint: usize,
        factor: f64,
    },
    Failing {
        endpoint: usize,
        ratio: f64,
        after_ms: f64,
    },
    LoadFactor(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Tick,
    Scrape,
    OrcaWindow,
    CswrrUpdate,
    Change,
}

struct Engine<'a> {
    config: &'a SimConfig,
    provider: &'a mut dyn WeightProvider,
    random: ChaCha8Rng,
    endpoints: Vec<Endpoint>,
    clients: Vec<Client>,
    completions: BinaryHeap<Reverse<Completion>>,
    weights: Vec<u32>,
    recorder: LatencyRecorder,
    errors: u64,
    arrivals: u64,
    requests_per_second: f64,
    next_arrival: u64,
    next_tick: u64,
    next_orca: u64,
    next_cswrr: u64,
    changes: Vec<(u64, Change)>,
    next_change: usize,
    tick_marks: Vec<Mark>,
    history: VecDeque<(u64, Vec<EndpointSample>)>,
    next_scrape: u64,
    scrapes: ScrapeHistory,
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Runs one simulation of `fleet` under `scenario`, asking `provider` for EDS weights each tick.
pub fn simulate(
    fleet: &Fleet,
    scenario: &Scenario,
    config: &SimConfig,
    provider: &mut dyn WeightProvider,
    provider_name: &str,
) -> Result<SimReport, SimError> {
    config.validate()?;
    let mut engine = Engine::new(fleet, scenario, config, provider)?;
    engine.run();
    Ok(engine.finish(scenario, provider_name))
}

fn resolve_changes(
    endpoints: &[Endpoint],
    scenario: &Scenario,
) -> Result<Vec<(u64, Change)>, SimError> {
    let mut changes = scenario
        .events
        .iter()
        .map(|event| {
            let position = |pod: &String| {
                endpoints
                    .iter()
                    .position(|endpoint| &endpoint.name == pod)
                    .ok_or_else(|| SimError::UnknownPod(pod.clone()))
            };
            let change = match &event.action {
                Action::SetSlowdown { pod, factor } => Change::Slowdown {
                    endpoint: position(pod)?,
                    factor: *factor,
                },
                Action::SetFailing {
                    pod,
                    ratio,
                    after_ms,
                } => Change::Failing {
                    endpoint: position(pod)?,
                    ratio: *ratio,
                    after_ms: *after_ms,
                },
                Action::SetLoadFactor { factor } => Change::LoadFactor(*factor),
                Action::RollingRestart { .. } => {
                    return Err(SimError::Unsupported("rolling restarts"))
                }
            };
            Ok((nanos(event.at), change))
        })
        .collect::<Result<Vec<_>, SimError>>()?;
    changes.sort_by_key(|(time, _)| *time);
    Ok(changes)
}

impl<'a> Engine<'a> {
    fn new(
        fleet: &Fleet,
        scenario: &Scenario,
        config: &'a SimConfig,
        provider: &'a mut dyn WeightProvider,
    ) -> Result<Self, SimError> {
        let mut endpoints = fleet
            .pods()
            .iter()
            .map(|pod| {
                Endpoint::new(pod).map_err(|source| SimError::Pod {
                    pod: pod.name.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for endpoint in &mut endpoints {
            endpoint.set_report_eps(fleet.orca_eps);
        }
        if u32::try_from(endpoints.len()).is_err() {
            return Err(SimError::TooLarge);
        }
        let changes = resolve_changes(&endpoints, scenario)?;
        let mut random = ChaCha8Rng::seed_from_u64(config.seed);
        let count = endpoints.len();
        let weights = vec![1; count];
        let clients = (0..config.clients)
            .map(|_| {
                let seed: u32 = random.random();
                Client {
                    seed,
                    balancer: Balancer::new(
                        config.policy,
                        &weights,
                        &vec![0; count],
                        config.least_request,
                        seed,
                    ),
                    active: vec![0; count],
                    orca: (config.policy == Policy::Cswrr).then(|| OrcaWeights::new(count)),
                    cswrr_weights: weights.clone(),
                }
            })
            .collect();
        let requests_per_second =
            config.requests_per_second * scenario.load_factor_at(Duration::ZERO);
        let mut engine = Self {
            config,
            provider,
            random,
            endpoints,
            clients,
            completions: BinaryHeap::new(),
            weights,
            recorder: LatencyRecorder::new(nanos(config.report_window))?
                .with_warmup(nanos(config.warmup)),
            errors: 0,
            arrivals: 0,
            requests_per_second,
            next_arrival: 0,
            next_tick: nanos(config.tick),
            next_orca: nanos(config.orca_window),
            next_cswrr: nanos(config.cswrr.weight_update_period),
            changes,
            next_change: 0,
            tick_marks: vec![Mark::default(); count],
            history: VecDeque::new(),
            // The first scrape at 0 s, as a store scraping from the start of the run.
            next_scrape: if config.scrape.is_some() { 0 } else { u64::MAX },
            scrapes: ScrapeHistory::default(),
        };
        engine.next_arrival = engine.draw_arrival(0);
        Ok(engine)
    }

    fn draw_arrival(&mut self, now: u64) -> u64 {
        let gap: f64 = self.random.sample(Exp1);
        now + (gap / self.requests_per_second * 1e9) as u64
    }

    fn next_timer(&self) -> (u64, Timer) {
        let change = self
            .changes
            .get(self.next_change)
            .map_or(u64::MAX, |(time, _)| *time);
        let cswrr = if self.config.policy == Policy::Cswrr {
            self.next_cswrr
        } else {
            u64::MAX
        };
        [
            (change, Timer::Change),
            (self.next_tick, Timer::Tick),
            (self.next_scrape, Timer::Scrape),
            (self.next_orca, Timer::OrcaWindow),
            (cswrr, Timer::CswrrUpdate),
        ]
        .into_iter()
        .min_by_key(|(time, _)| *time)
        .unwrap_or((u64::MAX, Timer::Tick))
    }

    fn run(&mut self) {
        let end = nanos(self.config.duration);
        loop {
            let completion = self
                .completions
                .peek()
                .map_or(u64::MAX, |Reverse(next)| next.time);
            let (timer_time, timer) = self.next_timer();
            let now = completion.min(timer_time).min(self.next_arrival);
            if now >= end {
                break;
            }
            if completion == now {
                self.on_completion();
            } else if timer_time == now {
                self.on_timer(timer, now);
            } else {
                self.on_arrival(now);
            }
        }
    }

    fn on_arrival(&mut self, now: u64) {
        self.arrivals += 1;
        let client_index = self.random.random_range(0..self.clients.len());
        let client = &mut self.clients[client_index];
        let endpoint = client.balancer.pick(&client.active, &mut self.random);
        client.active[endpoint] += 1;
        let request = Waiting {
            arrival_ns: now,
            client: client_index as u32,
        };
        if let Some((time, failed)) =
            self.endpoints[endpoint].arrive(now, request, &mut self.random)
        {
            self.completions.push(Reverse(Completion {
                time,
                endpoint: endpoint as u32,
                client: request.client,
                arrival: now,
                failed,
            }));
        }
        self.next_arrival = self.draw_arrival(now);
    }

    fn on_completion(&mut self) {
        let Some(Reverse(done)) = self.completions.pop() else {
            return;
        };
        let endpoint_index = done.endpoint as usize;
        let endpoint = &mut self.endpoints[endpoint_index];
        if let Some((next, time, failed)) =
            endpoint.complete(done.time, done.failed, &mut self.random)
        {
            self.completions.push(Reverse(Completion {
                time,
                endpoint: done.endpoint,
                client: next.client,
                arrival: next.arrival_ns,
                failed,
            }));
        }
        // Latency is that of served requests, as in `lab bench` (whose histograms hold 2xx
        // answers only): a fast error would otherwise pull the percentiles down.
        if done.failed {
            if done.time >= nanos(self.config.warmup) {
                self.errors += 1;
            }
        } else {
            self.recorder.record(done.time, done.time - done.arrival);
        }
        let report = endpoint.orca_report();
        let client = &mut self.clients[done.client as usize];
        client.active[endpoint_index] = client.active[endpoint_index].saturating_sub(1);
        if let Some(orca) = client.orca.as_mut() {
            orca.on_report(
                endpoint_index,
                report,
                done.time,
                self.config.cswrr.error_utilization_penalty,
            );
        }
    }

    fn on_timer(&mut self, timer: Timer, now: u64) {
        match timer {
            Timer::Tick => {
                self.on_tick(now);
                self.next_tick = now + nanos(self.config.tick);
            }
            Timer::Scrape => {
                if let Some(scrape) = self.config.scrape {
                    let marks = self
                        .endpoints
                        .iter_mut()
                        .map(|endpoint| endpoint.mark(now))
                        .collect();
                    let keep =
                        nanos(scrape.rate_window + self.config.metrics_delay + scrape.interval);
                    self.scrapes.record(now, marks, keep);
                    self.next_scrape = now + nanos(scrape.interval);
                }
            }
            Timer::OrcaWindow => {
                let window = nanos(self.config.orca_window);
                for endpoint in &mut self.endpoints {
                    endpoint.roll_orca_window(now, window);
                }
                self.next_orca = now + window;
            }
            Timer::CswrrUpdate => {
                self.update_cswrr(now);
                self.next_cswrr = now + nanos(self.config.cswrr.weight_update_period);
            }
            Timer::Change => {
                if let Some((_, change)) = self.changes.get(self.next_change).copied() {
                    self.apply(change, now);
                }
                self.next_change += 1;
            }
        }
    }

    fn apply(&mut self, change: Change, now: u64) {
        match change {
            Change::Slowdown { endpoint, factor } => self.endpoints[endpoint].set_slowdown(factor),
            Change::Failing {
                endpoint,
                ratio,
                after_ms,
            } => self.endpoints[endpoint].set_failing(ratio, after_ms),
            Change::LoadFactor(factor) => {
                self.requests_per_second = self.config.requests_per_second * factor;
                // Poisson arrivals are memoryless: redrawing from now is exact.
                self.next_arrival = self.draw_arrival(now);
            }
        }
    }

    fn take_samples(&mut self, now: u64) -> Vec<EndpointSample> {
        let seconds = self.config.tick.as_secs_f64();
        self.endpoints
            .iter_mut()
            .zip(&mut self.tick_marks)
            .zip(&self.weights)
            .map(|((endpoint, previous), &weight)| {
                let mark = endpoint.mark(now);
                let busy = (mark.busy_area - previous.busy_area) as f64 / 1e9;
                let completed = (mark.completed - previous.completed) as f64;
                let errors = (mark.errors - previous.errors) as f64;
                *previous = mark;
                EndpointSample {
                    cpu_cores: busy / seconds,
                    requests_per_second: completed / seconds,
                    errors_per_second: errors / seconds,
                    cores: endpoint.cores,
                    previous_weight: weight,
                }
            })
            .collect()
    }

    /// The samples of a scraped pipeline: rates over the window of scrapes a query
    /// `metrics_delay` ago sees (`None` before two scrapes are in it).
    fn scraped_samples(&self, now: u64, scrape: Scrape) -> Option<Vec<EndpointSample>> {
        let query = now.checked_sub(nanos(self.config.metrics_delay))?;
        let rates = self.scrapes.rates(query, nanos(scrape.rate_window))?;
        Some(
            rates
                .iter()
                .zip(&self.endpoints)
                .zip(&self.weights)
                .map(|((rates, endpoint), &weight)| EndpointSample {
                    cpu_cores: rates.cpu_cores,
                    requests_per_second: rates.requests_per_second,
                    errors_per_second: rates.errors_per_second,
                    cores: endpoint.cores,
                    previous_weight: weight,
                })
                .collect(),
        )
    }

    fn on_tick(&mut self, now: u64) {
        if let Some(scrape) = self.config.scrape {
            if let Some(samples) = self.scraped_samples(now, scrape) {
                let weights = self.provider.weights(Duration::from_nanos(now), &samples);
                self.serve_weights(weights, now);
            }
            return;
        }
        let samples = self.take_samples(now);
        self.history.push_back((now, samples));
        let visible_until = now.saturating_sub(nanos(self.config.metrics_delay));
        while self.history.len() > 1
            && self
                .history
                .get(1)
                .is_some_and(|(time, _)| *time <= visible_until)
        {
            self.history.pop_front();
        }
        let Some((time, samples)) = self.history.front() else {
            return;
        };
        if *time > visible_until {
            return;
        }
        let weights = self.provider.weights(Duration::from_nanos(now), samples);
        self.serve_weights(weights, now);
    }

    /// Puts the provider's weights in force (all clients at once, as EDS does).
    fn serve_weights(&mut self, mut weights: Vec<u32>, now: u64) {
        if weights.len() != self.endpoints.len() {
            tracing::warn!(
                got = weights.len(),
                want = self.endpoints.len(),
                "weight provider returned a wrong count; ignored"
            );
            return;
        }
        for weight in &mut weights {
            *weight = (*weight).max(1);
        }
        if weights != self.weights {
            tracing::debug!(
                at_ns = now,
                endpoints = weights.len(),
                "EDS weights changed"
            );
            self.weights = weights;
            if self.config.policy != Policy::Cswrr {
                self.rebuild_balancers();
            }
        }
    }

    fn rebuild_balancers(&mut self) {
        for client in &mut self.clients {
            client.balancer = Balancer::new(
                self.config.policy,
                &self.weights,
                &client.active,
                self.config.least_request,
                client.seed,
            );
        }
    }

    fn update_cswrr(&mut self, now: u64) {
        for client in &mut self.clients {
            let Some(orca) = client.orca.as_mut() else {
                continue;
            };
            let weights = orca.scheduler_weights(now, &self.config.cswrr);
            if weights != client.cswrr_weights {
                client.balancer = Balancer::new(
                    Policy::Cswrr,
                    &weights,
                    &client.active,
                    self.config.least_request,
                    client.seed,
                );
                client.cswrr_weights = weights;
            }
        }
    }

    fn finish(&mut self, scenario: &Scenario, provider_name: &str) -> SimReport {
        let end = nanos(self.config.duration);
        let total = self.recorder.total();
        let seconds = self.config.duration.as_secs_f64();
        let marks: Vec<Mark> = self
            .endpoints
            .iter_mut()
            .map(|endpoint| endpoint.mark(end))
            .collect();
        let completed: u64 = marks.iter().map(|mark| mark.completed).sum();
        let final_weights = match self.clients.first() {
            Some(client) if self.config.policy == Policy::Cswrr => client.cswrr_weights.clone(),
            _ => self.weights.clone(),
        };
        let endpoints = self
            .endpoints
            .iter()
            .zip(marks)
            .zip(final_weights)
            .map(|((endpoint, mark), final_weight)| EndpointReport {
                name: endpoint.name.clone(),
                cores: endpoint.cores,
                mean_ms: endpoint.mean_ms,
                share: mark.completed as f64 / completed.max(1) as f64,
                error_ratio: mark.errors as f64 / mark.completed.max(1) as f64,
                utilization: mark.busy_area as f64 / 1e9 / seconds / f64::from(endpoint.cores),
                final_weight,
            })
            .collect();
        let window_count = (end.div_ceil(nanos(self.config.report_window))) as usize;
        SimReport {
            policy: self.config.policy,
            provider: provider_name.to_owned(),
            scenario: scenario.name.clone(),
            simulated: self.config.duration,
            arrivals: self.arrivals,
            latency: total,
            errors: self.errors,
            endpoints,
            windows: self.recorder.windows(window_count),
            window: self.config.report_window,
        }
    }
}
