//! Rules shared by the load-driven algorithms: sample hygiene, modes, fill-ins, bounds, publishing.

use std::{
    borrow::Borrow,
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use super::EndpointKey;
use super::{
    capacity, distance, errors, static_weights, Algorithm, ClusterMemory, ClusterMode, CostBasis,
    EndpointLoad, EndpointMemory, Output, Params, Reading, Reason, Weight, WeightSource,
};
use crate::model::{Endpoint, Locality};

/// Largest sum of weights Envoy accepts in one locality (the sum must stay below 2^32).
const LOCALITY_SUM_LIMIT: u64 = u32::MAX as u64;

/// The key under which an endpoint is remembered between ticks (no string building: this runs
/// for every endpoint on every tick).
pub fn endpoint_key(endpoint: &Endpoint) -> EndpointKey {
    (endpoint.address, endpoint.port)
}

/// A remembered cost estimate and whether it is only a lower bound.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Cost {
    /// The smoothed estimate.
    pub value: f64,
    /// Measured while saturated: the true cost is at least this.
    pub is_floor: bool,
}

impl Cost {
    /// The cost remembered for an endpoint, if any.
    fn remembered(memory: &EndpointMemory) -> Option<Self> {
        memory.cost.map(|value| Self {
            value,
            is_floor: memory.cost_is_floor,
        })
    }
}

/// One endpoint with a fresh CPU sample, as an algorithm sees it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct FreshEndpoint {
    /// CPU in use (cores), valid and fresh.
    pub cpu: f64,
    /// Completed requests per second, when valid and fresh.
    pub rps: Option<f64>,
    /// Requests per second answered with an error (part of `rps`), when valid and fresh.
    pub errors: Option<f64>,
    /// CPU limit (cores): the sample's, else `params.default_cpu_limit`.
    pub limit: f64,
    /// The weight served before this tick.
    pub previous: Option<u32>,
    /// The remembered smoothed cost.
    pub cost: Option<Cost>,
    /// In its slow start: its weight in force was set by the ramp, so it is not step-limited.
    pub ramping: bool,
    /// Held as failing after the last tick (see `errors::judge`).
    pub failing: bool,
}

/// An algorithm's answer for one fresh endpoint.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Planned {
    /// Weight, already within the bounds.
    pub weight: u32,
    /// Why.
    pub reason: Reason,
    /// Smoothed cost to remember, if the algorithm keeps one.
    pub cost: Option<Cost>,
}

/// What one endpoint brings to this tick, after invalid samples were dropped.
#[derive(Clone, Debug)]
struct Observation {
    /// Address and port, the memory key.
    key: EndpointKey,
    /// Valid CPU reading, fresh or not.
    cpu: Option<Reading>,
    /// Valid request-rate reading, fresh or not.
    rps: Option<Reading>,
    /// Valid error-rate reading, fresh or not.
    errors: Option<Reading>,
    /// Valid in-flight reading, fresh or not.
    in_flight: Option<Reading>,
    /// Valid latency reading, fresh or not.
    latency: Option<Reading>,
    /// CPU limit in cores (the sample's, else the default).
    limit: f64,
    /// The CPU reading is at most `stale_after` old.
    fresh: bool,
    /// `cpu` holds the requests in flight: the cluster has no CPU signal (load reports only).
    cpu_is_in_flight: bool,
    /// What the previous tick remembered of this endpoint.
    remembered: Option<EndpointMemory>,
}

/// The smallest and largest weight, made consistent (at least 1, max not below min).
pub(crate) fn bounds(params: &Params) -> (u32, u32) {
    let low = params.min_weight().max(1);
    (low, params.max_weight().max(low))
}

/// The middle of the weight range: the equal weight of fallback and idle clusters.
pub(crate) fn middle_weight(params: &Params) -> u32 {
    let (low, high) = bounds(params);
    low + (high - low) / 2
}

/// Rounds and clamps a real weight into the bounds.
pub(crate) fn to_weight(value: f64, params: &Params) -> u32 {
    let (low, high) = bounds(params);
    if value.is_nan() {
        return low;
    }
    value.round().clamp(f64::from(low), f64::from(high)) as u32
}

/// The `percent` percentile (0..100) of `values`, interpolating between ranks.
pub(crate) fn percentile(values: &[f64], percent: f64) -> Option<f64> {
    let mut sorted: Vec<f64> = values
        .iter()
        .copied()
        .filter(|value| !value.is_nan())
        .collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let rank = (percent.clamp(0.0, 100.0) / 100.0) * (sorted.len() - 1) as f64;
    let lower = rank.floor() as usize;
    let upper = rank.ceil() as usize;
    let fraction = rank - lower as f64;
    Some(sorted[lower] + (sorted[upper] - sorted[lower]) * fraction)
}

/// See [`super::compute`].
pub(crate) fn compute<E: Borrow<Endpoint>>(
    endpoints: &[E],
    loads: &[EndpointLoad],
    memory: &ClusterMemory,
    params: &Params,
    now: Duration,
) -> Output {
    if params.algorithm == Algorithm::Static {
        return static_output(endpoints, memory);
    }
    let mut dropped_samples = 0;
    let mut observations: Vec<Observation> = endpoints
        .iter()
        .enumerate()
        .map(|(index, endpoint)| {
            let load = loads.get(index).cloned().unwrap_or_default();
            observe(
                endpoint.borrow(),
                &load,
                memory,
                params,
                &mut dropped_samples,
            )
        })
        .collect();
    in_flight_for_cpu(&mut observations, params);
    let last_sample_at = youngest_sample(&observations, memory, now);
    let mode = decide_mode(&observations, last_sample_at, params, now);
    let mut tick = match mode {
        ClusterMode::Fresh => fresh_weights(&observations, memory, params, now),
        ClusterMode::Holding => held_weights(&observations, now, last_sample_at),
        ClusterMode::Idle | ClusterMode::Fallback | ClusterMode::Static => {
            equal_weights(&observations, mode, params, now, last_sample_at)
        }
    };
    slow_start(&mut tick.weights, &observations, memory, params, now);
    guard_locality_sums(&mut tick.weights, endpoints);
    let mut output = publish(&observations, memory, mode, tick, params, now);
    output.memory.last_sample_at = last_sample_at;
    output.dropped_samples = dropped_samples;
    output
}

/// Keeps a reading only when its value is a finite non-negative number; counts the others.
fn valid(reading: Option<Reading>, dropped_samples: &mut usize) -> Option<Reading> {
    let reading = reading?;
    if reading.value.is_finite() && reading.value >= 0.0 {
        Some(reading)
    } else {
        *dropped_samples += 1;
        None
    }
}

/// Validates one endpoint's samples and finds what is remembered of it.
fn observe(
    endpoint: &Endpoint,
    load: &EndpointLoad,
    memory: &ClusterMemory,
    params: &Params,
    dropped_samples: &mut usize,
) -> Observation {
    let key = endpoint_key(endpoint);
    let cpu = valid(load.cpu, dropped_samples);
    let rps = valid(load.rps, dropped_samples);
    let limit = valid(load.cpu_limit, dropped_samples)
        .map(|reading| reading.value)
        .filter(|value| *value > 0.0)
        .unwrap_or(params.default_cpu_limit);
    let errors = valid(load.errors, dropped_samples);
    let in_flight = valid(load.in_flight, dropped_samples);
    let latency = valid(load.latency, dropped_samples);
    let fresh = cpu.is_some_and(|reading| reading.age <= params.stale_after);
    let remembered = memory.endpoints.get(&key).cloned();
    Observation {
        key,
        cpu,
        rps,
        errors,
        in_flight,
        latency,
        limit,
        fresh,
        cpu_is_in_flight: false,
        remembered,
    }
}

/// Without any CPU reading in the cluster, requests in flight stand in for CPU in use.
///
/// For a pod that serves each request on one worker, requests in flight are its busy workers,
/// as CPU in use is its busy cores: in flight / rate is then the time a request holds a worker
/// as the clients see it (Little's law), and the limit (`default_cpu_limit` unless a source
/// gives one) reads as the number of requests the pod serves at once. Never mixed with CPU in
/// one cluster: the two units would be compared as one.
fn in_flight_for_cpu(observations: &mut [Observation], params: &Params) {
    if observations
        .iter()
        .any(|observation| observation.cpu.is_some())
    {
        return;
    }
    for observation in observations {
        if let Some(in_flight) = observation.in_flight {
            observation.cpu = Some(in_flight);
            observation.fresh = in_flight.age <= params.stale_after;
            observation.cpu_is_in_flight = true;
        }
    }
}

/// When the youngest valid CPU sample ever seen was taken.
fn youngest_sample(
    observations: &[Observation],
    memory: &ClusterMemory,
    now: Duration,
) -> Option<Duration> {
    observations
        .iter()
        .filter_map(|observation| observation.cpu)
        .map(|reading| now.saturating_sub(reading.age))
        .chain(memory.last_sample_at)
        .max()
}

/// Picks the cluster's mode from the freshness and size of its CPU samples.
fn decide_mode(
    observations: &[Observation],
    last_sample_at: Option<Duration>,
    params: &Params,
    now: Duration,
) -> ClusterMode {
    let fresh_cpu: Vec<f64> = observations
        .iter()
        .filter(|observation| observation.fresh)
        .filter_map(|observation| observation.cpu.map(|reading| reading.value))
        .collect();
    if fresh_cpu.is_empty() {
        let held = observations
            .iter()
            .any(|observation| observation.remembered.is_some());
        let recent =
            last_sample_at.is_some_and(|taken| now.saturating_sub(taken) < params.fallback_after);
        if recent && held {
            ClusterMode::Holding
        } else {
            ClusterMode::Fallback
        }
    } else if fresh_cpu.iter().sum::<f64>() < params.idle_cpu {
        ClusterMode::Idle
    } else {
        ClusterMode::Fresh
    }
}

/// The weights of one tick before publishing, with the costs to remember.
struct Tick {
    /// One per endpoint.
    weights: Vec<Weight>,
    /// Cost to remember, one per endpoint.
    costs: Vec<Option<Cost>>,
    /// Unit of the costs, when this tick estimated any.
    cost_basis: Option<CostBasis>,
    /// Held as failing, one per endpoint.
    failing: Vec<bool>,
}

/// The explanation fields every weight carries.
fn explained(
    observation: &Observation,
    weight: u32,
    source: WeightSource,
    reason: Reason,
) -> Weight {
    let cpu = observation
        .cpu
        .filter(|_| !observation.cpu_is_in_flight)
        .map(|reading| reading.value);
    Weight {
        weight,
        reason,
        source,
        previous: observation.remembered.as_ref().map(|memory| memory.weight),
        cpu,
        rps: observation.rps.map(|reading| reading.value),
        utilization: cpu.map(|cores| cores / observation.limit),
        sample_age: observation
            .cpu
            .or(observation.in_flight)
            .map(|reading| reading.age),
        errors: observation.errors.map(|reading| reading.value),
        in_flight: observation.in_flight.map(|reading| reading.value),
        latency: observed_latency(observation),
    }
}

/// Latency per request as clients see it: the source's reading, else Little's law (requests in
/// flight over the completion rate).
fn observed_latency(observation: &Observation) -> Option<f64> {
    observation
        .latency
        .map(|reading| reading.value)
        .or_else(|| match (observation.in_flight, observation.rps) {
            (Some(in_flight), Some(rps)) if rps.value > 0.0 => Some(in_flight.value / rps.value),
            _ => None,
        })
}

/// Runs the algorithm on the endpoints with fresh CPU and fills in the others.
fn fresh_weights(
    observations: &[Observation],
    memory: &ClusterMemory,
    params: &Params,
    now: Duration,
) -> Tick {
    let fresh: Vec<FreshEndpoint> = observations
        .iter()
        .filter(|observation| observation.fresh)
        .map(|observation| FreshEndpoint {
            cpu: observation.cpu.map_or(0.0, |reading| reading.value),
            rps: observation
                .rps
                .filter(|reading| reading.age <= params.stale_after)
                .map(|reading| reading.value),
            limit: observation.limit,
            previous: observation.remembered.as_ref().map(|memory| memory.weight),
            cost: observation.remembered.as_ref().and_then(Cost::remembered),
            ramping: observation.remembered.as_ref().is_some_and(|memory| {
                !memory.initial && now.saturating_sub(memory.first_seen) <= params.slow_start
            }),
            errors: observation
                .errors
                .filter(|reading| reading.age <= params.stale_after)
                .map(|reading| reading.value),
            failing: observation
                .remembered
                .as_ref()
                .is_some_and(|memory| memory.failing),
        })
        .collect();
    let verdicts = errors::judge(&fresh);
    let (planned, cost_basis, fill_percentile) = plan_healthy(&fresh, &verdicts, memory, params);
    let computed: Vec<f64> = planned
        .iter()
        .zip(&verdicts)
        .filter(|(_, verdict)| verdict.is_none())
        .map(|(plan, _)| f64::from(plan.weight))
        .collect();
    let fill = percentile(&computed, fill_percentile)
        .map_or_else(|| middle_weight(params), |value| to_weight(value, params));
    let mut planned = planned.into_iter().zip(verdicts);
    let mut weights = Vec::with_capacity(observations.len());
    let mut costs = Vec::with_capacity(observations.len());
    let mut failing = Vec::with_capacity(observations.len());
    for observation in observations {
        let remembered_cost = observation.remembered.as_ref().and_then(Cost::remembered);
        let plan = if observation.fresh {
            planned.next()
        } else {
            None
        };
        match plan {
            Some((plan, verdict)) => {
                let source = if verdict.is_some() {
                    WeightSource::Failing
                } else {
                    WeightSource::Fresh
                };
                let mut reason = plan.reason;
                if observation.cpu_is_in_flight {
                    reason.in_flight_load();
                }
                weights.push(explained(observation, plan.weight, source, reason));
                costs.push(plan.cost.or(remembered_cost));
                failing.push(verdict.is_some());
            }
            None => {
                let reason = fill_in_reason(observation, fill_percentile, params);
                weights.push(explained(observation, fill, WeightSource::NewPod, reason));
                costs.push(remembered_cost);
                // A held endpoint without a fresh sample stays held until one clears it.
                failing.push(
                    observation
                        .remembered
                        .as_ref()
                        .is_some_and(|memory| memory.failing),
                );
            }
        }
    }
    Tick {
        weights,
        costs,
        cost_basis,
        failing,
    }
}

/// Plans the endpoints that are not failing with the cluster's algorithm, and gives each failing
/// one its probe weight; index-aligned with `fresh`.
///
/// When every endpoint would be held, none is: holding them all changes no share, and the
/// baseline they are judged against is then their own.
fn plan_healthy(
    fresh: &[FreshEndpoint],
    verdicts: &[Option<errors::Failing>],
    memory: &ClusterMemory,
    params: &Params,
) -> (Vec<Planned>, Option<CostBasis>, f64) {
    let held = verdicts.iter().filter(|verdict| verdict.is_some()).count();
    // Borrowed in the usual case (no one held): this runs for every cluster on every tick.
    let healthy: std::borrow::Cow<'_, [FreshEndpoint]> = if held == 0 || held == fresh.len() {
        std::borrow::Cow::Borrowed(fresh)
    } else {
        fresh
            .iter()
            .zip(verdicts)
            .filter(|(_, verdict)| verdict.is_none())
            .map(|(endpoint, _)| endpoint.clone())
            .collect()
    };
    // The held endpoints' traffic moves to the others: plan for all of it.
    let outside_rps: f64 = if healthy.len() == fresh.len() {
        0.0
    } else {
        fresh
            .iter()
            .zip(verdicts)
            .filter(|(_, verdict)| verdict.is_some())
            .filter_map(|(endpoint, _)| endpoint.rps)
            .sum()
    };
    let (planned, cost_basis, fill_percentile) = match params.algorithm {
        Algorithm::Distance => (
            distance::plan(&healthy, params),
            None,
            params.distance.new_pod_percentile,
        ),
        Algorithm::Capacity | Algorithm::Static => {
            let (planned, basis) = capacity::plan(&healthy, outside_rps, memory.cost_basis, params);
            (planned, Some(basis), 50.0)
        }
    };
    if healthy.len() == fresh.len() {
        return (planned, cost_basis, fill_percentile);
    }
    let planned_sum: f64 = planned.iter().map(|plan| f64::from(plan.weight)).sum();
    let held_weight = errors::held_weight(planned_sum, held, params);
    let mut planned = planned.into_iter();
    let all = fresh
        .iter()
        .zip(verdicts)
        .map(|(endpoint, verdict)| match verdict {
            Some(failing) => Planned {
                weight: held_weight,
                reason: Reason::failing(failing.ratio, failing.baseline, errors::HELD_SHARE),
                cost: endpoint.cost,
            },
            None => planned.next().unwrap_or_else(|| Planned {
                weight: held_weight,
                reason: Reason::default(),
                cost: endpoint.cost,
            }),
        })
        .collect();
    (all, cost_basis, fill_percentile)
}

/// Why an endpoint without a fresh sample got the fill-in weight.
fn fill_in_reason(observation: &Observation, fill_percentile: f64, params: &Params) -> Reason {
    let stale = observation
        .cpu
        .map(|reading| (reading.age.as_secs(), params.stale_after.as_secs()));
    Reason::new_pod(stale, fill_percentile)
}

/// Holding: every endpoint keeps its served weight; unknown ones get the median of those.
fn held_weights(
    observations: &[Observation],
    now: Duration,
    last_sample_at: Option<Duration>,
) -> Tick {
    let held: Vec<f64> = observations
        .iter()
        .filter_map(|observation| observation.remembered.as_ref())
        .map(|memory| f64::from(memory.weight))
        .collect();
    let median = percentile(&held, 50.0).map_or(1, |value| value.round().max(1.0) as u32);
    let age = last_sample_at.map_or(0, |taken| now.saturating_sub(taken).as_secs());
    let weights = observations
        .iter()
        .map(|observation| match &observation.remembered {
            Some(memory) => explained(
                observation,
                memory.weight,
                WeightSource::Stale,
                Reason::holding(age, true),
            ),
            None => explained(
                observation,
                median,
                WeightSource::Stale,
                Reason::holding(age, false),
            ),
        })
        .collect();
    Tick {
        weights,
        costs: remembered_costs(observations),
        cost_basis: None,
        failing: remembered_failing(observations),
    }
}

/// Idle and fallback: the same weight, the middle of the range, for every endpoint.
fn equal_weights(
    observations: &[Observation],
    mode: ClusterMode,
    params: &Params,
    now: Duration,
    last_sample_at: Option<Duration>,
) -> Tick {
    let weight = middle_weight(params);
    let (source, reason) = if mode == ClusterMode::Idle {
        let total: f64 = observations
            .iter()
            .filter(|observation| observation.fresh)
            .filter_map(|observation| observation.cpu.map(|reading| reading.value))
            .sum();
        (WeightSource::Idle, Reason::idle(total, params.idle_cpu))
    } else {
        let age = last_sample_at.map(|taken| now.saturating_sub(taken).as_secs());
        (WeightSource::Fallback, Reason::fallback(age))
    };
    let weights = observations
        .iter()
        .map(|observation| explained(observation, weight, source, reason.clone()))
        .collect();
    Tick {
        weights,
        costs: remembered_costs(observations),
        cost_basis: None,
        failing: remembered_failing(observations),
    }
}

/// The failing holds remembered so far, unchanged.
fn remembered_failing(observations: &[Observation]) -> Vec<bool> {
    observations
        .iter()
        .map(|observation| {
            observation
                .remembered
                .as_ref()
                .is_some_and(|memory| memory.failing)
        })
        .collect()
}

/// The costs remembered so far, unchanged.
fn remembered_costs(observations: &[Observation]) -> Vec<Option<Cost>> {
    observations
        .iter()
        .map(|observation| observation.remembered.as_ref().and_then(Cost::remembered))
        .collect()
}

/// Ramps endpoints that appeared after the cluster's first tick from the minimum weight up to
/// their computed weight, linearly over `params.slow_start`.
fn slow_start(
    weights: &mut [Weight],
    observations: &[Observation],
    memory: &ClusterMemory,
    params: &Params,
    now: Duration,
) {
    if params.slow_start.is_zero() {
        return;
    }
    let (low, _) = bounds(params);
    for (weight, observation) in weights.iter_mut().zip(observations) {
        let (first_seen, initial) = match &observation.remembered {
            Some(remembered) => (remembered.first_seen, remembered.initial),
            None => (now, memory.endpoints.is_empty()),
        };
        let elapsed = now.saturating_sub(first_seen);
        if initial || elapsed >= params.slow_start {
            continue;
        }
        let progress = elapsed.as_secs_f64() / params.slow_start.as_secs_f64();
        let target = f64::from(weight.weight.max(low));
        let ramped = f64::from(low) + (target - f64::from(low)) * progress;
        weight.weight = ramped.round().clamp(f64::from(low), target) as u32;
        weight.reason.ramped(progress * 100.0, target);
    }
}

/// Scales down any locality whose weights would sum to 2^32 or more, keeping every weight >= 1.
///
/// When the whole cluster's sum is within the limit no locality can exceed it, so the usual case
/// skips grouping by locality (comparing localities for every endpoint was a fifth of a tick).
fn guard_locality_sums<E: Borrow<Endpoint>>(weights: &mut [Weight], endpoints: &[E]) {
    let mut total: u64 = 0;
    for weight in weights.iter_mut() {
        weight.weight = weight.weight.max(1);
        total += u64::from(weight.weight);
    }
    if total <= LOCALITY_SUM_LIMIT {
        return;
    }
    let mut sums: BTreeMap<&Locality, (u64, u64)> = BTreeMap::new();
    for (weight, endpoint) in weights.iter_mut().zip(endpoints) {
        weight.weight = weight.weight.max(1);
        let entry = sums.entry(&endpoint.borrow().locality).or_default();
        entry.0 += u64::from(weight.weight);
        entry.1 += 1;
    }
    for (weight, endpoint) in weights.iter_mut().zip(endpoints) {
        let Some(&(sum, count)) = sums.get(&endpoint.borrow().locality) else {
            continue;
        };
        if sum <= LOCALITY_SUM_LIMIT {
            continue;
        }
        // floor(w * budget / sum) sums to at most `budget`; the `max(1)` adds at most `count`.
        let budget = LOCALITY_SUM_LIMIT.saturating_sub(count);
        let scaled = u128::from(weight.weight) * u128::from(budget) / u128::from(sum);
        weight.weight = u32::try_from(scaled).unwrap_or(u32::MAX).max(1);
        weight.reason.scale_down();
    }
}

/// Decides whether the tick is worth a push and builds the memory of what is served.
///
/// The comparison is always against the served weights (the memory), never against the last
/// computed ones: a tick that does not move keeps serving and remembering the previous weights,
/// so a slow drift keeps growing against the served value until it crosses `push_threshold`
/// and is published, instead of being forgotten tick after tick.
fn publish(
    observations: &[Observation],
    memory: &ClusterMemory,
    mode: ClusterMode,
    tick: Tick,
    params: &Params,
    now: Duration,
) -> Output {
    let Tick {
        mut weights,
        costs,
        cost_basis,
        failing,
    } = tick;
    let keys: BTreeSet<EndpointKey> = observations.iter().map(|o| o.key).collect();
    let set_changed = !keys.iter().eq(memory.endpoints.keys());
    let weight_moved = weights.iter().any(|weight| match weight.previous {
        Some(previous) => {
            let change = (f64::from(weight.weight) - f64::from(previous)).abs();
            change > params.push_threshold * f64::from(previous)
        }
        None => true,
    });
    let moved = set_changed || mode != memory.mode || weight_moved;
    if !moved {
        for weight in &mut weights {
            if let Some(previous) = weight.previous {
                if previous != weight.weight {
                    weight.reason.keep_serving(previous);
                    weight.weight = previous;
                }
            }
        }
    }
    let first_tick = memory.endpoints.is_empty();
    let endpoints = observations
        .iter()
        .zip(&weights)
        .zip(costs)
        .zip(failing)
        .map(|(((observation, weight), cost), failing)| {
            let (first_seen, initial) = observation
                .remembered
                .as_ref()
                .map_or((now, first_tick), |memory| {
                    (memory.first_seen, memory.initial)
                });
            let remembered = EndpointMemory {
                weight: weight.weight,
                cost: cost.map(|cost| cost.value),
                cost_is_floor: cost.is_some_and(|cost| cost.is_floor),
                first_seen,
                initial,
                failing,
            };
            (observation.key, remembered)
        })
        .collect();
    let memory = ClusterMemory {
        endpoints,
        mode,
        last_sample_at: memory.last_sample_at,
        cost_basis: cost_basis.or(memory.cost_basis),
    };
    Output {
        weights,
        mode,
        memory,
        moved,
        dropped_samples: 0,
    }
}

/// The static algorithm: configured weights, remembered so that a change is published.
fn static_output<E: Borrow<Endpoint>>(endpoints: &[E], memory: &ClusterMemory) -> Output {
    let mut weights = static_weights(endpoints);
    for (weight, endpoint) in weights.iter_mut().zip(endpoints) {
        weight.previous = memory
            .endpoints
            .get(&endpoint_key(endpoint.borrow()))
            .map(|remembered| remembered.weight);
    }
    guard_locality_sums(&mut weights, endpoints);
    let keys: BTreeSet<EndpointKey> = endpoints
        .iter()
        .map(|endpoint| endpoint_key(endpoint.borrow()))
        .collect();
    let set_changed = !keys.iter().eq(memory.endpoints.keys());
    let weight_moved = weights
        .iter()
        .any(|weight| weight.previous != Some(weight.weight));
    let moved = set_changed || memory.mode != ClusterMode::Static || weight_moved;
    let remembered = endpoints
        .iter()
        .zip(&weights)
        .map(|(endpoint, weight)| {
            let entry = EndpointMemory {
                weight: weight.weight,
                ..EndpointMemory::default()
            };
            (endpoint_key(endpoint.borrow()), entry)
        })
        .collect();
    Output {
        weights,
        mode: ClusterMode::Static,
        memory: ClusterMemory {
            endpoints: remembered,
            mode: ClusterMode::Static,
            ..ClusterMemory::default()
        },
        moved,
        dropped_samples: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weighting::{
        testing::{cpu_load, endpoint, endpoints, reading},
        Objective,
    };

    fn capacity(objective: Objective) -> Params {
        Params {
            objective,
            ..Params::default()
        }
    }

    fn run(
        endpoints: &[Endpoint],
        loads: &[EndpointLoad],
        memory: &ClusterMemory,
        params: &Params,
        now_seconds: u64,
    ) -> Output {
        compute(
            endpoints,
            loads,
            memory,
            params,
            Duration::from_secs(now_seconds),
        )
    }

    fn values(output: &Output) -> Vec<u32> {
        output.weights.iter().map(|weight| weight.weight).collect()
    }

    /// CPU loads with request rates, so costs are per request.
    fn costed(cpu_and_rps: &[(f64, f64)], age_seconds: u64) -> Vec<EndpointLoad> {
        cpu_and_rps
            .iter()
            .map(|(cpu, rps)| EndpointLoad {
                cpu: reading(*cpu, age_seconds),
                rps: reading(*rps, age_seconds),
                ..EndpointLoad::default()
            })
            .collect()
    }

    #[test]
    fn static_returns_the_configured_weights() {
        let mut fleet = endpoints(2);
        fleet[0].configured_weight = Some(7);
        let params = Params {
            algorithm: Algorithm::Static,
            ..Params::default()
        };
        let output = run(&fleet, &[], &ClusterMemory::default(), &params, 0);
        assert_eq!(values(&output), vec![7, 7]);
        assert_eq!(output.mode, ClusterMode::Static);
        assert!(output.moved);
        assert!(output
            .weights
            .iter()
            .all(|weight| weight.source == WeightSource::Configured));
        let again = run(&fleet, &[], &output.memory, &params, 10);
        assert!(!again.moved);
    }

    #[test]
    fn invalid_samples_are_dropped_and_counted() {
        let fleet = endpoints(3);
        let loads = vec![
            EndpointLoad {
                cpu: reading(f64::NAN, 1),
                rps: reading(-1.0, 1),
                cpu_limit: reading(f64::INFINITY, 1),
                latency: reading(f64::NEG_INFINITY, 1),
                ..EndpointLoad::default()
            },
            cpu_load(1.0, 1),
            cpu_load(0.5, 1),
        ];
        let output = run(
            &fleet,
            &loads,
            &ClusterMemory::default(),
            &Params::default(),
            0,
        );
        assert_eq!(output.dropped_samples, 4);
        assert_eq!(output.mode, ClusterMode::Fresh);
        assert_eq!(output.weights[0].source, WeightSource::NewPod);
        assert_eq!(output.weights[0].cpu, None);
    }

    #[test]
    fn an_idle_cluster_gets_equal_weights() {
        let fleet = endpoints(3);
        let loads = vec![cpu_load(0.001, 1), cpu_load(0.004, 1), cpu_load(0.0, 1)];
        let output = run(
            &fleet,
            &loads,
            &ClusterMemory::default(),
            &Params::default(),
            0,
        );
        assert_eq!(output.mode, ClusterMode::Idle);
        assert_eq!(values(&output), vec![5000, 5000, 5000]);
        assert!(output
            .weights
            .iter()
            .all(|weight| weight.source == WeightSource::Idle));
    }

    #[test]
    fn never_measured_falls_back_to_equal_weights() {
        let fleet = endpoints(2);
        let output = run(
            &fleet,
            &[],
            &ClusterMemory::default(),
            &Params::default(),
            0,
        );
        assert_eq!(output.mode, ClusterMode::Fallback);
        assert_eq!(values(&output), vec![5000, 5000]);
        assert_eq!(output.weights[0].source, WeightSource::Fallback);
    }

    #[test]
    fn holding_then_fallback_then_resume() {
        let fleet = endpoints(2);
        let params = capacity(Objective::Balance);
        let samples = |age| costed(&[(0.1, 100.0), (0.2, 100.0)], age);
        let fresh = run(&fleet, &samples(5), &ClusterMemory::default(), &params, 100);
        assert_eq!(fresh.mode, ClusterMode::Fresh);
        assert_eq!(values(&fresh), vec![10000, 5000]);

        let holding = run(&fleet, &samples(65), &fresh.memory, &params, 160);
        assert_eq!(holding.mode, ClusterMode::Holding);
        assert_eq!(values(&holding), vec![10000, 5000]);
        assert!(holding
            .weights
            .iter()
            .all(|weight| weight.source == WeightSource::Stale));

        // The metrics source stops answering: still holding on the remembered sample time.
        let silent = run(&fleet, &[], &holding.memory, &params, 300);
        assert_eq!(silent.mode, ClusterMode::Holding);

        let fallback = run(&fleet, &[], &silent.memory, &params, 500);
        assert_eq!(fallback.mode, ClusterMode::Fallback);
        assert!(fallback.moved);
        assert_eq!(values(&fallback), vec![5000, 5000]);

        let resumed = run(&fleet, &samples(5), &fallback.memory, &params, 510);
        assert_eq!(resumed.mode, ClusterMode::Fresh);
        assert!(resumed.moved);
        assert!(resumed.weights[0].weight > resumed.weights[1].weight);
    }

    #[test]
    fn holding_gives_unknown_endpoints_the_median_of_held_weights() {
        let params = capacity(Objective::Balance);
        let first = run(
            &endpoints(3),
            &costed(&[(0.1, 100.0), (0.2, 100.0), (0.4, 100.0)], 5),
            &ClusterMemory::default(),
            &params,
            100,
        );
        assert_eq!(values(&first), vec![10000, 5000, 2500]);
        let held = run(&endpoints(4), &[], &first.memory, &params, 150);
        assert_eq!(held.mode, ClusterMode::Holding);
        assert_eq!(values(&held), vec![10000, 5000, 2500, 5000]);
        assert!(held.moved, "the endpoint set changed");
    }

    #[test]
    fn new_and_stale_endpoints_get_the_median_of_computed_weights() {
        let params = capacity(Objective::Balance);
        let mut loads = costed(&[(0.1, 100.0), (0.2, 100.0), (0.4, 100.0)], 5);
        loads.push(EndpointLoad::default());
        loads.push(cpu_load(3.0, 120));
        let output = run(
            &endpoints(5),
            &loads,
            &ClusterMemory::default(),
            &params,
            200,
        );
        assert_eq!(values(&output), vec![10000, 5000, 2500, 5000, 5000]);
        assert_eq!(output.weights[3].source, WeightSource::NewPod);
        assert_eq!(output.weights[4].source, WeightSource::NewPod);
        assert!(output.weights[4].reason.to_string().contains("120s old"));
    }

    #[test]
    fn distance_new_pods_start_at_the_configured_percentile() {
        let params = Params {
            algorithm: Algorithm::Distance,
            distance: crate::weighting::DistanceParams {
                new_pod_percentile: 0.0,
                ..Default::default()
            },
            ..Params::default()
        };
        let mut loads = vec![cpu_load(1.5, 1), cpu_load(1.0, 1), cpu_load(0.5, 1)];
        loads.push(EndpointLoad::default());
        let output = run(&endpoints(4), &loads, &ClusterMemory::default(), &params, 0);
        assert_eq!(values(&output), vec![175, 350, 525, 175]);
    }

    #[test]
    fn slow_start_ramps_new_endpoints_only() {
        let params = Params {
            slow_start: Duration::from_secs(100),
            ..capacity(Objective::Balance)
        };
        let even = |count| costed(&vec![(0.1, 100.0); count], 5);
        let first = run(
            &endpoints(2),
            &even(2),
            &ClusterMemory::default(),
            &params,
            0,
        );
        assert_eq!(
            values(&first),
            vec![10000, 10000],
            "initial endpoints do not ramp"
        );
        let added = run(&endpoints(3), &even(2), &first.memory, &params, 10);
        assert_eq!(values(&added)[2], 1);
        let half = run(&endpoints(3), &even(3), &added.memory, &params, 60);
        assert!(
            (4000..=6000).contains(&half.weights[2].weight),
            "{:?}",
            half.weights[2]
        );
        assert!(half.weights[2].reason.to_string().contains("slow start"));
        let done = run(&endpoints(3), &even(3), &half.memory, &params, 120);
        assert_eq!(values(&done), vec![10000, 10000, 10000]);
    }

    #[test]
    fn unchanged_inputs_do_not_move() {
        let params = capacity(Objective::Balance);
        let loads = costed(&[(0.1, 100.0), (0.2, 100.0)], 5);
        let first = run(&endpoints(2), &loads, &ClusterMemory::default(), &params, 0);
        assert!(first.moved);
        let second = run(&endpoints(2), &loads, &first.memory, &params, 10);
        assert!(!second.moved);
        let grown = run(
            &endpoints(3),
            &costed(&[(0.1, 100.0); 3], 5),
            &second.memory,
            &params,
            20,
        );
        assert!(grown.moved, "a new endpoint is always published");
    }

    #[test]
    fn a_slow_drift_is_published_once_it_adds_up() {
        let params = Params {
            smoothing: 1.0,
            ..capacity(Objective::Balance)
        };
        let mut memory = ClusterMemory::default();
        let mut published = Vec::new();
        for tick in 0..20u64 {
            // The second endpoint gets 1% cheaper every tick.
            let cost = 0.002 * 0.99f64.powi(tick as i32);
            let loads = costed(&[(0.1, 100.0), (cost * 100.0, 100.0)], 5);
            let output = run(&endpoints(2), &loads, &memory, &params, tick * 10);
            if output.moved {
                published.push((tick, output.weights[1].weight));
            } else {
                assert_eq!(
                    output.weights[1].weight,
                    memory.endpoints[&endpoint_key(&endpoint(1))].weight
                );
            }
            memory = output.memory;
        }
        // First publish at tick 0, then roughly every 5 ticks (5% threshold, 1% per tick).
        assert!(published.len() >= 3, "{published:?}");
        let last = published.last().map_or(0, |(_, weight)| *weight);
        assert!(last > 5000 * 105 / 100, "{published:?}");
    }

    #[test]
    fn weights_respect_configured_bounds() {
        let params = Params {
            min_weight: Some(10),
            max_weight: Some(50),
            ..capacity(Objective::Latency)
        };
        let loads = costed(&[(0.1, 100.0), (2.0, 100.0), (0.3, 100.0)], 5);
        let output = run(&endpoints(3), &loads, &ClusterMemory::default(), &params, 0);
        for weight in values(&output) {
            assert!((10..=50).contains(&weight), "{weight}");
        }
    }

    #[test]
    fn locality_sums_stay_below_two_to_the_32() {
        let params = Params {
            min_weight: Some(u32::MAX),
            max_weight: Some(u32::MAX),
            ..capacity(Objective::Balance)
        };
        let mut fleet = endpoints(4);
        fleet[3].locality.zone = "b".into();
        let loads = costed(&[(0.1, 100.0); 4], 5);
        let output = run(&fleet, &loads, &ClusterMemory::default(), &params, 0);
        let zone_a: u64 = output.weights[..3]
            .iter()
            .map(|w| u64::from(w.weight))
            .sum();
        assert!(zone_a < 1 << 32, "{zone_a}");
        assert!(output.weights.iter().all(|weight| weight.weight >= 1));
        assert_eq!(output.weights[3].weight, u32::MAX, "alone in its locality");
    }

    #[test]
    fn weights_carry_their_explanation() {
        let params = Params {
            default_cpu_limit: 2.0,
            ..capacity(Objective::Latency)
        };
        let mut loads = costed(&[(0.5, 50.0), (1.0, 50.0)], 7);
        loads[1].cpu_limit = reading(4.0, 7);
        let output = run(&endpoints(2), &loads, &ClusterMemory::default(), &params, 0);
        let first = &output.weights[0];
        assert_eq!(first.cpu, Some(0.5));
        assert_eq!(first.rps, Some(50.0));
        assert_eq!(first.utilization, Some(0.25));
        assert_eq!(first.sample_age, Some(Duration::from_secs(7)));
        assert_eq!(first.previous, None);
        assert!(
            first.reason.to_string().contains("cost 0.0100 cpu-s/req"),
            "{}",
            first.reason
        );
        assert!(
            first.reason.to_string().contains("fill rank 1"),
            "{}",
            first.reason
        );
        assert_eq!(output.weights[1].utilization, Some(0.25));
        let again = run(&endpoints(2), &loads, &output.memory, &params, 10);
        assert_eq!(again.weights[0].previous, Some(first.weight));
    }
}
