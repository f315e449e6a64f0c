//! The shared sink of load signals: every source (PromQL pull, remote-write, load reports)
//! writes timestamped per-endpoint samples into one table, and the engine reads it each tick.
//! Sources import this room, never each other.

use std::{
    borrow::Borrow,
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use crate::config::metrics::JoinBy;
use crate::model::Endpoint;
use crate::weighting::{EndpointLoad, Reading};

/// A value and when it was measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// The value (cores, requests per second, ...); not yet checked for NaN or sign.
    pub value: f64,
    /// Milliseconds since the UNIX epoch.
    pub timestamp_ms: i64,
}

/// Which quantity a sample measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    /// CPU in use, cores.
    Cpu,
    /// Requests per second.
    Rps,
    /// CPU limit, cores.
    CpuLimit,
    /// Mean latency per request, seconds.
    Latency,
    /// Requests per second answered with an error (part of `Rps`).
    Errors,
    /// Requests in flight.
    InFlight,
}

impl Signal {
    /// The word used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Rps => "rps",
            Self::CpuLimit => "cpu_limit",
            Self::Latency => "latency",
            Self::Errors => "errors",
            Self::InFlight => "in_flight",
        }
    }
}

/// Which source wrote a set of samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKind {
    /// PromQL pull.
    Pull,
    /// Prometheus remote-write.
    RemoteWrite,
    /// Envoy's load reports (LRS).
    LoadReports,
}

/// A source has just written the samples of these clusters: their tick, for the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrived {
    pub source: SourceKind,
    pub clusters: Vec<String>,
    /// Only the request and error samples, pulled between the clusters' ticks to see a pod
    /// beginning to fail: a tick only if they show one.
    pub failure_watch: bool,
}

/// Samples of one signal of one cluster from one source, keyed by the join label's value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SampleSet {
    /// How keys match endpoints.
    pub join_by: JoinBy,
    /// Newest sample per key.
    pub samples: HashMap<String, Sample>,
}

type TableKey = (SourceKind, String, Signal);

/// The newest samples of every cluster: sources write whole sets, the engine reads each tick.
#[derive(Clone, Debug, Default)]
pub struct SampleTable {
    sets: Arc<RwLock<HashMap<TableKey, Arc<SampleSet>>>>,
}

impl SampleTable {
    /// Replaces what `source` knows of `signal` for `cluster`.
    pub fn replace(&self, source: SourceKind, cluster: &str, signal: Signal, set: SampleSet) {
        if let Ok(mut sets) = self.sets.write() {
            sets.insert((source, cluster.to_string(), signal), Arc::new(set));
        }
    }

    /// Forgets clusters not in `keep` (removed from the config).
    pub fn retain_clusters(&self, keep: &dyn Fn(&str) -> bool) {
        if let Ok(mut sets) = self.sets.write() {
            sets.retain(|(_, cluster, _), _| keep(cluster));
        }
    }

    /// The load of each endpoint of `cluster` (index-aligned), with sample ages at `now`.
    ///
    /// Where both sources know an endpoint, the newer sample wins.
    pub fn loads<E: Borrow<Endpoint>>(
        &self,
        cluster: &str,
        endpoints: &[E],
        now: SystemTime,
    ) -> Vec<EndpointLoad> {
        let Ok(sets) = self.sets.read() else {
            return vec![EndpointLoad::default(); endpoints.len()];
        };
        let now_ms = unix_millis(now);
        // Look the sets up once per cluster, not once per endpoint.
        let signal_sets = |signal: Signal| -> Vec<Arc<SampleSet>> {
            [
                SourceKind::Pull,
                SourceKind::RemoteWrite,
                SourceKind::LoadReports,
            ]
            .iter()
            .filter_map(|source| sets.get(&(*source, cluster.to_string(), signal)).cloned())
            .collect()
        };
        let by_signal = [
            signal_sets(Signal::Cpu),
            signal_sets(Signal::Rps),
            signal_sets(Signal::CpuLimit),
            signal_sets(Signal::Latency),
            signal_sets(Signal::Errors),
            signal_sets(Signal::InFlight),
        ];
        drop(sets);
        let find = |index: usize, endpoint: &Endpoint| -> Option<Reading> {
            by_signal[index]
                .iter()
                .filter_map(|set| lookup(set, endpoint))
                .max_by_key(|sample| sample.timestamp_ms)
                .map(|sample| Reading {
                    value: sample.value,
                    age: Duration::from_millis(
                        u64::try_from(now_ms - sample.timestamp_ms).unwrap_or(0),
                    ),
                })
        };
        endpoints
            .iter()
            .map(Borrow::borrow)
            .map(|endpoint| EndpointLoad {
                cpu: find(0, endpoint),
                rps: find(1, endpoint),
                cpu_limit: find(2, endpoint),
                latency: find(3, endpoint),
                errors: find(4, endpoint),
                in_flight: find(5, endpoint),
            })
            .collect()
    }
}

fn lookup(set: &SampleSet, endpoint: &Endpoint) -> Option<Sample> {
    match set.join_by {
        JoinBy::Pod => endpoint
            .pod
            .as_ref()
            .and_then(|pod| set.samples.get(pod))
            .copied(),
        JoinBy::Address => set
            .samples
            .get(&format!("{}:{}", endpoint.address, endpoint.port))
            .or_else(|| set.samples.get(&endpoint.address.to_string()))
            .copied(),
    }
}

pub use crate::model::unix_millis;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HealthStatus, Locality};
    use std::time::UNIX_EPOCH;

    fn endpoint(address: &str, port: u16, pod: Option<&str>) -> Endpoint {
        Endpoint {
            address: address.parse().expect("ip"),
            port,
            configured_weight: None,
            pod: pod.map(str::to_string),
            node: None,
            locality: Locality::default(),
            health: HealthStatus::Healthy,
        }
    }

    fn set(join_by: JoinBy, entries: &[(&str, f64, i64)]) -> SampleSet {
        SampleSet {
            join_by,
            samples: entries
                .iter()
                .map(|(key, value, timestamp_ms)| {
                    (
                        key.to_string(),
                        Sample {
                            value: *value,
                            timestamp_ms: *timestamp_ms,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn joins_by_pod_or_address_and_prefers_the_newer_source() {
        let table = SampleTable::default();
        let now = UNIX_EPOCH + Duration::from_secs(100);
        table.replace(
            SourceKind::Pull,
            "c",
            Signal::Cpu,
            set(JoinBy::Pod, &[("a", 1.0, 90_000), ("b", 2.0, 90_000)]),
        );
        table.replace(
            SourceKind::RemoteWrite,
            "c",
            Signal::Cpu,
            set(JoinBy::Pod, &[("b", 3.0, 99_000)]),
        );
        table.replace(
            SourceKind::Pull,
            "c",
            Signal::Rps,
            set(
                JoinBy::Address,
                &[("10.0.0.3:80", 7.0, 95_000), ("10.0.0.1", 5.0, 95_000)],
            ),
        );
        let endpoints = [
            endpoint("10.0.0.1", 80, Some("a")),
            endpoint("10.0.0.2", 80, Some("b")),
            endpoint("10.0.0.3", 80, None),
        ];
        let loads = table.loads("c", &endpoints, now);
        assert_eq!(
            loads[0].cpu,
            Some(Reading {
                value: 1.0,
                age: Duration::from_secs(10)
            })
        );
        assert_eq!(
            loads[1].cpu,
            Some(Reading {
                value: 3.0,
                age: Duration::from_secs(1)
            })
        );
        assert_eq!(loads[2].cpu, None);
        assert_eq!(loads[0].rps.map(|reading| reading.value), Some(5.0));
        assert_eq!(loads[2].rps.map(|reading| reading.value), Some(7.0));
        assert!(table
            .loads("other", &endpoints, now)
            .iter()
            .all(|load| load == &EndpointLoad::default()));
    }
}
