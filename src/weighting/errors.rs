//! Failing endpoints: a pod that answers errors clearly more often than its peers is held at a
//! small probe, whatever the algorithm, objective or source.
//!
//! A pod that fails fast (a 503 after 0.2 ms) uses almost no CPU per request, so every cost
//! signal reads it as the cheapest pod of the fleet; LEAST_REQUEST sees it as the least busy.
//! Left to the planner it would win the traffic, and most requests would fail. Judging the error
//! ratio first, and planning only the endpoints that pass, keeps that from happening.

use std::time::Duration;

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

/// Fewest requests answered within the margin, counted over the ticks since a held endpoint
/// last clearly failed, to release it. Counted rather than read as a rate, so the probe of a
/// quiet cluster (0.3 requests per second at 100 rps) still earns its release; a pod still
/// failing half of its requests answers five in a row within the margin 3% of the time.
pub(crate) const RELEASE_MIN_REQUESTS: f64 = 5.0;

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
    /// Requests answered within the margin since it last clearly failed (0 when it just did).
    pub healthy_requests: f64,
}

/// Judges each fresh endpoint: `Some` for those to hold, index-aligned with `fresh`.
///
/// An endpoint is held when its error ratio is clearly above the rest of the cluster's (by
/// [`MARGIN`] and [`HOLD_SIGMAS`] standard errors, from at least [`HOLD_MIN_ERRORS`] errors per
/// second). A held endpoint counts the requests of each tick whose ratio is within the margin
/// (its rate times `elapsed`, the time since the last tick) and starts over at a tick whose
/// ratio is above it; it is released once [`RELEASE_MIN_REQUESTS`] are counted. Without such
/// evidence it stays held, so one quiet tick does not hand a failing pod its traffic back.
/// Endpoints without an error reading are never held.
pub(crate) fn judge(fresh: &[FreshEndpoint], elapsed: Duration) -> Vec<Option<Failing>> {
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
                _ => return endpoint.held.map(Failing::unknown),
            };
            let others_rps = total_rps - rps;
            let baseline = if others_rps > 0.0 {
                ((total_errors - errors) / others_rps).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let ratio = if rps > 0.0 { errors / rps } else { 0.0 };
            let failing = Failing {
                ratio,
                baseline,
                healthy_requests: 0.0,
            };
            if let Some(healthy) = endpoint.held {
                let healthy_requests = if ratio > baseline + MARGIN {
                    0.0
                } else {
                    healthy + rps * elapsed.as_secs_f64()
                };
                (healthy_requests < RELEASE_MIN_REQUESTS).then_some(Failing {
                    healthy_requests,
                    ..failing
                })
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
    /// Held from an earlier tick with `healthy_requests` counted, no error reading this tick.
    fn unknown(healthy_requests: f64) -> Self {
        Self {
            ratio: f64::NAN,
            baseline: f64::NAN,
            healthy_requests,
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

    const TICK: Duration = Duration::from_secs(1);

    /// An endpoint with these rates; `held`: the healthy requests counted while held.
    fn endpoint(rps: f64, errors: Option<f64>, held: Option<f64>) -> FreshEndpoint {
        FreshEndpoint {
            cpu: 0.1,
            rps: Some(rps),
            errors,
            limit: 1.0,
            previous: None,
            cost: None,
            ramping: false,
            held,
            load_is_in_flight: false,
            node_prior: None,
        }
    }

    #[test]
    fn a_pod_failing_far_more_than_its_peers_is_held() {
        let fresh = [
            endpoint(100.0, Some(90.0), None),
            endpoint(100.0, Some(1.0), None),
            endpoint(100.0, Some(0.0), None),
        ];
        let verdicts = judge(&fresh, TICK);
        let held = verdicts[0].expect("held");
        assert!((held.ratio - 0.9).abs() < 1e-12);
        assert!((held.baseline - 0.005).abs() < 1e-12);
        assert_eq!(verdicts[1], None);
        assert_eq!(verdicts[2], None);
    }

    #[test]
    fn a_cluster_failing_evenly_holds_no_one() {
        let fresh = [
            endpoint(100.0, Some(50.0), None),
            endpoint(100.0, Some(52.0), None),
            endpoint(100.0, Some(48.0), None),
        ];
        assert!(judge(&fresh, TICK).iter().all(Option::is_none));
    }

    #[test]
    fn a_few_errors_are_not_enough() {
        // Two errors out of two requests: a high ratio, but chance at this rate.
        let fresh = [
            endpoint(2.0, Some(2.0), None),
            endpoint(100.0, Some(0.0), None),
        ];
        assert_eq!(judge(&fresh, TICK)[0], None);
        // From ten requests with three errors against a clean cluster: held.
        let fresh = [
            endpoint(10.0, Some(3.0), None),
            endpoint(100.0, Some(0.0), None),
        ];
        assert!(judge(&fresh, TICK)[0].is_some());
        // Unless the rest of the cluster fails about as much.
        let fresh = [
            endpoint(10.0, Some(3.0), None),
            endpoint(100.0, Some(25.0), None),
        ];
        assert_eq!(judge(&fresh, TICK)[0], None);
    }

    #[test]
    fn a_held_pod_is_released_only_on_evidence() {
        let judge = |fresh: &[FreshEndpoint]| judge(fresh, TICK);
        // No requests, or no reading: still held.
        assert!(judge(&[
            endpoint(0.0, Some(0.0), Some(0.0)),
            endpoint(100.0, Some(0.0), None)
        ])[0]
            .is_some());
        assert!(judge(&[
            endpoint(5.0, None, Some(0.0)),
            endpoint(100.0, Some(0.0), None)
        ])[0]
            .is_some());
        // Still failing at a probe's rate: held.
        assert!(judge(&[
            endpoint(3.0, Some(2.0), Some(0.0)),
            endpoint(100.0, Some(0.0), None)
        ])[0]
            .is_some());
        // Answering well again: the requests count, released from five on.
        let healthy = judge(&[
            endpoint(3.0, Some(0.0), Some(0.0)),
            endpoint(100.0, Some(0.0), None),
        ])[0]
            .expect("three requests are not enough");
        assert!((healthy.healthy_requests - 3.0).abs() < 1e-12);
        assert_eq!(
            judge(&[
                endpoint(3.0, Some(0.0), Some(3.0)),
                endpoint(100.0, Some(0.0), None)
            ])[0],
            None
        );
        // A tick failing again starts the count over.
        let again = judge(&[
            endpoint(3.0, Some(2.0), Some(4.0)),
            endpoint(100.0, Some(0.0), None),
        ])[0]
            .expect("held");
        assert_eq!(again.healthy_requests, 0.0);
        // No reading keeps the count.
        let kept = judge(&[
            endpoint(5.0, None, Some(4.0)),
            endpoint(100.0, Some(0.0), None),
        ])[0]
            .expect("held");
        assert_eq!(kept.healthy_requests, 4.0);
    }

    #[test]
    fn a_quiet_probe_is_released_over_several_ticks() {
        // 0.3 requests per second over ten-second ticks: three requests a tick, two ticks.
        let tick = Duration::from_secs(10);
        let first = judge(
            &[
                endpoint(0.3, Some(0.0), Some(0.0)),
                endpoint(100.0, Some(0.0), None),
            ],
            tick,
        )[0]
        .expect("held after one tick");
        let second = judge(
            &[
                endpoint(0.3, Some(0.0), Some(first.healthy_requests)),
                endpoint(100.0, Some(0.0), None),
            ],
            tick,
        )[0];
        assert_eq!(second, None);
    }

    #[test]
    fn no_error_signal_holds_no_one() {
        let fresh = [endpoint(100.0, None, None), endpoint(100.0, None, None)];
        assert!(judge(&fresh, TICK).iter().all(Option::is_none));
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
