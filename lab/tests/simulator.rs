//! Integration tests of the discrete-event simulator: determinism, queueing sanity, policies.

mod common;

use common::crate_file;
use lab::fleet::{load_fleet, load_scenario, parse_fleet, Fleet, Scenario};
use lab::sim::{
    simulate, EqualWeights, KnownCapacity, Policy, SimConfig, SimReport, WeightProvider,
};
use std::time::Duration;

fn seed_fleet() -> Fleet {
    load_fleet(&crate_file("fleets/seed.yaml")).unwrap()
}

fn steady() -> Scenario {
    Scenario {
        name: "steady".to_owned(),
        events: Vec::new(),
    }
}

fn config(policy: Policy, requests_per_second: f64, seconds: u64, seed: u64) -> SimConfig {
    SimConfig {
        policy,
        requests_per_second,
        duration: Duration::from_secs(seconds),
        seed,
        ..SimConfig::default()
    }
}

fn run(fleet: &Fleet, config: &SimConfig, provider: &mut dyn WeightProvider) -> SimReport {
    simulate(fleet, &steady(), config, provider, "test").unwrap()
}

fn known_capacity(fleet: &Fleet) -> KnownCapacity {
    KnownCapacity::new(
        fleet
            .pods()
            .iter()
            .map(|pod| (pod.cores, pod.service_time.overall_mean_ms())),
    )
}

#[test]
fn same_seed_gives_the_same_result() {
    let fleet = seed_fleet();
    for policy in [Policy::RoundRobin, Policy::LeastRequest, Policy::Cswrr] {
        let config = config(policy, 1000.0, 20, 42);
        let first = run(&fleet, &config, &mut EqualWeights);
        let second = run(&fleet, &config, &mut EqualWeights);
        assert_eq!(first, second, "{policy:?}");
        let other = run(&fleet, &SimConfig { seed: 43, ..config }, &mut EqualWeights);
        assert_ne!(first, other, "{policy:?}: another seed should differ");
    }
}

#[test]
fn utilization_matches_offered_load_times_mean_over_cores() {
    let fleet = seed_fleet();
    let report = run(
        &fleet,
        &config(Policy::RoundRobin, 1000.0, 120, 7),
        &mut EqualWeights,
    );
    let per_endpoint = 1000.0 / fleet.pods().len() as f64;
    for endpoint in &report.endpoints {
        let expected = per_endpoint * endpoint.mean_ms / 1000.0 / f64::from(endpoint.cores);
        let error = (endpoint.utilization - expected).abs() / expected;
        assert!(
            error < 0.05,
            "{}: {} vs {expected}",
            endpoint.name,
            endpoint.utilization
        );
    }
}

#[test]
fn single_server_mean_latency_matches_pollaczek_khinchine() {
    let text = "namespace: t\ngroups:\n  - name: q\n    replicas: 1\n    cores: 1\n    service_time: { mean_ms: 10.0, sigma: 0.5 }\n";
    let fleet = parse_fleet(text, "test").unwrap();
    let arrival_rate = 50.0;
    let report = run(
        &fleet,
        &config(Policy::RoundRobin, arrival_rate, 2000, 3),
        &mut EqualWeights,
    );
    // M/G/1: W = E[S] + lambda E[S^2] / (2 (1 - rho)), lognormal E[S^2] = E[S]^2 exp(sigma^2).
    let mean_service: f64 = 0.010;
    let second_moment = mean_service.powi(2) * 0.25f64.exp();
    let rho = arrival_rate * mean_service;
    let expected_ms = (mean_service + arrival_rate * second_moment / (2.0 * (1.0 - rho))) * 1000.0;
    let measured_ms = report.latency.mean_ms;
    assert!(
        (measured_ms - expected_ms).abs() / expected_ms < 0.05,
        "mean {measured_ms} ms vs {expected_ms} ms"
    );
    assert!((report.endpoints[0].utilization - rho).abs() / rho < 0.05);
}

#[test]
fn least_request_beats_round_robin_p99_on_the_seed_fleet() {
    let fleet = seed_fleet();
    for seed in [1, 2, 3] {
        let round_robin = run(
            &fleet,
            &config(Policy::RoundRobin, 2000.0, 60, seed),
            &mut EqualWeights,
        );
        let least_request = run(
            &fleet,
            &config(Policy::LeastRequest, 2000.0, 60, seed),
            &mut EqualWeights,
        );
        assert!(
            least_request.latency.p99_ms < 0.95 * round_robin.latency.p99_ms,
            "seed {seed}: least_request {} ms vs round_robin {} ms",
            least_request.latency.p99_ms,
            round_robin.latency.p99_ms
        );
    }
}

#[test]
fn weights_from_true_speeds_beat_least_request_p99_on_the_seed_fleet() {
    let fleet = seed_fleet();
    for seed in [1, 2, 3] {
        let config = config(Policy::LeastRequest, 1000.0, 60, seed);
        let plain = run(&fleet, &config, &mut EqualWeights);
        let weighted = run(&fleet, &config, &mut known_capacity(&fleet));
        assert!(
            weighted.latency.p99_ms < 0.85 * plain.latency.p99_ms,
            "seed {seed}: weighted {} ms vs least_request {} ms",
            weighted.latency.p99_ms,
            plain.latency.p99_ms
        );
    }
}

#[test]
fn cswrr_shifts_load_to_fast_endpoints_after_the_blackout() {
    let fleet = seed_fleet();
    let report = run(
        &fleet,
        &config(Policy::Cswrr, 1000.0, 60, 5),
        &mut EqualWeights,
    );
    let share = |name: &str| {
        report
            .endpoints
            .iter()
            .find(|endpoint| endpoint.name == name)
            .unwrap()
            .share
    };
    assert!(share("fib25-0") > 2.0 * share("fib29-0"), "{report:?}");
    let first_window = report.windows[0].p99_ms;
    let last_window = report.windows[report.windows.len() - 1].p99_ms;
    assert!(
        last_window < first_window,
        "p99 {first_window} ms before weights, {last_window} ms after"
    );
}

#[test]
fn scenarios_change_load_and_speed() {
    let fleet = seed_fleet();
    let config = config(Policy::RoundRobin, 500.0, 60, 9);
    let rises = load_scenario(&crate_file("scenarios/load-rises.yaml"), &fleet).unwrap();
    let report = simulate(&fleet, &rises, &config, &mut EqualWeights, "none").unwrap();
    let before = report.windows[..6]
        .iter()
        .map(|window| window.count)
        .sum::<u64>();
    let after = report.windows[6..]
        .iter()
        .map(|window| window.count)
        .sum::<u64>();
    let ratio = after as f64 / before as f64;
    assert!((ratio - 3.0).abs() < 0.15, "load ratio {ratio}");

    let slows = load_scenario(&crate_file("scenarios/node-slows.yaml"), &fleet).unwrap();
    let slowed = simulate(&fleet, &slows, &config, &mut EqualWeights, "none").unwrap();
    let steady = run(&fleet, &config, &mut EqualWeights);
    // fib25-0 is 4x slower for half the run: utilization grows by about (1 + 4) / 2 = 2.5x.
    let growth = slowed.endpoints[0].utilization / steady.endpoints[0].utilization;
    assert!((growth - 2.5).abs() < 0.2, "utilization growth {growth}");
}

#[test]
fn invalid_settings_are_rejected() {
    let fleet = seed_fleet();
    let bad = SimConfig {
        clients: 0,
        ..SimConfig::default()
    };
    assert!(simulate(&fleet, &steady(), &bad, &mut EqualWeights, "none").is_err());
}
