//! The real weighting engine (`adaptive_eds::weighting::compute`) as a simulator weight provider.

use super::weights::{EndpointSample, WeightProvider};
use adaptive_eds::discovery::{Endpoint, HealthStatus, Locality};
use adaptive_eds::weighting::{compute, ClusterMemory, EndpointLoad, Params, Reading};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// Calls the server's weighting code once per tick, so the simulator runs the same library
/// code as `adaptive-eds serve`.
///
/// Each simulated endpoint becomes a loopback `Endpoint` (one port per endpoint) whose CPU,
/// request rate (errors included), CPU limit (its cores) and, when asked for, error rate are
/// readings as old as the simulator's metrics delay. The engine's memory is carried from tick
/// to tick as the server does.
#[derive(Debug, Clone)]
pub struct EngineWeights {
    endpoints: Vec<Endpoint>,
    params: Params,
    memory: ClusterMemory,
    sample_age: Duration,
    error_signal: bool,
    history: Vec<Vec<u32>>,
}

/// First port of the synthetic endpoints; only used as the engine's memory key.
const FIRST_PORT: u16 = 20_000;

impl EngineWeights {
    /// A provider for `endpoint_count` endpoints with `params`, whose samples are `sample_age` old.
    pub fn new(endpoint_count: usize, params: Params, sample_age: Duration) -> Self {
        let endpoints = (0..endpoint_count)
            .map(|index| Endpoint {
                address: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: FIRST_PORT.saturating_add(u16::try_from(index).unwrap_or(u16::MAX)),
                configured_weight: None,
                pod: Some(format!("pod-{index}")),
                node: None,
                locality: Locality::default(),
                health: HealthStatus::default(),
            })
            .collect();
        Self {
            endpoints,
            params,
            memory: ClusterMemory::default(),
            sample_age,
            error_signal: false,
            history: Vec::new(),
        }
    }

    /// With `true`, each endpoint's load also carries its error rate (requests per second
    /// answered with an error), as a PromQL `error_query` or load reports give it; without,
    /// the engine sees CPU and request rates only, which a fast-failing pod makes look cheap.
    pub fn with_error_signal(mut self, error_signal: bool) -> Self {
        self.error_signal = error_signal;
        self
    }

    /// The weights served after each tick so far, oldest first (for settling checks).
    pub fn history(&self) -> &[Vec<u32>] {
        &self.history
    }

    fn load(&self, sample: &EndpointSample) -> EndpointLoad {
        let reading = |value: f64| {
            Some(Reading {
                value,
                age: self.sample_age,
            })
        };
        EndpointLoad {
            cpu: reading(sample.cpu_cores),
            rps: reading(sample.requests_per_second),
            cpu_limit: reading(f64::from(sample.cores)),
            errors: self
                .error_signal
                .then(|| reading(sample.errors_per_second))
                .flatten(),
            ..EndpointLoad::default()
        }
    }
}

impl WeightProvider for EngineWeights {
    fn weights(&mut self, now: Duration, samples: &[EndpointSample]) -> Vec<u32> {
        let loads: Vec<EndpointLoad> = samples.iter().map(|sample| self.load(sample)).collect();
        let count = samples.len().min(self.endpoints.len());
        let output = compute(
            &self.endpoints[..count],
            &loads[..count],
            &self.memory,
            &self.params,
            now,
        );
        self.memory = output.memory;
        let weights: Vec<u32> = output
            .weights
            .iter()
            .map(|weight| weight.weight.max(1))
            .collect();
        self.history.push(weights.clone());
        weights
    }
}
