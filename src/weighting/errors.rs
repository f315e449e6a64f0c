//! Failing endpoints: a pod that answers errors clearly more often than its peers is held at a
//! small probe, whatever the algorithm, objective or source.
//!
//! A pod that fails fast (a 503 after 0.2 ms) uses almost no CPU per request, so every cost
//! signal reads it as the cheapest pod of the fleet; LEAST_REQUEST sees it as the least busy.
//! Left to the planner it would win the traffic, and most requests would fail. Judging the error
//! ratio first, and planning only the endpoints that pass, keeps that from happening.

use std::time::Duration;

use super::plan::{bounds, FreshEndpoint};
use super::{ErrorTrack, Params};

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

/// Fewest errors behind a judgement to hold, counted over the ticks its ratio stayed above the
/// margin: from fewer, a high ratio is chance. Counted rather than read as a rate, so that a pod
/// of a quiet cluster failing most of its one request per second is held after a few seconds.
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

/// Judges each fresh endpoint, index-aligned with `fresh`: `Some` for those to hold, and what
/// each carries to the next tick.
///
/// Evidence is counted in requests, a rate times the time it covered (`elapsed`, the time since
/// the last tick; a first tick counts one second of its rates). An endpoint whose ratio rises
/// above the rest of the cluster's by [`MARGIN`] becomes a suspect and counts its errors and
/// requests while it stays there; it is held once at least [`HOLD_MIN_ERRORS`] are counted and
/// their ratio is above the baseline by [`HOLD_SIGMAS`] standard errors of the requests counted.
/// A tick within the margin clears it. A held endpoint counts the requests of each tick whose
/// ratio is within the margin and starts over at a tick whose ratio is above it; it is released
/// once [`RELEASE_MIN_REQUESTS`] are counted. Without such evidence it stays held, so one quiet
/// tick does not hand a failing pod its traffic back. A tick without requests or without an
/// error reading changes nothing; endpoints that never had an error reading are never held.
pub(crate) fn judge(
    fresh: &[FreshEndpoint],
    elapsed: Duration,
) -> (Vec<Option<Failing>>, Vec<ErrorTrack>) {
    let cluster = ClusterRates::of(
        fresh
            .iter()
            .filter_map(|endpoint| Some((endpoint.errors?, endpoint.rps?))),
    );
    let seconds = elapsed.as_secs_f64();
    let hold_seconds = if elapsed.is_zero() { 1.0 } else { seconds };
    fresh
        .iter()
        .map(|endpoint| {
            let track = endpoint.errors_track;
            let (errors, rps) = match (endpoint.errors, endpoint.rps) {
                (Some(errors), Some(rps)) if rps > 0.0 => (errors.min(rps), rps),
                _ => return (track.healthy_requests().map(Failing::unknown), track),
            };
            let baseline = cluster.baseline_without(errors, rps);
            let ratio = errors / rps;
            let above = ratio > baseline + MARGIN;
            let failing = |healthy_requests| Failing {
                ratio,
                baseline,
                healthy_requests,
            };
            if let Some(healthy) = track.healthy_requests() {
                let healthy_requests = if above { 0.0 } else { healthy + rps * seconds };
                return if healthy_requests < RELEASE_MIN_REQUESTS {
                    let held = ErrorTrack::Held { healthy_requests };
                    (Some(failing(healthy_requests)), held)
                } else {
                    (None, ErrorTrack::Clear)
                };
            }
            if !above {
                return (None, ErrorTrack::Clear);
            }
            let (counted_errors, counted) = match track {
                ErrorTrack::Suspect { errors, requests } => (errors, requests),
                _ => (0.0, 0.0),
            };
            let counted_errors = counted_errors + errors * hold_seconds;
            let counted = counted + rps * hold_seconds;
            let floor = baseline.max(BASELINE_FLOOR);
            let sigma = (floor * (1.0 - floor) / counted.max(1.0)).sqrt();
            let threshold = baseline + MARGIN.max(HOLD_SIGMAS * sigma);
            if counted_errors >= HOLD_MIN_ERRORS && counted_errors / counted > threshold {
                let held = ErrorTrack::Held {
                    healthy_requests: 0.0,
                };
                (Some(failing(0.0)), held)
            } else {
                let suspect = ErrorTrack::Suspect {
                    errors: counted_errors,
                    requests: counted,
                };
                (None, suspect)
            }
        })
        .unzip()
}

/// Whether an endpoint the last tick left clear now shows an error ratio above the rest of the
/// cluster's by [`MARGIN`]: `(errors, rps, track)` per endpoint, rates as the sources give them.
///
/// Cheap, and for the engine: samples that arrive between two ticks wait for the next one,
/// but a pod that has just begun failing should not wait up to a tick before it is judged (a
/// fast-failing pod takes a few times its share meanwhile). Endpoints already suspected or held
/// are left to the ticks, so one failure brings at most one early tick.
pub(crate) fn newly_above(rates: &[(Option<f64>, Option<f64>, ErrorTrack)]) -> bool {
    let usable = |value: Option<f64>| value.filter(|value| value.is_finite() && *value >= 0.0);
    let known: Vec<(f64, f64, ErrorTrack)> = rates
        .iter()
        .filter_map(|(errors, rps, track)| {
            let rps = usable(*rps)?;
            Some((usable(*errors)?.min(rps), rps, *track))
        })
        .collect();
    let cluster = ClusterRates::of(known.iter().map(|(errors, rps, _)| (*errors, *rps)));
    known.iter().any(|(errors, rps, track)| {
        *track == ErrorTrack::Clear
            && *rps > 0.0
            && cluster.rps > *rps
            && errors / rps > cluster.baseline_without(*errors, *rps) + MARGIN
    })
}

/// Errors and requests per second summed over a cluster's endpoints with both readings (errors
/// capped at the requests): what one endpoint's ratio is compared with.
#[derive(Clone, Copy, Debug)]
struct ClusterRates {
    errors: f64,
    rps: f64,
}

impl ClusterRates {
    /// Sums `(errors, rps)` pairs.
    fn of(rates: impl Iterator<Item = (f64, f64)>) -> Self {
        let (errors, rps) = rates.fold((0.0, 0.0), |(errors, rps), (e, r)| {
            (errors + e.min(r), rps + r)
        });
        Self { errors, rps }
    }

    /// The error ratio of the rest of the cluster, without one endpoint's `errors` (capped at
    /// its `rps`) and `rps`: 0 when the rest served nothing.
    fn baseline_without(self, errors: f64, rps: f64) -> f64 {
        let others_rps = self.rps - rps;
        if others_rps > 0.0 {
            ((self.errors - errors) / others_rps).clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
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

    /// The verdicts alone.
    fn verdicts(fresh: &[FreshEndpoint], elapsed: Duration) -> Vec<Option<Failing>> {
        judge(fresh, elapsed).0
    }

    /// An endpoint with these rates; `held`: the healthy requests counted while held.
    fn endpoint(rps: f64, errors: Option<f64>, held: Option<f64>) -> FreshEndpoint {
        let track = held.map_or(ErrorTrack::Clear, |healthy_requests| ErrorTrack::Held {
            healthy_requests,
        });
        tracked(rps, errors, track)
    }

    /// An endpoint with these rates and this judgement from the last tick.
    fn tracked(rps: f64, errors: Option<f64>, track: ErrorTrack) -> FreshEndpoint {
        FreshEndpoint {
            cpu: 0.1,
            rps: Some(rps),
            errors,
            limit: 1.0,
            previous: None,
            cost: None,
            ramping: false,
            errors_track: track,
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
        let verdicts = verdicts(&fresh, TICK);
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
        assert!(verdicts(&fresh, TICK).iter().all(Option::is_none));
    }

    #[test]
    fn a_few_errors_are_not_enough() {
        // Two errors out of two requests: a high ratio, but chance at this rate.
        let fresh = [
            endpoint(2.0, Some(2.0), None),
            endpoint(100.0, Some(0.0), None),
        ];
        assert_eq!(verdicts(&fresh, TICK)[0], None);
        // From ten requests with three errors against a clean cluster: held.
        let fresh = [
            endpoint(10.0, Some(3.0), None),
            endpoint(100.0, Some(0.0), None),
        ];
        assert!(verdicts(&fresh, TICK)[0].is_some());
        // Unless the rest of the cluster fails about as much.
        let fresh = [
            endpoint(10.0, Some(3.0), None),
            endpoint(100.0, Some(25.0), None),
        ];
        assert_eq!(verdicts(&fresh, TICK)[0], None);
    }

    #[test]
    fn a_held_pod_is_released_only_on_evidence() {
        let judge = |fresh: &[FreshEndpoint]| verdicts(fresh, TICK);
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
        let first = verdicts(
            &[
                endpoint(0.3, Some(0.0), Some(0.0)),
                endpoint(100.0, Some(0.0), None),
            ],
            tick,
        )[0]
        .expect("held after one tick");
        let second = verdicts(
            &[
                endpoint(0.3, Some(0.0), Some(first.healthy_requests)),
                endpoint(100.0, Some(0.0), None),
            ],
            tick,
        )[0];
        assert_eq!(second, None);
    }

    #[test]
    fn a_quiet_pod_is_held_once_its_errors_add_up() {
        // One request per second, nine in ten failing: 0.9 errors a second, three after four
        // one-second ticks above the margin.
        let clean = endpoint(100.0, Some(0.0), None);
        let mut track = ErrorTrack::Clear;
        for tick in 1..=4 {
            let (verdicts, tracks) = judge(&[tracked(1.0, Some(0.9), track), clean.clone()], TICK);
            track = tracks[0];
            assert_eq!(verdicts[0].is_some(), tick == 4, "tick {tick}: {track:?}");
        }
        assert_eq!(
            track,
            ErrorTrack::Held {
                healthy_requests: 0.0
            }
        );
        // Ten-second ticks count ten seconds of errors: held on the first after the start.
        let (_, tracks) = judge(
            &[tracked(1.0, Some(0.9), ErrorTrack::Clear), clean.clone()],
            Duration::ZERO,
        );
        let (verdicts, _) = judge(
            &[tracked(1.0, Some(0.9), tracks[0]), clean.clone()],
            Duration::from_secs(10),
        );
        assert!(verdicts[0].is_some());
    }

    #[test]
    fn a_suspect_is_cleared_by_a_tick_within_the_margin() {
        let clean = endpoint(100.0, Some(0.0), None);
        // Two errors of two requests: a suspect, not held.
        let (verdicts, tracks) = judge(
            &[tracked(2.0, Some(2.0), ErrorTrack::Clear), clean.clone()],
            TICK,
        );
        assert_eq!(verdicts[0], None);
        let suspect = tracks[0];
        assert_eq!(
            suspect,
            ErrorTrack::Suspect {
                errors: 2.0,
                requests: 2.0
            }
        );
        // A tick without requests or without an error reading keeps the count.
        for quiet in [
            tracked(0.0, Some(0.0), suspect),
            tracked(2.0, None, suspect),
        ] {
            let (verdicts, tracks) = judge(&[quiet, clean.clone()], TICK);
            assert_eq!((verdicts[0], tracks[0]), (None, suspect));
        }
        // Answering well clears it: two more errors later start from none.
        let (_, tracks) = judge(&[tracked(2.0, Some(0.0), suspect), clean.clone()], TICK);
        assert_eq!(tracks[0], ErrorTrack::Clear);
        let (verdicts, _) = judge(&[tracked(2.0, Some(2.0), tracks[0]), clean.clone()], TICK);
        assert_eq!(verdicts[0], None);
        // Failing on: four of four counted, held.
        let (verdicts, _) = judge(&[tracked(2.0, Some(2.0), suspect), clean], TICK);
        assert!(verdicts[0].is_some());
    }

    #[test]
    fn a_suspect_of_a_cluster_failing_evenly_is_cleared() {
        // Above the margin on one tick, then the whole cluster fails as much: not held.
        let suspect = ErrorTrack::Suspect {
            errors: 2.0,
            requests: 10.0,
        };
        let (verdicts, tracks) = judge(
            &[
                tracked(10.0, Some(3.0), suspect),
                endpoint(100.0, Some(28.0), None),
            ],
            TICK,
        );
        assert_eq!((verdicts[0], tracks[0]), (None, ErrorTrack::Clear));
    }

    #[test]
    fn news_of_a_failure_is_an_endpoint_left_clear_now_above_the_margin() {
        let clear = ErrorTrack::Clear;
        let suspect = ErrorTrack::Suspect {
            errors: 1.0,
            requests: 10.0,
        };
        // 20% errors against the others' 1%: news while clear, not once suspected.
        let failing = [
            (Some(20.0), Some(100.0), clear),
            (Some(1.0), Some(100.0), clear),
            (Some(1.0), Some(100.0), clear),
        ];
        assert!(newly_above(&failing));
        let mut judged = failing;
        judged[0].2 = suspect;
        assert!(!newly_above(&judged));
        // 5% over the others' 1%: within the margin.
        let within = [
            (Some(5.0), Some(100.0), clear),
            (Some(1.0), Some(100.0), clear),
        ];
        assert!(!newly_above(&within));
        // Unknown, NaN or negative readings and a lone endpoint tell nothing.
        assert!(!newly_above(&[
            (None, Some(100.0), clear),
            (Some(0.0), Some(100.0), clear)
        ]));
        assert!(!newly_above(&[
            (Some(f64::NAN), Some(1.0), clear),
            (Some(0.0), Some(1.0), clear)
        ]));
        assert!(!newly_above(&[
            (Some(-1.0), Some(1.0), clear),
            (Some(0.0), Some(1.0), clear)
        ]));
        assert!(!newly_above(&[(Some(90.0), Some(100.0), clear)]));
    }

    #[test]
    fn no_error_signal_holds_no_one() {
        let fresh = [endpoint(100.0, None, None), endpoint(100.0, None, None)];
        assert!(verdicts(&fresh, TICK).iter().all(Option::is_none));
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
