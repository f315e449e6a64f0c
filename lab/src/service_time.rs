//! Service-time distribution shared by the emulator and the simulator.

use rand::Rng;
use rand_distr::{Distribution, LogNormal};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Errors raised when a service-time specification cannot describe a distribution.
#[derive(Debug, thiserror::Error)]
pub enum ServiceTimeError {
    /// The mean must be a positive, finite number of milliseconds.
    #[error("mean_ms must be positive and finite, got {0}")]
    Mean(f64),
    /// The lognormal shape must be finite and not negative.
    #[error("sigma must be finite and >= 0, got {0}")]
    Sigma(f64),
    /// The tail probability must lie in [0, 1] and the factor must be >= 1.
    #[error("tail needs 0 <= probability <= 1 and factor >= 1, got probability {probability} factor {factor}")]
    Tail {
        /// Probability that was given.
        probability: f64,
        /// Factor that was given.
        factor: f64,
    },
}

/// A rare slow path: with `probability`, a sampled service time is multiplied by `factor`.
///
/// Models garbage-collection pauses or cache misses that make real latency tails heavy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tail {
    /// Chance in [0, 1] that one request takes the slow path.
    pub probability: f64,
    /// Multiplier (>= 1) applied to the service time on the slow path.
    pub factor: f64,
}

/// Specification of a lognormal service time as written in fleet files.
///
/// `mean_ms` is the mean of the lognormal body; the optional tail raises the overall
/// mean to `mean_ms * (1 + probability * (factor - 1))` (see [`ServiceTimeSpec::overall_mean_ms`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceTimeSpec {
    /// Mean of the lognormal body, in milliseconds.
    pub mean_ms: f64,
    /// Standard deviation of the underlying normal (0 gives a constant service time).
    pub sigma: f64,
    /// Optional slow path.
    #[serde(default)]
    pub tail: Option<Tail>,
}

impl ServiceTimeSpec {
    /// Checks the numbers so that sampling can never fail later.
    pub fn validate(&self) -> Result<(), ServiceTimeError> {
        if !(self.mean_ms.is_finite() && self.mean_ms > 0.0) {
            return Err(ServiceTimeError::Mean(self.mean_ms));
        }
        if !(self.sigma.is_finite() && self.sigma >= 0.0) {
            return Err(ServiceTimeError::Sigma(self.sigma));
        }
        if let Some(tail) = self.tail {
            let probability_ok = (0.0..=1.0).contains(&tail.probability);
            if !(probability_ok && tail.factor.is_finite() && tail.factor >= 1.0) {
                return Err(ServiceTimeError::Tail {
                    probability: tail.probability,
                    factor: tail.factor,
                });
            }
        }
        Ok(())
    }

    /// Mean service time including the tail, in milliseconds (what capacity planning needs).
    pub fn overall_mean_ms(&self) -> f64 {
        let tail_gain = self
            .tail
            .map_or(1.0, |tail| 1.0 + tail.probability * (tail.factor - 1.0));
        self.mean_ms * tail_gain
    }
}

/// A validated, ready-to-sample service-time distribution.
#[derive(Debug, Clone)]
pub struct ServiceTime {
    body: Option<LogNormal<f64>>,
    mean_seconds: f64,
    tail: Option<Tail>,
}

impl ServiceTime {
    /// Builds the sampler; the lognormal location is chosen so that the body mean is `mean_ms`.
    pub fn new(spec: &ServiceTimeSpec) -> Result<Self, ServiceTimeError> {
        spec.validate()?;
        let mean_seconds = spec.mean_ms / 1000.0;
        let body = if spec.sigma > 0.0 {
            let location = mean_seconds.ln() - spec.sigma * spec.sigma / 2.0;
            Some(
                LogNormal::new(location, spec.sigma)
                    .map_err(|_| ServiceTimeError::Sigma(spec.sigma))?,
            )
        } else {
            None
        };
        Ok(Self {
            body,
            mean_seconds,
            tail: spec.tail,
        })
    }

    /// Draws one service time in seconds (before any node slowdown).
    pub fn sample_seconds<R: Rng + ?Sized>(&self, random: &mut R) -> f64 {
        let body = match &self.body {
            Some(lognormal) => lognormal.sample(random),
            None => self.mean_seconds,
        };
        match self.tail {
            Some(tail) if tail.probability > 0.0 && random.random::<f64>() < tail.probability => {
                body * tail.factor
            }
            _ => body,
        }
    }

    /// Draws one service time as a [`Duration`], multiplied by `slowdown`.
    pub fn sample<R: Rng + ?Sized>(&self, random: &mut R, slowdown: f64) -> Duration {
        Duration::from_secs_f64(self.sample_seconds(random) * slowdown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn sample_mean_matches_spec() {
        let spec = ServiceTimeSpec {
            mean_ms: 5.0,
            sigma: 0.5,
            tail: Some(Tail {
                probability: 0.05,
                factor: 4.0,
            }),
        };
        let service_time = ServiceTime::new(&spec).unwrap();
        let mut random = ChaCha8Rng::seed_from_u64(7);
        let count = 200_000;
        let total: f64 = (0..count)
            .map(|_| service_time.sample_seconds(&mut random))
            .sum();
        let mean_ms = total / f64::from(count) * 1000.0;
        let expected = spec.overall_mean_ms();
        assert!(
            (mean_ms - expected).abs() / expected < 0.02,
            "{mean_ms} vs {expected}"
        );
    }

    #[test]
    fn invalid_specs_are_rejected() {
        let bad_mean = ServiceTimeSpec {
            mean_ms: 0.0,
            sigma: 0.1,
            tail: None,
        };
        assert!(ServiceTime::new(&bad_mean).is_err());
        let bad_tail = ServiceTimeSpec {
            mean_ms: 1.0,
            sigma: 0.1,
            tail: Some(Tail {
                probability: 2.0,
                factor: 3.0,
            }),
        };
        assert!(ServiceTime::new(&bad_tail).is_err());
    }
}
