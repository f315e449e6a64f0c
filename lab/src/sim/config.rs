//! Settings of one simulation run.

use super::balancer::{LeastRequestSettings, Policy};
use super::cswrr::CswrrSettings;
use super::scrape::Scrape;
use std::time::Duration;

/// Everything that shapes a run besides the fleet, the scenario and the weight provider.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Balancer every client runs.
    pub policy: Policy,
    /// Number of independent clients (Envoys); each knows only its own active requests.
    pub clients: u32,
    /// Base offered load, requests per second (Poisson), before scenario load factors.
    pub requests_per_second: f64,
    /// Simulated time.
    pub duration: Duration,
    /// Start of the run left out of the overall latency figures (weights converge), as in `lab bench`.
    pub warmup: Duration,
    /// Seed of the random generator: same seed, same result.
    pub seed: u64,
    /// How often the weight provider is asked for weights.
    pub tick: Duration,
    /// Age of the samples the weight provider sees.
    pub metrics_delay: Duration,
    /// A scraped pipeline: samples are rates over a window of scrapes (queried `metrics_delay`
    /// in the past); `None`: each sample is the rate over the last tick.
    pub scrape: Option<Scrape>,
    /// Window of the ORCA utilization and rps figures the endpoints report.
    pub orca_window: Duration,
    /// Length of the windows of the p99-over-time series.
    pub report_window: Duration,
    /// LEAST_REQUEST settings.
    pub least_request: LeastRequestSettings,
    /// CSWRR settings.
    pub cswrr: CswrrSettings,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            policy: Policy::RoundRobin,
            clients: 10,
            requests_per_second: 1000.0,
            duration: Duration::from_secs(60),
            warmup: Duration::ZERO,
            seed: 1,
            tick: Duration::from_secs(1),
            metrics_delay: Duration::ZERO,
            scrape: None,
            orca_window: Duration::from_secs(1),
            report_window: Duration::from_secs(5),
            least_request: LeastRequestSettings::default(),
            cswrr: CswrrSettings::default(),
        }
    }
}

/// Why a configuration cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting is out of range.
    #[error("invalid simulation setting: {0}")]
    Invalid(&'static str),
}

impl SimConfig {
    /// Checks ranges so the run cannot divide by zero or loop forever.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks = [
            (self.clients == 0, "clients must be at least 1"),
            (
                !(self.requests_per_second.is_finite() && self.requests_per_second > 0.0),
                "requests_per_second must be > 0",
            ),
            (self.duration.is_zero(), "duration must be > 0"),
            (
                self.warmup >= self.duration,
                "warmup must be shorter than duration",
            ),
            (self.tick.is_zero(), "tick must be > 0"),
            (self.orca_window.is_zero(), "orca_window must be > 0"),
            (self.report_window.is_zero(), "report_window must be > 0"),
            (
                self.scrape.is_some_and(|scrape| {
                    scrape.interval.is_zero() || scrape.rate_window < scrape.interval * 2
                }),
                "scrape interval must be > 0 and the rate window at least two intervals",
            ),
            (
                self.cswrr.weight_update_period.is_zero(),
                "weight_update_period must be > 0",
            ),
        ];
        match checks.iter().find(|(failed, _)| *failed) {
            Some((_, message)) => Err(ConfigError::Invalid(message)),
            None => Ok(()),
        }
    }
}
