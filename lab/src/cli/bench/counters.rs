//! The emulator's own counters per pod (requests, errors, busy seconds), read from `/metrics`.

use anyhow::Context;
use lab::bench::process::get_ok;
use lab::bench::setup::counter_by_pod;
use lab::fleet::Pod;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// The emulator's own counters per pod.
#[derive(Debug, Default, Clone)]
pub(super) struct Counters {
    /// Answered requests, every status code summed.
    pub(super) requests: BTreeMap<String, f64>,
    /// Requests answered with an error.
    pub(super) errors: BTreeMap<String, f64>,
    /// Busy slot-seconds.
    pub(super) cpu: BTreeMap<String, f64>,
}

impl Counters {
    fn extend(&mut self, other: &Counters) {
        self.requests.extend(other.requests.clone());
        self.errors.extend(other.errors.clone());
        self.cpu.extend(other.cpu.clone());
    }
}

/// The last counters of the pods a rolling restart stopped: they no longer answer, and what
/// they did still counts.
#[derive(Debug, Default)]
pub(super) struct Stopped(Mutex<Counters>);

impl Stopped {
    /// Keeps `counters` (one stopped pod's) for every later read.
    pub(super) fn keep(&self, counters: &Counters) {
        if let Ok(mut kept) = self.0.lock() {
            kept.extend(counters);
        }
    }

    fn snapshot(&self) -> Counters {
        self.0
            .lock()
            .map(|kept| kept.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }
}

/// One pod's counters, from its `/metrics` page.
pub(super) async fn pod_counters(port: u16) -> anyhow::Result<Counters> {
    let page = get_ok(&format!("http://127.0.0.1:{port}/metrics"))
        .await
        .with_context(|| format!("reading the metrics of pod port {port}"))?;
    Ok(Counters {
        requests: counter_by_pod(&page, "emulator_requests_total"),
        errors: counter_by_pod(&page, "emulator_request_errors_total"),
        cpu: counter_by_pod(&page, "container_cpu_usage_seconds_total"),
    })
}

/// Every pod's counters: read from the running pods, kept ones for the stopped pods.
pub(super) async fn fleet_counters(
    pods: &[Pod],
    ports: &[u16],
    stopped: &Stopped,
) -> anyhow::Result<Counters> {
    let kept = stopped.snapshot();
    let mut counters = Counters::default();
    for (pod, port) in pods.iter().zip(ports) {
        if kept.cpu.contains_key(&pod.name) {
            continue;
        }
        counters.extend(&pod_counters(*port).await?);
    }
    counters.extend(&kept);
    Ok(counters)
}
