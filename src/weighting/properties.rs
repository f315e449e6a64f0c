//! Property tests: bounds, sample hygiene and monotonic weights for any input.

use std::time::Duration;

use proptest::{collection::vec, prelude::*};

use super::{
    compute, testing::endpoints, Algorithm, ClusterMemory, EndpointLoad, Objective, Params, Reading,
};

/// Mostly plausible values, sometimes NaN, infinite or negative.
fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        8 => 0.0..8.0f64,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => -5.0..-0.001f64,
    ]
}

fn optional_reading() -> impl Strategy<Value = Option<Reading>> {
    proptest::option::of((value(), 0u64..400).prop_map(|(value, age)| Reading {
        value,
        age: Duration::from_secs(age),
    }))
}

fn load() -> impl Strategy<Value = EndpointLoad> {
    (
        optional_reading(),
        optional_reading(),
        optional_reading(),
        optional_reading(),
    )
        .prop_map(|(cpu, rps, cpu_limit, latency)| EndpointLoad {
            cpu,
            rps,
            cpu_limit,
            latency,
            ..EndpointLoad::default()
        })
}

fn params() -> impl Strategy<Value = Params> {
    (
        prop_oneof![Just(Algorithm::Distance), Just(Algorithm::Capacity)],
        prop_oneof![Just(Objective::Latency), Just(Objective::Balance)],
        proptest::option::of(1u32..50),
        proptest::option::of(50u32..20_000),
        prop_oneof![Just(0u64), Just(60)],
        1.0..4.0f64,
    )
        .prop_map(
            |(algorithm, objective, min_weight, max_weight, slow_start, max_step)| Params {
                algorithm,
                objective,
                min_weight,
                max_weight,
                slow_start: Duration::from_secs(slow_start),
                max_step,
                ..Params::default()
            },
        )
}

fn invalid(reading: Option<Reading>) -> usize {
    usize::from(reading.is_some_and(|reading| !(reading.value.is_finite() && reading.value >= 0.0)))
}

proptest! {
    #[test]
    fn weights_are_bounded_integers_and_invalid_samples_are_counted(
        ticks in vec(vec(load(), 0..20), 1..4),
        params in params(),
    ) {
        let mut memory = ClusterMemory::default();
        for (tick, loads) in ticks.iter().enumerate() {
            let fleet = endpoints(loads.len());
            let now = Duration::from_secs(10 * tick as u64);
            let output = compute(&fleet, loads, &memory, &params, now);
            prop_assert_eq!(output.weights.len(), fleet.len());
            for weight in &output.weights {
                prop_assert!(weight.weight >= 1);
                prop_assert!(weight.weight >= params.min_weight().max(1), "{:?}", weight);
                prop_assert!(weight.weight <= params.max_weight().max(params.min_weight()));
            }
            let sum: u64 = output.weights.iter().map(|weight| u64::from(weight.weight)).sum();
            prop_assert!(sum < 1 << 32);
            let expected: usize = loads
                .iter()
                .map(|load| invalid(load.cpu) + invalid(load.rps) + invalid(load.cpu_limit) + invalid(load.latency))
                .sum();
            prop_assert_eq!(output.dropped_samples, expected);
            memory = output.memory;
        }
    }

    #[test]
    fn a_cheaper_endpoint_never_weighs_less(
        endpoints_costs in vec((1u32..50, 1.0..100.0f64), 2..20),
        report_rps in any::<bool>(),
        balance in any::<bool>(),
    ) {
        let params = Params {
            objective: if balance { Objective::Balance } else { Objective::Latency },
            ..Params::default()
        };
        // Without request rates, costs are inferred from CPU under equal shares: equal traffic.
        let loads: Vec<EndpointLoad> = endpoints_costs
            .iter()
            .map(|(cost, rps)| {
                let rps = if report_rps { *rps } else { 50.0 };
                let cpu = f64::from(*cost) / 1000.0 * rps;
                EndpointLoad {
                    cpu: Some(Reading { value: cpu, age: Duration::from_secs(1) }),
                    rps: report_rps.then_some(Reading { value: rps, age: Duration::from_secs(1) }),
                    cpu_limit: Some(Reading { value: 4.0, age: Duration::from_secs(1) }),
                    // An error signal that reads no errors: a cheap endpoint is then believed
                    // (without one, a far cheaper endpoint is capped as suspect, tested apart).
                    errors: Some(Reading { value: 0.0, age: Duration::from_secs(1) }),
                    ..EndpointLoad::default()
                }
            })
            .collect();
        let fleet = endpoints(loads.len());
        let output = compute(&fleet, &loads, &ClusterMemory::default(), &params, Duration::ZERO);
        for (cheap, (cheap_cost, _)) in output.weights.iter().zip(&endpoints_costs) {
            for (costly, (costly_cost, _)) in output.weights.iter().zip(&endpoints_costs) {
                if cheap_cost < costly_cost {
                    prop_assert!(
                        cheap.weight >= costly.weight,
                        "{} ms -> {}, {} ms -> {}", cheap_cost, cheap.weight, costly_cost, costly.weight
                    );
                }
            }
        }
    }

    #[test]
    fn locality_sums_stay_below_two_to_the_32_whatever_the_bounds(
        loads in vec(load(), 1..20),
        zones in vec(0u8..3, 20),
        min_weight in prop_oneof![Just(1u32), Just(u32::MAX / 3), Just(u32::MAX)],
        balance in any::<bool>(),
    ) {
        let params = Params {
            objective: if balance { Objective::Balance } else { Objective::Latency },
            min_weight: Some(min_weight),
            max_weight: Some(u32::MAX),
            ..Params::default()
        };
        let mut fleet = endpoints(loads.len());
        for (endpoint, zone) in fleet.iter_mut().zip(&zones) {
            endpoint.locality.zone = zone.to_string();
        }
        let output = compute(&fleet, &loads, &ClusterMemory::default(), &params, Duration::ZERO);
        for zone in 0u8..3 {
            let sum: u64 = output
                .weights
                .iter()
                .zip(&fleet)
                .filter(|(_, endpoint)| endpoint.locality.zone == zone.to_string())
                .map(|(weight, _)| u64::from(weight.weight))
                .sum();
            prop_assert!(sum < 1 << 32, "zone {}: {}", zone, sum);
        }
        prop_assert!(output.weights.iter().all(|weight| weight.weight >= 1));
    }
}
