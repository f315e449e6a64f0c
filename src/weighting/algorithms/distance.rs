//! The published operator's algorithm: move each weight against its CPU's distance from the mean.

use crate::weighting::{
    plan::{bounds, middle_weight, percentile, to_weight, FreshEndpoint, Planned},
    Params, Reason,
};

/// Weights for the endpoints with fresh CPU, index-aligned with `fresh`.
///
/// Each weight becomes `previous * (1 - alpha)` with `alpha = (cpu - mean) / mean * multiplier`
/// (unchanged when the distance is below `min_distance_percent`), is clamped to the bounds, and
/// all are then rescaled so their median sits at the middle of the range, as the operator does.
pub(crate) fn plan(fresh: &[FreshEndpoint], params: &Params) -> Vec<Planned> {
    let (low, high) = bounds(params);
    let middle = f64::from(middle_weight(params));
    let mean = fresh.iter().map(|endpoint| endpoint.cpu).sum::<f64>() / fresh.len().max(1) as f64;
    let moved: Vec<(f64, f64)> = fresh
        .iter()
        .map(|endpoint| step(endpoint, mean, middle, params))
        .map(|(distance, weight)| (distance, weight.clamp(f64::from(low), f64::from(high))))
        .collect();
    let weights: Vec<f64> = moved.iter().map(|(_, weight)| *weight).collect();
    let scale = match percentile(&weights, 50.0) {
        Some(median) if median > 0.0 => middle / median,
        _ => 1.0,
    };
    fresh
        .iter()
        .zip(moved)
        .map(|(endpoint, (distance, weight))| {
            let final_weight = to_weight(weight * scale, params);
            Planned {
                weight: final_weight,
                reason: Reason::distance(
                    endpoint.cpu,
                    distance,
                    mean,
                    endpoint.previous.unwrap_or(middle as u32),
                    final_weight,
                    scale,
                ),
                cost: None,
            }
        })
        .collect()
}

/// The relative distance from the mean and the moved (unclamped) weight of one endpoint.
fn step(endpoint: &FreshEndpoint, mean: f64, middle: f64, params: &Params) -> (f64, f64) {
    let previous = endpoint.previous.map_or(middle, f64::from);
    if mean <= 0.0 {
        return (0.0, previous);
    }
    let distance = (endpoint.cpu - mean) / mean;
    if distance.abs() * 100.0 < params.distance.min_distance_percent {
        return (distance, previous);
    }
    let alpha = distance * params.distance.multiplier;
    (distance, previous * (1.0 - alpha))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weighting::Algorithm;

    fn params() -> Params {
        Params {
            algorithm: Algorithm::Distance,
            ..Params::default()
        }
    }

    fn endpoint(cpu: f64, previous: Option<u32>) -> FreshEndpoint {
        FreshEndpoint {
            cpu,
            rps: None,
            limit: 1.0,
            previous,
            cost: None,
            ramping: false,
            errors: None,
            errors_track: crate::weighting::ErrorTrack::Clear,
            load_is_in_flight: false,
            node_prior: None,
        }
    }

    fn weights(fresh: &[FreshEndpoint]) -> Vec<u32> {
        plan(fresh, &params())
            .into_iter()
            .map(|planned| planned.weight)
            .collect()
    }

    #[test]
    fn first_time_pods_start_at_the_middle() {
        let fresh = [
            endpoint(0.5, None),
            endpoint(0.52, None),
            endpoint(0.49, None),
        ];
        assert_eq!(weights(&fresh), vec![350, 350, 350]);
    }

    #[test]
    fn a_hot_pod_loses_weight_and_a_cold_one_gains() {
        let fresh = [
            endpoint(1.5, None),
            endpoint(1.0, None),
            endpoint(0.5, None),
        ];
        let result = weights(&fresh);
        // alpha = +0.5, 0, -0.5 around mean 1.0: 175, 350, 525; median 350 stays.
        assert_eq!(result, vec![175, 350, 525]);
    }

    #[test]
    fn weights_stay_in_the_operator_range() {
        let fresh = [
            endpoint(10.0, Some(600)),
            endpoint(0.0, Some(600)),
            endpoint(0.1, Some(100)),
        ];
        for weight in weights(&fresh) {
            assert!((100..=600).contains(&weight), "{weight}");
        }
    }

    #[test]
    fn the_median_is_rescaled_to_the_middle() {
        let fresh = [
            endpoint(1.0, Some(500)),
            endpoint(1.0, Some(500)),
            endpoint(1.0, Some(200)),
        ];
        assert_eq!(weights(&fresh), vec![350, 350, 140]);
    }
}
