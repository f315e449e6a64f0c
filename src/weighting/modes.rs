//! The weights of each mode: fresh (an algorithm plans, failing pods are held), holding, and equal.

use std::time::Duration;

use super::algorithms::{capacity, distance};
use super::errors;
use super::observe::{explained, Observation};
use super::plan::{bounds, middle_weight, percentile, to_weight, Cost, FreshEndpoint, Planned};
use super::{
    Algorithm, ClusterMemory, ClusterMode, CostBasis, ErrorTrack, NodePrior, Params, Reason,
    Weight, WeightSource,
};

/// A newcomer's weight, its share of the traffic, and whether its node's cost set it.
type NewcomerFill = (u32, f64, bool);

/// The weights of one tick before publishing, with the costs to remember.
pub(crate) struct Tick {
    /// One per endpoint.
    pub(crate) weights: Vec<Weight>,
    /// Cost to remember, one per endpoint.
    pub(crate) costs: Vec<Option<Cost>>,
    /// Unit of the costs, when this tick estimated any.
    pub(crate) cost_basis: Option<CostBasis>,
    /// Where the error judgement stands, one per endpoint (see [`errors::judge`]).
    pub(crate) tracks: Vec<ErrorTrack>,
    /// The demand planned (requests per second), when this tick planned one.
    pub(crate) demand: Option<f64>,
}

/// Runs the algorithm on the endpoints with fresh CPU and fills in the others.
pub(crate) fn fresh_weights(
    observations: &[Observation],
    memory: &ClusterMemory,
    params: &Params,
    now: Duration,
) -> Tick {
    let fresh = fresh_endpoints(observations, params, now);
    let (verdicts, fresh_tracks) = errors::judge(&fresh, judged_span(memory, params, now));
    let slowest = memory.slowest_cost_at(now).map(|(cost, _)| cost);
    let remembered = capacity::Remembered {
        basis: memory.cost_basis,
        slowest,
        demand_floor: memory.demand_floor_at(now),
    };
    let (planned, cost_basis, fill_percentile, demand) =
        plan_healthy(&fresh, &verdicts, remembered, params);
    let computed: Vec<f64> = planned
        .iter()
        .zip(&verdicts)
        .filter(|(_, verdict)| verdict.is_none())
        .map(|(plan, _)| f64::from(plan.weight))
        .collect();
    let fill = percentile(&computed, fill_percentile)
        .map_or_else(|| middle_weight(params), |value| to_weight(value, params));
    let slowest_seen =
        slowest.filter(|_| memory.cost_basis.is_some() && memory.cost_basis == cost_basis);
    let per_request = cost_basis == Some(CostBasis::PerRequest);
    let (mut newcomer_fills, planned_scale) = match newcomer_fills(
        observations,
        (&fresh, &planned, &verdicts),
        (slowest_seen, per_request),
        params,
    ) {
        Some((fills, scale)) => (Some(fills.into_iter()), scale),
        None => (None, 1.0),
    };
    let mut planned = planned.into_iter().zip(verdicts).zip(fresh_tracks);
    let mut weights = Vec::with_capacity(observations.len());
    let mut costs = Vec::with_capacity(observations.len());
    let mut tracks = Vec::with_capacity(observations.len());
    for observation in observations {
        let remembered_cost = observation.remembered.as_ref().and_then(Cost::remembered);
        let plan = if observation.fresh {
            planned.next()
        } else {
            None
        };
        match plan {
            Some(((plan, verdict), track)) => {
                let source = if verdict.is_some() {
                    WeightSource::Failing
                } else {
                    WeightSource::Fresh
                };
                let mut reason = plan.reason;
                if observation.cpu_is_in_flight {
                    reason.in_flight_load();
                }
                let weight = if planned_scale < 1.0 {
                    to_weight(f64::from(plan.weight) * planned_scale, params)
                } else {
                    plan.weight
                };
                weights.push(explained(observation, weight, source, reason));
                costs.push(plan.cost.or(remembered_cost));
                tracks.push(track);
            }
            None => {
                let newcomer = newcomer_fills.as_mut().and_then(Iterator::next);
                let (weight, reason) = match newcomer {
                    Some((weight, share, on_node)) => (
                        weight,
                        Reason::new_pod_share(stale_sample(observation, params), share, on_node),
                    ),
                    None => (fill, fill_in_reason(observation, fill_percentile, params)),
                };
                weights.push(explained(observation, weight, WeightSource::NewPod, reason));
                costs.push(remembered_cost);
                // Without a fresh sample the judgement stands until one moves it.
                tracks.push(remembered_track(observation));
            }
        }
    }
    Tick {
        weights,
        costs,
        cost_basis,
        tracks,
        demand,
    }
}

/// The endpoints with a fresh sample, as the planner and the error judgement see them.
fn fresh_endpoints(
    observations: &[Observation],
    params: &Params,
    now: Duration,
) -> Vec<FreshEndpoint> {
    observations
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
            errors_track: remembered_track(observation),
            load_is_in_flight: observation.cpu_is_in_flight,
            node_prior: observation.node_prior,
        })
        .collect()
}

/// The time the error judgement counts this tick's rates over: since the last tick.
fn judged_span(memory: &ClusterMemory, params: &Params, now: Duration) -> Duration {
    // Rates times the time they covered, bounded by how long a reading stays fresh.
    memory
        .last_tick
        .map_or(Duration::ZERO, |last| now.saturating_sub(last))
        .min(params.stale_after)
}

/// Plans the endpoints that are not failing with the cluster's algorithm, and gives each failing
/// one its probe weight; index-aligned with `fresh`, with the demand planned. `remembered`: what
/// the planner takes from the cluster's memory (see [`capacity::plan_with`]).
///
/// When every endpoint would be held, none is: holding them all changes no share, and the
/// baseline they are judged against is then their own.
pub(crate) fn plan_healthy(
    fresh: &[FreshEndpoint],
    verdicts: &[Option<errors::Failing>],
    remembered: capacity::Remembered,
    params: &Params,
) -> (Vec<Planned>, Option<CostBasis>, f64, Option<f64>) {
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
    let (planned, cost_basis, fill_percentile, demand) = match params.algorithm {
        Algorithm::Distance => (
            distance::plan(&healthy, params),
            None,
            params.distance.new_pod_percentile,
            None,
        ),
        Algorithm::Capacity | Algorithm::Static => {
            let (planned, basis, demand) =
                capacity::plan_with(&healthy, outside_rps, remembered, params);
            (planned, Some(basis), 50.0, demand)
        }
    };
    if healthy.len() == fresh.len() {
        return (planned, cost_basis, fill_percentile, demand);
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
                reason: Reason::failing(
                    failing.ratio,
                    failing.baseline,
                    errors::HELD_SHARE,
                    (failing.healthy_requests, errors::RELEASE_MIN_REQUESTS),
                ),
                cost: endpoint.cost,
            },
            None => planned.next().unwrap_or_else(|| Planned {
                weight: held_weight,
                reason: Reason::default(),
                cost: endpoint.cost,
            }),
        })
        .collect();
    (all, cost_basis, fill_percentile, demand)
}

/// Why an endpoint without a fresh sample got the fill-in weight.
pub(crate) fn fill_in_reason(
    observation: &Observation,
    fill_percentile: f64,
    params: &Params,
) -> Reason {
    Reason::new_pod(stale_sample(observation, params), fill_percentile)
}

/// The age of an endpoint's stale sample and the staleness limit, in seconds.
fn stale_sample(observation: &Observation, params: &Params) -> Option<(u64, u64)> {
    observation
        .cpu
        .map(|reading| (reading.age.as_secs(), params.stale_after.as_secs()))
}

/// Under `latency` (capacity algorithm), the weight and share of each endpoint without a fresh
/// sample, in order, and whether its node's cost set it: its [`capacity::newcomer_share`] (at
/// its node's cost, else at the slowest cost measured now or remembered, `slowest_seen`) turned
/// into a weight against the planned ones, and the factor to scale the planned weights by (1
/// unless a newcomer's weight would pass the largest). `None` for other
/// objectives, when every endpoint is fresh, or when nothing is measured (the percentile fill
/// applies).
fn newcomer_fills(
    observations: &[Observation],
    (fresh, planned, verdicts): (&[FreshEndpoint], &[Planned], &[Option<errors::Failing>]),
    (slowest_seen, per_request): (Option<f64>, bool),
    params: &Params,
) -> Option<(Vec<NewcomerFill>, f64)> {
    if params.algorithm != Algorithm::Capacity
        || params.objective != super::Objective::Latency
        || fresh.len() == observations.len()
    {
        return None;
    }
    let known: Vec<(f64, f64)> = fresh
        .iter()
        .zip(planned)
        .zip(verdicts)
        .filter(|(_, verdict)| verdict.is_none())
        .filter_map(|((endpoint, plan), _)| Some((plan.cost?.value, endpoint.limit)))
        .collect();
    let limits: Vec<(f64, Option<NodePrior>)> = observations
        .iter()
        .filter(|observation| !observation.fresh)
        .map(|observation| {
            (
                observation.limit,
                observation.node_prior.filter(|_| per_request),
            )
        })
        .collect();
    let shares = capacity::newcomer_share(&known, &limits, slowest_seen)?;
    let on_node = limits.iter().map(|(_, prior)| prior.is_some());
    let total: f64 = shares.iter().sum();
    let planned_sum: f64 = planned.iter().map(|plan| f64::from(plan.weight)).sum();
    if total >= 1.0 || planned_sum <= 0.0 {
        return None;
    }
    // A newcomer whose share needs a weight past the largest scales the planned weights down
    // instead, so it keeps its share.
    let largest = shares
        .iter()
        .fold(0.0, |largest: f64, share| largest.max(*share));
    let top = largest / (1.0 - total) * planned_sum;
    let (_, high) = bounds(params);
    let scale = if top > f64::from(high) {
        f64::from(high) / top
    } else {
        1.0
    };
    Some((
        shares
            .into_iter()
            .zip(on_node)
            .map(|(share, on_node)| {
                (
                    to_weight(share / (1.0 - total) * planned_sum * scale, params),
                    share,
                    on_node,
                )
            })
            .collect(),
        scale,
    ))
}

/// Holding: every endpoint keeps its served weight; unknown ones get the median of those.
pub(crate) fn held_weights(
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
    Tick::remembered(weights, observations)
}

impl Tick {
    /// These weights, with the costs and holds remembered so far, unchanged.
    fn remembered(weights: Vec<Weight>, observations: &[Observation]) -> Self {
        Self {
            weights,
            costs: remembered_costs(observations),
            cost_basis: None,
            tracks: remembered_tracks(observations),
            demand: None,
        }
    }
}

/// Idle and fallback: the same weight, the middle of the range, for every endpoint.
pub(crate) fn equal_weights(
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
    Tick::remembered(weights, observations)
}

/// Idle: equal weights, while the error judgement goes on, so that a pod failing in a quiet
/// cluster is held at its probe as in a busy one.
pub(crate) fn idle_weights(
    observations: &[Observation],
    memory: &ClusterMemory,
    params: &Params,
    now: Duration,
    last_sample_at: Option<Duration>,
) -> Tick {
    let mut tick = equal_weights(observations, ClusterMode::Idle, params, now, last_sample_at);
    let fresh = fresh_endpoints(observations, params, now);
    let (verdicts, tracks) = errors::judge(&fresh, judged_span(memory, params, now));
    let held = verdicts.iter().filter(|verdict| verdict.is_some()).count();
    // As when planning: holding every endpoint would change no share.
    let hold = held > 0 && held < fresh.len();
    let others = (observations.len() - held) as f64;
    let probe = errors::held_weight(f64::from(middle_weight(params)) * others, held, params);
    let mut judged = verdicts.into_iter().zip(tracks);
    for ((observation, weight), remembered) in observations
        .iter()
        .zip(&mut tick.weights)
        .zip(&mut tick.tracks)
    {
        if !observation.fresh {
            continue;
        }
        let Some((verdict, track)) = judged.next() else {
            break;
        };
        *remembered = track;
        if let Some(failing) = verdict.filter(|_| hold) {
            let reason = Reason::failing(
                failing.ratio,
                failing.baseline,
                errors::HELD_SHARE,
                (failing.healthy_requests, errors::RELEASE_MIN_REQUESTS),
            );
            *weight = explained(observation, probe, WeightSource::Failing, reason);
        }
    }
    tick
}

/// The error judgements remembered so far, unchanged.
pub(crate) fn remembered_tracks(observations: &[Observation]) -> Vec<ErrorTrack> {
    observations.iter().map(remembered_track).collect()
}

/// An endpoint's error judgement as remembered (clear for a new one).
fn remembered_track(observation: &Observation) -> ErrorTrack {
    observation
        .remembered
        .as_ref()
        .map_or(ErrorTrack::Clear, |memory| memory.errors)
}

/// The costs remembered so far, unchanged.
pub(crate) fn remembered_costs(observations: &[Observation]) -> Vec<Option<Cost>> {
    observations
        .iter()
        .map(|observation| observation.remembered.as_ref().and_then(Cost::remembered))
        .collect()
}
