//! Capacity planning: estimate each endpoint's cost per request, place the demand for the
//! objective (see [`super::placement`]), and turn the planned traffic into step-limited weights.

use super::placement::{balance, cap_suspects, latency};
use crate::weighting::{
    plan::{middle_weight, percentile, to_weight, Cost, FreshEndpoint, Planned},
    reason::{CostSource, Placement},
    CostBasis, NodePrior, Objective, Params, Reason,
};

/// Request rates at or below this (per second) are too small to divide CPU by.
const RPS_EPSILON: f64 = 1e-6;

/// Request rate (per second) at which one tick's cost estimate counts fully in the running
/// average; below it, the estimate counts in proportion. An endpoint kept at its probe share
/// serves a few requests per tick, and CPU / rate from so few requests is noisy: weighting by
/// evidence keeps one lucky tick from making a slow endpoint look cheapest.
const FULL_EVIDENCE_RPS: f64 = 20.0;

/// Requests in flight (a window's mean, summed over the reporting Envoys) at which an estimate
/// made from them counts fully. They stand in for CPU when there is none, and at low
/// concurrency they are a handful of snapshots of 0, 1 or 2 requests: a pod read at 0 would look
/// free and, averaged in fully, win the traffic. Below this the estimate counts in proportion
/// to the requests in flight *expected* from the remembered cost (Little's law: cost per request
/// times requests per second), not to the ones read: counting a reading by its own size would
/// ignore the zeros and keep the ones, so a pod's cost would only ratchet up, and a healthy pod
/// cut once by a noisy reading would read 0 from then on and stay starved.
const FULL_EVIDENCE_IN_FLIGHT: f64 = 4.0;

/// A cost is never taken below this fraction of the median cost, so one endpoint reporting
/// almost no CPU cannot claim an unbounded capacity.
const COST_FLOOR_FRACTION: f64 = 1e-3;

/// A sample at or above this fraction of its CPU limit is saturated: the endpoint may have been
/// sent more than it could serve, so the cost it shows is only a lower bound.
const SATURATION: f64 = 0.95;

/// A cost estimate this fraction above the remembered cost, from full evidence (see
/// [`FULL_EVIDENCE_RPS`]), is a clear rise: the endpoint got slower, so the estimate is believed
/// at once and the weight may fall past the step limit. Twice [`COST_TIER_TOLERANCE`]: on the seed fleet simulated with
/// 1 s samples, a fib27 pod at 50 rps read 25% above its average a few times in 200 ticks from
/// noise alone, never 50%; a pod turning 4x slower reads 1.6x or more on the first tick whose
/// 5 s rate window holds one slow second.
const CLEAR_RISE: f64 = 0.5;

/// The cluster as the planner sees it: cost, capacity at the ceiling, and the demand to place.
pub(crate) struct Fleet {
    /// Cost of one unit of traffic in cores: CPU seconds per request, or per whole-cluster traffic.
    pub(crate) costs: Vec<f64>,
    /// Each endpoint's CPU limit in cores (requests served at once without a CPU signal).
    pub(crate) limits: Vec<f64>,
    /// Traffic each endpoint takes at the utilization ceiling, in the same unit as `demand`
    /// (less for a suspect, see [`cap_suspects`]).
    pub(crate) capacities: Vec<f64>,
    /// Traffic to place: requests per second, or 1.0 (all of it) when rates are unknown.
    pub(crate) demand: f64,
    /// Each cost relative to the traffic-weighted mean cost, for explanations.
    pub(crate) relative_costs: Vec<f64>,
    /// The utilization ceiling the capacities are taken at.
    pub(crate) ceiling: f64,
}

impl Fleet {
    /// Traffic each endpoint takes at full utilization (limit / cost).
    pub(crate) fn full_capacities(&self) -> Vec<f64> {
        self.limits
            .iter()
            .zip(&self.costs)
            .map(|(limit, cost)| limit / cost)
            .collect()
    }
}

/// One endpoint's smoothed cost and, when it clearly rose this tick, by what factor.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Smoothed {
    /// The cost to plan with and remember; `None` without any estimate or memory.
    cost: Option<Cost>,
    /// The factor by which the cost rose this tick, when beyond [`CLEAR_RISE`] with full
    /// evidence: the endpoint got slower, and its weight may fall without the step limit.
    rose: Option<f64>,
}

/// What the planner takes from the cluster's memory.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Remembered {
    /// Unit of the endpoints' remembered costs.
    pub(crate) basis: Option<CostBasis>,
    /// The cluster's remembered slowest cost, in `basis` units: newcomers start at it when it
    /// exceeds every measured one.
    pub(crate) slowest: Option<f64>,
    /// The least demand to plan for, in requests per second: the demand planned before, decayed
    /// (see `weighting::DEMAND_HALF_LIFE`).
    pub(crate) demand_floor: Option<f64>,
}

/// [`plan_with`] with nothing remembered but the unit of the costs.
#[cfg(test)]
pub(crate) fn plan(
    fresh: &[FreshEndpoint],
    outside_rps: f64,
    basis_before: Option<CostBasis>,
    params: &Params,
) -> (Vec<Planned>, CostBasis) {
    let remembered = Remembered {
        basis: basis_before,
        ..Remembered::default()
    };
    let (planned, basis, _) = plan_with(fresh, outside_rps, remembered, params);
    (planned, basis)
}

/// Weights for the endpoints with fresh CPU, index-aligned with `fresh`, the unit of the costs
/// to remember, and the demand planned (requests per second, when costs are per request).
///
/// `outside_rps` is traffic now served by endpoints outside `fresh` (held as failing) that the
/// plan must place.
///
/// The demand planned never falls faster than `remembered.demand_floor` allows: request rates
/// over a window read low while a pod's series is younger than the window (a rolling restart
/// under `rate[1m]`), and a demand read low concentrates the
/// `latency` plan on the cheapest pods past their ceiling. A demand read high only spreads the
/// plan wider, so rises are taken at once.
pub(crate) fn plan_with(
    fresh: &[FreshEndpoint],
    outside_rps: f64,
    remembered: Remembered,
    params: &Params,
) -> (Vec<Planned>, CostBasis, Option<f64>) {
    let (basis_before, slowest_seen) = (remembered.basis, remembered.slowest);
    let basis = if fresh.iter().any(|endpoint| endpoint.rps.is_some()) {
        CostBasis::PerRequest
    } else {
        CostBasis::Relative
    };
    if fresh.is_empty() {
        return (Vec::new(), basis, None);
    }
    let shares = served_shares(fresh);
    let smoothed = smoothed_costs(fresh, &shares, basis, basis_before, params);
    let latency_objective = params.objective == Objective::Latency;
    // A node's cost stands in only for the `latency` newcomer rule, in the unit it was kept in.
    let per_request_before =
        basis == CostBasis::PerRequest && basis_before == Some(CostBasis::PerRequest);
    // Empty (no allocation on the hot path) unless an endpoint has one.
    let node_priors: Vec<Option<NodePrior>> = if fresh
        .iter()
        .any(|endpoint| endpoint.node_prior.is_some())
    {
        fresh
            .iter()
            .zip(&smoothed)
            .map(|(endpoint, smoothed)| {
                endpoint
                    .node_prior
                    .filter(|prior| prior.cost.is_finite() && prior.cost > 0.0)
                    .filter(|_| latency_objective && per_request_before && smoothed.cost.is_none())
            })
            .collect()
    } else {
        Vec::new()
    };
    let values = planning_costs(&smoothed, latency_objective, &node_priors);
    // A first estimate replaces a guess (a newcomer's share), not a measured state: like a clear
    // rise, it may bring the weight down to its target in one tick.
    let rose: Vec<bool> = smoothed
        .iter()
        .zip(fresh)
        .map(|(cost, endpoint)| {
            cost.rose.is_some() || (endpoint.cost.is_none() && cost.cost.is_some())
        })
        .collect();
    let mut fleet = fleet(fresh, &shares, &values, basis, params);
    if basis == CostBasis::PerRequest && outside_rps.is_finite() && outside_rps > 0.0 {
        fleet.demand += outside_rps;
    }
    if basis == CostBasis::PerRequest {
        if let Some(floor) = remembered.demand_floor.filter(|floor| floor.is_finite()) {
            fleet.demand = fleet.demand.max(floor);
        }
    }
    let suspects = cap_suspects(&mut fleet, fresh);
    let (loads, placements) = match params.objective {
        Objective::Balance => (balance(&fleet), vec![Placement::Balance; fresh.len()]),
        Objective::Latency => {
            let (mut loads, mut placements) =
                latency(&fleet, params.probe_share, params.surge_headroom);
            let slowest_seen = slowest_seen.filter(|_| basis_before == Some(basis));
            newcomer_loads(
                &mut loads,
                &mut placements,
                &fleet,
                &smoothed,
                (slowest_seen, &node_priors),
            );
            (loads, placements)
        }
    };
    let planned = weights_for(&loads, fresh, &rose, params)
        .into_iter()
        .enumerate()
        .map(|(index, weight)| {
            let utilization = loads[index] * fleet.costs[index] / fresh[index].limit;
            let source = match smoothed[index] {
                Smoothed { cost: None, .. }
                    if node_priors.get(index).is_some_and(Option::is_some) =>
                {
                    CostSource::AssumedNode
                }
                Smoothed { cost: None, .. } if latency_objective => CostSource::AssumedSlowest,
                Smoothed { cost: None, .. } => CostSource::Assumed,
                Smoothed {
                    rose: Some(factor), ..
                } => CostSource::Rose(factor),
                Smoothed { rose: None, .. } => CostSource::Measured,
            };
            let mut reason = reason(&fleet, basis, index, source, utilization, placements[index]);
            if let Some(fraction) = suspects[index] {
                reason.suspect(fraction);
            }
            Planned {
                weight,
                reason,
                cost: smoothed[index].cost,
            }
        })
        .collect();
    let demand = (basis == CostBasis::PerRequest).then_some(fleet.demand);
    (planned, basis, demand)
}

/// The share of traffic each endpoint was served, from the weights in force; an endpoint without
/// one counts as the median, and with none at all the shares are equal.
fn served_shares(fresh: &[FreshEndpoint]) -> Vec<f64> {
    let known: Vec<f64> = fresh
        .iter()
        .filter_map(|endpoint| endpoint.previous.map(f64::from))
        .collect();
    let default = percentile(&known, 50.0).unwrap_or(1.0).max(1.0);
    let weights: Vec<f64> = fresh
        .iter()
        .map(|endpoint| {
            endpoint
                .previous
                .map_or(default, |weight| f64::from(weight.max(1)))
        })
        .collect();
    let total: f64 = weights.iter().sum();
    weights.iter().map(|weight| weight / total).collect()
}

/// This tick's cost estimates averaged with the remembered ones (when in the same unit); `None`
/// for an endpoint that has neither (it served no requests and has no memory).
///
/// Per request: CPU / requests per second, for endpoints that served requests; each estimate
/// counts in the average in proportion to the requests behind it (see [`FULL_EVIDENCE_RPS`]), and
/// an endpoint that served none keeps its remembered cost. Relative: CPU / share of traffic,
/// divided by the cluster's CPU, which is the cost over the traffic-weighted mean cost; it is
/// independent of the total rate, so it can be averaged across ticks while the load changes.
///
/// A clear rise (beyond [`CLEAR_RISE`], with full evidence) is believed at once rather than
/// averaged in: an endpoint that turned slow must lose its traffic on the next tick, while a
/// fall is averaged, so a noisy cheap reading is slow to win traffic.
fn smoothed_costs(
    fresh: &[FreshEndpoint],
    shares: &[f64],
    basis: CostBasis,
    basis_before: Option<CostBasis>,
    params: &Params,
) -> Vec<Smoothed> {
    let total_cpu: f64 = fresh.iter().map(|endpoint| endpoint.cpu).sum();
    let newest = if params.smoothing.is_finite() && params.smoothing > 0.0 {
        params.smoothing.min(1.0)
    } else {
        1.0
    };
    // Each estimate with its evidence (1.0: full).
    let estimates: Vec<Option<(f64, f64)>> = fresh
        .iter()
        .zip(shares)
        .map(|(endpoint, share)| match basis {
            // Per *successful* request: a pod that answers errors cheaply is not cheap.
            CostBasis::PerRequest => endpoint
                .rps
                .map(|rps| rps - endpoint.errors.unwrap_or(0.0).clamp(0.0, rps))
                .filter(|served| *served > RPS_EPSILON)
                .map(|served| (endpoint.cpu / served, evidence(endpoint, served)))
                .filter(|(_, evidence)| *evidence > 0.0),
            CostBasis::Relative if total_cpu > 0.0 => Some((endpoint.cpu / share / total_cpu, 1.0)),
            CostBasis::Relative => Some((1.0, 1.0)),
        })
        .collect();
    let olds: Vec<Option<Cost>> = fresh
        .iter()
        .map(|endpoint| {
            endpoint.cost.filter(|old| {
                basis_before == Some(basis) && old.value.is_finite() && old.value > 0.0
            })
        })
        .collect();
    let saturated: Vec<bool> = fresh
        .iter()
        .map(|endpoint| endpoint.cpu >= SATURATION * endpoint.limit)
        .collect();
    let rescale = match basis {
        CostBasis::PerRequest => 1.0,
        CostBasis::Relative => relative_rescale(&estimates, &olds, &saturated, shares),
    };
    estimates
        .iter()
        .zip(olds)
        .zip(saturated)
        .map(|((estimate, old), saturated)| {
            let old = old.map(|old| Cost {
                value: old.value * rescale,
                ..old
            });
            let Some((value, evidence)) = *estimate else {
                return Smoothed {
                    cost: old,
                    rose: None,
                };
            };
            // Only with full evidence: from a few requests a fivefold estimate is mostly noise.
            let rose = old
                .filter(|old| evidence >= 1.0 && value > old.value * (1.0 + CLEAR_RISE))
                .map(|old| value / old.value);
            let weight = if rose.is_some() {
                1.0
            } else {
                newest * evidence
            };
            let cost = blend(value, saturated, old, weight);
            Smoothed {
                cost: Some(cost),
                rose,
            }
        })
        .collect()
}

/// The costs to plan with: the smoothed ones, and for endpoints without one the median of those
/// (1.0 when no endpoint has one), so an unmeasured endpoint is planned as a typical one; the
/// largest instead with `slowest` (the `latency` objective, see [`newcomer_share`]), and its
/// node's cost when known (`node_priors`, index-aligned, or empty when none is).
fn planning_costs(
    smoothed: &[Smoothed],
    slowest: bool,
    node_priors: &[Option<NodePrior>],
) -> Vec<f64> {
    let typical = if smoothed.iter().all(|smoothed| smoothed.cost.is_some()) {
        // Not needed: skip the sort on the hot path (every tick, every cluster).
        1.0
    } else {
        let known: Vec<f64> = smoothed
            .iter()
            .filter_map(|smoothed| smoothed.cost.map(|cost| cost.value))
            .collect();
        percentile(&known, if slowest { 100.0 } else { 50.0 }).unwrap_or(1.0)
    };
    smoothed
        .iter()
        .enumerate()
        .map(|(index, smoothed)| {
            let node_cost = node_priors
                .get(index)
                .copied()
                .flatten()
                .map(|prior| prior.cost);
            smoothed
                .cost
                .map_or(node_cost.unwrap_or(typical), |cost| cost.value)
        })
        .collect()
}

/// The share of the traffic each not yet measured endpoint gets under `latency`, index-aligned
/// with `newcomers` (limit, and what was measured on its node if known): the share it would
/// carry with the traffic spread in proportion to capacity, as if it were as slow as its node's
/// cost, or without one as the slowest measured endpoint (`known`: cost and limit), or as the
/// cluster's remembered slowest cost (`slowest_seen`) when that is larger. On a known node, at
/// most the share served there (a slow node's is a probe: the plan keeps slow pods at one).
///
/// A node's cost is the better guess: pods of one cluster differ in speed by the node they run
/// on, so a pod replacing one on the same node (a rolling restart that reuses the nodes) starts
/// near the share it will keep instead of a slow pod's.
///
/// The plan's usual rule for an unknown cost, the median, would load a newcomer like a typical
/// pod, which under `latency` is a full weight: in a rolling restart a new pod on a slow node
/// is flooded past its ceiling before its first samples arrive. At this share it runs at the
/// cluster's utilization or below (unless it is slower than every pod measured so far), and it
/// serves enough requests to be measured in a tick or two, so it is not starved either.
/// `None` when nothing is measured.
pub(crate) fn newcomer_share(
    known: &[(f64, f64)],
    newcomers: &[(f64, Option<NodePrior>)],
    slowest_seen: Option<f64>,
) -> Option<Vec<f64>> {
    let valid = |value: f64| value.is_finite() && value > 0.0;
    let measured = known
        .iter()
        .map(|(cost, _)| *cost)
        .filter(|cost| valid(*cost))
        .fold(0.0, f64::max);
    if measured <= 0.0 {
        return None;
    }
    let slowest = slowest_seen
        .filter(|seen| valid(*seen))
        .map_or(measured, |seen| seen.max(measured));
    let full: Vec<f64> = newcomers
        .iter()
        .map(|(limit, prior)| {
            let cost = prior
                .map(|prior| prior.cost)
                .filter(|cost| valid(*cost))
                .unwrap_or(slowest);
            if valid(*limit) {
                limit / cost
            } else {
                0.0
            }
        })
        .collect();
    let capacity: f64 = known
        .iter()
        .filter(|(cost, limit)| valid(*cost) && valid(*limit))
        .map(|(cost, limit)| limit / cost)
        .sum::<f64>()
        + full.iter().sum::<f64>();
    Some(
        full.into_iter()
            .zip(newcomers)
            .map(|(full, (_, prior))| {
                let share = full / capacity;
                match prior.map(|prior| prior.share) {
                    Some(served) if served.is_finite() && served >= 0.0 => share.min(served),
                    _ => share,
                }
            })
            .collect(),
    )
}

/// Under `latency`, gives each endpoint without a cost its [`newcomer_share`] of the demand and
/// scales the planned loads of the others to the rest. `node_priors` is index-aligned, or empty
/// when no endpoint has one.
fn newcomer_loads(
    loads: &mut [f64],
    placements: &mut [Placement],
    fleet: &Fleet,
    smoothed: &[Smoothed],
    (slowest_seen, node_priors): (Option<f64>, &[Option<NodePrior>]),
) {
    if smoothed.iter().all(|smoothed| smoothed.cost.is_some())
        || smoothed.iter().all(|smoothed| smoothed.cost.is_none())
    {
        return;
    }
    let (known, newcomers): (Vec<usize>, Vec<usize>) =
        (0..smoothed.len()).partition(|index| smoothed[*index].cost.is_some());
    let pairs: Vec<(f64, f64)> = known
        .iter()
        .map(|index| (fleet.costs[*index], fleet.limits[*index]))
        .collect();
    let limits: Vec<(f64, Option<NodePrior>)> = newcomers
        .iter()
        .map(|index| {
            (
                fleet.limits[*index],
                node_priors.get(*index).copied().flatten(),
            )
        })
        .collect();
    let Some(shares) = newcomer_share(&pairs, &limits, slowest_seen) else {
        return;
    };
    let newcomer_total: f64 = shares.iter().sum();
    let known_load: f64 = known.iter().map(|index| loads[*index]).sum();
    let scale = if known_load > 0.0 {
        fleet.demand * (1.0 - newcomer_total).max(0.0) / known_load
    } else {
        0.0
    };
    for index in known {
        loads[index] *= scale;
    }
    for (index, share) in newcomers.into_iter().zip(shares) {
        loads[index] = share * fleet.demand;
        placements[index] = Placement::Newcomer;
    }
}

/// How much one tick's per-request estimate counts (1.0: fully): in proportion to the successful
/// requests behind it, and with requests in flight for load, to how many are expected in flight
/// (see [`FULL_EVIDENCE_IN_FLIGHT`]; the ones read when nothing is remembered).
fn evidence(endpoint: &FreshEndpoint, served: f64) -> f64 {
    let requests = (served / FULL_EVIDENCE_RPS).min(1.0);
    if endpoint.load_is_in_flight {
        let expected = endpoint
            .cost
            .filter(|cost| !cost.is_floor && cost.value.is_finite() && cost.value > 0.0)
            .map_or(endpoint.cpu, |cost| cost.value * served);
        requests * (expected / FULL_EVIDENCE_IN_FLIGHT).min(1.0)
    } else {
        requests
    }
}

/// The factor that brings remembered relative costs to this tick's normalisation.
///
/// Relative costs are only known up to a factor common to one tick (the traffic-weighted mean
/// cost of that tick). Matching the two ticks on the endpoints measured well in both keeps the
/// average a pure average of shapes, even when some endpoints replace a lower bound.
fn relative_rescale(
    estimates: &[Option<(f64, f64)>],
    olds: &[Option<Cost>],
    saturated: &[bool],
    shares: &[f64],
) -> f64 {
    let (now, before) = estimates
        .iter()
        .zip(olds)
        .zip(saturated)
        .zip(shares)
        .filter_map(
            |(((estimate, old), saturated), share)| match (estimate, old) {
                (Some((estimate, _)), Some(old)) if !old.is_floor && !saturated => {
                    Some((share * estimate, share * old.value))
                }
                _ => None,
            },
        )
        .fold((0.0, 0.0), |(now, before), (estimate, old)| {
            (now + estimate, before + old)
        });
    if now > 0.0 && before > 0.0 {
        now / before
    } else {
        1.0
    }
}

/// Averages a new estimate into the remembered cost with weight `newest`.
///
/// A saturated estimate is only a lower bound: it raises the cost but never lowers it. An
/// unsaturated estimate replaces a remembered lower bound outright, so one overloaded tick at
/// startup does not linger in the average.
fn blend(estimate: f64, saturated: bool, old: Option<Cost>, newest: f64) -> Cost {
    match (saturated, old) {
        (true, Some(old)) if old.value >= estimate => old,
        (true, _) => Cost {
            value: estimate,
            is_floor: true,
        },
        (false, Some(old)) if !old.is_floor => Cost {
            value: newest * estimate + (1.0 - newest) * old.value,
            is_floor: false,
        },
        (false, _) => Cost {
            value: estimate,
            is_floor: false,
        },
    }
}

/// Turns smoothed costs into the planner's units, capacities and demand.
fn fleet(
    fresh: &[FreshEndpoint],
    shares: &[f64],
    smoothed: &[f64],
    basis: CostBasis,
    params: &Params,
) -> Fleet {
    let median = percentile(smoothed, 50.0).unwrap_or(1.0);
    let floor = (median * COST_FLOOR_FRACTION).max(f64::MIN_POSITIVE);
    let floored: Vec<f64> = smoothed.iter().map(|cost| cost.max(floor)).collect();
    let mean: f64 = floored
        .iter()
        .zip(shares)
        .map(|(cost, share)| cost * share)
        .sum();
    let relative_costs: Vec<f64> = floored.iter().map(|cost| cost / mean).collect();
    let (costs, demand) = match basis {
        CostBasis::PerRequest => {
            let demand = fresh.iter().filter_map(|endpoint| endpoint.rps).sum();
            (floored, demand)
        }
        CostBasis::Relative => {
            // Re-imposing the normalisation with today's shares makes the scale exact even when
            // the averaged estimates were measured under other shares.
            let total_cpu: f64 = fresh.iter().map(|endpoint| endpoint.cpu).sum();
            let scale = if total_cpu > 0.0 { total_cpu } else { 1.0 };
            let costs = relative_costs.iter().map(|cost| cost * scale).collect();
            (costs, 1.0)
        }
    };
    let ceiling = if params.utilization_ceiling > 0.0 {
        params.utilization_ceiling
    } else {
        f64::MIN_POSITIVE
    };
    let capacities = costs
        .iter()
        .zip(fresh)
        .map(|(cost, endpoint)| ceiling * endpoint.limit / cost)
        .collect();
    let limits = fresh.iter().map(|endpoint| endpoint.limit).collect();
    Fleet {
        costs,
        limits,
        capacities,
        demand,
        relative_costs,
        ceiling,
    }
}

/// Weights in proportion to the planned traffic, the largest at the maximum weight.
///
/// `rose` marks the endpoints whose cost clearly rose this tick, or was estimated for the first
/// time: their weight is not held back by the step limit on the way down.
fn weights_for(loads: &[f64], fresh: &[FreshEndpoint], rose: &[bool], params: &Params) -> Vec<u32> {
    let largest = loads.iter().copied().fold(0.0, f64::max);
    if largest <= 0.0 {
        return vec![middle_weight(params); loads.len()];
    }
    let targets: Vec<f64> = loads
        .iter()
        .map(|load| (load / largest).max(f64::MIN_POSITIVE))
        .collect();
    let stepped = step_limited(&targets, fresh, rose, params.max_step);
    let top = stepped.iter().copied().fold(0.0, f64::max);
    let high = f64::from(params.max_weight());
    stepped
        .iter()
        .map(|weight| to_weight(high * weight / top, params))
        .collect()
}

/// Moves each weight from the one in force towards its target by at most a factor `max_step`.
///
/// Only ratios between weights matter to Envoy, so each change is measured against the
/// cluster's typical change (the geometric mean of target / previous): an endpoint's share of
/// traffic moves by at most about `max_step` per tick, whatever the overall scale. Endpoints
/// without a weight in force, or in their slow start, go straight to their target; so do the
/// endpoints marked in `rose` when their weight falls, and they are left out of the typical
/// change, so that the others keep their weights while one is moved off.
fn step_limited(
    targets: &[f64],
    fresh: &[FreshEndpoint],
    rose: &[bool],
    max_step: f64,
) -> Vec<f64> {
    if !(max_step.is_finite() && max_step >= 1.0) {
        return targets.to_vec();
    }
    let previous = |endpoint: &FreshEndpoint| {
        endpoint
            .previous
            .filter(|_| !endpoint.ramping)
            .map(|weight| f64::from(weight.max(1)))
    };
    let logs: Vec<f64> = targets
        .iter()
        .zip(fresh)
        .zip(rose)
        .filter(|(_, rose)| !**rose)
        .filter_map(|((target, endpoint), _)| {
            previous(endpoint).map(|weight| (target / weight).ln())
        })
        .collect();
    let typical = if logs.is_empty() {
        1.0
    } else {
        (logs.iter().sum::<f64>() / logs.len() as f64).exp()
    };
    targets
        .iter()
        .zip(fresh)
        .zip(rose)
        .map(|((target, endpoint), rose)| match previous(endpoint) {
            Some(weight) => {
                let lowest = if *rose { 0.0 } else { 1.0 / max_step };
                weight * (target / weight / typical).clamp(lowest, max_step)
            }
            None => target / typical,
        })
        .collect()
}

/// The explanation of one endpoint's planned weight: the cost it shows and the planned
/// utilization (written as text only when read).
fn reason(
    fleet: &Fleet,
    basis: CostBasis,
    index: usize,
    source: CostSource,
    utilization: f64,
    placement: Placement,
) -> Reason {
    let cost = match basis {
        CostBasis::PerRequest => fleet.costs[index],
        CostBasis::Relative => fleet.relative_costs[index],
    };
    Reason::capacity(basis, cost, source, utilization, placement)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An endpoint whose source also reports errors (none): its cost is believed as measured.
    fn endpoint(cpu: f64, rps: Option<f64>, previous: Option<u32>) -> FreshEndpoint {
        FreshEndpoint {
            cpu,
            rps,
            limit: 1.0,
            previous,
            cost: None,
            ramping: false,
            errors: Some(0.0),
            errors_track: crate::weighting::ErrorTrack::Clear,
            load_is_in_flight: false,
            node_prior: None,
        }
    }

    fn params(objective: Objective) -> Params {
        Params {
            objective,
            ..Params::default()
        }
    }

    /// The plan of `fresh` with costs remembered per request.
    fn per_request(fresh: &[FreshEndpoint], objective: Objective) -> Vec<Planned> {
        plan(fresh, 0.0, Some(CostBasis::PerRequest), &params(objective)).0
    }

    fn weights(fresh: &[FreshEndpoint], objective: Objective) -> Vec<u32> {
        plan(fresh, 0.0, None, &params(objective))
            .0
            .into_iter()
            .map(|planned| planned.weight)
            .collect()
    }

    #[test]
    fn balance_weighs_by_limit_over_cost() {
        let mut fresh = vec![
            endpoint(0.1, Some(100.0), None),
            endpoint(0.2, Some(100.0), None),
            endpoint(0.2, Some(100.0), None),
        ];
        fresh[2].limit = 2.0;
        assert_eq!(
            weights(&fresh, Objective::Balance),
            vec![10000, 5000, 10000]
        );
    }

    #[test]
    fn without_rates_costs_come_from_cpu_per_share() {
        // The second endpoint had three times the weight for three times the CPU: same cost.
        let fresh = [
            endpoint(0.1, None, Some(100)),
            endpoint(0.3, None, Some(300)),
            endpoint(0.2, None, Some(100)),
        ];
        let (planned, basis) = plan(&fresh, 0.0, None, &params(Objective::Balance));
        assert_eq!(basis, CostBasis::Relative);
        let weights: Vec<u32> = planned.iter().map(|plan| plan.weight).collect();
        assert_eq!(weights, vec![10000, 10000, 5000]);
        assert!(planned[2].reason.to_string().contains("no request rate"));
    }

    #[test]
    fn weights_move_at_most_max_step_per_tick() {
        // Target ratio 10:1 from 1:1 with the costs measured before (1 and 10 ms); each share
        // moves at most x2 against the typical change. (A first estimate is not step-limited on
        // the way down: test `a_new_pod_measured_slow_falls_to_its_target_in_one_tick`.)
        let measured = |cpu: f64, previous: u32| {
            let mut endpoint = endpoint(cpu, Some(100.0), Some(previous));
            endpoint.cost = Some(Cost {
                value: cpu / 100.0,
                is_floor: false,
            });
            endpoint
        };
        let fresh = [measured(0.1, 1000), measured(1.0, 1000)];
        assert_eq!(weights(&fresh, Objective::Balance), vec![10000, 2500]);
        let settled = [measured(0.1, 10000), measured(1.0, 2500)];
        assert_eq!(weights(&settled, Objective::Balance), vec![10000, 1000]);
    }

    /// Three equal endpoints at full weight, each remembering a cost of 2 ms per request; the
    /// first now shows `factor` times that cost at 300 rps (full evidence).
    fn one_turns_slower(factor: f64) -> Vec<Planned> {
        let remembered = Some(Cost {
            value: 0.002,
            is_floor: false,
        });
        let mut fresh = vec![
            endpoint(0.6 * factor, Some(300.0), Some(10000)),
            endpoint(0.6, Some(300.0), Some(10000)),
            endpoint(0.6, Some(300.0), Some(10000)),
        ];
        for endpoint in &mut fresh {
            endpoint.limit = 4.0;
            endpoint.cost = remembered;
        }
        per_request(&fresh, Objective::Latency)
    }

    #[test]
    fn an_endpoint_that_turns_slow_loses_its_traffic_at_once() {
        let planned = one_turns_slower(4.0);
        // Believed at once (8 ms, not the 5 ms an average would give) and moved to its probe
        // (0.2% of 900 rps shared by three: 0.6 rps of 449.7) in one tick, past the x2 step limit.
        let cost = planned[0].cost.map(|cost| cost.value).unwrap_or_default();
        assert!((cost - 0.008).abs() < 1e-12, "{cost}");
        let weights: Vec<u32> = planned.iter().map(|plan| plan.weight).collect();
        assert_eq!(weights, vec![13, 10000, 10000]);
        let reason = planned[0].reason.to_string();
        assert!(reason.contains("rose x4.00 this tick"), "{reason}");
        // The others keep their measured costs and say nothing about a rise.
        assert!(!planned[1].reason.to_string().contains("rose"));
    }

    #[test]
    fn a_small_rise_is_averaged_and_step_limited() {
        let planned = one_turns_slower(1.2);
        let cost = planned[0].cost.map(|cost| cost.value).unwrap_or_default();
        assert!((cost - 0.0022).abs() < 1e-12, "{cost}");
        assert!(!planned[0].reason.to_string().contains("rose"));
        let weights: Vec<u32> = planned.iter().map(|plan| plan.weight).collect();
        // Still in the cheapest tier, filled in proportion to its capacity (1 / 1.1).
        assert_eq!(weights, vec![9091, 10000, 10000]);
        // 1.4x is past the tier tolerance but not a clear rise: averaged (half of 2.8 ms + 2 ms).
        let planned = one_turns_slower(1.4);
        let cost = planned[0].cost.map(|cost| cost.value).unwrap_or_default();
        assert!((cost - 0.0024).abs() < 1e-12, "{cost}");
        assert!(!planned[0].reason.to_string().contains("rose"));
        // A clear rise from a few requests is averaged like any estimate, by its evidence.
        let remembered = Some(Cost {
            value: 0.002,
            is_floor: false,
        });
        let mut fresh = [
            endpoint(0.008 * 2.0, Some(2.0), Some(10)),
            endpoint(0.6, Some(300.0), Some(10000)),
        ];
        for endpoint in &mut fresh {
            endpoint.cost = remembered;
        }
        let planned = per_request(&fresh, Objective::Latency);
        let cost = planned[0].cost.map(|cost| cost.value).unwrap_or_default();
        // Evidence 2 / 20 rps, smoothing 0.5: 0.002 + 0.05 * (0.008 - 0.002); no fast path.
        assert!((cost - 0.0023).abs() < 1e-12, "{cost}");
        assert!(!planned[0].reason.to_string().contains("rose"));
    }

    #[test]
    fn an_endpoint_never_measured_is_planned_at_the_median_and_says_so() {
        let fresh = [
            endpoint(0.1, Some(100.0), None),
            endpoint(0.3, Some(100.0), None),
            endpoint(0.2, None, None),
        ];
        let planned = plan(&fresh, 0.0, None, &params(Objective::Balance)).0;
        let reason = planned[2].reason.to_string();
        assert!(
            reason.contains("cost 0.0020 cpu-s/req (assumed: the median"),
            "{reason}"
        );
        assert!(!planned[0].reason.to_string().contains("assumed"));
    }

    #[test]
    fn latency_fills_the_cheapest_and_probes_the_rest() {
        let fresh = [
            endpoint(0.1, Some(100.0), None),
            endpoint(0.3, Some(100.0), None),
            endpoint(0.6, Some(100.0), None),
        ];
        // Demand 300 rps on one-core endpoints of 1, 3 and 6 ms (M/M/1): the cheapest at 0.3
        // adds 1 / 0.7^2 = 2.04 ms per extra request, less than an idle 3 ms one, so it takes
        // all but the probes: 0.2% (0.6 rps) split over all three, 0.2 rps each.
        let planned = plan(&fresh, 0.0, None, &params(Objective::Latency)).0;
        let weights: Vec<u32> = planned.iter().map(|plan| plan.weight).collect();
        assert_eq!(weights, vec![10000, 7, 7]);
        assert!(planned[0].reason.to_string().contains("latency tier 1"));
        assert!(planned[1]
            .reason
            .to_string()
            .contains("latency tier 2, probe"));
        assert!(
            planned[0].reason.to_string().contains("planned util 0.30"),
            "{}",
            planned[0].reason
        );
    }

    #[test]
    fn equally_cheap_endpoints_are_filled_together() {
        let fresh = [
            endpoint(0.100, Some(100.0), None),
            endpoint(0.105, Some(100.0), None),
            endpoint(0.500, Some(100.0), None),
        ];
        let weights = weights(&fresh, Objective::Latency);
        assert!(weights[1] > 9000, "{weights:?}");
        assert!(weights[2] < 200, "{weights:?}");
    }

    #[test]
    fn costs_are_averaged_with_the_remembered_ones() {
        let mut fresh = [endpoint(0.2, Some(100.0), Some(100))];
        fresh[0].cost = Some(Cost {
            value: 0.004,
            is_floor: false,
        });
        let params = params(Objective::Balance);
        let planned = plan(&fresh, 0.0, Some(CostBasis::PerRequest), &params).0;
        let cost = planned[0].cost.map(|cost| cost.value).unwrap_or_default();
        assert!((cost - 0.003).abs() < 1e-12, "{cost}");
        // In another unit the remembered cost is not averaged in.
        let planned = plan(&fresh, 0.0, Some(CostBasis::Relative), &params).0;
        let cost = planned[0].cost.map(|cost| cost.value).unwrap_or_default();
        assert!((cost - 0.002).abs() < 1e-12, "{cost}");
    }

    #[test]
    fn saturated_samples_only_raise_the_cost() {
        let floor = Cost {
            value: 0.01,
            is_floor: true,
        };
        let measured = Cost {
            value: 0.01,
            is_floor: false,
        };
        assert_eq!(blend(0.005, true, Some(measured), 0.5), measured);
        assert_eq!(
            blend(0.02, true, Some(measured), 0.5),
            Cost {
                value: 0.02,
                is_floor: true
            }
        );
        assert_eq!(
            blend(0.03, false, Some(floor), 0.5),
            Cost {
                value: 0.03,
                is_floor: false
            }
        );
        assert_eq!(
            blend(0.03, false, Some(measured), 0.5),
            Cost {
                value: 0.02,
                is_floor: false
            }
        );
    }

    #[test]
    fn an_endpoint_with_no_cpu_does_not_claim_infinite_capacity() {
        let fresh = [
            endpoint(0.0, Some(100.0), None),
            endpoint(0.2, Some(100.0), None),
        ];
        let weights = weights(&fresh, Objective::Balance);
        assert_eq!(weights[0], 10000);
        assert!(weights[1] >= 1);
    }

    #[test]
    fn a_few_requests_in_flight_are_little_evidence() {
        // Load from requests in flight: each reading counts in proportion to the requests
        // expected in flight from the remembered 5 ms (1 at 200 rps, 0.5 at 100 rps), whatever
        // it read, so a pod read at 0 does not look free at once.
        let remembered = Some(Cost {
            value: 0.005,
            is_floor: false,
        });
        let mut fresh = [
            endpoint(0.0, Some(200.0), Some(10000)),
            endpoint(1.0, Some(100.0), Some(10000)),
        ];
        for endpoint in &mut fresh {
            endpoint.load_is_in_flight = true;
            endpoint.cost = remembered;
            endpoint.limit = 4.0;
        }
        let planned = per_request(&fresh, Objective::Balance);
        let cost = |index: usize| {
            planned[index]
                .cost
                .map(|cost| cost.value)
                .unwrap_or_default()
        };
        // 0 in flight, counted at 1/4 * smoothing 0.5: 5 ms - 0.125 * 5 ms.
        assert!((cost(0) - 0.004375).abs() < 1e-12, "{}", cost(0));
        // 1 in flight / 100 rps = 10 ms, counted at 0.5/4 * smoothing 0.5: 5 + 0.0625 * 5 ms.
        assert!((cost(1) - 0.0053125).abs() < 1e-12, "{}", cost(1));
    }

    #[test]
    fn noisy_readings_in_flight_average_to_the_true_cost() {
        // Two identical 5 ms pods at 100 rps each: 0.5 in flight on average, read as window
        // means of 0, 0.5 or 1 (two snapshots). One starts at a cost read 4x high, as after a
        // noisy tick. Counting each reading by its expected size, both costs come back to
        // about 5 ms and the weights to equal; counting readings by their own size ignored the
        // zeros, so the high cost stayed and the pod stayed starved.
        let readings = [0.0, 0.5, 1.0, 0.5, 0.0, 1.0, 0.5, 0.5];
        let mut costs = [0.020, 0.005];
        let mut previous = [Some(2500), Some(10000)];
        let mut weights = vec![0, 0];
        for tick in 0..200 {
            let fresh: Vec<FreshEndpoint> = (0..2)
                .map(|index| FreshEndpoint {
                    load_is_in_flight: true,
                    node_prior: None,
                    limit: 4.0,
                    cost: Some(Cost {
                        value: costs[index],
                        is_floor: false,
                    }),
                    ..endpoint(
                        readings[(tick + 3 * index) % readings.len()],
                        Some(100.0),
                        previous[index],
                    )
                })
                .collect();
            let planned = per_request(&fresh, Objective::Balance);
            for (index, planned) in planned.iter().enumerate() {
                costs[index] = planned.cost.map_or(costs[index], |cost| cost.value);
                previous[index] = Some(planned.weight);
                weights[index] = planned.weight;
            }
        }
        for cost in costs {
            assert!((cost - 0.005).abs() < 0.0015, "{costs:?}");
        }
        let ratio = f64::from(weights[0].max(weights[1])) / f64::from(weights[0].min(weights[1]));
        assert!(ratio < 1.5, "{weights:?}");
    }
}
