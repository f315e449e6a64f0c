//! Failing endpoints: a pod that answers errors clearly more often than its peers is held at a
//! small probe, whatever the algorithm, objective or source.
//!
//! A pod that fails fast (a 503 after 0.2 ms) uses almost no CPU per request, so every cost
//! signal reads it as the cheapest pod of the fleet; LEAST_REQUEST sees it as the least busy.
//! Left to the planner it would win the traffic, and most requests would fail. Judging the error
//! ratio first, and planning only the endpoints that pass, keeps that from happening.

use super::plan::{bounds, FreshEndpoint};
use super::Params;

/// Share of the cluster's traffic each held endpoint keeps, so that its recovery is seen.
///
/// Envoy's LEAST_REQUEST gives a fast-failing pod a few times the share its weight says (it
/// never has requests in flight), so 0.3% planned lands near 1% served: at 90% errors about 0.9%
/// of all requests fail, while enough requests reach the pod (4.5 per second at 1,500 rps) to
/// see it recover within a few ticks.
pub(crate) const HELD_SHARE: f64 = 0.003;

/// All held endpoints together keep at most this share.
const HELD_SHARE_TOTAL: f64 = 0.03;

/// An error ratio must exceed the baseline by at least this much to count as clearly above it.
const MARGIN: f64 = 0.05;

/// Standard errors (binomial) by which a ratio must exceed the baseline to be held.
const HOLD_SIGMAS: f64 = 3.0;

/// Fewest errors per second behind a judgement to hold: from fewer, a high ratio is chance.
const HOLD_MIN_ERRORS: f64 = 3.0;

/// Fewest completed requests per second behind a judgement to release a held endpoint: with
/// fewer, it stays held (it keeps its probe, so the evidence comes).
const RELEASE_MIN_RPS: f64 = 1.0;

/// The smallest baseline ratio assumed in the standard error, so that a cluster without any
/// error does not make one unlucky request look significant.
const BASELINE_FLOOR: f64 = 0.01;

/// Why an endpoint is held.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Failing {
    /// Its error ratio this tick (errors over completed requests).
    pub ratio: f64,
    /// The error ratio of the rest of the cluster.
    pub baseline: f64,
}

/// Judges each fresh endpoint: `Some` for those to hold, index-aligned with `fresh`.
///
/// An endpoint is held when its error ratio is clearly above the rest of the cluster's (by
/// [`MARGIN`] and [`HOLD_SIGMAS`] standard errors, from at least [`HOLD_MIN_ERRORS`] errors per
/// second). A held endpoint stays held until a tick with at least [`RELEASE_MIN_RPS`] shows its
/// ratio within the margin; without such evidence it stays held, so one quiet tick does not
/// hand a failing pod its traffic back. Endpoints without an error reading are never held.
pub(crate) fn judge(fresh: &[FreshEndpoint]) -> Vec<Option<Failing>> {
    let (total_errors, total_rps) = fresh
        .iter()
        .filter_map(|endpoint| Some((endpoint.errors?, endpoint.rps?)))
        .fold((0.0, 0.0), |(errors, rps), (e, r)| {
            (errors + e.min(r), rps + r)
        });
    fresh
        .iter()
        .map(|endpoint| {
            let (errors, rps) = match (endpoint.errors, endpoint.rps) {
                (Some(errors), Some(rps)) => (errors.min(rps), rps),
                _ => return endpoint.failing.then_some(Failing::unknown()),
            };
            let others_rps = total_rps - rps;
            let baseline = if others_rps > 0.0 {
                ((total_errors - errors) / others_rps).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let ratio = if rps > 0.0 { errors / rps } else { 0.0 };
            let failing = Failing { ratio, baseline };
            if endpoint.failing {
                let recovered = rps >= RELEASE_MIN_RPS && ratio <= baseline + MARGIN;
                (!recovered).then_some(failing)
            } else {
                let floor = baseline.max(BASELINE_FLOOR);
                let sigma = (floor * (1.0 - floor) / rps.max(1.0)).sqrt();
                let threshold = baseline + MARGIN.max(HOLD_SIGMAS * sigma);
                (errors >= HOLD_MIN_ERRORS && ratio > threshold).then_some(failing)
            }
        })
        .collect()
}

impl Failing {
    /// Held from an earlier tick, with no error reading this tick.
    fn unknown() -> Self {
        Self {
            ratio: f64::NAN,
            baseline: f64::NAN,
        }
    }
}

/// The weight of each of `held` endpoints so that it gets [`HELD_SHARE`] of the traffic, given
/// the weights planned for the others (their sum).
pub(crate) fn held_weight(planned_sum: f64, held: usize, params: &Params) -> u32 {
    let (low, high) = bounds(params);
    if held == 0 || planned_sum <= 0.0 {
        return low;
    }
    let share = HELD_SHARE.min(HELD_SHARE_TOTAL / held as f64);
    let total = share * held as f64;
    // w / (planned_sum + held * w) = share  =>  w = share * planned_sum / (1 - total).
    let weight = share * planned_sum / (1.0 - total);
    weight.round().clamp(f64::from(low), f64::from(high)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(rps: f64, errors: Option<f64>, failing: bool) -> FreshEndpoint {
        FreshEndpoint {
            cpu: 0.1,
            rps: Some(rps),
            errors,
            limit: 1.0,
            previous: None,
            cost: None,
            ramping: false,
            failing,
            load_is_in_flight: false,
            node_prior: None,
        }
    }

    #[test]
    fn a_pod_failing_far_more_than_its_peers_is_held() {
        let fresh = [
            endpoint(100.0, Some(90.0), false),
            endpoint(100.0, Some(1.0), false),
            endpoint(100.0, Some(0.0), false),
        ];
        let verdicts = judge(&fresh);
        let held = verdicts[0].expect("held");
        assert!((held.ratio - 0.9).abs() < 1e-12);
        assert!((held.baseline - 0.005).abs() < 1e-12);
        assert_eq!(verdicts[1], None);
        assert_eq!(verdicts[2], None);
    }

    #[test]
    fn a_cluster_failing_evenly_holds_no_one() {
        let fresh = [
            endpoint(100.0, Some(50.0), false),
            endpoint(100.0, Some(52.0), false),
            endpoint(100.0, Some(48.0), false),
        ];
        assert!(judge(&fresh).iter().all(Option::is_none));
    }

    #[test]
    fn a_few_errors_are_not_enough() {
        // Two errors out of two requests: a high ratio, but chance at this rate.
        let fresh = [
            endpoint(2.0, Some(2.0), false),
            endpoint(100.0, Some(0.0), false),
        ];
        assert_eq!(judge(&fresh)[0], None);
        // From ten requests with three errors against a clean cluster: held.
        let fresh = [
            endpoint(10.0, Some(3.0), false),
            endpoint(100.0, Some(0.0), false),
        ];
        assert!(judge(&fresh)[0].is_some());
        // Unless the rest of the cluster fails about as much.
        let fresh = [
            endpoint(10.0, Some(3.0), false),
            endpoint(100.0, Some(25.0), false),
        ];
        assert_eq!(judge(&fresh)[0], None);
    }

    #[test]
    fn a_held_pod_is_released_only_on_evidence() {
        // No requests, or no reading: still held.
        assert!(judge(&[
            endpoint(0.0, Some(0.0), true),
            endpoint(100.0, Some(0.0), false)
        ])[0]
            .is_some());
        assert!(
            judge(&[endpoint(5.0, None, true), endpoint(100.0, Some(0.0), false)])[0].is_some()
        );
        // Still failing at a probe's rate: held.
        assert!(judge(&[
            endpoint(3.0, Some(2.0), true),
            endpoint(100.0, Some(0.0), false)
        ])[0]
            .is_some());
        // Answering well again: released.
        assert_eq!(
            judge(&[
                endpoint(3.0, Some(0.0), true),
                endpoint(100.0, Some(0.0), false)
            ])[0],
            None
        );
    }

    #[test]
    fn no_error_signal_holds_no_one() {
        let fresh = [endpoint(100.0, None, false), endpoint(100.0, None, false)];
        assert!(judge(&fresh).iter().all(Option::is_none));
    }

    #[test]
    fn held_weights_give_the_held_share() {
        let params = Params::default();
        // Others sum to 10000: one held pod gets 0.3% of the total.
        let weight = held_weight(10_000.0, 1, &params);
        let share = f64::from(weight) / (10_000.0 + f64::from(weight));
        assert!((share - HELD_SHARE).abs() < 1e-4, "{share}");
        // Many held pods share at most the total.
        let weight = held_weight(10_000.0, 20, &params);
        let share = 20.0 * f64::from(weight) / (10_000.0 + 20.0 * f64::from(weight));
        assert!(share <= HELD_SHARE_TOTAL + 1e-3, "{share}");
        assert!(held_weight(0.0, 1, &params) >= 1);
    }
}
