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

/// [`params`] without room for a sudden rise (`surge_headroom` 1): the plan for the demand
/// seen, whose shape some tests check (the room has its own test,
/// `a_sudden_rise_finds_every_pod_under_the_ceiling`).
fn params_without_room(objective: Objective) -> Params {
    Params {
        surge_headroom: 1.0,
        ..params(objective)
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
fn latency_reaches_its_plan_within_three_ticks() {
    for report_rps in [true, false] {
        let model = ladder(300.0, report_rps);
        let (_, history) = model.run(&params(Objective::Latency), 3);
        let traffic = model.traffic(&history[2]);
        // The plan (one-core pods are M/M/1, marginal latency cost / (1 - u)^2): a probe
        // budget of 0.2% (0.6 rps) split over all four (0.15 rps each); the 1 ms pod at 0.297
        // adds 2 / (1 - 0.0056)^2 ms per extra request, as the 2 ms pod does at 2.8 rps; the
        // 4 and 8 ms pods keep their probes.
        for (planned, rps) in [(296.88, traffic[0]), (2.81, traffic[1])] {
            assert!((rps - planned).abs() < planned * TOLERANCE, "{traffic:?}");
        }
        for probe in &traffic[2..] {
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
    // The ladder's capacity at full utilization: 1000 + 500 + 250 + 125 = 1875 rps.
    for ceiling in [0.7, Params::default().utilization_ceiling] {
        let params = Params {
            utilization_ceiling: ceiling,
            ..params(Objective::Latency)
        };
        for share in [0.03, 0.16, 0.35, 0.43, 0.53, 0.61, 0.69, 0.8, 0.88] {
            let rps = share * 1875.0;
            if rps > 0.99 * ceiling * 1875.0 {
                continue;
            }
            // From equal weights past 70% of capacity the 8 ms pod starts saturated, so its
            // first readings are only lower bounds of its cost: two more ticks to settle.
            let settled = if share > 0.7 { 4 } else { 2 };
            for report_rps in [true, false] {
                let model = ladder(rps, report_rps);
                let (_, history) = model.run(&params, 20);
                for weights in &history[settled..] {
                    for utilization in model.utilizations(weights) {
                        assert!(
                            utilization <= ceiling + TOLERANCE,
                            "{ceiling}: {rps} rps: {utilization}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn growing_load_brings_in_costlier_pods_and_cheap_ones_run_hotter() {
    let busy = |traffic: &[f64], rps: f64| traffic.iter().filter(|t| **t > 0.02 * rps).count();
    let mut before = 0;
    for rps in [100.0, 300.0, 600.0, 900.0, 1200.0, 1500.0] {
        let model = ladder(rps, true);
        let (_, history) = model.run(&params(Objective::Latency), 8);
        let traffic = model.traffic(&history[7]);
        let now = busy(&traffic, rps);
        assert!(now >= before, "{rps}: {traffic:?}");
        before = now;
        let utilizations = model.utilizations(&history[7]);
        for pair in utilizations.windows(2) {
            if pair[1] > 0.02 {
                assert!(pair[0] > pair[1], "{rps}: {utilizations:?}");
            }
        }
    }
    // From one pod at low load to all four.
    assert_eq!(
        busy(
            &ladder(100.0, true)
                .traffic(&ladder(100.0, true).run(&params(Objective::Latency), 8).1[7]),
            100.0
        ),
        1
    );
    assert_eq!(before, 4);
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
fn seed_fleet_loads_the_cheapest_pods_hardest() {
    // 6000 rps is 40% of the fleet's capacity: the 2 ms pods take most, the 3.3 ms pods most of
    // the rest, the 5.5 ms pods a little and the 22 ms pod its probe.
    for report_rps in [true, false] {
        let model = seed_fleet(6000.0, report_rps);
        let (_, history) = model.run(&params_without_room(Objective::Latency), 5);
        let utilizations = model.utilizations(&history[4]);
        for utilization in &utilizations[..3] {
            assert!((0.6..0.75).contains(utilization), "{utilizations:?}");
        }
        assert!(utilizations[3] < utilizations[0] && utilizations[5] < utilizations[3]);
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
fn a_sudden_rise_finds_every_pod_under_the_ceiling() {
    // 2,500 rps is a sixth of the seed fleet's capacity. The weights settled at it meet a
    // tripled demand before any sample shows the rise: with the default room every pod is
    // still under the ceiling; planned for the demand seen, the 2 ms pods are taken past full.
    let ceiling = Params::default().utilization_ceiling;
    for report_rps in [true, false] {
        let quiet = seed_fleet(2500.0, report_rps);
        let tripled = seed_fleet(7500.0, report_rps);
        let (outputs, history) = quiet.run(&params(Objective::Latency), 5);
        let after = tripled.utilizations(&history[4]);
        assert!(
            after
                .iter()
                .all(|utilization| *utilization <= ceiling + 0.01),
            "{after:?}"
        );
        let reason = outputs[4].weights[0].reason.to_string();
        assert!(reason.contains("room for a x3.0 rise"), "{reason}");
        let (_, history) = quiet.run(&params_without_room(Objective::Latency), 5);
        let after = tripled.utilizations(&history[4]);
        assert!(after[0] >= 1.0, "{after:?}");
        // Still the latency plan: the quiet cluster's 2 ms pods carry most of its traffic.
        let traffic = quiet.traffic(&quiet.run(&params(Objective::Latency), 5).1[4]);
        assert!(
            traffic[..3].iter().sum::<f64>() >= 0.6 * 2500.0,
            "{traffic:?}"
        );
    }
}

#[test]
fn a_failing_pod_is_held_at_a_probe_for_every_objective() {
    for objective in [Objective::Latency, Objective::Balance] {
        let model = failing_seed(true);
        let (outputs, history) = model.run(&params_without_room(objective), 6);
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
            reason.contains(
                "failing: 90.0% errors vs 0.0% in the rest of the cluster; held at a 0.3% probe \
                 until it answers 5 requests well (0.0 so far)"
            ),
            "{reason}"
        );
        assert!(outputs[5]
            .memory
            .endpoints
            .values()
            .any(|memory| memory.errors.is_held()));
        // The other 2 ms pods still take the traffic the latency objective gives them.
        if objective == Objective::Latency {
            let traffic = model.traffic(&history[5]);
            assert!(traffic[1] + traffic[2] >= 1300.0, "{traffic:?}");
        }
    }
}

#[test]
fn a_failing_pod_of_a_quiet_cluster_is_held() {
    // At 3 rps the failing pod cannot fail three requests in any one second, whatever share it
    // gets (and at times the whole cluster uses too little CPU to plan: idle, equal weights):
    // its errors are counted over the ticks instead, and the hold outlasts idle ticks.
    for objective in [Objective::Balance, Objective::Latency] {
        let mut model = failing_seed(true);
        model.rps = 3.0;
        let (outputs, history) = model.run(&params_without_room(objective), 8);
        let held = outputs
            .iter()
            .position(|output| output.weights[0].source == super::WeightSource::Failing);
        assert!(
            held.is_some_and(|tick| tick <= 3),
            "{objective:?}: held from tick {held:?}: {history:?}"
        );
        for (output, weights) in outputs.iter().zip(&history).skip(held.unwrap_or(0)) {
            let share = model.traffic(weights)[0] / model.rps;
            assert!(share <= 0.004, "{objective:?}: share {share}: {weights:?}");
            assert_eq!(output.weights[0].source, super::WeightSource::Failing);
        }
    }
    // An idle tick after the hold keeps it, and gives the others equal weights.
    let mut model = failing_seed(true);
    model.rps = 3.0;
    let (outputs, _) = model.run(&params_without_room(Objective::Latency), 8);
    let idle = outputs
        .iter()
        .rfind(|output| output.mode == ClusterMode::Idle)
        .expect("the quiet seed fleet has idle ticks");
    assert_eq!(idle.weights[0].source, super::WeightSource::Failing);
    let others = &idle.weights[1..];
    assert!(others
        .iter()
        .all(|weight| weight.weight == others[0].weight));
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
        .any(|memory| memory.errors.is_held()));
    // Released at once, then back up at most x2 per tick to a 2 ms pod's full weight.
    let last = history.last().cloned().unwrap_or_default();
    assert_eq!(last[0], 10_000, "{last:?}");
    assert!(history[1][0] <= 4 * history[0][0].max(1), "{history:?}");
}

#[test]
fn a_failing_pod_of_a_quiet_cluster_comes_back_when_it_recovers() {
    // At 100 rps a held pod's probe sees about 0.3 requests per second: no single tick has a
    // request per second of evidence, but ten-second ticks add up to enough requests.
    let params = params(Objective::Latency);
    let mut failing = failing_seed(true);
    failing.rps = 100.0;
    let (outputs, history) = failing.run(&params, 4);
    assert!(outputs[3]
        .memory
        .endpoints
        .values()
        .any(|memory| memory.errors.is_held()));
    let mut recovered = failing.clone();
    recovered.error_ratios[0] = 0.0;
    let memory = outputs[3].memory.clone();
    let (outputs, _) = recovered.run_from(&params, 4..12, memory, history.last().cloned());
    let released = outputs.iter().position(|output| {
        !output
            .memory
            .endpoints
            .values()
            .any(|memory| memory.errors.is_held())
    });
    assert!(
        released.is_some_and(|tick| tick <= 3),
        "released after {released:?} ticks"
    );
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
        ..params_without_room(Objective::Latency)
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
fn at_high_load_the_plan_settles_and_loads_fast_pods_harder() {
    // The seed fleet's full capacity: 4 cores / cost, summed (about 15,150 rps).
    let full: f64 = [(2.0, 3.0), (3.3, 2.0), (5.5, 9.0), (22.0, 1.0)]
        .iter()
        .map(|(millis, count)| count * 4.0 / (millis / 1000.0))
        .sum();
    let ceiling = Params::default().utilization_ceiling;
    for share in [0.69, 0.72, 0.8, 0.85, 0.9, 0.95] {
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
        if share < ceiling {
            // Below what the fleet takes at the ceiling: fast pods hotter, none above it.
            assert!(
                utilizations[0] > utilizations[14] + 0.01,
                "{share}: {utilizations:?}"
            );
            assert!(
                utilizations.iter().all(|u| *u <= ceiling + TOLERANCE),
                "{share}: {utilizations:?}"
            );
        } else {
            // Past it: in proportion to capacity, every pod alike.
            assert!(
                unevenness(&utilizations) <= 0.05,
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
