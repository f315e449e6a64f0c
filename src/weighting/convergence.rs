//! Convergence of the capacity objectives on a static model fleet.

use super::{testing::Model, ClusterMode, Objective, Params};

/// Tolerance on planned utilization (rounding of integer weights, probes).
const TOLERANCE: f64 = 0.02;

fn params(objective: Objective) -> Params {
    Params {
        objective,
        ..Params::default()
    }
}

/// Four one-core endpoints costing 1, 2, 4 and 8 ms per request.
fn ladder(rps: f64, report_rps: bool) -> Model {
    Model::fleet(
        &[(1.0, 1), (2.0, 1), (4.0, 1), (8.0, 1)],
        1.0,
        rps,
        report_rps,
    )
}

/// (largest - smallest) / mean.
fn unevenness(values: &[f64]) -> f64 {
    let largest = values.iter().copied().fold(f64::MIN, f64::max);
    let smallest = values.iter().copied().fold(f64::MAX, f64::min);
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    (largest - smallest) / mean
}

#[test]
fn balance_evens_utilization_within_three_ticks() {
    for report_rps in [true, false] {
        let model = Model::fleet(
            &[(1.0, 2), (2.0, 2), (4.0, 1), (7.0, 1)],
            1.0,
            200.0,
            report_rps,
        );
        let (outputs, history) = model.run(&params(Objective::Balance), 3);
        let utilizations = model.utilizations(&history[2]);
        assert!(
            unevenness(&utilizations) <= 0.10,
            "rps reported: {report_rps}: {utilizations:?}"
        );
        assert_eq!(outputs[2].mode, ClusterMode::Fresh);
    }
}

#[test]
fn latency_reaches_its_fill_plan_within_three_ticks() {
    for report_rps in [true, false] {
        let model = ladder(300.0, report_rps);
        let (_, history) = model.run(&params(Objective::Latency), 3);
        let traffic = model.traffic(&history[2]);
        // The plan: a probe budget of 0.2% (0.6 rps) split over all four endpoints (0.15 rps
        // each); the 3 outside the plan keep theirs, the cheapest takes the remaining 299.55.
        assert!(
            (traffic[0] - 299.55).abs() < 299.55 * TOLERANCE,
            "{traffic:?}"
        );
        for probe in &traffic[1..] {
            assert!((probe - 0.15).abs() < 0.03, "{traffic:?}");
        }
    }
}

#[test]
fn weights_settle_and_never_oscillate() {
    for objective in [Objective::Latency, Objective::Balance] {
        for report_rps in [true, false] {
            let model = ladder(700.0, report_rps);
            let params = params(objective);
            let (outputs, history) = model.run(&params, 100);
            for tick in 3..100 {
                assert!(!outputs[tick].moved, "{objective:?} moved at tick {tick}");
                for (now, before) in history[tick].iter().zip(&history[tick - 1]) {
                    let change = (f64::from(*now) - f64::from(*before)).abs();
                    assert!(change <= params.push_threshold * f64::from(*before));
                }
            }
        }
    }
}

#[test]
fn the_ceiling_is_never_planned_past_while_capacity_suffices() {
    // Capacity at the 0.7 ceiling: 700 + 350 + 175 + 87.5 = 1312.5 requests per second.
    for rps in [50.0, 300.0, 650.0, 800.0, 1000.0, 1150.0, 1300.0] {
        for report_rps in [true, false] {
            let model = ladder(rps, report_rps);
            let (_, history) = model.run(&params(Objective::Latency), 20);
            for weights in &history[2..] {
                for utilization in model.utilizations(weights) {
                    assert!(utilization <= 0.7 + TOLERANCE, "{rps} rps: {utilization}");
                }
            }
        }
    }
}

#[test]
fn growing_load_binds_the_ceiling_and_spreads_traffic() {
    let busy = |traffic: &[f64], rps: f64| traffic.iter().filter(|t| **t > 0.02 * rps).count();
    let quiet = ladder(300.0, true);
    let (_, history) = quiet.run(&params(Objective::Latency), 5);
    assert_eq!(busy(&quiet.traffic(&history[4]), 300.0), 1);

    let tripled = ladder(900.0, true);
    let (_, history) = tripled.run(&params(Objective::Latency), 5);
    let traffic = tripled.traffic(&history[4]);
    assert_eq!(busy(&traffic, 900.0), 2, "{traffic:?}");
    let cheapest = tripled.utilizations(&history[4])[0];
    assert!((cheapest - 0.7).abs() <= TOLERANCE, "{cheapest}");
}

#[test]
fn overload_spreads_in_proportion_to_capacity() {
    let model = ladder(2000.0, true);
    let (_, history) = model.run(&params(Objective::Latency), 10);
    // Past the ceiling everywhere: traffic follows capacity, so utilization evens out.
    let utilizations = model.utilizations(&history[9]);
    assert!(unevenness(&utilizations) <= 0.10, "{utilizations:?}");
}

/// The seed fleet: 15 endpoints of 4 cores costing 2, 3.3, 5.5 and 22 ms per request.
fn seed_fleet(rps: f64, report_rps: bool) -> Model {
    Model::fleet(
        &[(2.0, 3), (3.3, 2), (5.5, 9), (22.0, 1)],
        4.0,
        rps,
        report_rps,
    )
}

#[test]
fn seed_fleet_latency_avoids_the_costly_pod() {
    for report_rps in [true, false] {
        let model = seed_fleet(1000.0, report_rps);
        let (_, history) = model.run(&params(Objective::Latency), 5);
        let weights = &history[4];
        let traffic = model.traffic(weights);
        assert!(traffic[14] <= 15.0, "22 ms pod: {traffic:?}");
        let cheapest: f64 = traffic[..3].iter().sum();
        assert!(cheapest >= 850.0, "{traffic:?}");
        assert!(
            weights[..3].iter().all(|weight| *weight == 10_000),
            "{weights:?}"
        );
    }
}

#[test]
fn seed_fleet_fills_the_cheapest_pods_to_the_ceiling() {
    // 1000 rps is under a third of what the 2 ms pods take at the ceiling (3 x 1400), so fill
    // to the ceiling shows at a larger load.
    for report_rps in [true, false] {
        let model = seed_fleet(6000.0, report_rps);
        let (_, history) = model.run(&params(Objective::Latency), 5);
        let utilizations = model.utilizations(&history[4]);
        for utilization in &utilizations[..3] {
            assert!((utilization - 0.7).abs() <= TOLERANCE, "{utilizations:?}");
        }
        let traffic = model.traffic(&history[4]);
        assert!(traffic[14] <= 0.015 * 6000.0, "{traffic:?}");
        assert!(
            traffic[3] > traffic[5],
            "spill goes to the 3.3 ms pods: {traffic:?}"
        );
    }
}

#[test]
fn resumes_after_fallback_and_reaches_the_plan() {
    use super::{compute, testing::endpoints};
    use std::time::Duration;

    let model = ladder(300.0, true);
    let params = params(Objective::Latency);
    let fleet = endpoints(4);
    let fallback = compute(&fleet, &[], &Default::default(), &params, Duration::ZERO);
    assert_eq!(fallback.mode, ClusterMode::Fallback);
    let mut memory = fallback.memory;
    let mut served: Vec<u32> = fallback
        .weights
        .iter()
        .map(|weight| weight.weight)
        .collect();
    for tick in 1..=6u64 {
        let output = compute(
            &fleet,
            &model.loads(&served),
            &memory,
            &params,
            Duration::from_secs(10 * tick),
        );
        served = output.weights.iter().map(|weight| weight.weight).collect();
        memory = output.memory;
    }
    // From equal weights, shares move at most x2 per tick: 1:1 to about 400:1 takes 5 ticks.
    let traffic = model.traffic(&served);
    assert!(
        (traffic[0] - 297.75).abs() < 297.75 * TOLERANCE,
        "{traffic:?}"
    );
}
