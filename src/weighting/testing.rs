//! Test helpers: endpoints, readings, and a tiny deterministic fleet model to run ticks against.

use std::{net::IpAddr, time::Duration};

use super::{compute, ClusterMemory, EndpointLoad, Output, Params, Reading};
use crate::model::{Endpoint, HealthStatus, Locality};

/// A distinct endpoint per index, all in the default locality.
pub(crate) fn endpoint(index: usize) -> Endpoint {
    let address: IpAddr = format!("10.0.{}.{}", index / 250, index % 250 + 1)
        .parse()
        .expect("a valid address");
    Endpoint {
        address,
        port: 8080,
        configured_weight: None,
        pod: Some(format!("pod-{index}")),
        node: None,
        locality: Locality::default(),
        health: HealthStatus::Healthy,
    }
}

/// `count` distinct endpoints.
pub(crate) fn endpoints(count: usize) -> Vec<Endpoint> {
    (0..count).map(endpoint).collect()
}

/// A reading `age_seconds` old.
pub(crate) fn reading(value: f64, age_seconds: u64) -> Option<Reading> {
    Some(Reading {
        value,
        age: Duration::from_secs(age_seconds),
    })
}

/// A load with only CPU.
pub(crate) fn cpu_load(cpu: f64, age_seconds: u64) -> EndpointLoad {
    EndpointLoad {
        cpu: reading(cpu, age_seconds),
        ..EndpointLoad::default()
    }
}

/// CPU seconds of a request answered with an error: a 503 after 0.2 ms.
pub(crate) const FAILURE_COST: f64 = 0.0002;

/// A fleet whose endpoints have a true cost per request and a number of cores, serving `rps`
/// requests per second split in proportion to the weights (as Envoy's weighted balancing does).
#[derive(Clone, Debug)]
pub(crate) struct Model {
    /// CPU seconds per request of each endpoint.
    pub costs: Vec<f64>,
    /// Cores (and CPU limit) of each endpoint.
    pub cores: Vec<f64>,
    /// Total requests per second.
    pub rps: f64,
    /// Whether the metrics report request rates (else only CPU).
    pub report_rps: bool,
    /// Share of each endpoint's requests answered with an error (fast: no CPU).
    pub error_ratios: Vec<f64>,
    /// Whether the metrics report error rates (with request rates only).
    pub report_errors: bool,
    /// Whether the metrics report CPU; else requests in flight (as Envoy's load reports do).
    pub report_cpu: bool,
}

impl Model {
    /// A fleet of `(cost in milliseconds, count)` groups with `cores` each.
    pub fn fleet(groups: &[(f64, usize)], cores: f64, rps: f64, report_rps: bool) -> Self {
        let costs: Vec<f64> = groups
            .iter()
            .flat_map(|(millis, count)| std::iter::repeat_n(millis / 1000.0, *count))
            .collect();
        let cores = vec![cores; costs.len()];
        let error_ratios = vec![0.0; costs.len()];
        Self {
            costs,
            cores,
            rps,
            report_rps,
            error_ratios,
            report_errors: true,
            report_cpu: true,
        }
    }

    /// Requests per second each endpoint receives under these weights.
    pub fn traffic(&self, weights: &[u32]) -> Vec<f64> {
        let total: f64 = weights.iter().map(|weight| f64::from(*weight)).sum();
        weights
            .iter()
            .map(|weight| self.rps * f64::from(*weight) / total)
            .collect()
    }

    /// CPU / cores of each endpoint under these weights (capped at 1).
    pub fn utilizations(&self, weights: &[u32]) -> Vec<f64> {
        self.traffic(weights)
            .iter()
            .zip(&self.costs)
            .zip(&self.cores)
            .map(|((rps, cost), cores)| (rps * cost).min(*cores) / cores)
            .collect()
    }

    /// Fresh samples for these weights.
    pub fn loads(&self, weights: &[u32]) -> Vec<EndpointLoad> {
        self.traffic(weights)
            .iter()
            .zip(&self.costs)
            .zip(&self.cores)
            .zip(&self.error_ratios)
            .map(|(((rps, cost), cores), error_ratio)| EndpointLoad {
                // A failed request costs FAILURE_COST; a successful one its endpoint's cost. Each
                // holds one worker (of `cores`) for that long: in flight = busy workers.
                cpu: self
                    .report_cpu
                    .then(|| {
                        reading(
                            (rps * ((1.0 - error_ratio) * cost + error_ratio * FAILURE_COST))
                                .min(*cores),
                            5,
                        )
                    })
                    .flatten(),
                in_flight: (!self.report_cpu)
                    .then(|| {
                        reading(
                            (rps * ((1.0 - error_ratio) * cost + error_ratio * FAILURE_COST))
                                .min(*cores),
                            5,
                        )
                    })
                    .flatten(),
                rps: if self.report_rps {
                    reading(*rps, 5)
                } else {
                    None
                },
                errors: if self.report_rps && self.report_errors {
                    reading(rps * error_ratio, 5)
                } else {
                    None
                },
                cpu_limit: self.report_cpu.then(|| reading(*cores, 5)).flatten(),
                ..EndpointLoad::default()
            })
            .collect()
    }

    /// Runs `ticks` ticks ten seconds apart from an empty memory and equal weights; returns the
    /// outputs and the weights served after each tick.
    pub fn run(&self, params: &Params, ticks: usize) -> (Vec<Output>, Vec<Vec<u32>>) {
        self.run_from(params, 0..ticks, ClusterMemory::default(), None)
    }

    /// Runs the ticks `ticks` (ten seconds apart) from `memory`, serving `served` at first
    /// (equal weights when `None`); returns the outputs and the weights served after each tick.
    pub fn run_from(
        &self,
        params: &Params,
        ticks: std::ops::Range<usize>,
        mut memory: ClusterMemory,
        served: Option<Vec<u32>>,
    ) -> (Vec<Output>, Vec<Vec<u32>>) {
        let endpoints = endpoints(self.costs.len());
        let mut served = served.unwrap_or_else(|| vec![100; self.costs.len()]);
        let mut outputs = Vec::new();
        let mut history = Vec::new();
        for tick in ticks {
            let now = Duration::from_secs(10 * tick as u64);
            let output = compute(&endpoints, &self.loads(&served), &memory, params, now);
            served = output.weights.iter().map(|weight| weight.weight).collect();
            memory = output.memory.clone();
            history.push(served.clone());
            outputs.push(output);
        }
        (outputs, history)
    }
}
