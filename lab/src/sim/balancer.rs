//! Per-client models of Envoy's ROUND_ROBIN and LEAST_REQUEST host selection.

use super::edf::EdfScheduler;
use rand::Rng;

/// Which Envoy load-balancing policy the clients run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Policy {
    /// ROUND_ROBIN: plain rotation, or EDF weighted round robin when weights differ.
    RoundRobin,
    /// LEAST_REQUEST: power of two choices, or EDF over `weight / (active + 1)^bias` when weights differ.
    LeastRequest,
    /// client_side_weighted_round_robin: weights `rps / utilization` from ORCA reports.
    Cswrr,
}

impl Policy {
    /// Name used in tables and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::LeastRequest => "least_request",
            Policy::Cswrr => "cswrr",
        }
    }
}

/// Settings of Envoy's LEAST_REQUEST balancer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeastRequestSettings {
    /// Random hosts compared when weights are equal (Envoy's `choice_count`, default 2).
    pub choice_count: u32,
    /// Exponent on `active + 1` when weights differ (Envoy's `active_request_bias`, default 1.0).
    pub active_request_bias: f64,
}

impl Default for LeastRequestSettings {
    fn default() -> Self {
        Self {
            choice_count: 2,
            active_request_bias: 1.0,
        }
    }
}

/// Host-selection state of one client (one Envoy).
#[derive(Debug, Clone)]
pub enum Balancer {
    /// Unweighted round robin: the next index in rotation.
    RoundRobin {
        /// Index picked next.
        next: usize,
        /// Number of endpoints.
        count: usize,
    },
    /// Weighted round robin through an EDF scheduler with fixed weights.
    WeightedRoundRobin {
        /// Scheduler over the endpoints.
        scheduler: EdfScheduler,
        /// Weight of each endpoint.
        weights: Vec<f64>,
    },
    /// Unweighted least request: best of `choice_count` random endpoints.
    PowerOfChoices {
        /// Number of endpoints.
        count: usize,
        /// Random endpoints compared per pick.
        choice_count: u32,
    },
    /// Weighted least request: EDF over `weight / (active + 1)^bias`.
    WeightedLeastRequest {
        /// Scheduler over the endpoints.
        scheduler: EdfScheduler,
        /// EDS weight of each endpoint.
        weights: Vec<f64>,
        /// Exponent on `active + 1`.
        bias: f64,
    },
}

fn all_equal(weights: &[u32]) -> bool {
    weights.windows(2).all(|pair| pair[0] == pair[1])
}

fn least_request_weight(weight: f64, active: u32, bias: f64) -> f64 {
    let load = f64::from(active) + 1.0;
    if bias == 1.0 {
        weight / load
    } else if bias == 0.0 {
        weight
    } else {
        weight / load.powf(bias)
    }
}

impl Balancer {
    /// Builds the balancer Envoy would use for `policy` given the endpoint `weights`.
    ///
    /// `active` is the client's own active-request count per endpoint; `seed` is the
    /// client's fixed random seed, which (as in Envoy) sets where in the rotation a freshly
    /// built scheduler starts, so clients do not move in step.
    pub fn new(
        policy: Policy,
        weights: &[u32],
        active: &[u32],
        settings: LeastRequestSettings,
        seed: u32,
    ) -> Self {
        let count = weights.len();
        let float_weights: Vec<f64> = weights.iter().map(|&weight| f64::from(weight)).collect();
        match (policy, all_equal(weights)) {
            (Policy::RoundRobin | Policy::Cswrr, true) => Balancer::RoundRobin {
                next: seed as usize % count.max(1),
                count,
            },
            (Policy::RoundRobin | Policy::Cswrr, false) => {
                let scheduler = EdfScheduler::with_picks(&float_weights, seed);
                Balancer::WeightedRoundRobin {
                    scheduler,
                    weights: float_weights,
                }
            }
            (Policy::LeastRequest, true) => Balancer::PowerOfChoices {
                count,
                choice_count: settings.choice_count.max(1),
            },
            (Policy::LeastRequest, false) => {
                let bias = settings.active_request_bias;
                let effective: Vec<f64> = float_weights
                    .iter()
                    .zip(active)
                    .map(|(&weight, &active)| least_request_weight(weight, active, bias))
                    .collect();
                let scheduler = EdfScheduler::with_picks(&effective, seed);
                Balancer::WeightedLeastRequest {
                    scheduler,
                    weights: float_weights,
                    bias,
                }
            }
        }
    }

    /// Picks an endpoint index; `active` is this client's active requests per endpoint.
    pub fn pick<R: Rng>(&mut self, active: &[u32], random: &mut R) -> usize {
        match self {
            Balancer::RoundRobin { next, count } => {
                let index = *next % (*count).max(1);
                *next = index + 1;
                index
            }
            Balancer::WeightedRoundRobin { scheduler, weights } => {
                scheduler.pick_and_add(|index| weights[index]).unwrap_or(0)
            }
            Balancer::PowerOfChoices {
                count,
                choice_count,
            } => {
                let mut best = random.random_range(0..(*count).max(1));
                for _ in 1..*choice_count {
                    let candidate = random.random_range(0..(*count).max(1));
                    if active[candidate] < active[best] {
                        best = candidate;
                    }
                }
                best
            }
            Balancer::WeightedLeastRequest {
                scheduler,
                weights,
                bias,
            } => scheduler
                .pick_and_add(|index| least_request_weight(weights[index], active[index], *bias))
                .unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn round_robin_rotates() {
        let mut random = ChaCha8Rng::seed_from_u64(1);
        let mut balancer = Balancer::new(
            Policy::RoundRobin,
            &[1; 3],
            &[0; 3],
            LeastRequestSettings::default(),
            7,
        );
        let first = balancer.pick(&[0; 3], &mut random);
        let picks: Vec<usize> = (0..3)
            .map(|_| balancer.pick(&[0; 3], &mut random))
            .collect();
        assert_eq!(picks, [(first + 1) % 3, (first + 2) % 3, first]);
    }

    #[test]
    fn power_of_choices_prefers_fewer_active() {
        let mut random = ChaCha8Rng::seed_from_u64(2);
        let mut balancer = Balancer::new(
            Policy::LeastRequest,
            &[1; 2],
            &[0; 2],
            LeastRequestSettings::default(),
            7,
        );
        let active = [5, 0];
        let picks_of_busy = (0..1000)
            .filter(|_| balancer.pick(&active, &mut random) == 0)
            .count();
        // Endpoint 0 wins only when both random choices land on it: about 1 in 4.
        assert!((150..350).contains(&picks_of_busy), "{picks_of_busy}");
    }

    #[test]
    fn weighted_least_request_divides_by_active() {
        let mut random = ChaCha8Rng::seed_from_u64(3);
        let weights = [2, 1];
        let active = [1, 0];
        let mut balancer = Balancer::new(
            Policy::LeastRequest,
            &weights,
            &active,
            LeastRequestSettings::default(),
            7,
        );
        // Effective weights are 2/2 = 1 and 1/1 = 1: picks split evenly.
        let picks_of_first = (0..1000)
            .filter(|_| balancer.pick(&active, &mut random) == 0)
            .count();
        assert!((480..=520).contains(&picks_of_first), "{picks_of_first}");
    }
}
