//! Seeded simulations of the real weighting engine (`EngineWeights`): the product's claims.

mod common;

use adaptive_eds::weighting::{Algorithm, Objective, Params};
use common::crate_file;
use lab::fleet::{load_fleet, load_scenario, Fleet, Scenario};
use lab::sim::{simulate, EngineWeights, EqualWeights, Policy, SimConfig, SimReport};
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

fn config(policy: Policy, seconds: u64) -> SimConfig {
    SimConfig {
        policy,
        requests_per_second: 1000.0,
        duration: Duration::from_secs(seconds),
        seed: 11,
        metrics_delay: Duration::from_secs(1),
        ..SimConfig::default()
    }
}

fn engine(fleet: &Fleet, algorithm: Algorithm, objective: Objective) -> EngineWeights {
    let params = Params {
        algorithm,
        objective,
        ..Params::default()
    };
    EngineWeights::new(fleet.pods().len(), params, Duration::from_secs(1))
}

fn least_request_p99(fleet: &Fleet, seconds: u64) -> f64 {
    let report = simulate(
        fleet,
        &steady(),
        &config(Policy::LeastRequest, seconds),
        &mut EqualWeights,
        "none",
    )
    .unwrap();
    report.latency.p99_ms
}

fn capacity_latency_run(fleet: &Fleet, seconds: u64) -> SimReport {
    let mut provider = engine(fleet, Algorithm::Capacity, Objective::Latency);
    simulate(
        fleet,
        &steady(),
        &config(Policy::LeastRequest, seconds),
        &mut provider,
        "capacity_latency",
    )
    .unwrap()
}

/// The product claim: capacity + latency at least halves LEAST_REQUEST's p99 on the seed fleet.
///
/// Measured 2026-11-24 (seed 11, 1000 rps, 60 s, metrics delay 1 s): LEAST_REQUEST p99
/// 27.4 ms, capacity+latency 6.7 ms (0.24x) with the default total probe budget of 0.2%
/// (`lab simulate --fleet lab/fleets/seed.yaml --weights none,capacity_latency --seed 11
/// --metrics-delay 1s`).
#[test]
fn capacity_latency_halves_least_request_p99() {
    let fleet = seed_fleet();
    let baseline = least_request_p99(&fleet, 60);
    let adaptive = capacity_latency_run(&fleet, 60).latency.p99_ms;
    assert!(
        adaptive * 2.0 <= baseline,
        "capacity+latency p99 {adaptive:.2} ms vs least_request {baseline:.2} ms"
    );
}

/// A regression guard below the claim: capacity + latency clearly beats LEAST_REQUEST's p99.
#[test]
fn capacity_latency_beats_least_request_p99() {
    let fleet = seed_fleet();
    let baseline = least_request_p99(&fleet, 60);
    let adaptive = capacity_latency_run(&fleet, 60).latency.p99_ms;
    assert!(
        adaptive * 1.4 <= baseline,
        "capacity+latency p99 {adaptive:.2} ms vs least_request {baseline:.2} ms"
    );
}

/// Largest relative change of any weight between consecutive ticks in `history[from..]`.
fn largest_step(history: &[Vec<u32>], from: usize) -> f64 {
    history[from..]
        .windows(2)
        .flat_map(|pair| {
            pair[0].iter().zip(&pair[1]).map(|(&before, &after)| {
                (f64::from(after) - f64::from(before)).abs() / f64::from(before.max(1))
            })
        })
        .fold(0.0, f64::max)
}

/// Weights settle: over 200 ticks, after a 50-tick warm-up no weight moves by more than 20%
/// in one tick, for both `capacity` objectives.
#[test]
fn weights_settle_over_200_ticks() {
    let fleet = seed_fleet();
    let modes = [
        (Algorithm::Capacity, Objective::Balance),
        (Algorithm::Capacity, Objective::Latency),
    ];
    for (algorithm, objective) in modes {
        let mut provider = engine(&fleet, algorithm, objective);
        simulate(
            &fleet,
            &steady(),
            &config(Policy::LeastRequest, 202),
            &mut provider,
            "engine",
        )
        .unwrap();
        let history = provider.history();
        assert!(history.len() >= 200, "{} ticks", history.len());
        let step = largest_step(history, 50);
        eprintln!("{algorithm:?}/{objective:?}: largest step {:.3}", step);
        assert!(
            step <= 0.2,
            "{algorithm:?}/{objective:?}: a weight moved {:.0}% in one tick after settling",
            step * 100.0
        );
    }
}

/// `distance` (the published operator's algorithm) does not settle on the seed fleet.
///
/// Ignored: measured 2026-11-24 (seed 11, 1000 rps, 202 ticks): after 50 ticks a weight still
/// moved by 152% in one tick; the fib27 weights wander between 100 and ~460 because each
/// tick moves every weight against its CPU's distance from the mean, with no notion of cost
/// per request, so the fleet never reaches a fixed point. Kept as a baseline, not a product claim.
#[test]
#[ignore = "distance oscillates (152% steps after 50 ticks, see doc comment)"]
fn distance_settles_over_200_ticks() {
    let fleet = seed_fleet();
    let mut provider = engine(&fleet, Algorithm::Distance, Objective::Latency);
    simulate(
        &fleet,
        &steady(),
        &config(Policy::LeastRequest, 202),
        &mut provider,
        "distance",
    )
    .unwrap();
    let step = largest_step(provider.history(), 50);
    assert!(
        step <= 0.2,
        "a weight moved {:.0}% in one tick",
        step * 100.0
    );
}

/// Share of traffic each endpoint gets from one tick's weights.
fn shares(weights: &[u32]) -> Vec<f64> {
    let total: f64 = weights.iter().map(|weight| f64::from(*weight)).sum();
    weights
        .iter()
        .map(|weight| f64::from(*weight) / total)
        .collect()
}

/// The weights `capacity` with `objective` served after each tick of `seconds` of a seed-fleet
/// scenario from `lab/scenarios/` (index t - 1 holds the weights set at t seconds).
fn scenario_weights(file: &str, objective: Objective, seconds: u64) -> Vec<Vec<u32>> {
    let fleet = seed_fleet();
    let scenario = load_scenario(&crate_file(&format!("scenarios/{file}")), &fleet).unwrap();
    let mut provider = engine(&fleet, Algorithm::Capacity, objective);
    simulate(
        &fleet,
        &scenario,
        &config(Policy::LeastRequest, seconds),
        &mut provider,
        "engine",
    )
    .unwrap();
    provider.history().to_vec()
}

/// The time scenario: fib25-0 (endpoint 0, filled first by `latency`) turns 4x slower at 30 s.
/// Within 3 ticks of the slowdown it is moved off, for both objectives, and the weights stay
/// put afterwards (no oscillation).
///
/// Measured 2026-11-24 (seed 11, metrics delay 1 s): `latency` share of fib25-0 33.2% before,
/// 0.01% three ticks after (1.6% when falls were held to the x2 step limit); `balance` 13.5%
/// before, 3.6% after (0.27x for a 4x cost).
#[test]
fn a_pod_that_turns_slow_is_moved_off_within_three_ticks() {
    for objective in [Objective::Latency, Objective::Balance] {
        let history = &scenario_weights("node-slows.yaml", objective, 60);
        // history[t - 1] holds the weights set at t seconds.
        let before = shares(&history[29])[0];
        let after = shares(&history[32])[0];
        eprintln!("{objective:?}: share before {before:.4}, 3 ticks after {after:.4}");
        match objective {
            Objective::Latency => assert!(
                before > 0.2 && after < 0.01,
                "latency: fib25-0 share {before:.3} before, {after:.3} three ticks after"
            ),
            Objective::Balance => assert!(
                (after / before - 0.25).abs() < 0.25 * 0.3,
                "balance: fib25-0 share {before:.3} before, {after:.3} three ticks after"
            ),
        }
        let step = largest_step(history, 40);
        assert!(
            step <= 0.2,
            "{objective:?}: a weight moved {:.0}% in one tick after the slowdown settled",
            step * 100.0
        );
    }
}

/// A pod that recovers is trusted with traffic again, through its probes alone: fib25-0 turns 4x
/// slower at 30 s and recovers at 60 s; with `latency` and the default probe budget it is back
/// above 20% of the traffic within 15 minutes.
///
/// Measured 2026-11-24 (seed 11): back at 693 s, 633 s after recovering, with the default 0.2%
/// probes (0.17 rps per probed pod; a pod's cost average follows ~40 of its requests); 211 s with
/// `probe_share: 0.01`. This is the price of the smaller default (see README, `probe_share`).
#[test]
fn a_recovered_pod_wins_its_traffic_back_through_probes() {
    let history = scenario_weights("node-recovers.yaml", Objective::Latency, 960);
    let out = shares(&history[58])[0];
    let back = (60..history.len()).find(|tick| shares(&history[*tick])[0] > 0.2);
    eprintln!(
        "share while slow {out:.4}, back above 20% at {:?} s",
        back.map(|tick| tick + 1)
    );
    assert!(
        out < 0.01,
        "fib25-0 kept {out:.3} of the traffic while slow"
    );
    assert!(
        back.is_some_and(|tick| tick < 60 + 900),
        "fib25-0 not back above 20% within 900 s of recovering"
    );
}
