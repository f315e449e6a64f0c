//! The `metrics:` section: where load samples come from (PromQL pull, remote-write, Envoy's load
//! reports), validated into the settings each source runs with.

use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;

use super::{
    duration::{check_positive, ConfigDuration},
    problem, Problem,
};

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
    /// Between its ticks, a cluster with an `error_query` has its request and error queries
    /// pulled at every step of the pull grid, and is recomputed at once when they show a pod
    /// beginning to fail; `false` pulls it once per tick only.
    #[serde(default = "default_failure_watch")]
    pub failure_watch: bool,
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

fn default_cpu_query() -> String {
    DEFAULT_CPU_QUERY.into()
}
fn default_batch() -> bool {
    true
}
fn default_failure_watch() -> bool {
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
    /// Pull the request and error queries between ticks (`metrics.prometheus.failure_watch`).
    pub failure_watch: bool,
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
            .field("failure_watch", &self.failure_watch)
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

/// The validated `metrics:` sources; any of them makes clusters adaptive by default.
#[derive(Clone, Debug, PartialEq)]
pub struct Sources {
    /// Pull source, if configured.
    pub prometheus: Option<PullSettings>,
    /// Remote-write receiver, if enabled.
    pub remote_write: Option<RemoteWriteSettings>,
    /// LRS source, if enabled.
    pub load_reports: Option<LoadReportSettings>,
}

impl Sources {
    /// Whether any source gives load samples.
    pub fn any(&self) -> bool {
        self.prometheus.is_some() || self.remote_write.is_some() || self.load_reports.is_some()
    }
}

/// Validates the `metrics:` section, appending every problem found.
pub fn validate(metrics: &MetricsConfig, problems: &mut Vec<Problem>) -> Sources {
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
    Sources {
        prometheus,
        remote_write,
        load_reports,
    }
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
    check_positive("metrics.prometheus.timeout", timeout, problems);
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
        failure_watch: config.failure_watch,
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
    check_positive("metrics.remote_write.rate_window", rate_window, problems);
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

#[cfg(test)]
mod tests {
    use crate::config::parse;
    use crate::config::warnings::has_error_signal;
    use crate::weighting::params::Algorithm;
    use std::time::Duration;

    use crate::config::{assert_problems_start_with, problem_lines as problems};

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
        assert!(has_error_signal(&config.adaptive, "a"));
        assert!(has_error_signal(&config.adaptive, "discovered"));

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
}
