//! The validated settings the engine and the metrics sources follow: per cluster, its tick,
//! weighting params and rendered queries, joined from the `tick`, `metrics` and `weighting`
//! sections and each cluster's overrides.

use std::{collections::BTreeMap, time::Duration};

use super::{
    clusters::ClusterConfig,
    duration::{check_positive, ConfigDuration},
    metrics::{
        self, LoadReportSettings, MetricsConfig, PrometheusConfig, PullSettings,
        RemoteWriteSettings,
    },
    problem,
    templates::{cluster_labels, render_queries, ClusterQueries},
    weighting::{params_from, WeightingConfig},
    Problem,
};
use crate::weighting::params::{Algorithm, Params};

/// Default tick.
pub const DEFAULT_TICK: Duration = Duration::from_secs(10);

/// Everything the engine and the metrics sources need to know about one cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterSettings {
    /// Resolved weighting knobs.
    pub params: Params,
    /// How often weights are recomputed.
    pub tick: Duration,
    /// Rendered PromQL (when a pull source is configured and the cluster is not static).
    pub queries: Option<ClusterQueries>,
    /// `namespace`, `container`, `service` labels, for remote-write series selection.
    pub labels: BTreeMap<String, String>,
}

/// The validated `tick`, `metrics` and `weighting` configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptiveConfig {
    /// Default tick.
    pub tick: Duration,
    /// Pull source, if configured.
    pub prometheus: Option<PullSettings>,
    /// Remote-write receiver, if enabled.
    pub remote_write: Option<RemoteWriteSettings>,
    /// LRS source, if enabled.
    pub load_reports: Option<LoadReportSettings>,
    /// Settings for clusters the file does not name (e.g. discovered ones).
    pub defaults: ClusterSettings,
    /// Settings per cluster named in the file (and, once merged, per discovered cluster).
    pub clusters: BTreeMap<String, ClusterSettings>,
    /// `metrics.prometheus` as written: its query templates are rendered again for every
    /// discovered cluster (see [`AdaptiveConfig::with_discovered`]).
    pub query_templates: Option<PrometheusConfig>,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        let defaults = ClusterSettings {
            params: Params {
                algorithm: Algorithm::Static,
                ..Params::default()
            },
            tick: DEFAULT_TICK,
            queries: None,
            labels: BTreeMap::new(),
        };
        Self {
            tick: DEFAULT_TICK,
            prometheus: None,
            remote_write: None,
            load_reports: None,
            defaults,
            clusters: BTreeMap::new(),
            query_templates: None,
        }
    }
}

impl AdaptiveConfig {
    /// Settings of `cluster` (its own, else the defaults).
    pub fn settings(&self, cluster: &str) -> &ClusterSettings {
        self.clusters.get(cluster).unwrap_or(&self.defaults)
    }

    /// The shortest tick of any cluster (the engine's wake-up period).
    pub fn shortest_tick(&self) -> Duration {
        self.clusters
            .values()
            .map(|settings| settings.tick)
            .chain(std::iter::once(self.tick))
            .min()
            .unwrap_or(DEFAULT_TICK)
    }
}

/// Validates the adaptive sections against the clusters, appending every problem found.
pub fn validate(
    tick: Option<ConfigDuration>,
    metrics_config: &MetricsConfig,
    weighting: &WeightingConfig,
    clusters: &[ClusterConfig],
    problems: &mut Vec<Problem>,
) -> AdaptiveConfig {
    let tick = tick.map(|value| value.0).unwrap_or(DEFAULT_TICK);
    check_positive("tick", tick, problems);
    let sources = metrics::validate(metrics_config, problems);
    let has_source = sources.any();
    let base = params_from(
        Params {
            algorithm: if has_source {
                Algorithm::Capacity
            } else {
                Algorithm::Static
            },
            ..Params::default()
        },
        weighting,
        "weighting",
        problems,
    );
    if !has_source && base.algorithm != Algorithm::Static {
        problems.push(problem(
            "weighting.algorithm",
            "an adaptive algorithm needs a metrics source: set metrics.prometheus, or enable metrics.remote_write or metrics.load_reports",
        ));
    }
    let defaults = ClusterSettings {
        params: base.clone(),
        tick,
        queries: None,
        labels: BTreeMap::new(),
    };
    let mut settings = BTreeMap::new();
    for (index, cluster) in clusters.iter().enumerate() {
        let field = format!("clusters[{index}]");
        let params = match &cluster.weighting {
            Some(overrides) => params_from(
                base.clone(),
                overrides,
                &format!("{field}.weighting"),
                problems,
            ),
            None => base.clone(),
        };
        let cluster_tick = match cluster.tick {
            Some(value) => {
                check_positive(&format!("{field}.tick"), value.0, problems);
                value.0
            }
            None => tick,
        };
        let labels = cluster_labels(cluster);
        let queries = match (&metrics_config.prometheus, params.algorithm) {
            (Some(config), algorithm) if algorithm != Algorithm::Static => {
                Some(render_queries(config, &labels, &field, problems))
            }
            _ => None,
        };
        settings.insert(
            cluster.name.clone(),
            ClusterSettings {
                params,
                tick: cluster_tick,
                queries,
                labels,
            },
        );
    }
    AdaptiveConfig {
        tick,
        prometheus: sources.prometheus,
        remote_write: sources.remote_write,
        load_reports: sources.load_reports,
        defaults,
        clusters: settings,
        query_templates: metrics_config.prometheus.clone(),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse;
    use crate::weighting::params::{Algorithm, Objective};
    use std::time::Duration;

    use crate::config::{assert_problems_start_with, problem_lines as problems};

    #[test]
    fn accepts_the_documented_shape_with_overrides() {
        let config = parse(
            r#"
tick: 10s
metrics:
  prometheus:
    url: http://127.0.0.1:8428
    cpu_query: 'sum(rate(container_cpu_usage_seconds_total{namespace="shop"}[1m])) by (pod)'
    rps_query: 'sum(rate(http_requests_total{namespace="shop"}[1m])) by (pod)'
    join_label: pod
  remote_write: { enabled: true }
weighting:
  algorithm: capacity
  objective: latency
  stale_after: 30s
  fallback_after: 5m
clusters:
  - name: checkout
    tick: 2s
    weighting: { objective: balance, max_weight: 500 }
    endpoints: [{ address: 10.0.0.1, port: 80, pod: a }]
  - name: legacy
    weighting: { algorithm: static }
"#,
        )
        .expect("valid");
        let adaptive = &config.adaptive;
        assert_eq!(adaptive.tick, Duration::from_secs(10));
        assert!(adaptive.prometheus.is_some() && adaptive.remote_write.is_some());
        let checkout = adaptive.settings("checkout");
        assert_eq!(checkout.tick, Duration::from_secs(2));
        assert_eq!(checkout.params.objective, Objective::Balance);
        assert_eq!(checkout.params.max_weight(), 500);
        assert_eq!(checkout.params.stale_after, Duration::from_secs(30));
        let queries = checkout.queries.as_ref().expect("queries");
        assert!(queries
            .rps
            .as_deref()
            .is_some_and(|query| query.contains("http_requests_total")));
        assert_eq!(
            adaptive.settings("legacy").params.algorithm,
            Algorithm::Static
        );
        assert!(adaptive.settings("legacy").queries.is_none());
        assert_eq!(adaptive.shortest_tick(), Duration::from_secs(2));
    }

    #[test]
    fn no_metrics_means_static_weights() {
        let config = parse("clusters: [{ name: a }]\n").expect("valid");
        assert_eq!(
            config.adaptive.settings("a").params.algorithm,
            Algorithm::Static
        );
        let found = problems("weighting: { algorithm: capacity }\n");
        assert_eq!(found, vec!["weighting.algorithm: an adaptive algorithm needs a metrics source: set metrics.prometheus, or enable metrics.remote_write or metrics.load_reports"]);
    }

    #[test]
    fn bad_values_are_named() {
        let found = problems(
            r#"
tick: 0s
metrics:
  prometheus: { url: "ftp://x", cpu_query: "up{job=\"${job}\"}", timeout: soon }
weighting: { objective: fastest }
"#,
        );
        assert_eq!(
            found.len(),
            1,
            "serde stops at the first type error: {found:?}"
        );
        assert!(
            found[0].starts_with("metrics.prometheus.timeout"),
            "{found:?}"
        );
        let found = problems(
            r#"
tick: 0s
metrics:
  prometheus: { url: "ftp://x", cpu_query: "up{job=\"${job}\"}" }
weighting: { stale_after: 10m, fallback_after: 1m, utilization_ceiling: 1.5, surge_headroom: 0.5, min_weight: 50, max_weight: 10, smoothing: 0 }
clusters: [{ name: a }]
"#,
        );
        let expected = [
            "tick: expected a duration above zero",
            "metrics.prometheus.url: expected an http:// or https:// URL",
            "weighting.fallback_after: must be at least stale_after",
            "weighting.smoothing: expected 0.01..1, got 0",
            "weighting.utilization_ceiling: expected 0.01..1, got 1.5",
            "weighting.surge_headroom: expected 1..100, got 0.5",
            "weighting.max_weight: must be at least min_weight (50), got 10",
            "metrics.prometheus.cpu_query: unknown placeholder ${job}",
        ];
        assert_problems_start_with(&found, &expected);
    }
}
