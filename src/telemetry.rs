//! Our Prometheus metrics: every family is defined and registered here, with its help text.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
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
    /// `ads-sotw`, `ads-delta`, `eds-sotw`, `eds-delta`, `eds-fetch` or `lrs`.
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

/// Label set for per-cluster families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    /// EDS resource name.
    pub cluster: String,
}

/// Label set of the refusal counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// The limit that refused: `max_connections`, `max_streams`, `max_resource_names`, ...
    pub limit: String,
}

/// Label set of the cluster-mode gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    /// EDS resource name.
    pub cluster: String,
    /// `static`, `fresh`, `holding`, `fallback` or `idle`.
    pub mode: String,
}

/// Handles to every metric. Cloning is cheap and shares the underlying values.
#[derive(Clone, Debug)]
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
    /// CPU (cores) of each endpoint at the last tick.
    pub endpoint_cpu: Family<EndpointLabels, Gauge<f64, AtomicU64>>,
    /// 1 for each cluster's current weighting mode.
    pub cluster_mode: Family<ModeLabels, Gauge>,
    /// Samples dropped as NaN, negative or infinite, by cluster.
    pub dropped_samples: Family<ClusterLabels, Counter>,
    /// Endpoints held at a probe because their error ratio is clearly above their cluster's.
    pub endpoints_failing: Family<ClusterLabels, Gauge>,
    /// Time to recompute the due clusters in one tick.
    pub tick_duration: Histogram,
    /// Requests, streams or connections refused by a limit.
    pub refusals: Family<LimitLabels, Counter>,
    /// Open gRPC connections.
    pub connections: Gauge,
    /// `ClusterLoadAssignment`s encoded (once per cluster version, whatever the subscribers).
    pub encodes: Counter,
    /// Remote-write samples by result (accepted, filtered, over_limit, invalid).
    pub remote_write_samples: Family<ResultLabels, Counter>,
    /// PromQL queries by cluster, signal and result.
    pub metric_queries: Family<QueryLabels, Counter>,
    /// Clusters in the current snapshot.
    pub clusters: Gauge,
    /// LRS `LoadStatsRequest`s by result (`ok`, `malformed`).
    pub lrs_reports: Family<ResultLabels, Counter>,
    /// LRS `ClusterStats` entries by result (see `lrs::aggregate::Outcome`).
    pub lrs_cluster_stats: Family<ResultLabels, Counter>,
    /// LRS per-endpoint entries by result (`accepted`, `unknown_endpoint`).
    pub lrs_endpoint_stats: Family<ResultLabels, Counter>,
    /// Completed requests per second per endpoint, summed over the reporting Envoys.
    pub lrs_endpoint_rps: Family<EndpointLabels, Gauge<f64, AtomicU64>>,
    /// Errors per second per endpoint, summed over the reporting Envoys.
    pub lrs_endpoint_errors: Family<EndpointLabels, Gauge<f64, AtomicU64>>,
    /// Requests in flight per endpoint, summed over the reporting Envoys' newest reports.
    pub lrs_endpoint_in_flight: Family<EndpointLabels, Gauge<f64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            config_reloads: Family::default(),
            streams: Family::default(),
            pushes: Family::default(),
            acks: Family::default(),
            nacks: Family::default(),
            rejected_requests: Family::default(),
            endpoint_weight: Family::default(),
            snapshots: Counter::default(),
            endpoint_cpu: Family::default(),
            cluster_mode: Family::default(),
            dropped_samples: Family::default(),
            endpoints_failing: Family::default(),
            tick_duration: Histogram::new(exponential_buckets(0.0001, 4.0, 10)),
            refusals: Family::default(),
            connections: Gauge::default(),
            encodes: Counter::default(),
            remote_write_samples: Family::default(),
            metric_queries: Family::default(),
            clusters: Gauge::default(),
            lrs_reports: Family::default(),
            lrs_cluster_stats: Family::default(),
            lrs_endpoint_stats: Family::default(),
            lrs_endpoint_rps: Family::default(),
            lrs_endpoint_errors: Family::default(),
            lrs_endpoint_in_flight: Family::default(),
        }
    }
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
        registry.register(
            "endpoint_cpu_cores",
            "CPU cores used per endpoint, as read at the last tick",
            metrics.endpoint_cpu.clone(),
        );
        registry.register(
            "cluster_mode",
            "1 for each cluster's weighting mode (static, fresh, holding, fallback, idle)",
            metrics.cluster_mode.clone(),
        );
        registry.register(
            "dropped_samples",
            "Samples dropped as NaN, negative or infinite, by cluster",
            metrics.dropped_samples.clone(),
        );
        registry.register(
            "endpoints_failing",
            "Endpoints held at a probe because their error ratio is clearly above their cluster's (Inspect says why)",
            metrics.endpoints_failing.clone(),
        );
        registry.register(
            "tick_duration_seconds",
            "Time to recompute the clusters due in one tick",
            metrics.tick_duration.clone(),
        );
        registry.register(
            "remote_write_samples",
            "Remote-write samples received, by result (accepted, filtered, over_limit, invalid; bad_request counts refused requests)",
            metrics.remote_write_samples.clone(),
        );
        registry.register(
            "metric_queries",
            "PromQL queries, by cluster, signal and result (error = samples kept, aging toward stale)",
            metrics.metric_queries.clone(),
        );
        registry.register(
            "refusals",
            "Connections, streams or requests refused by a limit, by limit",
            metrics.refusals.clone(),
        );
        registry.register(
            "connections",
            "Open gRPC connections",
            metrics.connections.clone(),
        );
        registry.register(
            "encodes",
            "ClusterLoadAssignments encoded (once per cluster version, whatever the number of subscribers)",
            metrics.encodes.clone(),
        );
        registry.register(
            "lrs_reports",
            "LRS LoadStatsRequests received, by result (ok, malformed)",
            metrics.lrs_reports.clone(),
        );
        registry.register(
            "lrs_cluster_stats",
            "LRS per-cluster stats, by result (accepted, first_report, unknown_cluster, bad_interval, impossible_counters, malformed, disabled)",
            metrics.lrs_cluster_stats.clone(),
        );
        registry.register(
            "lrs_endpoint_stats",
            "LRS per-endpoint stats, by result (accepted, unknown_endpoint)",
            metrics.lrs_endpoint_stats.clone(),
        );
        registry.register(
            "lrs_endpoint_requests_per_second",
            "Completed requests per second per endpoint, summed over the Envoys reporting to this replica",
            metrics.lrs_endpoint_rps.clone(),
        );
        registry.register(
            "lrs_endpoint_errors_per_second",
            "Requests per second answered with an error per endpoint, summed over the Envoys reporting to this replica",
            metrics.lrs_endpoint_errors.clone(),
        );
        registry.register(
            "lrs_endpoint_requests_in_flight",
            "Requests in flight per endpoint, summed over the newest reports of the Envoys reporting to this replica",
            metrics.lrs_endpoint_in_flight.clone(),
        );
        (metrics, registry)
    }

    /// Counts one refusal by `limit` (`max_streams`, `client_identity`, ...).
    pub fn refuse(&self, limit: &str) {
        self.refusals
            .get_or_create(&LimitLabels {
                limit: limit.into(),
            })
            .inc();
    }

    /// The label set for a stream kind.
    pub fn kind(kind: &str) -> StreamLabels {
        StreamLabels { kind: kind.into() }
    }
}

/// The `/metrics` text of a fresh registry with one sample in every family (labelled families
/// only show once they have a child): what dashboards can query, for tests of dashboards and
/// of the registrations.
pub fn example_exposition() -> String {
    let (metrics, registry) = Metrics::registered();
    let labels = EndpointLabels {
        cluster: "c".into(),
        endpoint: "e".into(),
        pod: "p".into(),
    };
    metrics
        .config_reloads
        .get_or_create(&ResultLabels {
            result: "ok".into(),
        })
        .inc();
    metrics.streams.get_or_create(&Metrics::kind("k")).inc();
    metrics.pushes.get_or_create(&Metrics::kind("k")).inc();
    metrics.acks.get_or_create(&Metrics::kind("k")).inc();
    metrics.nacks.get_or_create(&Metrics::kind("k")).inc();
    metrics
        .rejected_requests
        .get_or_create(&Metrics::kind("k"))
        .inc();
    metrics.endpoint_weight.get_or_create(&labels).set(1);
    metrics.endpoint_cpu.get_or_create(&labels).set(0.5);
    metrics
        .cluster_mode
        .get_or_create(&ModeLabels {
            cluster: "c".into(),
            mode: "fresh".into(),
        })
        .set(1);
    metrics
        .dropped_samples
        .get_or_create(&ClusterLabels {
            cluster: "c".into(),
        })
        .inc();
    metrics
        .endpoints_failing
        .get_or_create(&ClusterLabels {
            cluster: "c".into(),
        })
        .set(1);
    metrics
        .remote_write_samples
        .get_or_create(&ResultLabels {
            result: "ok".into(),
        })
        .inc();
    metrics
        .metric_queries
        .get_or_create(&QueryLabels {
            cluster: "c".into(),
            signal: "cpu".into(),
            result: "ok".into(),
        })
        .inc();
    metrics.tick_duration.observe(0.001);
    metrics
        .refusals
        .get_or_create(&LimitLabels { limit: "x".into() })
        .inc();
    metrics.connections.inc();
    metrics.encodes.inc();
    for family in [
        &metrics.lrs_reports,
        &metrics.lrs_cluster_stats,
        &metrics.lrs_endpoint_stats,
    ] {
        family
            .get_or_create(&ResultLabels {
                result: "ok".into(),
            })
            .inc();
    }
    for family in [
        &metrics.lrs_endpoint_rps,
        &metrics.lrs_endpoint_errors,
        &metrics.lrs_endpoint_in_flight,
    ] {
        family.get_or_create(&labels).set(1.0);
    }
    let mut text = String::new();
    // Encoding into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_registered() {
        let text = example_exposition();
        for name in [
            "adaptive_eds_config_reloads_total",
            "adaptive_eds_xds_streams",
            "adaptive_eds_xds_pushes_total",
            "adaptive_eds_xds_acks_total",
            "adaptive_eds_xds_nacks_total",
            "adaptive_eds_xds_rejected_requests_total",
            "adaptive_eds_endpoint_weight",
            "adaptive_eds_endpoint_cpu_cores",
            "adaptive_eds_cluster_mode",
            "adaptive_eds_dropped_samples_total",
            "adaptive_eds_endpoints_failing",
            "adaptive_eds_remote_write_samples_total",
            "adaptive_eds_metric_queries_total",
            "adaptive_eds_tick_duration_seconds_count",
            "adaptive_eds_snapshots_total",
            "adaptive_eds_clusters",
            "adaptive_eds_refusals_total",
            "adaptive_eds_connections",
            "adaptive_eds_encodes_total",
            "adaptive_eds_lrs_reports_total",
            "adaptive_eds_lrs_cluster_stats_total",
            "adaptive_eds_lrs_endpoint_stats_total",
            "adaptive_eds_lrs_endpoint_requests_per_second",
            "adaptive_eds_lrs_endpoint_errors_per_second",
            "adaptive_eds_lrs_endpoint_requests_in_flight",
        ] {
            assert!(
                text.contains(&format!("\n{name}")),
                "{name} missing from:\n{text}"
            );
        }
    }
}
