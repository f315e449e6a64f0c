//! Sample hygiene and the cluster's mode: what each endpoint brings to a tick.

use std::time::Duration;

use super::plan::endpoint_key;
use super::{
    ClusterMemory, ClusterMode, EndpointKey, EndpointLoad, EndpointMemory, NodePrior, Params,
    Reading, Reason, Weight, WeightSource,
};
use crate::model::Endpoint;

/// What one endpoint brings to this tick, after invalid samples were dropped.
#[derive(Clone, Debug)]
pub(crate) struct Observation {
    /// Address and port, the memory key.
    pub(crate) key: EndpointKey,
    /// Valid CPU reading, fresh or not.
    pub(crate) cpu: Option<Reading>,
    /// Valid request-rate reading, fresh or not.
    pub(crate) rps: Option<Reading>,
    /// Valid error-rate reading, fresh or not.
    pub(crate) errors: Option<Reading>,
    /// Valid in-flight reading, fresh or not.
    pub(crate) in_flight: Option<Reading>,
    /// Valid latency reading, fresh or not.
    pub(crate) latency: Option<Reading>,
    /// CPU limit in cores (the sample's, else the default).
    pub(crate) limit: f64,
    /// The CPU reading is at most `stale_after` old.
    pub(crate) fresh: bool,
    /// `cpu` holds the requests in flight: the cluster has no CPU signal (load reports only).
    pub(crate) cpu_is_in_flight: bool,
    /// What the previous tick remembered of this endpoint.
    pub(crate) remembered: Option<EndpointMemory>,
    /// Without a remembered cost: what was measured on its node (see
    /// [`ClusterMemory::nodes`]), the start of a newcomer.
    pub(crate) node_prior: Option<NodePrior>,
}

/// Keeps a reading only when its value is a finite non-negative number; counts the others.
pub(crate) fn valid(reading: Option<Reading>, dropped_samples: &mut usize) -> Option<Reading> {
    let reading = reading?;
    if reading.value.is_finite() && reading.value >= 0.0 {
        Some(reading)
    } else {
        *dropped_samples += 1;
        None
    }
}

/// Validates one endpoint's samples and finds what is remembered of it.
pub(crate) fn observe(
    endpoint: &Endpoint,
    load: &EndpointLoad,
    memory: &ClusterMemory,
    params: &Params,
    now: Duration,
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
    let node_prior = endpoint
        .node
        .as_deref()
        .filter(|_| {
            remembered
                .as_ref()
                .is_none_or(|memory| memory.cost.is_none())
        })
        .and_then(|node| memory.node_prior_at(node, now));
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
        node_prior,
    }
}

/// Without any CPU reading in the cluster, requests in flight stand in for CPU in use.
///
/// For a pod that serves each request on one worker, requests in flight are its busy workers,
/// as CPU in use is its busy cores: in flight / rate is then the time a request holds a worker
/// as the clients see it (Little's law), and the limit (`default_cpu_limit` unless a source
/// gives one) reads as the number of requests the pod serves at once. Never mixed with CPU in
/// one cluster: the two units would be compared as one. With CPU readings in the cluster, the
/// idle endpoints without one are read as 0 cores instead (see [`idle_without_cpu`]).
pub(crate) fn in_flight_for_cpu(observations: &mut [Observation], params: &Params) {
    if observations
        .iter()
        .any(|observation| observation.cpu.is_some())
    {
        idle_without_cpu(observations, params);
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

/// In a cluster with CPU readings, an endpoint without one whose fresh request rate is zero is
/// known to be idle: it uses no CPU for requests, and is read as 0 cores.
///
/// Envoy's load reports carry ORCA CPU only on answers, so a pod kept at a probe has no CPU
/// reading in most windows. Left without one it would be filled in like a new pod, at the
/// median of the planned weights, which with the `latency` objective is often the full weight:
/// every idle slow pod flooded for a tick, then probed again, the plan swinging every few seconds.
fn idle_without_cpu(observations: &mut [Observation], params: &Params) {
    for observation in observations {
        if observation.cpu.is_some() {
            continue;
        }
        if let Some(rps) = observation
            .rps
            .filter(|reading| reading.value <= 0.0 && reading.age <= params.stale_after)
        {
            observation.cpu = Some(Reading {
                value: 0.0,
                age: rps.age,
            });
            observation.fresh = true;
        }
    }
}

/// When the youngest valid CPU sample ever seen was taken.
pub(crate) fn youngest_sample(
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
pub(crate) fn decide_mode(
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

/// The explanation fields every weight carries.
pub(crate) fn explained(
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
pub(crate) fn observed_latency(observation: &Observation) -> Option<f64> {
    observation
        .latency
        .map(|reading| reading.value)
        .or_else(|| match (observation.in_flight, observation.rps) {
            (Some(in_flight), Some(rps)) if rps.value > 0.0 => Some(in_flight.value / rps.value),
            _ => None,
        })
}
