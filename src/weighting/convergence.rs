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

/// The seed fleet at 1,500 rps with its first 2 ms pod answering 90% of its requests with an
/// error after 0.2 ms (the failing-pod lab fleet).
fn failing_seed(report_errors: bool) -> Model {
    let mut model = seed_fleet(1500.0, true);
    model.error_ratios[0] = 0.9;
    model.report_errors = report_errors;
    model
}

/// Share of all requests answered with an error under these weights.
fn error_rate(model: &Model, weights: &[u32]) -> f64 {
    let traffic = model.traffic(weights);
    let errors: f64 = traffic
        .iter()
        .zip(&model.error_ratios)
        .map(|(rps, ratio)| rps * ratio)
        .sum();
    errors / model.rps
}

#[test]
fn a_failing_pod_is_held_at_a_probe_for_every_objective() {
    for objective in [Objective::Latency, Objective::Balance] {
        let model = failing_seed(true);
        let (outputs, history) = model.run(&params(objective), 6);
        // Held from the first tick with its samples (equal weights served before it).
        for weights in &history {
            let share = model.traffic(weights)[0] / model.rps;
            assert!(share <= 0.004, "{objective:?}: share {share}: {weights:?}");
            assert!(error_rate(&model, weights) <= 0.004);
        }
        let held = &outputs[5].weights[0];
        assert_eq!(held.source, super::WeightSource::Failing);
        let reason = held.reason.to_string();
        assert!(
            reason.contains("failing: 90.0% errors vs 0.0% in the rest of the cluster"),
            "{reason}"
        );
        assert!(outputs[5]
            .memory
            .endpoints
            .values()
            .any(|memory| memory.failing));
        // The other 2 ms pods still take the traffic the latency objective gives them.
        if objective == Objective::Latency {
            let traffic = model.traffic(&history[5]);
            assert!(traffic[1] + traffic[2] >= 1300.0, "{traffic:?}");
        }
    }
}

#[test]
fn a_failing_pod_comes_back_when_it_recovers() {
    let params = params(Objective::Latency);
    let failing = failing_seed(true);
    let (outputs, history) = failing.run(&params, 4);
    let memory = outputs[3].memory.clone();
    let mut recovered = failing.clone();
    recovered.error_ratios[0] = 0.0;
    let (outputs, history) = recovered.run_from(&params, 4..24, memory, history.last().cloned());
    assert!(!outputs[0]
        .memory
        .endpoints
        .values()
        .any(|memory| memory.failing));
    // Released at once, then back up at most x2 per tick to a 2 ms pod's full weight.
    let last = history.last().cloned().unwrap_or_default();
    assert_eq!(last[0], 10_000, "{last:?}");
    assert!(history[1][0] <= 4 * history[0][0].max(1), "{history:?}");
}

#[test]
fn without_an_error_signal_a_failing_pod_is_capped_at_an_equal_share() {
    for objective in [Objective::Latency, Objective::Balance] {
        let model = failing_seed(false);
        let (outputs, history) = model.run(&params(objective), 8);
        for weights in &history[1..] {
            let share = model.traffic(weights)[0] / model.rps;
            assert!(
                share <= 1.0 / 15.0 + 0.005,
                "{objective:?}: {share}: {weights:?}"
            );
        }
        let reason = outputs[7].weights[0].reason.to_string();
        assert!(reason.contains("suspect: cost 0.07x"), "{reason}");
        // Errors no worse than an equal split would give (0.9 / 15 = 6%).
        let rate = error_rate(&model, &history[7]);
        assert!(rate <= 0.9 / 15.0 + 0.005, "{rate}");
    }
}

#[test]
fn load_reports_alone_plan_from_requests_in_flight() {
    // No CPU and no limit: requests in flight over the rate is each pod's time per request, and
    // `default_cpu_limit` is read as how many it serves at once (4 workers, as the pods' cores).
    let params = Params {
        default_cpu_limit: 4.0,
        ..params(Objective::Latency)
    };
    let mut model = failing_seed(true);
    model.report_cpu = false;
    let (outputs, history) = model.run(&params, 6);
    let traffic = model.traffic(&history[5]);
    assert!(traffic[0] / model.rps <= 0.004, "{traffic:?}");
    assert!(traffic[1] + traffic[2] >= 1300.0, "{traffic:?}");
    assert!(traffic[14] <= 5.0, "{traffic:?}");
    let reason = outputs[5].weights[1].reason.to_string();
    assert!(reason.contains("load: requests in flight"), "{reason}");
    assert_eq!(outputs[5].weights[1].cpu, None);
    let latency = outputs[5].weights[1].latency.unwrap_or_default();
    assert!((latency - 0.002).abs() < 1e-9, "{latency}");
    // Without a limit from anywhere the default of one request at a time is conservative: the
    // plan spreads wider, but the failing pod is still held.
    let (_, history) = model.run(&self::params(Objective::Latency), 6);
    let traffic = model.traffic(&history[5]);
    assert!(traffic[0] / model.rps <= 0.004, "{traffic:?}");
    assert!(traffic[14] <= 15.0, "{traffic:?}");
}

#[test]
fn past_the_ceiling_the_plan_settles_and_loads_fast_pods_harder() {
    // The seed fleet's full capacity: 4 cores / cost, summed (about 10,900 rps).
    let full: f64 = [(2.0, 3.0), (3.3, 2.0), (5.5, 9.0), (22.0, 1.0)]
        .iter()
        .map(|(millis, count)| count * 4.0 / (millis / 1000.0))
        .sum();
    for share in [0.69, 0.72, 0.8, 0.9] {
        let model = seed_fleet(share * full, true);
        let (_, history) = model.run(&params(Objective::Latency), 40);
        for pair in history[20..].windows(2) {
            for (before, after) in pair[0].iter().zip(&pair[1]) {
                let change = (f64::from(*after) - f64::from(*before)).abs() / f64::from(*before);
                assert!(change <= 0.10, "{share}: {:?} -> {:?}", pair[0], pair[1]);
            }
        }
        let utilizations = model.utilizations(&history[39]);
        assert!(
            utilizations.iter().all(|u| *u < 1.0),
            "{share}: {utilizations:?}"
        );
        if share > 0.7 {
            assert!(
                utilizations[0] > utilizations[14] + 0.01,
                "{share}: {utilizations:?}"
            );
        }
    }
}

#[test]
fn load_reports_alone_balance_equal_pods_evenly() {
    let mut model = Model::fleet(&[(5.0, 3)], 4.0, 600.0, true);
    model.report_cpu = false;
    let (_, history) = model.run(&params(Objective::Balance), 20);
    let last = &history[19];
    let largest = last.iter().copied().max().unwrap_or(1);
    let smallest = last.iter().copied().min().unwrap_or(1);
    assert!(
        f64::from(largest) <= 1.1 * f64::from(smallest),
        "{history:?}"
    );
}
