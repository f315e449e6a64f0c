//! The weight-provider interface (the control plane's seat) and example providers.

use std::time::Duration;

/// What a control plane sees about one endpoint at a tick (possibly delayed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EndpointSample {
    /// Cores in use: busy-server-seconds per second over the last tick (like `rate()` of cAdvisor CPU).
    pub cpu_cores: f64,
    /// Requests completed per second over the last tick (errors included).
    pub requests_per_second: f64,
    /// Of those, requests answered with an error, per second.
    pub errors_per_second: f64,
    /// Cores (servers) of the endpoint.
    pub cores: u32,
    /// `load_balancing_weight` in force when the sample was taken.
    pub previous_weight: u32,
}

/// A source of EDS `load_balancing_weight`s, called once per simulator tick.
///
/// This is where the real weighting engine plugs in. Returned weights must have one
/// entry per endpoint; zeros are raised to 1 (Envoy rejects weight 0).
pub trait WeightProvider {
    /// Weights to push at `now`, from `samples` that are `metrics_delay` old.
    fn weights(&mut self, now: Duration, samples: &[EndpointSample]) -> Vec<u32>;
}

/// Leaves every weight at 1: plain Envoy behaviour without a weighting control plane.
#[derive(Debug, Clone, Copy, Default)]
pub struct EqualWeights;

impl WeightProvider for EqualWeights {
    fn weights(&mut self, _now: Duration, samples: &[EndpointSample]) -> Vec<u32> {
        vec![1; samples.len()]
    }
}

/// Largest weight the example providers hand out; the others are scaled to it.
pub const WEIGHT_SCALE: f64 = 1000.0;

fn scale_to_max(values: &[f64]) -> Vec<u32> {
    let largest = values.iter().copied().fold(0.0, f64::max);
    if largest <= 0.0 {
        return vec![1; values.len()];
    }
    values
        .iter()
        .map(|value| (value / largest * WEIGHT_SCALE).round().max(1.0) as u32)
        .collect()
}

/// Fewest requests per second a sample needs before [`InverseCpuPerRequest`] trusts it.
///
/// With one or two requests in a tick, the busy time is mostly a partial service and the
/// estimate can be off by orders of magnitude (seen in the 1,000-endpoint runs).
pub const MIN_TRUSTED_REQUESTS_PER_SECOND: f64 = 5.0;

/// EXAMPLE ONLY, not the real engine: weight proportional to estimated capacity,
/// `cores / (cpu seconds per request)`, from the latest sample.
///
/// Endpoints with too little traffic in the sample (below
/// [`MIN_TRUSTED_REQUESTS_PER_SECOND`]) keep their previous weight's share.
#[derive(Debug, Clone, Copy, Default)]
pub struct InverseCpuPerRequest;

impl WeightProvider for InverseCpuPerRequest {
    fn weights(&mut self, _now: Duration, samples: &[EndpointSample]) -> Vec<u32> {
        let capacities: Vec<Option<f64>> = samples
            .iter()
            .map(|sample| {
                (sample.cpu_cores > 0.0
                    && sample.requests_per_second >= MIN_TRUSTED_REQUESTS_PER_SECOND)
                    .then(|| {
                        f64::from(sample.cores) * sample.requests_per_second / sample.cpu_cores
                    })
            })
            .collect();
        if capacities.iter().all(Option::is_none) {
            return samples
                .iter()
                .map(|sample| sample.previous_weight.max(1))
                .collect();
        }
        let largest = capacities.iter().flatten().copied().fold(0.0, f64::max);
        let largest_previous = samples
            .iter()
            .map(|sample| sample.previous_weight)
            .max()
            .unwrap_or(1)
            .max(1);
        let values: Vec<f64> = capacities
            .iter()
            .zip(samples)
            .map(|(capacity, sample)| {
                capacity.unwrap_or(
                    largest * f64::from(sample.previous_weight) / f64::from(largest_previous),
                )
            })
            .collect();
        scale_to_max(&values)
    }
}

/// Test oracle: weights proportional to the true capacity `cores / mean service time`,
/// known from the fleet file. Shows how well perfect knowledge could do.
#[derive(Debug, Clone)]
pub struct KnownCapacity {
    weights: Vec<u32>,
}

impl KnownCapacity {
    /// Builds the oracle from each endpoint's cores and overall mean service time (ms).
    pub fn new(endpoints: impl IntoIterator<Item = (u32, f64)>) -> Self {
        let capacities: Vec<f64> = endpoints
            .into_iter()
            .map(|(cores, mean_ms)| f64::from(cores) / mean_ms)
            .collect();
        Self {
            weights: scale_to_max(&capacities),
        }
    }
}

impl WeightProvider for KnownCapacity {
    fn weights(&mut self, _now: Duration, _samples: &[EndpointSample]) -> Vec<u32> {
        self.weights.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(cpu_cores: f64, requests_per_second: f64) -> EndpointSample {
        EndpointSample {
            cpu_cores,
            requests_per_second,
            errors_per_second: 0.0,
            cores: 4,
            previous_weight: 1,
        }
    }

    #[test]
    fn inverse_cpu_per_request_favours_cheap_requests() {
        // 100 rps at 0.2 cores (2 ms each) versus 100 rps at 2.2 cores (22 ms each).
        let weights =
            InverseCpuPerRequest.weights(Duration::ZERO, &[sample(0.2, 100.0), sample(2.2, 100.0)]);
        assert_eq!(weights, [1000, 91]);
    }

    #[test]
    fn known_capacity_scales_to_the_fastest() {
        let mut oracle = KnownCapacity::new([(4, 2.0), (4, 22.0), (2, 2.0)]);
        assert_eq!(oracle.weights(Duration::ZERO, &[]), [1000, 91, 500]);
    }
}
