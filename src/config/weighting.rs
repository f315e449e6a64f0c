//! The `weighting:` section (global, and `clusters[].weighting` overrides): the knobs as
//! written, and their translation into the weighting's [`Params`], every bad value named.

use std::time::Duration;

use serde::Deserialize;

use super::{duration::ConfigDuration, problem, Problem};
use crate::weighting::params::{Algorithm, DistanceParams, Objective, Params};

/// `weighting:` (global) and `clusters[].weighting:` (overrides); every key optional.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WeightingConfig {
    /// `static`, `distance` or `capacity`.
    pub algorithm: Option<AlgorithmName>,
    /// `latency` or `balance`.
    pub objective: Option<ObjectiveName>,
    /// Samples older than this are not used.
    pub stale_after: Option<ConfigDuration>,
    /// Stale this long: back to equal weights.
    pub fallback_after: Option<ConfigDuration>,
    /// Smallest weight.
    pub min_weight: Option<u32>,
    /// Largest weight.
    pub max_weight: Option<u32>,
    /// Push only when a weight moved more than this fraction.
    pub push_threshold: Option<f64>,
    /// Largest change factor per tick.
    pub max_step: Option<f64>,
    /// Weight of the newest cost estimate.
    pub smoothing: Option<f64>,
    /// `latency`: utilization ceiling.
    pub utilization_ceiling: Option<f64>,
    /// `latency`: traffic share kept, in all, on the endpoints outside the plan.
    pub probe_share: Option<f64>,
    /// `latency`: sudden rise in demand the plan keeps room for.
    pub surge_headroom: Option<f64>,
    /// CPU limit (cores) assumed when unknown.
    pub default_cpu_limit: Option<f64>,
    /// Total CPU (cores) under which a cluster is idle.
    pub idle_cpu: Option<f64>,
    /// Ramp-in time of new endpoints.
    pub slow_start: Option<ConfigDuration>,
    /// `distance` knobs.
    pub distance: Option<DistanceConfig>,
}

/// `weighting.distance:`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DistanceConfig {
    /// Multiplier of the relative distance.
    pub multiplier: Option<f64>,
    /// Distances under this percent leave weights unchanged.
    pub min_distance_percent: Option<f64>,
    /// Percentile of current weights a new pod starts at.
    pub new_pod_percentile: Option<f64>,
}

/// Config spelling of [`Algorithm`].
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AlgorithmName {
    /// [`Algorithm::Static`].
    Static,
    /// [`Algorithm::Distance`].
    Distance,
    /// [`Algorithm::Capacity`].
    Capacity,
}

/// Config spelling of [`Objective`].
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ObjectiveName {
    /// [`Objective::Latency`].
    Latency,
    /// [`Objective::Balance`].
    Balance,
}

impl From<AlgorithmName> for Algorithm {
    fn from(name: AlgorithmName) -> Self {
        match name {
            AlgorithmName::Static => Algorithm::Static,
            AlgorithmName::Distance => Algorithm::Distance,
            AlgorithmName::Capacity => Algorithm::Capacity,
        }
    }
}

impl From<ObjectiveName> for Objective {
    fn from(name: ObjectiveName) -> Self {
        match name {
            ObjectiveName::Latency => Objective::Latency,
            ObjectiveName::Balance => Objective::Balance,
        }
    }
}

/// `config` written over `params` (the defaults, or the global knobs for a cluster's
/// overrides); every bad value is named as `FIELD.KEY`, with `field` such as `weighting` or
/// `clusters[2].weighting`.
pub fn params_from(
    mut params: Params,
    config: &WeightingConfig,
    field: &str,
    problems: &mut Vec<Problem>,
) -> Params {
    let mut knobs = Knobs { field, problems };
    if let Some(algorithm) = config.algorithm {
        params.algorithm = algorithm.into();
    }
    if let Some(objective) = config.objective {
        params.objective = objective.into();
    }
    durations_from(&mut params, config, &mut knobs);
    numbers_from(&mut params, config, &mut knobs);
    if let Some(distance) = &config.distance {
        distance_from(&mut params.distance, distance, &mut knobs);
    }
    weight_bounds_from(&mut params, config, &mut knobs);
    params
}

/// Writes the knobs that are set, naming each bad one under the section's field.
struct Knobs<'a> {
    field: &'a str,
    problems: &'a mut Vec<Problem>,
}

impl Knobs<'_> {
    fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems
            .push(problem(format!("{}.{key}", self.field), message));
    }

    /// A duration, above zero unless `allow_zero`.
    fn duration(
        &mut self,
        target: &mut Duration,
        value: Option<ConfigDuration>,
        key: &str,
        allow_zero: bool,
    ) {
        if let Some(value) = value {
            if value.0.is_zero() && !allow_zero {
                self.problem(key, "expected a duration above zero");
            }
            *target = value.0;
        }
    }

    /// A finite number in `low..=high`; `expected` says the range in the problem.
    fn number(
        &mut self,
        target: &mut f64,
        value: Option<f64>,
        key: &str,
        (low, high): (f64, f64),
        expected: &str,
    ) {
        if let Some(value) = value {
            if !(value.is_finite() && value >= low && value <= high) {
                self.problem(key, format!("expected {expected}, got {value}"));
            }
            *target = value;
        }
    }
}

/// `stale_after`, `fallback_after` (not below `stale_after`) and `slow_start` (zero: off).
fn durations_from(params: &mut Params, config: &WeightingConfig, knobs: &mut Knobs<'_>) {
    knobs.duration(
        &mut params.stale_after,
        config.stale_after,
        "stale_after",
        false,
    );
    knobs.duration(
        &mut params.fallback_after,
        config.fallback_after,
        "fallback_after",
        false,
    );
    knobs.duration(
        &mut params.slow_start,
        config.slow_start,
        "slow_start",
        true,
    );
    if params.fallback_after < params.stale_after {
        knobs.problem(
            "fallback_after",
            format!(
                "must be at least stale_after ({:?}), got {:?}",
                params.stale_after, params.fallback_after
            ),
        );
    }
}

/// The fractions and core counts, each in its range.
fn numbers_from(params: &mut Params, config: &WeightingConfig, knobs: &mut Knobs<'_>) {
    knobs.number(
        &mut params.push_threshold,
        config.push_threshold,
        "push_threshold",
        (0.0, 0.99),
        "0..0.99",
    );
    knobs.number(
        &mut params.max_step,
        config.max_step,
        "max_step",
        (1.0, 1e6),
        "at least 1.0",
    );
    knobs.number(
        &mut params.smoothing,
        config.smoothing,
        "smoothing",
        (0.01, 1.0),
        "0.01..1",
    );
    knobs.number(
        &mut params.utilization_ceiling,
        config.utilization_ceiling,
        "utilization_ceiling",
        (0.01, 1.0),
        "0.01..1",
    );
    knobs.number(
        &mut params.probe_share,
        config.probe_share,
        "probe_share",
        (0.0, 0.5),
        "0..0.5",
    );
    knobs.number(
        &mut params.surge_headroom,
        config.surge_headroom,
        "surge_headroom",
        (1.0, 100.0),
        "1..100",
    );
    knobs.number(
        &mut params.default_cpu_limit,
        config.default_cpu_limit,
        "default_cpu_limit",
        (0.001, 1e6),
        "a positive number of cores",
    );
    knobs.number(
        &mut params.idle_cpu,
        config.idle_cpu,
        "idle_cpu",
        (0.0, 1e6),
        "zero or more cores",
    );
}

/// `weighting.distance:` knobs, named `distance.KEY`.
fn distance_from(distance: &mut DistanceParams, config: &DistanceConfig, knobs: &mut Knobs<'_>) {
    knobs.number(
        &mut distance.multiplier,
        config.multiplier,
        "distance.multiplier",
        (0.0001, 1e6),
        "a positive number",
    );
    knobs.number(
        &mut distance.min_distance_percent,
        config.min_distance_percent,
        "distance.min_distance_percent",
        (0.0, 1e6),
        "zero or more percent",
    );
    knobs.number(
        &mut distance.new_pod_percentile,
        config.new_pod_percentile,
        "distance.new_pod_percentile",
        (0.0, 100.0),
        "0..100",
    );
}

/// `min_weight` (at least 1) and `max_weight` (not below `min_weight`), checked as resolved:
/// an override of one is checked against the other's global value.
fn weight_bounds_from(params: &mut Params, config: &WeightingConfig, knobs: &mut Knobs<'_>) {
    if let Some(min) = config.min_weight {
        params.min_weight = Some(min);
    }
    if let Some(max) = config.max_weight {
        params.max_weight = Some(max);
    }
    if params.min_weight() == 0 {
        knobs.problem("min_weight", "expected at least 1, got 0");
    }
    if params.max_weight() < params.min_weight() {
        knobs.problem(
            "max_weight",
            format!(
                "must be at least min_weight ({}), got {}",
                params.min_weight(),
                params.max_weight()
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::problem_lines as problems;

    #[test]
    fn unknown_enum_values_list_the_allowed_ones() {
        let found = problems("weighting: { objective: fastest }\n");
        assert_eq!(found.len(), 1);
        assert!(
            found[0].starts_with(
                "weighting.objective: unknown variant `fastest`, expected `latency` or `balance`"
            ),
            "{found:?}"
        );
    }
}
