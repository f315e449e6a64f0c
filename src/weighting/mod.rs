//! Weight computation: pure functions from endpoints and load samples to weights.
//!
//! No clock, no I/O, no globals: the same code runs in the server, the tests and the simulator.
//! Time enters only as values (`now`, sample ages) passed in by the caller.

mod algorithms;
#[cfg(test)]
mod convergence;
mod errors;
mod limits;
mod modes;
mod observe;
pub mod params;
mod plan;
#[cfg(test)]
mod properties;
mod reason;
#[cfg(test)]
mod testing;
mod tick;

use std::{borrow::Borrow, collections::BTreeMap, time::Duration};

use crate::model::Endpoint;

pub use params::{Algorithm, DistanceParams, Objective, Params};
pub use plan::endpoint_key;
pub use reason::Reason;

/// One measured value and how old its sample is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    /// The value (cores, requests per second, seconds...).
    pub value: f64,
    /// Time since the sample was taken.
    pub age: Duration,
}

/// The load measured for one endpoint; any part may be missing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointLoad {
    /// CPU in use, in cores (the rate of CPU seconds).
    pub cpu: Option<Reading>,
    /// Requests per second served.
    pub rps: Option<Reading>,
    /// CPU limit in cores.
    pub cpu_limit: Option<Reading>,
    /// Mean latency per request in seconds, as the source measured it.
    pub latency: Option<Reading>,
    /// Requests per second answered with an error (a subset of `rps`, which counts every
    /// completed request).
    pub errors: Option<Reading>,
    /// Requests in flight (summed over every client that reports them).
    pub in_flight: Option<Reading>,
}

/// Where an endpoint's weight came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightSource {
    /// Fixed in the config (static algorithm).
    #[default]
    Configured,
    /// Computed from fresh samples.
    Fresh,
    /// No sample yet: started at the median (or the configured percentile), maybe ramping in.
    NewPod,
    /// Samples are stale: the last weight is held.
    Stale,
    /// Stale for longer than `fallback_after`: equal weights.
    Fallback,
    /// The whole cluster is idle: equal weights.
    Idle,
    /// Its error ratio is clearly above the cluster's: held at a probe.
    Failing,
}

impl WeightSource {
    /// The word used in logs, metrics and `Inspect`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Configured => "configured",
            Self::Fresh => "fresh",
            Self::NewPod => "new-pod",
            Self::Stale => "stale",
            Self::Fallback => "fallback",
            Self::Idle => "idle",
            Self::Failing => "failing",
        }
    }
}

/// The state of a whole cluster's weighting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClusterMode {
    /// Weights from the config.
    #[default]
    Static,
    /// Weights follow fresh samples.
    Fresh,
    /// All samples are stale: holding the last weights.
    Holding,
    /// Stale past `fallback_after`, or never measured: equal weights.
    Fallback,
    /// All CPU near zero: equal weights.
    Idle,
}

impl ClusterMode {
    /// The word used in logs, metrics and `Inspect`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Fresh => "fresh",
            Self::Holding => "holding",
            Self::Fallback => "fallback",
            Self::Idle => "idle",
        }
    }
}

/// What the weighting remembers of one endpoint between ticks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointMemory {
    /// The weight served after the last tick.
    pub weight: u32,
    /// Smoothed cost estimate (algorithm-specific units), if any.
    pub cost: Option<f64>,
    /// `cost` came from a saturated sample (CPU at its limit), so it is only a lower bound: the
    /// next unsaturated estimate replaces it instead of being averaged with it.
    pub cost_is_floor: bool,
    /// `now` of the tick that first saw this endpoint.
    pub first_seen: Duration,
    /// Seen in the cluster's first tick: present before we started, so it does not slow-start.
    pub initial: bool,
    /// Where the error judgement stands: clear, suspected, or held at a probe.
    pub errors: ErrorTrack,
}

/// What the error judgement of one endpoint carries from one tick to the next.
///
/// Evidence is counted in requests (a rate times the time it covered), not read as a rate, so
/// that a quiet pod earns its verdict over several ticks, one way or the other.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum ErrorTrack {
    /// Not failing, or no error reading yet.
    #[default]
    Clear,
    /// Its error ratio is above the margin, on too few errors to hold it yet: what it answered
    /// since its ratio first rose above the margin.
    Suspect {
        /// Errors counted.
        errors: f64,
        /// Requests counted (errors included).
        requests: f64,
    },
    /// Held at a probe because its error ratio was clearly above the cluster's.
    Held {
        /// Requests its probe answered within the margin since it last clearly failed; it is
        /// released once they are enough evidence, however slowly they came.
        healthy_requests: f64,
    },
}

impl ErrorTrack {
    /// Held at a probe.
    pub fn is_held(&self) -> bool {
        matches!(self, Self::Held { .. })
    }

    /// While held, the healthy requests counted so far.
    pub(crate) fn healthy_requests(&self) -> Option<f64> {
        match self {
            Self::Held { healthy_requests } => Some(*healthy_requests),
            _ => None,
        }
    }
}

impl EndpointMemory {
    /// The remembered cost when it is a measurement to start others from: finite, positive, not
    /// a saturated lower bound, and not of a pod held as failing.
    pub(crate) fn measured_cost(&self) -> Option<f64> {
        self.cost.filter(|cost| {
            !self.cost_is_floor && !self.errors.is_held() && cost.is_finite() && *cost > 0.0
        })
    }
}

/// The unit of the remembered costs, so an average never mixes two units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CostBasis {
    /// CPU seconds per request (request rates are known).
    #[default]
    PerRequest,
    /// CPU per share of traffic, divided by the cluster's CPU (request rates are unknown).
    Relative,
}

/// Identity of an endpoint in the weighting memory: its address and port.
pub type EndpointKey = (core::net::IpAddr, u16);

/// What the weighting remembers of one cluster between ticks, keyed by address and port.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterMemory {
    /// Per endpoint.
    pub endpoints: BTreeMap<EndpointKey, EndpointMemory>,
    /// The mode of the last tick, so a change of mode is published.
    pub mode: ClusterMode,
    /// `now - age` of the youngest valid CPU sample ever seen, to tell holding from fallback even
    /// when the metrics source stops returning samples at all.
    pub last_sample_at: Option<Duration>,
    /// Unit of the endpoints' remembered `cost`, if any was remembered.
    pub cost_basis: Option<CostBasis>,
    /// The largest cost remembered in the last [`SLOWEST_MEMORY`] (in `cost_basis` units) and
    /// when it was last the largest of a tick, including endpoints since removed: a newcomer is
    /// started as if it were that slow (`latency`), so a rolling restart that has already
    /// replaced the slow pods still starts their successors at a slow pod's share.
    pub slowest_cost: Option<(f64, Duration)>,
    /// The demand the last plan placed (requests per second) and when.
    pub planned_demand: Option<(f64, Duration)>,
    /// `now` of the last tick, so this tick's rates can be counted as requests.
    pub last_tick: Option<Duration>,
    /// Per node (`Endpoint::node`), what was last measured there, kept [`SLOWEST_MEMORY`] after
    /// the node's last endpoint left: a new pod on a node already measured starts from it
    /// instead of the slowest cost.
    pub nodes: BTreeMap<String, NodeMemory>,
}

/// What the weighting remembers of one node of a cluster.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NodeMemory {
    /// The largest per-request cost of the cluster's endpoints measured on the node.
    pub cost: f64,
    /// The smallest share of the cluster's traffic one of them was served (weight / sum).
    pub share: f64,
    /// `now` of the last tick that measured it.
    pub seen: Duration,
}

/// A newcomer's start from its node's memory: the cost measured there, and the share served.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct NodePrior {
    /// Per-request cost.
    pub cost: f64,
    /// Share of the cluster's traffic.
    pub share: f64,
}

/// How fast the demand planned may fall: by half in this long. Request rates over a window read
/// low while a pod's series is younger than the window, so a fall is followed only this fast;
/// 60 s bridges a `rate[1m]`.
pub const DEMAND_HALF_LIFE: Duration = Duration::from_secs(60);

/// How long [`ClusterMemory::slowest_cost`] outlives the endpoints that had it.
pub const SLOWEST_MEMORY: Duration = Duration::from_secs(600);

impl ClusterMemory {
    /// What was last measured on `node`, unless older than [`SLOWEST_MEMORY`] at `now` or the
    /// remembered costs are not per request.
    pub(crate) fn node_prior_at(&self, node: &str, now: Duration) -> Option<NodePrior> {
        if self.cost_basis != Some(CostBasis::PerRequest) {
            return None;
        }
        self.nodes
            .get(node)
            .filter(|memory| now.saturating_sub(memory.seen) < SLOWEST_MEMORY)
            .map(|memory| NodePrior {
                cost: memory.cost,
                share: memory.share,
            })
    }

    /// [`Self::slowest_cost`] and when it was seen, unless older than [`SLOWEST_MEMORY`] at `now`.
    pub(crate) fn slowest_cost_at(&self, now: Duration) -> Option<(f64, Duration)> {
        self.slowest_cost
            .filter(|(_, seen)| now.saturating_sub(*seen) < SLOWEST_MEMORY)
    }

    /// The least demand to plan for at `now`: the last planned demand halved every
    /// [`DEMAND_HALF_LIFE`] since.
    pub(crate) fn demand_floor_at(&self, now: Duration) -> Option<f64> {
        self.planned_demand.map(|(demand, at)| {
            let halvings = now.saturating_sub(at).as_secs_f64() / DEMAND_HALF_LIFE.as_secs_f64();
            demand * 0.5_f64.powf(halvings)
        })
    }
}

/// The result of one tick of weighting for one cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Output {
    /// One weight per endpoint, index-aligned with the input; always what is (or stays) served.
    pub weights: Vec<Weight>,
    /// The cluster's mode this tick.
    pub mode: ClusterMode,
    /// What to pass as `memory` to the next tick.
    pub memory: ClusterMemory,
    /// Whether the weights differ enough from the served ones to be worth a push.
    pub moved: bool,
    /// Samples ignored because their value was NaN, infinite or negative.
    pub dropped_samples: usize,
}

/// Computes one cluster's weights for this tick.
///
/// `endpoints` and `loads` are index-aligned (a missing load counts as no samples); `memory` is
/// the previous tick's [`Output::memory`] (`Default` at first); `now` is a monotonic time chosen
/// by the caller. Pure: the same inputs always give the same output.
///
/// The output's weights are always the ones to serve: when [`Output::moved`] is false they are
/// the weights already served (the memory), so skipping the push changes nothing, and the next
/// tick compares against what is really served, so a slow drift adds up until it is published.
pub fn compute<E: Borrow<Endpoint>>(
    endpoints: &[E],
    loads: &[EndpointLoad],
    memory: &ClusterMemory,
    params: &Params,
    now: Duration,
) -> Output {
    tick::compute(endpoints, loads, memory, params, now)
}

/// Whether `loads` (index-aligned with `endpoints`) show an endpoint that `memory` has as clear
/// with an error ratio clearly above the rest of the cluster's: a failure the next tick would
/// begin to judge, worth that tick now (see `errors::newly_above`). Readings older than
/// `params.stale_after` are not news, as the ticks do not judge them either.
pub fn failure_news<E: Borrow<Endpoint>>(
    endpoints: &[E],
    loads: &[EndpointLoad],
    memory: &ClusterMemory,
    params: &Params,
) -> bool {
    let rates: Vec<(Option<f64>, Option<f64>, ErrorTrack)> = endpoints
        .iter()
        .zip(loads)
        .map(|(endpoint, load)| {
            let track = memory
                .endpoints
                .get(&endpoint_key(endpoint.borrow()))
                .map_or(ErrorTrack::Clear, |remembered| remembered.errors);
            let value = |reading: Option<Reading>| {
                reading
                    .filter(|reading| reading.age <= params.stale_after)
                    .map(|reading| reading.value)
            };
            (value(load.errors), value(load.rps), track)
        })
        .collect();
    errors::newly_above(&rates)
}

/// Weight given to every endpoint of a cluster in which no endpoint has a configured weight.
pub const DEFAULT_WEIGHT: u32 = 100;

/// A computed `load_balancing_weight`, the inputs behind it and why it has that value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Weight {
    /// The weight to serve, at least 1.
    pub weight: u32,
    /// Why: a short human explanation, shown by the `Inspect` API.
    pub reason: Reason,
    /// Where the weight came from.
    pub source: WeightSource,
    /// The weight served before this tick, if any.
    pub previous: Option<u32>,
    /// CPU used (cores), when a valid sample was used.
    pub cpu: Option<f64>,
    /// Requests per second, when a valid sample was used.
    pub rps: Option<f64>,
    /// CPU / limit, when both are known.
    pub utilization: Option<f64>,
    /// Age of the CPU sample, when there is one.
    pub sample_age: Option<Duration>,
    /// Requests per second answered with an error, when a valid sample was used.
    pub errors: Option<f64>,
    /// Requests in flight, when a valid sample was used.
    pub in_flight: Option<f64>,
    /// Latency per request as clients see it (seconds), when known.
    pub latency: Option<f64>,
}

impl Weight {
    /// Errors over all completed requests, when both rates are known and some requests completed.
    pub fn error_ratio(&self) -> Option<f64> {
        match (self.errors, self.rps) {
            (Some(errors), Some(rps)) if rps > 0.0 => Some((errors / rps).clamp(0.0, 1.0)),
            _ => None,
        }
    }
}

/// Static weights: the configured weight where set; elsewhere an equal share, which is the mean
/// of the configured weights in the cluster (rounded, at least 1), or [`DEFAULT_WEIGHT`] if none
/// is configured.
pub fn static_weights<E: Borrow<Endpoint>>(endpoints: &[E]) -> Vec<Weight> {
    let configured: Vec<u64> = endpoints
        .iter()
        .filter_map(|endpoint| endpoint.borrow().configured_weight.map(u64::from))
        .collect();
    let share = if configured.is_empty() {
        DEFAULT_WEIGHT
    } else {
        let count = configured.len() as u64;
        let mean = (configured.iter().sum::<u64>() + count / 2) / count;
        u32::try_from(mean.max(1)).unwrap_or(u32::MAX)
    };
    let share_reason = if configured.is_empty() {
        Reason::default_share()
    } else {
        Reason::mean_share()
    };
    endpoints
        .iter()
        .map(|endpoint| match endpoint.borrow().configured_weight {
            Some(weight) => Weight {
                weight,
                reason: Reason::configured(),
                ..Weight::default()
            },
            None => Weight {
                weight: share,
                reason: share_reason.clone(),
                ..Weight::default()
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HealthStatus, Locality};

    fn endpoint(port: u16, weight: Option<u32>) -> Endpoint {
        Endpoint {
            address: "10.0.0.1".parse().expect("ip"),
            port,
            configured_weight: weight,
            pod: None,
            node: None,
            locality: Locality::default(),
            health: HealthStatus::Healthy,
        }
    }

    fn weights(endpoints: &[Endpoint]) -> Vec<u32> {
        static_weights(endpoints)
            .into_iter()
            .map(|weight| weight.weight)
            .collect()
    }

    #[test]
    fn all_unset_get_the_default_share() {
        assert_eq!(
            weights(&[endpoint(1, None), endpoint(2, None)]),
            vec![100, 100]
        );
    }

    #[test]
    fn unset_get_the_mean_of_the_configured() {
        let endpoints = [
            endpoint(1, Some(300)),
            endpoint(2, None),
            endpoint(3, Some(100)),
        ];
        assert_eq!(weights(&endpoints), vec![300, 200, 100]);
    }

    #[test]
    fn huge_weights_do_not_overflow() {
        let endpoints = [
            endpoint(1, Some(u32::MAX)),
            endpoint(2, Some(u32::MAX)),
            endpoint(3, None),
        ];
        assert_eq!(weights(&endpoints), vec![u32::MAX, u32::MAX, u32::MAX]);
    }

    #[test]
    fn no_endpoints_no_weights() {
        assert!(weights(&[]).is_empty());
    }
}
