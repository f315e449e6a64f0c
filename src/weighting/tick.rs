//! One tick of one cluster: observe the samples, pick the mode, weigh, apply the limits, and
//! decide whether the result is worth a push.

use std::{
    borrow::Borrow,
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use super::limits::{guard_locality_sums, slow_start};
use super::modes::{equal_weights, fresh_weights, held_weights, idle_weights, Tick};
use super::observe::{decide_mode, in_flight_for_cpu, observe, youngest_sample, Observation};
use super::plan::endpoint_key;
use super::{
    static_weights, Algorithm, ClusterMemory, ClusterMode, EndpointKey, EndpointLoad,
    EndpointMemory, NodeMemory, Output, Params,
};
use crate::model::Endpoint;

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
                now,
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
        ClusterMode::Idle => idle_weights(&observations, memory, params, now, last_sample_at),
        ClusterMode::Fallback | ClusterMode::Static => {
            equal_weights(&observations, mode, params, now, last_sample_at)
        }
    };
    slow_start(&mut tick.weights, &observations, memory, params, now);
    guard_locality_sums(&mut tick.weights, endpoints);
    let mut output = decide_push(&observations, memory, mode, tick, params, now);
    output.memory.nodes = node_memory(endpoints, &output.memory, memory, now);
    output.memory.last_sample_at = last_sample_at;
    output.dropped_samples = dropped_samples;
    output
}

/// The nodes to remember after this tick (see [`ClusterMemory::nodes`]): on each node, the
/// largest per-request cost of its endpoints now remembered (saturated or failing ones left out)
/// and the smallest share of the traffic one of them is served, and the earlier entries of the
/// nodes without one, until they are [`SLOWEST_MEMORY`](super::SLOWEST_MEMORY) old.
fn node_memory<E: Borrow<Endpoint>>(
    endpoints: &[E],
    after: &ClusterMemory,
    before: &ClusterMemory,
    now: Duration,
) -> BTreeMap<String, NodeMemory> {
    let no_nodes = before.nodes.is_empty()
        && endpoints
            .iter()
            .all(|endpoint| endpoint.borrow().node.is_none());
    if no_nodes || after.cost_basis != Some(super::CostBasis::PerRequest) {
        return BTreeMap::new();
    }
    let mut nodes: BTreeMap<String, NodeMemory> = if before.cost_basis == after.cost_basis {
        before
            .nodes
            .iter()
            .filter(|(_, memory)| now.saturating_sub(memory.seen) < super::SLOWEST_MEMORY)
            .map(|(node, memory)| (node.clone(), *memory))
            .collect()
    } else {
        BTreeMap::new()
    };
    let total: f64 = after
        .endpoints
        .values()
        .map(|memory| f64::from(memory.weight))
        .sum();
    let mut measured: BTreeMap<&str, NodeMemory> = BTreeMap::new();
    for endpoint in endpoints {
        let endpoint = endpoint.borrow();
        let Some(node) = endpoint.node.as_deref() else {
            continue;
        };
        let Some((cost, weight)) = after
            .endpoints
            .get(&endpoint_key(endpoint))
            .and_then(|memory| Some((memory.measured_cost()?, memory.weight)))
        else {
            continue;
        };
        let share = if total > 0.0 {
            f64::from(weight) / total
        } else {
            0.0
        };
        let entry = measured.entry(node).or_insert(NodeMemory {
            cost,
            share,
            seen: now,
        });
        entry.cost = entry.cost.max(cost);
        entry.share = entry.share.min(share);
    }
    for (node, memory) in measured {
        nodes.insert(node.to_owned(), memory);
    }
    nodes
}

/// The largest cost remembered now, or the one remembered from the last
/// [`SLOWEST_MEMORY`](super::SLOWEST_MEMORY) when larger (in the same unit).
fn slowest_cost(
    endpoints: &BTreeMap<EndpointKey, EndpointMemory>,
    memory: &ClusterMemory,
    basis: Option<super::CostBasis>,
    now: Duration,
) -> Option<(f64, Duration)> {
    basis?;
    let current = endpoints
        .values()
        .filter_map(EndpointMemory::measured_cost)
        .reduce(f64::max);
    let remembered = memory
        .slowest_cost_at(now)
        .filter(|_| memory.cost_basis == basis);
    match (current, remembered) {
        (Some(current), Some((old, seen))) if old > current => Some((old, seen)),
        (Some(current), _) => Some((current, now)),
        (None, remembered) => remembered,
    }
}

/// Decides whether the tick is worth a push and builds the memory of what is served.
///
/// The comparison is always against the served weights (the memory), never against the last
/// computed ones: a tick that does not move keeps serving and remembering the previous weights,
/// so a slow drift keeps growing against the served value until it crosses `push_threshold`
/// and is published, instead of being forgotten tick after tick.
pub(crate) fn decide_push(
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
        tracks,
        demand,
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
        .zip(tracks)
        .map(|(((observation, weight), cost), errors)| {
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
                errors,
            };
            (observation.key, remembered)
        })
        .collect();
    let basis = cost_basis.or(memory.cost_basis);
    let slowest_cost = slowest_cost(&endpoints, memory, basis, now);
    let memory = ClusterMemory {
        endpoints,
        mode,
        last_sample_at: memory.last_sample_at,
        cost_basis: basis,
        slowest_cost,
        // A tick that planned nothing (holding, fallback) keeps the last plan's demand, so the
        // floor goes on decaying from it.
        planned_demand: demand.map(|demand| (demand, now)).or(memory.planned_demand),
        last_tick: Some(now),
        // Filled in by `compute`, which knows the endpoints' nodes.
        nodes: BTreeMap::new(),
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
pub(crate) fn static_output<E: Borrow<Endpoint>>(
    endpoints: &[E],
    memory: &ClusterMemory,
) -> Output {
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
        Objective, WeightSource,
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

    /// The share of the traffic each endpoint's weight gives it.
    fn shares(output: &Output) -> Vec<f64> {
        let total: f64 = output
            .weights
            .iter()
            .map(|weight| f64::from(weight.weight))
            .sum();
        output
            .weights
            .iter()
            .map(|weight| f64::from(weight.weight) / total)
            .collect()
    }

    #[test]
    fn latency_new_pods_start_at_their_capacity_share_as_the_slowest() {
        // 1, 2 and 4 ms per request on one core each: capacities 1000, 500 and 250 rps. A new
        // pod, its speed unknown, is given what a 4 ms pod gets when traffic is spread by
        // capacity: 250 / 2000 = 12.5%, not the median weight (a full weight under latency).
        // Without any sample it is a new pod; with a CPU sample but no request rate yet it is
        // fresh, its cost still unknown: the same share, planned.
        let params = capacity(Objective::Latency);
        let cases = [
            (
                EndpointLoad::default(),
                WeightSource::NewPod,
                "12.50% of the traffic",
            ),
            (cpu_load(0.05, 5), WeightSource::Fresh, "slowest measured"),
        ];
        for (newcomer, source, explained) in cases {
            let mut loads = costed(&[(0.1, 100.0), (0.2, 100.0), (0.4, 100.0)], 5);
            loads.push(newcomer);
            let output = run(
                &endpoints(4),
                &loads,
                &ClusterMemory::default(),
                &params,
                200,
            );
            assert_eq!(output.weights[3].source, source);
            let share = shares(&output)[3];
            assert!((share - 0.125).abs() < 0.002, "{:?}", shares(&output));
            let reason = output.weights[3].reason.to_string();
            assert!(reason.contains(explained), "{reason}");
        }
    }

    #[test]
    fn latency_remembers_the_slowest_cost_for_the_successors_of_removed_pods() {
        // 1, 2 and 8 ms pods; the 8 ms one is replaced by a new pod. Measured now, the slowest
        // is 2 ms (a 25% share); remembered, 8 ms: 125 / (1000 + 500 + 125) = 7.7%, for ten
        // minutes after the 8 ms pod was last seen.
        let params = capacity(Objective::Latency);
        let all = endpoints(4);
        let first = run(
            &all[..3],
            &costed(&[(0.1, 100.0), (0.2, 100.0), (0.8, 100.0)], 5),
            &ClusterMemory::default(),
            &params,
            100,
        );
        let replaced = [all[0].clone(), all[1].clone(), all[3].clone()];
        let mut loads = costed(&[(0.1, 100.0), (0.2, 100.0)], 5);
        loads.push(EndpointLoad::default());
        let share_at = |seconds| {
            let output = run(&replaced, &loads, &first.memory, &params, seconds);
            assert_eq!(output.weights[2].source, WeightSource::NewPod);
            shares(&output)[2]
        };
        assert!(
            (share_at(110) - 125.0 / 1625.0).abs() < 0.002,
            "{}",
            share_at(110)
        );
        assert!((share_at(701) - 0.25).abs() < 0.002, "{}", share_at(701));
    }

    #[test]
    fn latency_starts_a_new_pod_at_the_cost_measured_on_its_node() {
        // 1, 2 and 8 ms pods on nodes n0, n1, n2; the 1 ms pod is replaced by a new pod. On n0
        // it starts at the 1 ms pod's capacity share, 1000 / (1000 + 500 + 125); on a node never
        // measured, at the slowest cost's, 125 / (500 + 125 + 125); on n0 after ten minutes
        // without a pod measured there, at the slowest cost's again.
        let params = capacity(Objective::Latency);
        let on = |mut endpoint: Endpoint, node: &str| {
            endpoint.node = Some(node.to_owned());
            endpoint
        };
        let all = endpoints(4);
        let before = [
            on(all[0].clone(), "n0"),
            on(all[1].clone(), "n1"),
            on(all[2].clone(), "n2"),
        ];
        let first = run(
            &before,
            &costed(&[(0.1, 100.0), (0.2, 100.0), (0.8, 100.0)], 5),
            &ClusterMemory::default(),
            &params,
            100,
        );
        assert_eq!(
            first.memory.nodes.get("n0").map(|node| node.cost),
            first
                .memory
                .endpoints
                .values()
                .next()
                .and_then(|memory| memory.cost)
        );
        let mut loads = costed(&[(0.2, 100.0), (0.8, 100.0)], 5);
        loads.push(EndpointLoad::default());
        let share_on = |node: &str, seconds| {
            let replaced = [
                before[1].clone(),
                before[2].clone(),
                on(all[3].clone(), node),
            ];
            let output = run(&replaced, &loads, &first.memory, &params, seconds);
            assert_eq!(output.weights[2].source, WeightSource::NewPod);
            let reason = output.weights[2].reason.to_string();
            (shares(&output)[2], reason)
        };
        let (share, reason) = share_on("n0", 110);
        assert!((share - 1000.0 / 1625.0).abs() < 0.002, "{share}");
        assert!(reason.contains("measured on its node"), "{reason}");
        let (share, reason) = share_on("n9", 110);
        assert!((share - 125.0 / 750.0).abs() < 0.002, "{share}");
        assert!(reason.contains("slowest measured"), "{reason}");
        let (share, _) = share_on("n0", 701);
        assert!((share - 125.0 / 750.0).abs() < 0.002, "{share}");
        // The 8 ms pod is replaced instead: on n2 its successor gets at most the share served
        // there (the plan keeps it near a probe), not its capacity share, 125 / 1625.
        let served = first.memory.nodes.get("n2").map_or(1.0, |node| node.share);
        assert!(served < 0.02, "{served}");
        let replaced = [
            before[0].clone(),
            before[1].clone(),
            on(all[3].clone(), "n2"),
        ];
        let mut loads = costed(&[(0.1, 100.0), (0.2, 100.0)], 5);
        loads.push(EndpointLoad::default());
        let output = run(&replaced, &loads, &first.memory, &params, 110);
        let share = shares(&output)[2];
        assert!(share <= served * 1.05 + 1e-4, "{share} vs {served}");
    }

    #[test]
    fn a_new_pod_measured_slow_falls_to_its_target_in_one_tick() {
        // 1 and 2 ms pods at 30% of their cores; a new pod starts at the 2 ms pod's capacity
        // share, then reads 40 ms a request: the `latency` plan keeps it at a probe, and its
        // weight goes there at once instead of halving tick after tick.
        let params = capacity(Objective::Latency);
        let fleet = endpoints(3);
        let first = run(
            &fleet[..2],
            &costed(&[(0.3, 300.0), (0.6, 300.0)], 1),
            &ClusterMemory::default(),
            &params,
            100,
        );
        let mut loads = costed(&[(0.3, 300.0), (0.6, 300.0)], 1);
        loads.push(EndpointLoad::default());
        let joined = run(&fleet, &loads, &first.memory, &params, 101);
        assert_eq!(joined.weights[2].source, WeightSource::NewPod);
        let guessed = joined.weights[2].weight;
        let measured = run(
            &fleet,
            &costed(&[(0.3, 300.0), (0.6, 300.0), (0.8, 20.0)], 1),
            &joined.memory,
            &params,
            102,
        );
        assert_eq!(measured.weights[2].source, WeightSource::Fresh);
        assert!(
            measured.weights[2].weight * 10 < guessed,
            "{guessed} -> {:?}",
            values(&measured)
        );
    }

    #[test]
    fn a_node_keeps_no_cost_of_a_failing_pod() {
        // A pod failing fast on n0 reads as the cheapest; held, it leaves n0 without a cost, so
        // its successor there is not started as a fast pod.
        let params = capacity(Objective::Latency);
        let mut fleet = endpoints(3);
        for (index, endpoint) in fleet.iter_mut().enumerate() {
            endpoint.node = Some(format!("n{index}"));
        }
        let mut loads = costed(&[(0.01, 100.0), (0.2, 100.0), (0.2, 100.0)], 5);
        for (load, errors) in loads.iter_mut().zip([90.0, 0.0, 0.0]) {
            load.errors = Some(crate::weighting::Reading {
                value: errors,
                age: Duration::from_secs(5),
            });
        }
        let output = run(&fleet, &loads, &ClusterMemory::default(), &params, 100);
        assert_eq!(output.weights[0].source, WeightSource::Failing);
        assert!(!output.memory.nodes.contains_key("n0"));
        assert!(output.memory.nodes.contains_key("n1"));
    }

    #[test]
    fn a_fall_in_demand_is_followed_at_the_half_life() {
        // 2 x 1 ms and 2 x 3 ms pods at 1,200 rps, then the rates read 600 (a real fall, or
        // rates of young series read low). The plan places 1,200 * 0.5^(t / 60 s) at least.
        let params = capacity(Objective::Latency);
        let fleet = endpoints(4);
        let at = |rps: f64| {
            costed(
                &[
                    (rps * 0.001, rps),
                    (rps * 0.001, rps),
                    (rps * 0.003, rps),
                    (rps * 0.003, rps),
                ],
                1,
            )
        };
        let first = run(&fleet, &at(300.0), &ClusterMemory::default(), &params, 100);
        assert_eq!(
            first.memory.planned_demand,
            Some((1200.0, Duration::from_secs(100)))
        );
        let planned = |seconds: u64| {
            let output = run(&fleet, &at(150.0), &first.memory, &params, seconds);
            output
                .memory
                .planned_demand
                .map(|(demand, _)| demand)
                .unwrap_or_default()
        };
        assert!((planned(160) - 600.0_f64.max(1200.0 * 0.5)).abs() < 1e-6);
        assert!((planned(130) - 1200.0 * 0.5_f64.powf(0.5)).abs() < 1e-6);
        assert!(
            (planned(400) - 600.0).abs() < 1e-6,
            "read wins once the floor is below it"
        );
        // A rise is taken at once.
        let output = run(&fleet, &at(600.0), &first.memory, &params, 101);
        assert_eq!(
            output.memory.planned_demand.map(|(demand, _)| demand),
            Some(2400.0)
        );
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
            first.reason.to_string().contains("latency tier 1"),
            "{}",
            first.reason
        );
        assert_eq!(output.weights[1].utilization, Some(0.25));
        let again = run(&endpoints(2), &loads, &output.memory, &params, 10);
        assert_eq!(again.weights[0].previous, Some(first.weight));
    }

    #[test]
    fn an_idle_pod_without_a_cpu_reading_is_planned_not_filled_in() {
        // Load reports carry CPU (ORCA) only on answers: the idle pods have a request rate of 0
        // and no CPU. They are planned (probes for `latency`), not given the fill-in weight.
        let fleet = endpoints(4);
        let busy = |cpu: f64| EndpointLoad {
            cpu: reading(cpu, 1),
            rps: reading(300.0, 1),
            cpu_limit: reading(1.0, 1),
            ..EndpointLoad::default()
        };
        let idle = EndpointLoad {
            rps: reading(0.0, 1),
            ..EndpointLoad::default()
        };
        // Measured first: the last two cost three times as much per request.
        let measured = vec![busy(0.3), busy(0.3), busy(0.9), busy(0.9)];
        let params = Params::default();
        let mut output = run(&fleet, &measured, &ClusterMemory::default(), &params, 0);
        let mut memory = output.memory.clone();
        let loads = vec![busy(0.3), busy(0.3), idle.clone(), idle];
        // Ticks two minutes apart: the demand fell by half, and the plan follows a fall only at
        // `DEMAND_HALF_LIFE` (test `a_fall_in_demand_is_followed_at_the_half_life`).
        for tick in 1..4 {
            output = run(&fleet, &loads, &memory, &params, tick * 120);
            memory = output.memory.clone();
        }
        for weight in &output.weights[2..] {
            assert_eq!(weight.source, WeightSource::Fresh, "{weight:?}");
            assert!(weight.weight < 100, "{:?}", values(&output));
        }
        assert!(output.weights[..2]
            .iter()
            .all(|weight| weight.weight == 10_000));
    }
}
