//! Weight computation: pure functions from endpoints (and later load samples) to weights.
//!
//! No clock, no I/O, no globals: the same code runs in the server, the tests and the simulator.

use crate::discovery::Endpoint;

/// Weight given to every endpoint of a cluster in which no endpoint has a configured weight.
pub const DEFAULT_WEIGHT: u32 = 100;

/// A computed `load_balancing_weight` and why it has that value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Weight {
    /// The weight to serve, at least 1.
    pub weight: u32,
    /// A short human explanation, shown by the `Inspect` API.
    pub reason: String,
}

/// Static weights: the configured weight where set; elsewhere an equal share, which is the mean
/// of the configured weights in the cluster (rounded, at least 1), or [`DEFAULT_WEIGHT`] if none
/// is configured.
pub fn static_weights(endpoints: &[Endpoint]) -> Vec<Weight> {
    let configured: Vec<u64> = endpoints
        .iter()
        .filter_map(|endpoint| endpoint.configured_weight.map(u64::from))
        .collect();
    let share = if configured.is_empty() {
        DEFAULT_WEIGHT
    } else {
        let count = configured.len() as u64;
        let mean = (configured.iter().sum::<u64>() + count / 2) / count;
        u32::try_from(mean.max(1)).unwrap_or(u32::MAX)
    };
    let share_reason = if configured.is_empty() {
        format!("equal share (default {DEFAULT_WEIGHT})")
    } else {
        "equal share (mean of the configured weights)".to_string()
    };
    endpoints
        .iter()
        .map(|endpoint| match endpoint.configured_weight {
            Some(weight) => Weight {
                weight,
                reason: "configured".into(),
            },
            None => Weight {
                weight: share,
                reason: share_reason.clone(),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{HealthStatus, Locality};

    fn endpoint(port: u16, weight: Option<u32>) -> Endpoint {
        Endpoint {
            address: "10.0.0.1".parse().expect("ip"),
            port,
            configured_weight: weight,
            pod: None,
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
