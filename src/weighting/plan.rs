//! What every algorithm shares: the fresh endpoint it plans, its answer, and the weight helpers.

use super::{EndpointKey, EndpointMemory, Params, Reason};
use crate::model::Endpoint;

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
    pub(crate) fn remembered(memory: &EndpointMemory) -> Option<Self> {
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
    /// Where the error judgement stood after the last tick (see `errors::judge`).
    pub errors_track: super::ErrorTrack,
    /// `cpu` holds requests in flight (the cluster has no CPU signal).
    pub load_is_in_flight: bool,
    /// Without a remembered cost: what was measured on its node, if any.
    pub node_prior: Option<super::NodePrior>,
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
