//! Offered load as a fraction of a fleet's capacity, and the time scale that keeps it drivable here.

use crate::fleet::Fleet;

/// Requests per second this machine (2 cores shared by the whole stack) drives through Envoy
/// with the latency still meaning something: measured 1,000-2,000 rps, the middle is used.
pub const MACHINE_RPS: f64 = 1500.0;

/// Time scales `--load` picks from when `--time-scale` is not given: round numbers, so runs at
/// different loads of one fleet share a scale and their milliseconds compare.
const NICE_SCALES: [f64; 10] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// Requests per second the fleet serves at 100% utilization: the sum over pods of cores over
/// the mean service time (tail included), after multiplying every service time by `time_scale`.
pub fn capacity_rps(fleet: &Fleet, time_scale: f64) -> f64 {
    fleet
        .pods()
        .iter()
        .map(|pod| {
            f64::from(pod.cores) * 1000.0 / (pod.service_time.overall_mean_ms() * time_scale)
        })
        .sum()
}

/// The smallest round time scale at which the fleet's whole capacity (100% load) is within
/// [`MACHINE_RPS`], so every `--load` up to 1 runs at the same scale on this machine.
pub fn default_time_scale(fleet: &Fleet) -> f64 {
    let unscaled = capacity_rps(fleet, 1.0);
    NICE_SCALES
        .iter()
        .copied()
        .find(|scale| unscaled / scale <= MACHINE_RPS)
        .unwrap_or(unscaled / MACHINE_RPS)
}

/// How the base rate of a run was set, for the report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OfferedLoad {
    /// Base arrival rate through Envoy, requests per second (before scenario load factors).
    pub rate: f64,
    /// Multiplier of every service time.
    pub time_scale: f64,
    /// Whether the time scale was chosen by `--load` (not given on the command line).
    pub time_scale_chosen: bool,
    /// `--load`, when the rate came from it.
    pub load: Option<f64>,
    /// Capacity of the scaled fleet, requests per second.
    pub capacity: f64,
    /// Highest load factor of the scenario (1 without load events).
    pub peak_factor: f64,
}

impl OfferedLoad {
    /// Resolves `--rate`, `--load` and `--time-scale` (at most one of rate and load).
    pub fn resolve(
        fleet: &Fleet,
        rate: Option<f64>,
        load: Option<f64>,
        time_scale: Option<f64>,
        peak_factor: f64,
    ) -> anyhow::Result<Self> {
        if let Some(scale) = time_scale {
            anyhow::ensure!(
                scale.is_finite() && scale > 0.0,
                "--time-scale must be > 0, got {scale}"
            );
        }
        let (rate, time_scale, chosen) = match (rate, load) {
            (Some(_), Some(_)) => anyhow::bail!("give --rate or --load, not both"),
            (_, Some(load)) => {
                anyhow::ensure!(
                    load.is_finite() && load > 0.0,
                    "--load must be a fraction of the capacity > 0, got {load}"
                );
                let scale = time_scale.unwrap_or_else(|| default_time_scale(fleet));
                (
                    load * capacity_rps(fleet, scale),
                    scale,
                    time_scale.is_none(),
                )
            }
            (rate, None) => (rate.unwrap_or(1000.0), time_scale.unwrap_or(1.0), false),
        };
        anyhow::ensure!(
            rate.is_finite() && rate > 0.0,
            "the offered rate must be > 0, got {rate}"
        );
        Ok(Self {
            rate,
            time_scale,
            time_scale_chosen: chosen,
            load,
            capacity: capacity_rps(fleet, time_scale),
            peak_factor,
        })
    }

    /// Highest rate of the run (base rate times the scenario's peak load factor).
    pub fn peak_rate(&self) -> f64 {
        self.rate * self.peak_factor
    }

    /// True when the peak rate is more than this machine drives through Envoy.
    pub fn beyond_machine(&self) -> bool {
        self.peak_rate() > MACHINE_RPS
    }

    /// One paragraph for the report header: [`OfferedLoad::summary`] and, when the peak rate
    /// is beyond this machine, a warning.
    pub fn describe(&self) -> String {
        let mut text = self.summary();
        if self.beyond_machine() {
            text.push_str(&format!(
                " **Warning: {:.0} rps is more than this machine drives through Envoy (about {MACHINE_RPS:.0} rps, 1,000-2,000 measured); the latency is the machine's, not the policy's. Raise --time-scale.**",
                self.peak_rate()
            ));
        }
        text
    }

    /// The rate, the capacity and the time scale in one sentence.
    pub fn summary(&self) -> String {
        let mut text = match self.load {
            Some(load) => format!(
                "Offered load {:.0}% of the fleet's capacity: {:.0} rps (capacity {:.0} rps = sum over pods of cores / mean service time, after the time scale)",
                load * 100.0,
                self.rate,
                self.capacity
            ),
            None => format!(
                "Rate {:.0} rps base ({:.0}% of the fleet's capacity of {:.0} rps)",
                self.rate,
                self.rate / self.capacity * 100.0,
                self.capacity
            ),
        };
        text.push_str(&format!(", service times x{}", self.time_scale));
        if self.time_scale_chosen {
            text.push_str(&format!(
                " (chosen by --load: the smallest round scale keeping 100% of the capacity within the {MACHINE_RPS:.0} rps this machine drives)"
            ));
        }
        if self.peak_factor != 1.0 {
            text.push_str(&format!(
                ", peak {:.0} rps with the scenario's x{} load",
                self.peak_rate(),
                self.peak_factor
            ));
        }
        text.push('.');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Fleet {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fleets/seed.yaml"))
                .unwrap();
        crate::fleet::parse_fleet(&text, "seed").unwrap()
    }

    #[test]
    fn capacity_sums_cores_over_mean_service_time() {
        let fleet = crate::fleet::parse_fleet(
            "namespace: lab\ngroups:\n  - { name: a, replicas: 2, cores: 4, service_time: { mean_ms: 2.0, sigma: 0.1 } }\n  - { name: b, replicas: 1, cores: 2, service_time: { mean_ms: 10.0, sigma: 0.1, tail: { probability: 0.1, factor: 2.0 } } }\n",
            "test",
        )
        .unwrap();
        // 2 x 4 / 2 ms = 4,000 rps; 2 / 11 ms (tail included) = 181.8 rps.
        let expected = 4000.0 + 2000.0 / 11.0;
        assert!((capacity_rps(&fleet, 1.0) - expected).abs() < 1e-6);
        assert!((capacity_rps(&fleet, 10.0) - expected / 10.0).abs() < 1e-6);
    }

    #[test]
    fn the_seed_fleet_runs_at_time_scale_ten() {
        let fleet = seed();
        let capacity = capacity_rps(&fleet, 1.0);
        assert!((14_000.0..16_000.0).contains(&capacity), "{capacity}");
        assert_eq!(default_time_scale(&fleet), 10.0);
        let offered = OfferedLoad::resolve(&fleet, None, Some(0.5), None, 1.0).unwrap();
        assert!((offered.rate - capacity / 20.0).abs() < 1e-6);
        assert!(offered.time_scale_chosen && !offered.beyond_machine());
        assert!(
            offered.describe().contains("Offered load 50%"),
            "{}",
            offered.describe()
        );
    }

    #[test]
    fn rate_and_load_exclude_each_other_and_a_fast_rate_is_flagged() {
        let fleet = seed();
        assert!(OfferedLoad::resolve(&fleet, Some(100.0), Some(0.5), None, 1.0).is_err());
        assert!(OfferedLoad::resolve(&fleet, None, Some(0.0), None, 1.0).is_err());
        let plain = OfferedLoad::resolve(&fleet, None, None, None, 1.0).unwrap();
        assert_eq!((plain.rate, plain.time_scale), (1000.0, 1.0));
        let fast = OfferedLoad::resolve(&fleet, None, Some(0.7), Some(1.0), 1.0).unwrap();
        assert!(!fast.time_scale_chosen && fast.beyond_machine());
        assert!(fast.describe().contains("Warning"), "{}", fast.describe());
        let rising = OfferedLoad::resolve(&fleet, None, Some(0.9), None, 3.0).unwrap();
        assert!(rising.beyond_machine());
    }
}
