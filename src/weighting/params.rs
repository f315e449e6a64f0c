//! The knobs of every weighting algorithm, with their defaults.

use std::time::Duration;

/// The default `utilization_ceiling`. The `latency` plan keeps pods well under it until the
/// load nears it (on the seed lab fleet at 70% of its capacity the 2 ms pods are planned at
/// 0.79, the 5.5 ms pods at 0.63), so it binds only above about 85% of capacity, and leaves
/// pods below the 0.95 at which a CPU reading counts as saturated.
pub const DEFAULT_UTILIZATION_CEILING: f64 = 0.9;

/// The default `surge_headroom`: room for the demand to triple before the samples show it
/// (15 s scrapes under `rate[1m]` show a step in demand fully only after about a minute). The
/// price is the p99 of a quiet cluster: it stays at what it is at half load instead of falling
/// further (README, "Room for a sudden rise").
pub const DEFAULT_SURGE_HEADROOM: f64 = 3.0;

/// Which algorithm computes a cluster's weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algorithm {
    /// Weights from the config only (the default when no metrics source is configured).
    Static,
    /// The published operator's algorithm: move each weight against its CPU's distance from the mean.
    Distance,
    /// Estimate each endpoint's cost per request and plan weights for an objective (the default
    /// when a metrics source is configured).
    #[default]
    Capacity,
}

/// What `capacity` optimises.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Objective {
    /// Minimise the modelled mean latency (each endpoint an M/M/c queue), no endpoint above the
    /// utilization ceiling: cheap endpoints take the traffic first and run hotter.
    #[default]
    Latency,
    /// Even out utilization across the cluster.
    Balance,
}

/// Knobs of the `distance` algorithm.
#[derive(Clone, Debug, PartialEq)]
pub struct DistanceParams {
    /// `alpha = (cpu - mean) / mean * multiplier`.
    pub multiplier: f64,
    /// Distances below this percent of the mean leave the weight unchanged.
    pub min_distance_percent: f64,
    /// A new pod starts at this percentile (0..100) of the current weights.
    pub new_pod_percentile: f64,
}

impl Default for DistanceParams {
    fn default() -> Self {
        Self {
            multiplier: 1.0,
            min_distance_percent: 10.0,
            new_pod_percentile: 50.0,
        }
    }
}

/// Every knob, resolved for one cluster (global config merged with the cluster's overrides).
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// Algorithm.
    pub algorithm: Algorithm,
    /// Objective of `capacity`.
    pub objective: Objective,
    /// Samples older than this are not used.
    pub stale_after: Duration,
    /// A cluster with only stale samples for this long returns to equal weights.
    pub fallback_after: Duration,
    /// Smallest weight served (`None`: the algorithm's default, 100 for distance, 1 for capacity).
    pub min_weight: Option<u32>,
    /// Largest weight served (`None`: 600 for distance, 10000 for capacity).
    pub max_weight: Option<u32>,
    /// Publish only when some weight moved by more than this fraction of its previous value.
    pub push_threshold: f64,
    /// Most a weight may grow or shrink in one tick, as a factor (2.0: at most x2 or /2).
    pub max_step: f64,
    /// Weight of the newest cost estimate in the running average (1.0: no smoothing).
    pub smoothing: f64,
    /// `latency`: no endpoint is planned above this utilization (CPU / limit) while the cluster
    /// can take its demand below it; past that, the demand is spread in proportion to capacity.
    pub utilization_ceiling: f64,
    /// `latency`: share of traffic kept, in all, on the endpoints outside the plan (split equally),
    /// so their costs stay measured. Probes go to endpoints known to be slower, so they land in
    /// the latency tail: the default 0.2% keeps them to a fifth of the 1% that p99 reads (the
    /// README's probe sweep on the harsh lab fleet measures what each share costs).
    pub probe_share: f64,
    /// `latency`: the factor by which the demand may rise at once, before the samples show it,
    /// and still find every endpoint under `utilization_ceiling`: no endpoint is planned above
    /// `utilization_ceiling / surge_headroom` while the demand fits well under that (see
    /// `placement::SURGE_ROOM_LIMIT`); 1 plans for the demand seen.
    pub surge_headroom: f64,
    /// CPU limit (cores) assumed for endpoints whose limit is unknown; in a cluster without any
    /// CPU reading, the number of requests an endpoint serves at once.
    pub default_cpu_limit: f64,
    /// A cluster using less CPU than this in total (cores) is idle and keeps equal weights.
    pub idle_cpu: f64,
    /// New endpoints ramp from the minimum to their computed weight over this long (zero: off).
    pub slow_start: Duration,
    /// Knobs of `distance`.
    pub distance: DistanceParams,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::Capacity,
            objective: Objective::Latency,
            stale_after: Duration::from_secs(30),
            fallback_after: Duration::from_secs(300),
            min_weight: None,
            max_weight: None,
            push_threshold: 0.05,
            max_step: 2.0,
            smoothing: 0.5,
            utilization_ceiling: DEFAULT_UTILIZATION_CEILING,
            probe_share: 0.002,
            surge_headroom: DEFAULT_SURGE_HEADROOM,
            default_cpu_limit: 1.0,
            idle_cpu: 0.01,
            slow_start: Duration::ZERO,
            distance: DistanceParams::default(),
        }
    }
}

impl Params {
    /// The effective minimum weight.
    pub fn min_weight(&self) -> u32 {
        self.min_weight.unwrap_or(match self.algorithm {
            Algorithm::Distance => 100,
            Algorithm::Static | Algorithm::Capacity => 1,
        })
    }

    /// The effective maximum weight.
    pub fn max_weight(&self) -> u32 {
        self.max_weight.unwrap_or(match self.algorithm {
            Algorithm::Distance => 600,
            Algorithm::Static | Algorithm::Capacity => 10_000,
        })
    }
}
