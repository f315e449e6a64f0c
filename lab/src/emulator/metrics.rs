//! Prometheus metric families of one emulated node, all registered here.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Labels of the cAdvisor-style CPU counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContainerLabels {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
}

/// Labels of the request metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodLabels {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
}

/// Labels of the request counter: the pod and the HTTP status code of the answer.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// HTTP status code answered (`200` or `503`).
    pub code: String,
}

/// Labels of the kube-state-metrics-style limit gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
    /// Which resource (`cpu`).
    pub resource: String,
    /// Unit of the value (`core`).
    pub unit: String,
}

/// Handles to the metrics of one node, plus the registry that exposes them.
#[derive(Debug)]
pub struct NodeMetrics {
    registry: Registry,
    cpu_seconds: Counter<f64, AtomicU64>,
    served: Counter,
    failed: Counter,
    errors: Counter,
    latency: Histogram,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl NodeMetrics {
    /// Registers every family of a node with its help text; `cores` is its CPU limit.
    pub fn new(labels: ContainerLabels, cores: u32) -> Self {
        let mut registry = Registry::default();
        let limit_family = Family::<LimitLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "kube_pod_container_resource_limits",
            "The container's CPU limit in cores (worker slots), as kube-state-metrics reports it",
            limit_family.clone(),
        );
        limit_family
            .get_or_create(&LimitLabels {
                namespace: labels.namespace.clone(),
                pod: labels.pod.clone(),
                container: labels.container.clone(),
                resource: "cpu".to_owned(),
                unit: "core".to_owned(),
            })
            .set(f64::from(cores));
        let cpu_family = Family::<ContainerLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "container_cpu_usage_seconds",
            "Busy worker-slot seconds, like cAdvisor's cumulative CPU time; rate() gives cores in use",
            cpu_family.clone(),
        );
        let request_family = Family::<RequestLabels, Counter>::default();
        registry.register(
            "emulator_requests",
            "Requests answered by this emulated node, by HTTP status code",
            request_family.clone(),
        );
        let error_family = Family::<PodLabels, Counter>::default();
        registry.register(
            "emulator_request_errors",
            "Requests answered with an error (5xx) by this emulated node",
            error_family.clone(),
        );
        let latency_family =
            Family::<PodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "emulator_request_duration_seconds",
            "Time from request arrival to answer, slot wait included",
            latency_family.clone(),
        );
        let pod_labels = PodLabels {
            namespace: labels.namespace.clone(),
            pod: labels.pod.clone(),
        };
        let cpu_seconds = cpu_family.get_or_create(&labels).clone();
        // Both codes exist from the start, so a healthy pod reports zero errors (an absent
        // series would read as "unknown" to an error query, not as "none").
        let by_code = |code: &str| {
            request_family
                .get_or_create(&RequestLabels {
                    namespace: labels.namespace.clone(),
                    pod: labels.pod.clone(),
                    code: code.to_owned(),
                })
                .clone()
        };
        let (served, failed) = (by_code("200"), by_code("503"));
        let errors = error_family.get_or_create(&pod_labels).clone();
        let latency = latency_family.get_or_create(&pod_labels).clone();
        Self {
            registry,
            cpu_seconds,
            served,
            failed,
            errors,
            latency,
        }
    }

    /// Adds busy time of one worker slot to the CPU counter.
    pub fn add_busy(&self, busy: Duration) {
        self.cpu_seconds.inc_by(busy.as_secs_f64());
    }

    /// Counts one answered request (`failed`: answered 503) and its latency.
    pub fn record_request(&self, latency: Duration, failed: bool) {
        if failed {
            self.failed.inc();
            self.errors.inc();
        } else {
            self.served.inc();
        }
        self.latency.observe(latency.as_secs_f64());
    }

    /// Requests answered so far: (all, with an error).
    pub fn requests(&self) -> (u64, u64) {
        let failed = self.failed.get();
        (self.served.get() + failed, failed)
    }

    /// Current value of the CPU counter, in slot-seconds.
    pub fn cpu_seconds(&self) -> f64 {
        self.cpu_seconds.get()
    }

    /// Renders all families in the Prometheus/OpenMetrics text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}
