//! Client-side weighted round robin: per-client endpoint weights from ORCA reports.

use std::time::Duration;

/// Settings of Envoy's client_side_weighted_round_robin policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CswrrSettings {
    /// How often a client turns its stored reports into scheduler weights (Envoy default 1 s).
    pub weight_update_period: Duration,
    /// How long an endpoint must report before its weight is used (Envoy default 10 s).
    pub blackout_period: Duration,
    /// A weight is dropped when no report came for this long (Envoy default 3 min).
    pub weight_expiration_period: Duration,
    /// Utilization added per error ratio: weight = qps / (utilization + eps / qps * penalty)
    /// (Envoy default 1.0). Only matters when endpoints report `eps`.
    pub error_utilization_penalty: f64,
}

impl Default for CswrrSettings {
    fn default() -> Self {
        Self {
            weight_update_period: Duration::from_secs(1),
            blackout_period: Duration::from_secs(10),
            weight_expiration_period: Duration::from_secs(180),
            error_utilization_penalty: 1.0,
        }
    }
}

/// An ORCA load report as carried by one response.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct OrcaReport {
    /// `cpu_utilization`: busy fraction of the endpoint's cores.
    pub utilization: f64,
    /// `rps_fractional`: requests per second served by the endpoint (errors included).
    pub requests_per_second: f64,
    /// `eps`: errors per second, 0 when the endpoint does not report it.
    pub errors_per_second: f64,
}

#[derive(Debug, Clone, Copy, Default)]
struct HostWeight {
    weight: f64,
    non_empty_since: Option<u64>,
    last_update: u64,
}

/// What one client has learned from the ORCA reports of each endpoint.
#[derive(Debug, Clone)]
pub struct OrcaWeights {
    hosts: Vec<HostWeight>,
}

impl OrcaWeights {
    /// Starts with no weight for any of `count` endpoints.
    pub fn new(count: usize) -> Self {
        Self {
            hosts: vec![HostWeight::default(); count],
        }
    }

    /// Takes one report from `endpoint` at `now_ns`: weight = rps / (utilization + eps / rps x
    /// `penalty`), as Envoy computes it.
    pub fn on_report(&mut self, endpoint: usize, report: OrcaReport, now_ns: u64, penalty: f64) {
        let host = &mut self.hosts[endpoint];
        if report.utilization > 0.0 && report.requests_per_second > 0.0 {
            let utilization = report.utilization
                + report.errors_per_second / report.requests_per_second * penalty;
            host.weight = report.requests_per_second / utilization;
            host.non_empty_since.get_or_insert(now_ns);
            host.last_update = now_ns;
        } else {
            // Envoy treats a zero weight as no weight and restarts the blackout.
            host.weight = 0.0;
            host.non_empty_since = None;
        }
    }

    /// Weights for the round-robin scheduler at `now_ns`: hosts without a usable weight
    /// (in blackout, expired or never reported) get the median of the usable ones;
    /// with no usable weight at all, every host gets 1.
    pub fn scheduler_weights(&mut self, now_ns: u64, settings: &CswrrSettings) -> Vec<u32> {
        let blackout = settings.blackout_period.as_nanos() as u64;
        let expiration = settings.weight_expiration_period.as_nanos() as u64;
        let usable: Vec<Option<f64>> = self
            .hosts
            .iter_mut()
            .map(|host| {
                if host.non_empty_since.is_some()
                    && now_ns.saturating_sub(host.last_update) >= expiration
                {
                    host.non_empty_since = None;
                }
                match host.non_empty_since {
                    Some(since) if now_ns.saturating_sub(since) >= blackout => Some(host.weight),
                    _ => None,
                }
            })
            .collect();
        let as_weight = |weight: f64| weight.round().clamp(1.0, f64::from(u32::MAX)) as u32;
        let mut valid: Vec<u32> = usable
            .iter()
            .flatten()
            .map(|&weight| as_weight(weight))
            .collect();
        let default_weight = median(&mut valid);
        usable
            .iter()
            .map(|weight| weight.map_or(default_weight, as_weight))
            .collect()
    }
}

/// Envoy's default weight for hosts without one: the median of the valid weights (the
/// mean of the two middle ones for an even count), or 1 when there are none.
fn median(weights: &mut [u32]) -> u32 {
    if weights.is_empty() {
        return 1;
    }
    weights.sort_unstable();
    let middle = weights.len() / 2;
    if weights.len() % 2 == 1 {
        weights[middle]
    } else {
        ((u64::from(weights[middle - 1]) + u64::from(weights[middle])) / 2) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_wait_for_blackout_then_use_rps_per_utilization() {
        let settings = CswrrSettings::default();
        let mut weights = OrcaWeights::new(3);
        let second = 1_000_000_000;
        weights.on_report(
            0,
            OrcaReport {
                utilization: 0.5,
                requests_per_second: 100.0,
                errors_per_second: 0.0,
            },
            0,
            1.0,
        );
        weights.on_report(
            1,
            OrcaReport {
                utilization: 0.25,
                requests_per_second: 100.0,
                errors_per_second: 0.0,
            },
            0,
            1.0,
        );
        assert_eq!(weights.scheduler_weights(5 * second, &settings), [1, 1, 1]);
        let after_blackout = weights.scheduler_weights(10 * second, &settings);
        // Endpoint 2 never reported: it gets the median of 200 and 400.
        assert_eq!(after_blackout, [200, 400, 300]);
    }

    #[test]
    fn reported_errors_are_a_utilization_penalty() {
        let mut weights = OrcaWeights::new(1);
        // 90 of 100 rps fail: utilization 0.01 + 0.9 x 1.0, weight 100 / 0.91.
        let report = OrcaReport {
            utilization: 0.01,
            requests_per_second: 100.0,
            errors_per_second: 90.0,
        };
        weights.on_report(0, report, 0, 1.0);
        let settings = CswrrSettings::default();
        assert_eq!(weights.scheduler_weights(10_000_000_000, &settings), [110]);
    }
}
