//! Our Prometheus metrics: every family is defined and registered here, with its help text.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Label set for counters that record an outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: String,
}

/// Label set for per-stream-kind families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    /// `ads-sotw`, `ads-delta`, `eds-sotw`, `eds-delta` or `eds-fetch`.
    pub kind: String,
}

/// Label set for per-endpoint gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// EDS resource name.
    pub cluster: String,
    /// `address:port`.
    pub endpoint: String,
    /// Pod name, empty when unknown.
    pub pod: String,
}

/// Label set for metrics-source queries.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    /// EDS resource name.
    pub cluster: String,
    /// `cpu`, `rps`, `cpu_limit` or `latency`.
    pub signal: String,
    /// `ok` or `error`.
    pub result: String,
}

/// Handles to every metric. Cloning is cheap and shares the underlying values.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Config file reloads by result.
    pub config_reloads: Family<ResultLabels, Counter>,
    /// Open xDS streams by kind.
    pub streams: Family<StreamLabels, Gauge>,
    /// Responses sent by stream kind.
    pub pushes: Family<StreamLabels, Counter>,
    /// ACKs received by stream kind.
    pub acks: Family<StreamLabels, Counter>,
    /// NACKs received by stream kind.
    pub nacks: Family<StreamLabels, Counter>,
    /// Requests refused or ignored as malformed, by stream kind.
    pub rejected_requests: Family<StreamLabels, Counter>,
    /// `load_balancing_weight` currently served per endpoint.
    pub endpoint_weight: Family<EndpointLabels, Gauge>,
    /// Snapshots published (one per content change).
    pub snapshots: Counter,
    /// Remote-write samples by result (accepted, filtered, over_limit, invalid).
    pub remote_write_samples: Family<ResultLabels, Counter>,
    /// PromQL queries by cluster, signal and result.
    pub metric_queries: Family<QueryLabels, Counter>,
    /// Clusters in the current snapshot.
    pub clusters: Gauge,
}

impl Metrics {
    /// Creates the metrics and a registry that exposes them under the `adaptive_eds` prefix.
    pub fn registered() -> (Self, Registry) {
        let metrics = Self::default();
        let mut registry = Registry::with_prefix("adaptive_eds");
        registry.register(
            "config_reloads",
            "Config file reloads, by result (error = rejected, last good config kept)",
            metrics.config_reloads.clone(),
        );
        registry.register(
            "xds_streams",
            "Open xDS streams, by kind",
            metrics.streams.clone(),
        );
        registry.register(
            "xds_pushes",
            "xDS responses sent, by stream kind",
            metrics.pushes.clone(),
        );
        registry.register(
            "xds_acks",
            "xDS ACKs received, by stream kind",
            metrics.acks.clone(),
        );
        registry.register(
            "xds_nacks",
            "xDS NACKs received, by stream kind",
            metrics.nacks.clone(),
        );
        registry.register(
            "xds_rejected_requests",
            "xDS requests refused or ignored as malformed, by stream kind",
            metrics.rejected_requests.clone(),
        );
        registry.register(
            "endpoint_weight",
            "load_balancing_weight currently served, per endpoint",
            metrics.endpoint_weight.clone(),
        );
        registry.register(
            "snapshots",
            "Snapshots published (one per content change)",
            metrics.snapshots.clone(),
        );
        registry.register(
            "clusters",
            "Clusters in the current snapshot",
            metrics.clusters.clone(),
        );
        (metrics, registry)
    }

    /// The label set for a stream kind.
    pub fn kind(kind: &str) -> StreamLabels {
        StreamLabels { kind: kind.into() }
    }
}
