//! The `tick`, `metrics` and `weighting` sections: load sources and weighting knobs, validated.

use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;

use super::{duration::ConfigDuration, problem, ClusterConfig, Problem};
use crate::weighting::params::{Algorithm, DistanceParams, Objective, Params};

/// The query the published operator used: CPU cores per pod of the cluster's container.
pub const DEFAULT_CPU_QUERY: &str = "sum(rate(container_cpu_usage_seconds_total{namespace=\"${namespace}\",container=\"${container}\"}[1m])) by (pod)";

/// `metrics:`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Pull with PromQL from VictoriaMetrics or Prometheus.
    pub prometheus: Option<PrometheusConfig>,
    /// Accept Prometheus remote-write on the admin listener.
    pub remote_write: Option<RemoteWriteConfig>,
    /// Accept Envoy's load reports (LRS) on the xDS port.
    pub load_reports: Option<LoadReportsConfig>,
}

/// `metrics.load_reports:`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoadReportsConfig {
    /// Ask connected Envoys for load reports and use them.
    #[serde(default)]
    pub enabled: bool,
    /// How often Envoys report (`load_reporting_interval`).
    pub interval: Option<ConfigDuration>,
    /// With several replicas: this replica's aggregates are only exported on `/metrics`, for the
    /// metrics store to sum over every replica; the weights use what `metrics.prometheus` pulls.
    #[serde(default)]
    pub shared_via_store: bool,
}

/// Default `metrics.load_reports.interval`.
pub const DEFAULT_LOAD_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest `metrics.load_reports.interval`: below it the reports (each with Envoy's full Node)
/// cost more than they tell.
const MIN_LOAD_REPORT_INTERVAL: Duration = Duration::from_millis(100);
/// Longest `metrics.load_reports.interval`: slower reports cannot follow a failing pod.
const MAX_LOAD_REPORT_INTERVAL: Duration = Duration::from_secs(300);

/// A validated LRS source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadReportSettings {
    /// `load_reporting_interval` sent to Envoy.
    pub interval: Duration,
    /// Aggregates go only to `/metrics` (replicas share them through the metrics store).
    pub shared_via_store: bool,
}

/// How a series is matched to an endpoint.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum JoinBy {
    /// The label's value is the endpoint's `pod`.
    #[default]
    Pod,
    /// The label's value is the endpoint's `address` or `address:port`.
    Address,
}

/// `metrics.prometheus:`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Base URL of the HTTP API, e.g. `http://127.0.0.1:8428`.
    pub url: String,
    /// PromQL giving CPU cores per series; `${namespace}`, `${container}`, `${service}` and
    /// `${cluster}` are replaced with the cluster's values.
    #[serde(default = "default_cpu_query")]
    pub cpu_query: String,
    /// PromQL giving requests per second per series.
    pub rps_query: Option<String>,
    /// PromQL giving each series' CPU limit in cores.
    pub cpu_limit_query: Option<String>,
    /// PromQL giving each series' mean latency per request in seconds.
    pub latency_query: Option<String>,
    /// PromQL giving requests per second answered with an error, per series (a part of what
    /// `rps_query` counts, so it needs `rps_query`).
    pub error_query: Option<String>,
    /// PromQL giving each series' requests in flight.
    pub in_flight_query: Option<String>,
    /// Label matched to endpoints.
    #[serde(default = "default_join_label")]
    pub join_label: String,
    /// What the label holds.
    #[serde(default)]
    pub join_by: JoinBy,
    /// Timeout of one query.
    pub timeout: Option<ConfigDuration>,
    /// Extra HTTP headers, e.g. `Authorization: "Bearer ..."`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// TLS settings for `https://` URLs.
    #[serde(default)]
    pub tls: TlsConfig,
    /// One query per template per tick for all the clusters using it (see `config::promql`);
    /// `false` queries every cluster separately, as before.
    #[serde(default = "default_batch")]
    pub batch: bool,
}

impl PrometheusConfig {
    /// Every query template that is set, with its key (`cpu_query`, ...).
    pub fn templates(&self) -> Vec<(&'static str, &str)> {
        [
            ("cpu_query", Some(&self.cpu_query)),
            ("rps_query", self.rps_query.as_ref()),
            ("cpu_limit_query", self.cpu_limit_query.as_ref()),
            ("latency_query", self.latency_query.as_ref()),
            ("error_query", self.error_query.as_ref()),
            ("in_flight_query", self.in_flight_query.as_ref()),
        ]
        .into_iter()
        .filter_map(|(key, template)| template.map(|template| (key, template.as_str())))
        .collect()
    }
}

/// `metrics.prometheus.tls:`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with extra CA certificates to trust.
    pub ca_file: Option<String>,
    /// Accept any server certificate (testing only).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// `metrics.remote_write:`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RemoteWriteConfig {
    /// Serve `POST /api/v1/write` on the admin listener.
    #[serde(default)]
    pub enabled: bool,
    /// Counter of CPU seconds (its rate is cores).
    #[serde(default = "default_cpu_metric")]
    pub cpu_metric: String,
    /// Counter of requests (its rate is requests per second).
    pub rps_metric: Option<String>,
    /// Gauge of each container's CPU limit in cores (e.g. kube-state-metrics'
    /// `kube_pod_container_resource_limits`); its newest value is the endpoint's limit.
    pub cpu_limit_metric: Option<String>,
    /// Labels a `cpu_limit_metric` series must carry to count (default `{resource: cpu}`, as
    /// kube-state-metrics labels the CPU row of its limits).
    pub cpu_limit_labels: Option<BTreeMap<String, String>>,
    /// Counter of failed requests (its rate is errors per second, a part of `rps_metric`'s).
    pub error_metric: Option<String>,
    /// Regular expressions (fully anchored) on the labels of `rps_metric`'s series: a series
    /// whose labels all match counts as errors, e.g. `{code: "5.."}`.
    pub error_labels: Option<BTreeMap<String, String>>,
    /// Label matched to endpoints.
    #[serde(default = "default_join_label")]
    pub join_label: String,
    /// What the label holds.
    #[serde(default)]
    pub join_by: JoinBy,
    /// Window over which counter rates are computed.
    pub rate_window: Option<ConfigDuration>,
    /// Most series kept in memory; further new series are dropped and counted.
    #[serde(default = "default_max_series")]
    pub max_series: usize,
    /// Only series with all these labels are kept.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// Largest (compressed) request body accepted; larger ones get HTTP 413 and are counted.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

/// `weighting:` (global) and `clusters[].weighting:` (overrides); every key optional.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WeightingConfig {
    /// `static`, `distance` or `capacity`.
    pub algorithm: Option<AlgorithmName>,
    /// `latency` or `balance`.
    pub objective: Option<ObjectiveName>,
    /// Samples older than this are not used.
    pub stale_after: Option<ConfigDuration>,
    /// Stale this long: back to equal weights.
    pub fallback_after: Option<ConfigDuration>,
    /// Smallest weight.
    pub min_weight: Option<u32>,
    /// Largest weight.
    pub max_weight: Option<u32>,
    /// Push only when a weight moved more than this fraction.
    pub push_threshold: Option<f64>,
    /// Largest change factor per tick.
    pub max_step: Option<f64>,
    /// Weight of the newest cost estimate.
    pub smoothing: Option<f64>,
    /// `latency`: utilization ceiling.
    pub utilization_ceiling: Option<f64>,
    /// `latency`: traffic share kept, in all, on the endpoints outside the plan.
    pub probe_share: Option<f64>,
    /// CPU limit (cores) assumed when unknown.
    pub default_cpu_limit: Option<f64>,
    /// Total CPU (cores) under which a cluster is idle.
    pub idle_cpu: Option<f64>,
    /// Ramp-in time of new endpoints.
    pub slow_start: Option<ConfigDuration>,
    /// `distance` knobs.
    pub distance: Option<DistanceConfig>,
}

/// `weighting.distance:`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DistanceConfig {
    /// Multiplier of the relative distance.
    pub multiplier: Option<f64>,
    /// Distances under this percent leave weights unchanged.
    pub min_distance_percent: Option<f64>,
    /// Percentile of current weights a new pod starts at.
    pub new_pod_percentile: Option<f64>,
}

/// Config spelling of [`Algorithm`].
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AlgorithmName {
    /// [`Algorithm::Static`].
    Static,
    /// [`Algorithm::Distance`].
    Distance,
    /// [`Algorithm::Capacity`].
    Capacity,
}

/// Config spelling of [`Objective`].
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ObjectiveName {
    /// [`Objective::Latency`].
    Latency,
    /// [`Objective::Balance`].
    Balance,
}

fn default_cpu_query() -> String {
    DEFAULT_CPU_QUERY.into()
}
fn default_batch() -> bool {
    true
}
fn default_join_label() -> String {
    "pod".into()
}
fn default_cpu_metric() -> String {
    "container_cpu_usage_seconds_total".into()
}
fn default_max_series() -> usize {
    100_000
}
fn default_max_body_bytes() -> usize {
    16 * 1024 * 1024
}

/// Default tick.
pub const DEFAULT_TICK: Duration = Duration::from_secs(10);

/// A validated pull source. Its `Debug` output hides header values (they may hold credentials).
#[derive(Clone, PartialEq)]
pub struct PullSettings {
    /// Base URL without a trailing slash.
    pub url: String,
    /// Query timeout.
    pub timeout: Duration,
    /// Extra headers.
    pub headers: BTreeMap<String, String>,
    /// TLS settings.
    pub tls: TlsConfig,
    /// Label matched to endpoints.
    pub join_label: String,
    /// What the label holds.
    pub join_by: JoinBy,
    /// Batch the clusters' queries per template (`metrics.prometheus.batch`).
    pub batch: bool,
}

impl std::fmt::Debug for PullSettings {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: BTreeMap<&str, &str> = self
            .headers
            .keys()
            .map(|name| (name.as_str(), "<redacted>"))
            .collect();
        formatter
            .debug_struct("PullSettings")
            .field("url", &redact_url(&self.url))
            .field("timeout", &self.timeout)
            .field("headers", &headers)
            .field("tls", &self.tls)
            .field("join_label", &self.join_label)
            .field("join_by", &self.join_by)
            .field("batch", &self.batch)
            .finish()
    }
}

/// `url` with any `user:password@` part replaced, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme_end), Some(at))
            if at > scheme_end && !url[scheme_end + 3..at].contains('/') =>
        {
            format!("{}<redacted>@{}", &url[..scheme_end + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// A validated remote-write receiver.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteWriteSettings {
    /// CPU counter name.
    pub cpu_metric: String,
    /// Request counter name.
    pub rps_metric: Option<String>,
    /// CPU limit gauge name (cores).
    pub cpu_limit_metric: Option<String>,
    /// Labels a limit series must carry.
    pub cpu_limit_labels: BTreeMap<String, String>,
    /// Where errors per second come from, if anywhere.
    pub errors: Option<ErrorSource>,
    /// Label matched to endpoints.
    pub join_label: String,
    /// What the label holds.
    pub join_by: JoinBy,
    /// Rate window.
    pub rate_window: Duration,
    /// Series cap.
    pub max_series: usize,
    /// Ingest filter.
    pub match_labels: BTreeMap<String, String>,
    /// Largest request body.
    pub max_body_bytes: usize,
}

/// How remote-written series give errors per second.
#[derive(Clone, Debug, PartialEq)]
pub enum ErrorSource {
    /// The rate of this counter of failed requests.
    Metric(String),
    /// The rate of the request counter's series whose labels match.
    Labels(LabelPatterns),
}

/// Label matchers with fully anchored regular expressions, as PromQL's `=~`.
#[derive(Clone, Debug)]
pub struct LabelPatterns {
    /// Label name, the pattern as written, and the pattern compiled as `^(?:pattern)$`.
    patterns: Vec<(String, String, regex::Regex)>,
}

impl PartialEq for LabelPatterns {
    /// Equal when written the same (a compiled `Regex` has no equality of its own).
    fn eq(&self, other: &Self) -> bool {
        self.patterns.len() == other.patterns.len()
            && self
                .patterns
                .iter()
                .zip(&other.patterns)
                .all(|(mine, theirs)| mine.0 == theirs.0 && mine.1 == theirs.1)
    }
}

impl LabelPatterns {
    /// Compiles every pattern, naming `field.LABEL` in the problem of each one that does not.
    pub fn compile(
        written: &BTreeMap<String, String>,
        field: &str,
        problems: &mut Vec<Problem>,
    ) -> Self {
        let mut patterns = Vec::new();
        for (label, pattern) in written {
            // Anchored like PromQL's `=~`: `5..` must not match `1500`.
            match regex::Regex::new(&format!("^(?:{pattern})$")) {
                Ok(compiled) => patterns.push((label.clone(), pattern.clone(), compiled)),
                Err(error) => problems.push(problem(
                    format!("{field}.{label}"),
                    format!("{pattern:?} is not a regular expression: {error}"),
                )),
            }
        }
        Self { patterns }
    }

    /// Whether every pattern matches its label (a missing label is the empty string, as in
    /// PromQL, so `{code: ""}` matches series without a code).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.patterns.iter().all(|(label, _, pattern)| {
            pattern.is_match(labels.get(label).map(String::as_str).unwrap_or(""))
        })
    }
}

/// The PromQL of one cluster, placeholders filled in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterQueries {
    /// CPU cores per series.
    pub cpu: String,
    /// Requests per second per series.
    pub rps: Option<String>,
    /// CPU limit per series.
    pub cpu_limit: Option<String>,
    /// Latency per series.
    pub latency: Option<String>,
    /// Errors per second per series.
    pub errors: Option<String>,
    /// Requests in flight per series.
    pub in_flight: Option<String>,
}

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
    metrics: &MetricsConfig,
    weighting: &WeightingConfig,
    clusters: &[ClusterConfig],
    problems: &mut Vec<Problem>,
) -> AdaptiveConfig {
    let tick = tick.map(|value| value.0).unwrap_or(DEFAULT_TICK);
    check_positive_duration("tick", tick, problems);
    let prometheus = metrics
        .prometheus
        .as_ref()
        .map(|config| validate_prometheus(config, problems));
    let remote_write = metrics
        .remote_write
        .as_ref()
        .filter(|config| config.enabled)
        .map(|config| validate_remote_write(config, problems));
    let load_reports = metrics
        .load_reports
        .as_ref()
        .filter(|config| config.enabled)
        .map(|config| validate_load_reports(config, problems));
    if load_reports
        .as_ref()
        .is_some_and(|settings| settings.shared_via_store)
        && metrics
            .prometheus
            .as_ref()
            .is_none_or(|config| config.rps_query.is_none())
    {
        problems.push(problem(
            "metrics.load_reports.shared_via_store",
            "needs metrics.prometheus with an rps_query that sums adaptive_eds_lrs_endpoint_requests_per_second over the replicas (see the README's Replicas section): otherwise no weight would see the reports",
        ));
    }
    let has_source = prometheus.is_some() || remote_write.is_some() || load_reports.is_some();
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
                check_positive_duration(&format!("{field}.tick"), value.0, problems);
                value.0
            }
            None => tick,
        };
        let labels = cluster_labels(cluster);
        let queries = match (&metrics.prometheus, params.algorithm) {
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
        prometheus,
        remote_write,
        load_reports,
        defaults,
        clusters: settings,
        query_templates: metrics.prometheus.clone(),
    }
}

/// The labels a discovered cluster offers to query templates: every placeholder has a value.
pub fn discovered_labels(
    cluster: &str,
    namespace: &str,
    service: &str,
    container: &str,
) -> BTreeMap<String, String> {
    [
        ("cluster", cluster),
        ("namespace", namespace),
        ("service", service),
        ("container", container),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_string(), value.to_string()))
    .collect()
}

/// Checks that the query templates render for discovered clusters (which have every label);
/// catches an unknown placeholder even when the file names no cluster.
pub fn validate_discovered_templates(config: &AdaptiveConfig, problems: &mut Vec<Problem>) {
    if config.defaults.params.algorithm == Algorithm::Static {
        return;
    }
    if let Some(templates) = &config.query_templates {
        let labels = discovered_labels("c", "n", "s", "c");
        let mut found = Vec::new();
        render_queries(templates, &labels, "kubernetes", &mut found);
        for problem in found {
            if !problems.contains(&problem) {
                problems.push(problem);
            }
        }
    }
}

impl AdaptiveConfig {
    /// This config plus settings for clusters discovered at run time (Kubernetes), given each
    /// one's labels (`discovered_labels`). A cluster the file names keeps its own settings; the
    /// others get the defaults, with the query templates rendered for their labels.
    pub fn with_discovered(&self, discovered: &BTreeMap<String, BTreeMap<String, String>>) -> Self {
        let mut merged = self.clone();
        for (name, labels) in discovered {
            if merged.clusters.contains_key(name) {
                continue;
            }
            let queries = match (&self.query_templates, self.defaults.params.algorithm) {
                (Some(templates), algorithm) if algorithm != Algorithm::Static => {
                    let mut problems = Vec::new();
                    let queries = render_queries(templates, labels, name, &mut problems);
                    if !problems.is_empty() {
                        tracing::error!(cluster = %name, ?problems, "cannot render the metrics queries for a discovered cluster; it keeps equal weights");
                        None
                    } else {
                        Some(queries)
                    }
                }
                _ => None,
            };
            merged.clusters.insert(
                name.clone(),
                ClusterSettings {
                    params: self.defaults.params.clone(),
                    tick: self.defaults.tick,
                    queries,
                    labels: labels.clone(),
                },
            );
        }
        merged
    }
}

/// Whether some configured source gives `cluster` errors per second (so that a pod failing fast
/// can be told from a cheap one). A source of errors added later belongs in
/// [`has_shared_error_signal`] (every cluster) or here (per cluster).
pub fn has_error_signal(config: &AdaptiveConfig, cluster: &str) -> bool {
    match config.clusters.get(cluster) {
        Some(settings) => {
            settings
                .queries
                .as_ref()
                .is_some_and(|queries| queries.errors.is_some())
                || has_shared_error_signal(config)
        }
        None => discovered_have_error_signal(config),
    }
}

/// Whether clusters discovered at run time (which get the defaults and the query templates)
/// will have errors per second.
pub fn discovered_have_error_signal(config: &AdaptiveConfig) -> bool {
    config
        .query_templates
        .as_ref()
        .is_some_and(|templates| templates.error_query.is_some())
        || has_shared_error_signal(config)
}

/// Whether a source that serves every cluster gives errors per second: Envoy's load reports
/// always count errors, remote-write when it is told which series are errors.
fn has_shared_error_signal(config: &AdaptiveConfig) -> bool {
    config.load_reports.is_some()
        || config
            .remote_write
            .as_ref()
            .is_some_and(|settings| settings.errors.is_some())
}

fn check_positive_duration(field: &str, value: Duration, problems: &mut Vec<Problem>) {
    if value.is_zero() {
        problems.push(problem(field, "expected a duration above zero"));
    }
}

fn cluster_labels(cluster: &ClusterConfig) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    labels.insert("cluster".to_string(), cluster.name.clone());
    for (key, value) in [
        ("namespace", &cluster.namespace),
        ("container", &cluster.container),
        ("service", &cluster.service),
    ] {
        if let Some(value) = value {
            labels.insert(key.to_string(), value.clone());
        }
    }
    labels
}

fn validate_prometheus(config: &PrometheusConfig, problems: &mut Vec<Problem>) -> PullSettings {
    let url = config.url.trim().trim_end_matches('/').to_string();
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() <= "https://".len()
    {
        problems.push(problem(
            "metrics.prometheus.url",
            format!("expected an http:// or https:// URL, got {:?}", config.url),
        ));
    }
    if let Some(path) = &config.tls.ca_file {
        if !std::path::Path::new(path).is_file() {
            problems.push(problem(
                "metrics.prometheus.tls.ca_file",
                format!("no such file: {path}"),
            ));
        }
    }
    if config.join_label.trim().is_empty() {
        problems.push(problem(
            "metrics.prometheus.join_label",
            "must not be empty",
        ));
    }
    let timeout = config
        .timeout
        .map(|value| value.0)
        .unwrap_or(Duration::from_secs(5));
    check_positive_duration("metrics.prometheus.timeout", timeout, problems);
    for (key, query) in [
        ("rps_query", &config.rps_query),
        ("cpu_limit_query", &config.cpu_limit_query),
        ("latency_query", &config.latency_query),
        ("error_query", &config.error_query),
        ("in_flight_query", &config.in_flight_query),
    ] {
        if query.as_ref().is_some_and(|query| query.trim().is_empty()) {
            problems.push(problem(
                format!("metrics.prometheus.{key}"),
                "must not be empty when set",
            ));
        }
    }
    if config.error_query.is_some() && config.rps_query.is_none() {
        problems.push(problem(
            "metrics.prometheus.error_query",
            "needs metrics.prometheus.rps_query: errors are a part of the request rate, and an error ratio needs both",
        ));
    }
    PullSettings {
        url,
        timeout,
        headers: config.headers.clone(),
        tls: config.tls.clone(),
        join_label: config.join_label.clone(),
        join_by: config.join_by,
        batch: config.batch,
    }
}

fn validate_load_reports(
    config: &LoadReportsConfig,
    problems: &mut Vec<Problem>,
) -> LoadReportSettings {
    let interval = config
        .interval
        .map(|value| value.0)
        .unwrap_or(DEFAULT_LOAD_REPORT_INTERVAL);
    if !(MIN_LOAD_REPORT_INTERVAL..=MAX_LOAD_REPORT_INTERVAL).contains(&interval) {
        problems.push(problem(
            "metrics.load_reports.interval",
            format!(
                "expected {MIN_LOAD_REPORT_INTERVAL:?} to {MAX_LOAD_REPORT_INTERVAL:?}, got {interval:?}"
            ),
        ));
    }
    LoadReportSettings {
        interval,
        shared_via_store: config.shared_via_store,
    }
}

fn validate_remote_write(
    config: &RemoteWriteConfig,
    problems: &mut Vec<Problem>,
) -> RemoteWriteSettings {
    if config.max_series == 0 {
        problems.push(problem(
            "metrics.remote_write.max_series",
            "expected at least 1, got 0",
        ));
    }
    if config.max_body_bytes < 1024 {
        problems.push(problem(
            "metrics.remote_write.max_body_bytes",
            format!("expected at least 1024, got {}", config.max_body_bytes),
        ));
    }
    if config.cpu_metric.trim().is_empty() {
        problems.push(problem(
            "metrics.remote_write.cpu_metric",
            "must not be empty",
        ));
    }
    if config
        .cpu_limit_metric
        .as_ref()
        .is_some_and(|metric| metric.trim().is_empty())
    {
        problems.push(problem(
            "metrics.remote_write.cpu_limit_metric",
            "must not be empty when set",
        ));
    }
    let rate_window = config
        .rate_window
        .map(|value| value.0)
        .unwrap_or(Duration::from_secs(60));
    check_positive_duration("metrics.remote_write.rate_window", rate_window, problems);
    RemoteWriteSettings {
        cpu_metric: config.cpu_metric.clone(),
        rps_metric: config.rps_metric.clone(),
        cpu_limit_metric: config.cpu_limit_metric.clone(),
        cpu_limit_labels: config
            .cpu_limit_labels
            .clone()
            .unwrap_or_else(|| BTreeMap::from([("resource".to_owned(), "cpu".to_owned())])),
        errors: validate_remote_write_errors(config, problems),
        join_label: config.join_label.clone(),
        join_by: config.join_by,
        rate_window,
        max_series: config.max_series,
        match_labels: config.match_labels.clone(),
        max_body_bytes: config.max_body_bytes,
    }
}

/// `error_metric` or `error_labels` (one of them at most), checked against `rps_metric`.
fn validate_remote_write_errors(
    config: &RemoteWriteConfig,
    problems: &mut Vec<Problem>,
) -> Option<ErrorSource> {
    const FIELD: &str = "metrics.remote_write";
    let needs_rps = |key: &str, problems: &mut Vec<Problem>| {
        if config.rps_metric.is_none() {
            problems.push(problem(
                format!("{FIELD}.{key}"),
                "needs metrics.remote_write.rps_metric: errors are a part of the request rate, and an error ratio needs both",
            ));
        }
    };
    match (&config.error_metric, &config.error_labels) {
        (Some(_), Some(_)) => {
            problems.push(problem(
                format!("{FIELD}.error_labels"),
                "set error_metric (a counter of failed requests) or error_labels (which series of rps_metric are errors), not both",
            ));
            None
        }
        (Some(metric), None) => {
            if metric.trim().is_empty() {
                problems.push(problem(
                    format!("{FIELD}.error_metric"),
                    "must not be empty when set",
                ));
            } else if config.rps_metric.as_ref() == Some(metric) {
                problems.push(problem(
                    format!("{FIELD}.error_metric"),
                    "is the rps_metric itself; to count some of its series as errors use error_labels, e.g. {code: \"5..\"}",
                ));
            }
            needs_rps("error_metric", problems);
            Some(ErrorSource::Metric(metric.clone()))
        }
        (None, Some(labels)) => {
            if labels.is_empty() {
                // `{}` would make every request an error.
                problems.push(problem(
                    format!("{FIELD}.error_labels"),
                    "must name at least one label, e.g. {code: \"5..\"}",
                ));
            }
            needs_rps("error_labels", problems);
            Some(ErrorSource::Labels(LabelPatterns::compile(
                labels,
                &format!("{FIELD}.error_labels"),
                problems,
            )))
        }
        (None, None) => None,
    }
}

fn render_queries(
    config: &PrometheusConfig,
    labels: &BTreeMap<String, String>,
    field: &str,
    problems: &mut Vec<Problem>,
) -> ClusterQueries {
    let mut render =
        |key: &str, template: &str| render_template(template, labels, key, field, problems);
    ClusterQueries {
        cpu: render("cpu_query", &config.cpu_query),
        rps: config
            .rps_query
            .as_deref()
            .map(|query| render("rps_query", query)),
        cpu_limit: config
            .cpu_limit_query
            .as_deref()
            .map(|query| render("cpu_limit_query", query)),
        latency: config
            .latency_query
            .as_deref()
            .map(|query| render("latency_query", query)),
        errors: config
            .error_query
            .as_deref()
            .map(|query| render("error_query", query)),
        in_flight: config
            .in_flight_query
            .as_deref()
            .map(|query| render("in_flight_query", query)),
    }
}

/// Replaces `${name}` placeholders with the cluster's labels.
fn render_template(
    template: &str,
    labels: &BTreeMap<String, String>,
    key: &str,
    cluster_field: &str,
    problems: &mut Vec<Problem>,
) -> String {
    let mut output = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        output.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            problems.push(problem(
                format!("metrics.prometheus.{key}"),
                "unclosed ${ placeholder",
            ));
            return output;
        };
        let name = &after[..end];
        match labels.get(name) {
            Some(value) => output.push_str(value),
            None if ["namespace", "container", "service"].contains(&name) => problems.push(problem(
                format!("{cluster_field}.{name}"),
                format!("required by metrics.prometheus.{key} (it uses ${{{name}}})"),
            )),
            None => problems.push(problem(
                format!("metrics.prometheus.{key}"),
                format!("unknown placeholder ${{{name}}}; use ${{namespace}}, ${{container}}, ${{service}} or ${{cluster}}"),
            )),
        }
        rest = &after[end + 1..];
    }
    output.push_str(rest);
    output
}

fn params_from(
    mut params: Params,
    config: &WeightingConfig,
    field: &str,
    problems: &mut Vec<Problem>,
) -> Params {
    if let Some(algorithm) = config.algorithm {
        params.algorithm = match algorithm {
            AlgorithmName::Static => Algorithm::Static,
            AlgorithmName::Distance => Algorithm::Distance,
            AlgorithmName::Capacity => Algorithm::Capacity,
        };
    }
    if let Some(objective) = config.objective {
        params.objective = match objective {
            ObjectiveName::Latency => Objective::Latency,
            ObjectiveName::Balance => Objective::Balance,
        };
    }
    let mut set_duration =
        |target: &mut Duration, value: Option<ConfigDuration>, key: &str, allow_zero: bool| {
            if let Some(value) = value {
                if value.0.is_zero() && !allow_zero {
                    problems.push(problem(
                        format!("{field}.{key}"),
                        "expected a duration above zero",
                    ));
                }
                *target = value.0;
            }
        };
    set_duration(
        &mut params.stale_after,
        config.stale_after,
        "stale_after",
        false,
    );
    set_duration(
        &mut params.fallback_after,
        config.fallback_after,
        "fallback_after",
        false,
    );
    set_duration(
        &mut params.slow_start,
        config.slow_start,
        "slow_start",
        true,
    );
    if params.fallback_after < params.stale_after {
        problems.push(problem(
            format!("{field}.fallback_after"),
            format!(
                "must be at least stale_after ({:?}), got {:?}",
                params.stale_after, params.fallback_after
            ),
        ));
    }
    let mut ranged =
        |target: &mut f64, value: Option<f64>, key: &str, low: f64, high: f64, text: &str| {
            if let Some(value) = value {
                if !(value.is_finite() && value >= low && value <= high) {
                    problems.push(problem(
                        format!("{field}.{key}"),
                        format!("expected {text}, got {value}"),
                    ));
                }
                *target = value;
            }
        };
    ranged(
        &mut params.push_threshold,
        config.push_threshold,
        "push_threshold",
        0.0,
        0.99,
        "0..0.99",
    );
    ranged(
        &mut params.max_step,
        config.max_step,
        "max_step",
        1.0,
        1e6,
        "at least 1.0",
    );
    ranged(
        &mut params.smoothing,
        config.smoothing,
        "smoothing",
        0.01,
        1.0,
        "0.01..1",
    );
    ranged(
        &mut params.utilization_ceiling,
        config.utilization_ceiling,
        "utilization_ceiling",
        0.01,
        1.0,
        "0.01..1",
    );
    ranged(
        &mut params.probe_share,
        config.probe_share,
        "probe_share",
        0.0,
        0.5,
        "0..0.5",
    );
    ranged(
        &mut params.default_cpu_limit,
        config.default_cpu_limit,
        "default_cpu_limit",
        0.001,
        1e6,
        "a positive number of cores",
    );
    ranged(
        &mut params.idle_cpu,
        config.idle_cpu,
        "idle_cpu",
        0.0,
        1e6,
        "zero or more cores",
    );
    if let Some(distance) = &config.distance {
        params.distance = distance_from(params.distance.clone(), distance, field, &mut ranged);
    }
    if let Some(min) = config.min_weight {
        params.min_weight = Some(min);
    }
    if let Some(max) = config.max_weight {
        params.max_weight = Some(max);
    }
    if params.min_weight() == 0 {
        problems.push(problem(
            format!("{field}.min_weight"),
            "expected at least 1, got 0",
        ));
    }
    if params.max_weight() < params.min_weight() {
        problems.push(problem(
            format!("{field}.max_weight"),
            format!(
                "must be at least min_weight ({}), got {}",
                params.min_weight(),
                params.max_weight()
            ),
        ));
    }
    params
}

fn distance_from(
    mut distance: DistanceParams,
    config: &DistanceConfig,
    _field: &str,
    ranged: &mut impl FnMut(&mut f64, Option<f64>, &str, f64, f64, &str),
) -> DistanceParams {
    ranged(
        &mut distance.multiplier,
        config.multiplier,
        "distance.multiplier",
        0.0001,
        1e6,
        "a positive number",
    );
    ranged(
        &mut distance.min_distance_percent,
        config.min_distance_percent,
        "distance.min_distance_percent",
        0.0,
        1e6,
        "zero or more percent",
    );
    ranged(
        &mut distance.new_pod_percentile,
        config.new_pod_percentile,
        "distance.new_pod_percentile",
        0.0,
        100.0,
        "0..100",
    );
    distance
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
    fn reports_shared_through_the_store_need_a_pull_of_the_sums() {
        let found =
            problems("metrics: { load_reports: { enabled: true, shared_via_store: true } }\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with(
                "metrics.load_reports.shared_via_store: needs metrics.prometheus with an rps_query"
            ),
            "{found:?}"
        );
        let config = parse(
            "metrics: { load_reports: { enabled: true, shared_via_store: true }, prometheus: { url: \"http://127.0.0.1:1\", cpu_query: x, rps_query: y } }\nclusters: [{ name: a }]\n",
        )
        .expect("valid");
        assert!(config
            .adaptive
            .load_reports
            .is_some_and(|settings| settings.shared_via_store));
    }

    #[test]
    fn load_reports_alone_make_clusters_adaptive() {
        let config = parse(
            "metrics: { load_reports: { enabled: true, interval: 2s } }\nclusters: [{ name: a }]\n",
        )
        .expect("valid");
        assert_eq!(
            config.adaptive.load_reports,
            Some(super::LoadReportSettings {
                interval: Duration::from_secs(2),
                shared_via_store: false,
            })
        );
        assert_eq!(
            config.adaptive.settings("a").params.algorithm,
            Algorithm::Capacity
        );
        assert!(config.adaptive.settings("a").queries.is_none());
        let config =
            parse("metrics: { load_reports: { enabled: false } }\nclusters: [{ name: a }]\n")
                .expect("valid");
        assert_eq!(config.adaptive.load_reports, None);
        assert_eq!(
            config.adaptive.settings("a").params.algorithm,
            Algorithm::Static
        );
        for interval in ["0s", "10ms", "1h"] {
            let found = problems(&format!(
                "metrics: {{ load_reports: {{ enabled: true, interval: {interval} }} }}\n"
            ));
            assert_eq!(found.len(), 1, "{found:?}");
            assert!(
                found[0].starts_with("metrics.load_reports.interval: expected 100ms to 300s, got"),
                "{found:?}"
            );
        }
        let found = problems("metrics: { load_reports: { enabled: true, interval: -1s } }\n");
        assert!(
            found.len() == 1 && found[0].starts_with("metrics.load_reports.interval"),
            "{found:?}"
        );
        let found = problems("metrics: { load_reports: { enabled: true, every: 1s } }\n");
        assert!(
            found.len() == 1 && found[0].contains("unknown field `every`"),
            "{found:?}"
        );
    }

    #[test]
    fn default_query_is_filled_from_the_cluster() {
        let config = parse(
            "metrics: { prometheus: { url: \"http://127.0.0.1:8428\" } }\nclusters: [{ name: a, namespace: shop, container: web }]\n",
        )
        .expect("valid");
        let queries = config
            .adaptive
            .settings("a")
            .queries
            .clone()
            .expect("queries");
        assert_eq!(
            queries.cpu,
            "sum(rate(container_cpu_usage_seconds_total{namespace=\"shop\",container=\"web\"}[1m])) by (pod)"
        );
        let found = problems("metrics: { prometheus: { url: \"http://127.0.0.1:8428\" } }\nclusters: [{ name: a, namespace: shop }]\n");
        assert_eq!(found, vec!["clusters[0].container: required by metrics.prometheus.cpu_query (it uses ${container})"]);
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
weighting: { stale_after: 10m, fallback_after: 1m, utilization_ceiling: 1.5, min_weight: 50, max_weight: 10, smoothing: 0 }
clusters: [{ name: a }]
"#,
        );
        let expected = [
            "tick: expected a duration above zero",
            "metrics.prometheus.url: expected an http:// or https:// URL",
            "weighting.fallback_after: must be at least stale_after",
            "weighting.smoothing: expected 0.01..1, got 0",
            "weighting.utilization_ceiling: expected 0.01..1, got 1.5",
            "weighting.max_weight: must be at least min_weight (50), got 10",
            "metrics.prometheus.cpu_query: unknown placeholder ${job}",
        ];
        assert_problems_start_with(&found, &expected);
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let config = parse(
            "metrics: { prometheus: { url: \"http://user:hunter2@127.0.0.1:8428\", headers: { Authorization: \"Bearer s3cret\" } } }\n",
        )
        .expect("valid");
        let shown = format!("{:?}", config.adaptive.prometheus);
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
        assert!(
            shown.contains("Authorization") && shown.contains("<redacted>"),
            "{shown}"
        );
        assert_eq!(
            super::redact_url("http://127.0.0.1:8428/a@b"),
            "http://127.0.0.1:8428/a@b"
        );
    }

    #[test]
    fn error_and_in_flight_queries_are_rendered_like_the_others() {
        let config = parse(
            r#"
metrics:
  prometheus:
    url: http://127.0.0.1:8428
    rps_query: 'sum(rate(http_requests_total{namespace="${namespace}"}[1m])) by (pod)'
    error_query: 'sum(rate(http_requests_total{namespace="${namespace}",code=~"5.."}[1m])) by (pod)'
    in_flight_query: 'sum(http_in_flight{service="${service}"}) by (pod)'
clusters: [{ name: a, namespace: shop, container: web, service: cart }]
"#,
        )
        .expect("valid");
        let queries = config
            .adaptive
            .settings("a")
            .queries
            .clone()
            .expect("queries");
        assert_eq!(
            queries.errors.as_deref(),
            Some("sum(rate(http_requests_total{namespace=\"shop\",code=~\"5..\"}[1m])) by (pod)")
        );
        assert_eq!(
            queries.in_flight.as_deref(),
            Some("sum(http_in_flight{service=\"cart\"}) by (pod)")
        );
        assert!(super::has_error_signal(&config.adaptive, "a"));
        assert!(config.warnings().is_empty(), "{:?}", config.warnings());

        let found = problems(
            r#"
metrics:
  prometheus:
    url: http://127.0.0.1:8428
    error_query: 'sum(rate(errors_total{namespace="${namespace}"}[1m])) by (pod)'
    in_flight_query: ' '
clusters: [{ name: a, container: web }]
"#,
        );
        assert_problems_start_with(
            &found,
            &[
                "metrics.prometheus.in_flight_query: must not be empty when set",
                "metrics.prometheus.error_query: needs metrics.prometheus.rps_query",
                "clusters[0].namespace: required by metrics.prometheus.cpu_query (it uses ${namespace})",
                "clusters[0].namespace: required by metrics.prometheus.error_query (it uses ${namespace})",
            ],
        );
    }

    #[test]
    fn remote_write_error_signals_are_validated() {
        let config = parse(
            r#"
metrics:
  remote_write: { enabled: true, rps_metric: http_requests_total, error_labels: { code: "5..|429" } }
clusters: [{ name: a, namespace: shop }]
"#,
        )
        .expect("valid");
        let settings = config.adaptive.remote_write.as_ref().expect("remote-write");
        let Some(super::ErrorSource::Labels(patterns)) = &settings.errors else {
            panic!("label matcher expected, got {:?}", settings.errors);
        };
        let labels =
            |code: &str| std::collections::BTreeMap::from([("code".to_string(), code.to_string())]);
        assert!(patterns.matches(&labels("503")) && patterns.matches(&labels("429")));
        // Fully anchored, as PromQL's `=~`.
        assert!(!patterns.matches(&labels("200")) && !patterns.matches(&labels("1503")));
        assert!(
            !patterns.matches(&std::collections::BTreeMap::new()),
            "no code label"
        );
        assert!(super::has_error_signal(&config.adaptive, "a"));
        assert!(super::has_error_signal(&config.adaptive, "discovered"));

        let with_counter = parse(
            "metrics: { remote_write: { enabled: true, rps_metric: req_total, error_metric: failed_total } }
",
        )
        .expect("valid");
        assert_eq!(
            with_counter
                .adaptive
                .remote_write
                .expect("remote-write")
                .errors,
            Some(super::ErrorSource::Metric("failed_total".into()))
        );

        let found = problems(
            "metrics: { remote_write: { enabled: true, error_labels: { code: \"5(..\", status: \"x\" } } }
",
        );
        assert_problems_start_with(
            &found,
            &[
                "metrics.remote_write.error_labels: needs metrics.remote_write.rps_metric",
                "metrics.remote_write.error_labels.code: \"5(..\" is not a regular expression",
            ],
        );
        let found = problems(
            "metrics: { remote_write: { enabled: true, rps_metric: r, error_metric: e, error_labels: { code: \"5..\" } } }
",
        );
        assert_problems_start_with(
            &found,
            &["metrics.remote_write.error_labels: set error_metric (a counter of failed requests) or error_labels"],
        );
        let found = problems(
            "metrics: { remote_write: { enabled: true, rps_metric: r, error_labels: {} } }
",
        );
        assert_problems_start_with(
            &found,
            &["metrics.remote_write.error_labels: must name at least one label"],
        );
        let found = problems(
            "metrics: { remote_write: { enabled: true, rps_metric: r, error_metric: r } }
",
        );
        assert_problems_start_with(
            &found,
            &["metrics.remote_write.error_metric: is the rps_metric itself"],
        );
        let found = problems(
            "metrics: { remote_write: { enabled: true, error_metric: e } }
",
        );
        assert_problems_start_with(
            &found,
            &["metrics.remote_write.error_metric: needs metrics.remote_write.rps_metric"],
        );
    }

    #[test]
    fn capacity_without_an_error_signal_is_warned_about() {
        let config = parse(
            r#"
metrics: { prometheus: { url: "http://127.0.0.1:8428", rps_query: "r" } }
weighting: { algorithm: capacity }
clusters:
  - { name: a, namespace: shop, container: web }
  - { name: b, weighting: { algorithm: static } }
  - { name: c, namespace: shop, container: web, weighting: { algorithm: distance } }
  - { name: d, namespace: shop, container: web }
"#,
        )
        .expect("valid");
        let warnings: Vec<String> = config
            .warnings()
            .into_iter()
            .map(|warning| format!("{}: {}", warning.field, warning.message))
            .collect();
        assert_problems_start_with(
            &warnings,
            &[
                "clusters[0]: algorithm capacity without an error signal",
                "clusters[3]: algorithm capacity without an error signal",
            ],
        );
        assert!(
            warnings[0].contains("metrics.prometheus.error_query"),
            "{warnings:?}"
        );
        assert!(!super::has_error_signal(&config.adaptive, "a"));
        // Load reports count errors.
        let reported = parse(
            "metrics: { load_reports: { enabled: true } }\nclusters: [{ name: a }]\nkubernetes: { enabled: true, services: [{ namespace: shop, name: cart }] }\n",
        )
        .expect("valid");
        assert!(reported.warnings().is_empty(), "{:?}", reported.warnings());
        // Discovered clusters get the defaults: warned about once, as `kubernetes`.
        let discovered = parse(
            "metrics: { prometheus: { url: \"http://127.0.0.1:8428\" } }\nkubernetes: { enabled: true, services: [{ namespace: shop, name: cart }] }\n",
        )
        .expect("valid");
        let fields: Vec<String> = discovered
            .warnings()
            .into_iter()
            .map(|warning| warning.field)
            .collect();
        assert_eq!(fields, ["kubernetes"]);
        // A static-only file warns about nothing.
        let quiet = parse(
            "clusters: [{ name: a }]
",
        )
        .expect("valid");
        assert!(quiet.warnings().is_empty());
    }

    #[test]
    fn templates_that_cannot_be_batched_are_warned_about_unless_batching_is_off() {
        let text = |batch: &str| {
            format!(
                r#"
metrics:
  prometheus:
    url: "http://127.0.0.1:8428"
    rps_query: 'sum(rate(http_requests_total{{namespace="${{namespace}}"}}[1m]))'
    error_query: 'sum(rate(http_requests_total{{namespace="${{namespace}}",code=~"5.."}}[1m])) by (pod)'
    latency_query: 'label_replace(latency{{namespace="${{namespace}}"}}, "pod", "$1", "instance", "(.*)")'
    {batch}
clusters:
  - {{ name: a, namespace: shop, container: web }}
"#
            )
        };
        let config = parse(&text("")).expect("valid");
        assert!(config
            .adaptive
            .prometheus
            .as_ref()
            .is_some_and(|pull| pull.batch));
        let warnings: Vec<String> = config
            .warnings()
            .into_iter()
            .map(|warning| format!("{}: {}", warning.field, warning.message))
            .collect();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].starts_with("metrics.prometheus.rps_query: not batched, so it runs once per cluster every tick: an aggregation (sum) without by (...)"),
            "{warnings:?}"
        );
        assert!(
            warnings[1].starts_with("metrics.prometheus.latency_query: not batched")
                && warnings[1].contains("label_replace() can rewrite the labels"),
            "{warnings:?}"
        );
        // Switched off, nothing is batched and nothing is warned about.
        let off = parse(&text("batch: false")).expect("valid");
        assert!(off
            .adaptive
            .prometheus
            .as_ref()
            .is_some_and(|pull| !pull.batch));
        assert!(off.warnings().is_empty(), "{:?}", off.warnings());
    }

    #[test]
    fn unknown_enum_values_list_the_allowed_ones() {
        let found = problems("weighting: { objective: fastest }\n");
        assert_eq!(found.len(), 1);
        assert!(
            found[0].starts_with(
                "weighting.objective: unknown variant `fastest`, expected `latency` or `balance`"
            ),
            "{found:?}"
        );
    }
}
