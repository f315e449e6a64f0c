//! PromQL pull: each tick, query VictoriaMetrics or Prometheus for every adaptive cluster (one
//! query per template for the clusters sharing it, see `batch`), evaluated at an instant on a
//! wall-clock grid that every replica shares.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use super::batch::{self, TemplatePlans};
use crate::config::adaptive::{AdaptiveConfig, ClusterSettings};
use crate::config::metrics::{redact_url, PullSettings};
use crate::samples::{Arrived, Sample, SampleSet, SampleTable, Signal, SourceKind};
use crate::telemetry::{Metrics, QueryLabels};

/// One series of an instant-vector result.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The series labels.
    pub labels: HashMap<String, String>,
    /// Its value at the evaluation time.
    pub sample: Sample,
}

/// Why a query gave no samples.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Could not reach the server, or it timed out.
    #[error("request to {url} failed: {source}")]
    Transport {
        /// The query URL (without the query).
        url: String,
        /// The cause.
        source: reqwest::Error,
    },
    /// The server answered with an HTTP error.
    #[error("{url} answered HTTP {status}: {body}")]
    Status {
        /// The query URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// The body was not a PromQL instant-vector answer.
    #[error("unexpected answer: {0}")]
    Garbage(String),
    /// The server reported a PromQL error.
    #[error("PromQL error ({kind}): {message}")]
    Promql {
        /// `errorType`.
        kind: String,
        /// `error`.
        message: String,
    },
}

#[derive(Deserialize)]
struct ApiResponse {
    status: String,
    data: Option<ApiData>,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct ApiData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<ApiSeries>,
}

#[derive(Deserialize)]
struct ApiSeries {
    metric: HashMap<String, String>,
    value: (f64, String),
}

/// Parses a `/api/v1/query` body into series; values keep whatever the server said (NaN too).
pub fn parse_response(body: &[u8]) -> Result<Vec<Series>, QueryError> {
    let response: ApiResponse = serde_json::from_slice(body)
        .map_err(|error| QueryError::Garbage(format!("not a PromQL API answer: {error}")))?;
    if response.status != "success" {
        return Err(QueryError::Promql {
            kind: response.error_type.unwrap_or_default(),
            message: response.error.unwrap_or_default(),
        });
    }
    let data = response
        .data
        .ok_or_else(|| QueryError::Garbage("success without data".into()))?;
    if data.result_type != "vector" {
        return Err(QueryError::Garbage(format!(
            "expected an instant vector, got {}; wrap the query so it returns one value per series",
            data.result_type
        )));
    }
    data.result
        .into_iter()
        .map(|series| {
            let value = series.value.1.trim().parse::<f64>().map_err(|_| {
                QueryError::Garbage(format!("value {:?} is not a number", series.value.1))
            })?;
            Ok(Series {
                labels: series.metric,
                sample: Sample {
                    value,
                    timestamp_ms: (series.value.0 * 1000.0) as i64,
                },
            })
        })
        .collect()
}

/// One cluster's answers of a tick, per signal; `None` where the query failed.
type Answered = Vec<(Signal, Option<Vec<Series>>)>;

/// An HTTP client for one PromQL endpoint.
#[derive(Clone, Debug)]
pub struct PromQlClient {
    http: reqwest::Client,
    settings: PullSettings,
}

impl PromQlClient {
    /// Builds the client (timeouts, headers, TLS) from validated settings.
    pub fn new(settings: PullSettings) -> anyhow::Result<Self> {
        // reqwest's rustls is built without a default crypto provider; ring is ours.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &settings.headers {
            let name =
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).with_context(|| {
                    format!("metrics.prometheus.headers: invalid header name {name:?}")
                })?;
            let value = reqwest::header::HeaderValue::from_str(value).with_context(|| {
                format!("metrics.prometheus.headers.{name}: invalid header value")
            })?;
            headers.insert(name, value);
        }
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .default_headers(headers)
            .tls_danger_accept_invalid_certs(settings.tls.insecure_skip_verify);
        if let Some(path) = &settings.tls.ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("metrics.prometheus.tls.ca_file: cannot read {path}"))?;
            for certificate in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("metrics.prometheus.tls.ca_file: {path} is not PEM"))?
            {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder.build().context("building the PromQL HTTP client")?;
        Ok(Self { http, settings })
    }

    /// Runs one instant query, evaluated now (the store's now).
    pub async fn query(&self, promql: &str) -> Result<Vec<Series>, QueryError> {
        self.query_at(promql, None).await
    }

    /// Runs one instant query evaluated at `at` (Unix milliseconds), or at the store's now.
    ///
    /// With `at`, `nocache=1` goes with it: VictoriaMetrics otherwise moves an evaluation time
    /// within its `-search.latencyOffset` (30 s by default) of its clock to its clock minus
    /// that offset, a different instant for each caller. Prometheus ignores the parameter.
    pub async fn query_at(&self, promql: &str, at: Option<u64>) -> Result<Vec<Series>, QueryError> {
        let url = format!("{}/api/v1/query", self.settings.url);
        let mut parameters = vec![("query", promql.to_string())];
        if let Some(at) = at {
            parameters.push(("time", format_unix_millis(at)));
            parameters.push(("nocache", "1".into()));
        }
        let response = self
            .http
            .get(&url)
            .query(&parameters)
            .send()
            .await
            .map_err(|source| QueryError::Transport {
                url: redact_url(&url),
                source: source.without_url(),
            })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|source| QueryError::Transport {
                url: redact_url(&url),
                source: source.without_url(),
            })?;
        if !status.is_success() && status.as_u16() != 400 && status.as_u16() != 422 {
            return Err(QueryError::Status {
                url: redact_url(&url),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            });
        }
        parse_response(&body)
    }

    /// Queries every signal (or those of `only`) of the `due` clusters (name, settings) once,
    /// batched per template where it can be (see [`batch::plan`]), each evaluated at `at` (Unix
    /// milliseconds; the store's now when `None`), and writes what succeeded into `table`.
    pub async fn pull(
        &self,
        due: &[(&str, &ClusterSettings)],
        plans: &TemplatePlans,
        table: &SampleTable,
        metrics: &Metrics,
        at: Option<u64>,
        only: Option<&[Signal]>,
    ) {
        if due.is_empty() {
            return;
        }
        // The URL around the query, with the longest evaluation time and its companion.
        let prefix = format!(
            "{}/api/v1/query?query=&time=9999999999.999&nocache=1",
            self.settings.url
        )
        .len();
        let jobs = batch::plan(
            due,
            plans,
            self.settings.batch,
            prefix,
            batch::MAX_QUERY_URL_BYTES,
        );
        let jobs: Vec<_> = jobs
            .into_iter()
            .filter(|job| only.is_none_or(|only| only.contains(&job.signal)))
            .collect();
        let results =
            futures::future::join_all(jobs.iter().map(|job| self.query_at(&job.query, at))).await;
        // Each cluster's answers in signal order, `None` for a failed query.
        let mut answers: BTreeMap<&str, Answered> = BTreeMap::new();
        for (job, result) in jobs.iter().zip(results) {
            match result {
                Ok(series) => {
                    for (cluster, part) in job.split(series) {
                        answers
                            .entry(cluster)
                            .or_default()
                            .push((job.signal, Some(part)));
                    }
                }
                Err(error) => {
                    let clusters = job.clusters();
                    match &job.answers {
                        // Pulled every second between ticks: the tick's pull says it once a tick.
                        _ if only.is_some() => {
                            tracing::debug!(signal = job.signal.as_str(), %error, "metrics query between ticks failed");
                        }
                        batch::Answers::One(cluster) => {
                            tracing::warn!(cluster, signal = job.signal.as_str(), query = %job.query, %error, "metrics query failed; keeping the last samples (they age into stale)");
                        }
                        batch::Answers::Split { .. } => {
                            // One line for the query, not one per cluster: the query is long.
                            tracing::warn!(clusters = clusters.len(), first_cluster = clusters.first().copied().unwrap_or_default(), signal = job.signal.as_str(), query_bytes = job.query.len(), %error, "batched metrics query failed; keeping the last samples of its clusters (they age into stale)");
                        }
                    }
                    for cluster in clusters {
                        answers.entry(cluster).or_default().push((job.signal, None));
                    }
                }
            }
        }
        for (cluster, results) in answers {
            self.store(cluster, results, table, metrics);
        }
    }

    /// Writes one cluster's answers of this tick into `table` and counts them per signal.
    fn store(&self, cluster: &str, results: Answered, table: &SampleTable, metrics: &Metrics) {
        // This tick's request rates, for the pods the error query says nothing about.
        let rps = results.iter().find_map(|(signal, result)| match result {
            Some(series) if *signal == Signal::Rps => Some(self.sample_set(series.clone())),
            _ => None,
        });
        for (signal, result) in results {
            let outcome = match result {
                Some(series) if signal == Signal::Errors => {
                    match &rps {
                        Some(rps) => table.replace(
                            SourceKind::Pull,
                            cluster,
                            signal,
                            with_zero_errors(self.sample_set(series), rps),
                        ),
                        // Without this tick's request rates, which pods served without errors
                        // is not known: keep the last error samples (they age into stale).
                        None => tracing::debug!(
                            cluster,
                            "request rate query failed; error samples not replaced this tick"
                        ),
                    }
                    "ok"
                }
                Some(series) => {
                    table.replace(SourceKind::Pull, cluster, signal, self.sample_set(series));
                    "ok"
                }
                None => "error",
            };
            metrics
                .metric_queries
                .get_or_create(&QueryLabels {
                    cluster: cluster.to_string(),
                    signal: signal.as_str().into(),
                    result: outcome.into(),
                })
                .inc();
        }
    }

    fn sample_set(&self, series: Vec<Series>) -> SampleSet {
        let samples = series
            .into_iter()
            .filter_map(|series| {
                let key = series.labels.get(&self.settings.join_label)?.clone();
                Some((key, series.sample))
            })
            .collect();
        SampleSet {
            join_by: self.settings.join_by,
            samples,
        }
    }
}

/// `errors` plus a zero for every key that has a request rate but no error series.
///
/// `sum(rate(requests{code=~"5.."}[1m])) by (pod)` has no series for a pod that never failed
/// (client libraries create a labelled series at its first use): that pod served without
/// errors, and saying so lets its error ratio be compared with the failing pods'.
pub fn with_zero_errors(mut errors: SampleSet, rps: &SampleSet) -> SampleSet {
    for (key, sample) in &rps.samples {
        errors.samples.entry(key.clone()).or_insert(Sample {
            value: 0.0,
            timestamp_ms: sample.timestamp_ms,
        });
    }
    errors
}

/// How long after a grid instant its pull starts: the replicas' clocks may differ by this much
/// and still name the same instant, and a scrape taken at the instant has landed in the store.
const PULL_DELAY: Duration = Duration::from_millis(100);

/// The finest grid the pulls evaluate on: the shortest tick, at most a second.
fn grid_step(config: &AdaptiveConfig) -> Duration {
    config.shortest_tick().min(Duration::from_secs(1))
}

/// `time` in Unix milliseconds (0 before the epoch).
fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

/// `step` in whole milliseconds, at least one.
fn step_millis(step: Duration) -> u64 {
    u64::try_from(step.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The grid instant at or before `now`, in Unix milliseconds (`step` apart from the epoch on).
fn grid_instant(now: SystemTime, step: Duration) -> u64 {
    let millis = unix_millis(now);
    millis - millis % step_millis(step)
}

/// From `now` to [`PULL_DELAY`] after the next grid instant.
fn until_next_pull(now: SystemTime, step: Duration) -> Duration {
    let step = step_millis(step);
    Duration::from_millis(step - unix_millis(now) % step) + PULL_DELAY
}

/// The tick period of a cluster an instant falls in: a cluster is pulled once per period.
fn tick_period(instant: u64, tick: Duration) -> u64 {
    instant / step_millis(tick)
}

/// `1733130000.5` for 1,733,130,000,500 ms: the form PromQL's `time` parameter takes.
fn format_unix_millis(millis: u64) -> String {
    format!("{}.{:03}", millis / 1000, millis % 1000)
}

/// Whether a cluster of tick `tick`, last pulled in tick period `last`, is due at `instant`:
/// once per period of its tick, and at every grid step while it is `eager` (it has a new
/// endpoint not measured yet).
fn is_due(last: Option<u64>, instant: u64, tick: Duration, eager: bool) -> bool {
    eager || last != Some(tick_period(instant, tick))
}

/// The signals that show a pod beginning to fail: its errors as a part of its requests.
pub const FAILURE_SIGNALS: [Signal; 2] = [Signal::Rps, Signal::Errors];

/// What one step of the pull grid reads.
#[derive(Debug, Default, PartialEq)]
struct StepPulls<'a> {
    /// Clusters due for their tick: every signal.
    due: Vec<(&'a str, &'a ClusterSettings)>,
    /// Clusters between their ticks that have an error query, with `failure_watch`: their
    /// [`FAILURE_SIGNALS`] only.
    watched: Vec<(&'a str, &'a ClusterSettings)>,
}

/// The pulls of the step at `instant`; records the tick period of the clusters due.
fn step_pulls<'a>(
    config: &'a AdaptiveConfig,
    last_period: &mut HashMap<String, u64>,
    instant: u64,
    eager: &BTreeSet<String>,
) -> StepPulls<'a> {
    let watch = config
        .prometheus
        .as_ref()
        .is_some_and(|settings| settings.failure_watch);
    let mut pulls = StepPulls::default();
    for (name, settings) in &config.clusters {
        let Some(queries) = &settings.queries else {
            continue;
        };
        let last = last_period.get(name).copied();
        if is_due(last, instant, settings.tick, eager.contains(name)) {
            last_period.insert(name.clone(), tick_period(instant, settings.tick));
            pulls.due.push((name.as_str(), settings));
        } else if watch && queries.errors.is_some() {
            pulls.watched.push((name.as_str(), settings));
        }
    }
    pulls
}

/// Pulls every adaptive cluster once per its tick until `config` is closed, and names the
/// clusters of each pull on `pulled` once their samples are in `table` (the engine ticks them
/// then).
///
/// Each pull is evaluated at an instant on a wall-clock grid (multiples of the shortest tick,
/// at most a second, counted from the Unix epoch) and runs just after it, and a cluster is due
/// once per period of its own tick on that grid. Two replicas of the same config pulling the same
/// store therefore read the same samples at the same instants and compute the same weights,
/// instead of reading either side of a scrape, tick after tick. The clusters the engine names
/// on `eager` (a new pod not yet measured) are pulled at every grid step until it is measured,
/// so a new pod waits for its scrapes, not for the tick too. Between its ticks, a cluster with
/// an error query has its request and error rates pulled at every grid step
/// (`failure_watch`), named on `pulled` as such: the engine recomputes it only when they show
/// a pod beginning to fail, so a failing pod waits for its scrape, not for the tick too.
///
/// Runs beside serving: a slow or dead metrics server only delays this loop.
pub async fn run(
    mut config: watch::Receiver<Arc<AdaptiveConfig>>,
    table: SampleTable,
    metrics: Metrics,
    pulled: mpsc::Sender<Arrived>,
    eager: watch::Receiver<BTreeSet<String>>,
) {
    let mut client: Option<(PullSettings, PromQlClient)> = None;
    let mut last_period: HashMap<String, u64> = HashMap::new();
    // The templates read once per config, not once per tick.
    let mut plans: Option<(Arc<AdaptiveConfig>, TemplatePlans)> = None;
    loop {
        let current = config.borrow_and_update().clone();
        client = refresh_client(client, current.prometheus.as_ref());
        if !plans
            .as_ref()
            .is_some_and(|(planned, _)| Arc::ptr_eq(planned, &current))
        {
            let join_label = current
                .prometheus
                .as_ref()
                .map_or("pod", |settings| settings.join_label.as_str());
            let read = TemplatePlans::new(current.query_templates.as_ref(), join_label);
            plans = Some((current.clone(), read));
        }
        let step = grid_step(&current);
        if let (Some((_, promql)), Some((_, plans))) = (&client, &plans) {
            let instant = grid_instant(SystemTime::now(), step);
            let eager = eager.borrow().clone();
            let pulls = step_pulls(&current, &mut last_period, instant, &eager);
            futures::future::join(
                promql.pull(&pulls.due, plans, &table, &metrics, Some(instant), None),
                promql.pull(
                    &pulls.watched,
                    plans,
                    &table,
                    &metrics,
                    Some(instant),
                    Some(&FAILURE_SIGNALS),
                ),
            )
            .await;
            for (clusters, failure_watch) in [(&pulls.due, false), (&pulls.watched, true)] {
                if clusters.is_empty() {
                    continue;
                }
                let arrived = Arrived {
                    source: SourceKind::Pull,
                    clusters: clusters
                        .iter()
                        .map(|(name, _)| (*name).to_string())
                        .collect(),
                    failure_watch,
                };
                // Fails only once the engine has stopped, and then nothing is served any more.
                let _ = pulled.send(arrived).await;
            }
        }
        let wait = tokio::time::sleep(until_next_pull(SystemTime::now(), step));
        tokio::select! {
            _ = wait => {}
            changed = config.changed() => if changed.is_err() { return },
        }
    }
}

fn refresh_client(
    current: Option<(PullSettings, PromQlClient)>,
    wanted: Option<&PullSettings>,
) -> Option<(PullSettings, PromQlClient)> {
    let wanted = wanted?;
    if current
        .as_ref()
        .is_some_and(|(settings, _)| settings == wanted)
    {
        return current;
    }
    match PromQlClient::new(wanted.clone()) {
        Ok(client) => Some((wanted.clone(), client)),
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "cannot build the PromQL client; metrics pull is off until the config is fixed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn between_ticks_only_clusters_with_an_error_query_are_watched_and_only_when_asked() {
        let text = |watch: bool, errors: bool| {
            let errors = if errors {
                "    error_query: 'sum(rate(e{namespace=\"${namespace}\",code=~\"5..\"}[1m])) by (pod)'\n"
            } else {
                ""
            };
            format!(
                "tick: 10s\nmetrics:\n  prometheus:\n    url: http://127.0.0.1:1\n    failure_watch: {watch}\n    rps_query: 'sum(rate(r{{namespace=\"${{namespace}}\"}}[1m])) by (pod)'\n{errors}clusters:\n- {{ name: errors, namespace: n, container: c, endpoints: [{{address: 10.0.0.1, port: 1}}] }}\n- {{ name: quick, namespace: q, container: c, tick: 1s, endpoints: [{{address: 10.0.0.2, port: 1}}] }}\n- {{ name: fixed, namespace: f, weighting: {{ algorithm: static }}, endpoints: [{{address: 10.0.0.3, port: 1}}] }}\n"
            )
        };
        let names = |pulls: &[(&str, &ClusterSettings)]| -> Vec<String> {
            pulls.iter().map(|(name, _)| (*name).to_string()).collect()
        };
        let config = crate::config::parse(&text(true, true)).expect("valid");
        let mut last = HashMap::new();
        let none = BTreeSet::new();
        let first = step_pulls(&config.adaptive, &mut last, 1_700_000_000_000, &none);
        assert_eq!(
            names(&first.due),
            ["errors", "quick"],
            "static pulls nothing"
        );
        assert!(first.watched.is_empty());
        // A second on: `quick` (1 s tick) is due, `errors` is between its ticks.
        let between = step_pulls(&config.adaptive, &mut last, 1_700_000_001_000, &none);
        assert_eq!(names(&between.due), ["quick"]);
        assert_eq!(names(&between.watched), ["errors"]);
        let eager = BTreeSet::from(["errors".to_string()]);
        let pulled = step_pulls(&config.adaptive, &mut last, 1_700_000_002_000, &eager);
        assert_eq!(names(&pulled.due), ["errors", "quick"], "eager: a tick");
        assert!(pulled.watched.is_empty());
        let next = step_pulls(&config.adaptive, &mut last, 1_700_000_010_000, &none);
        assert_eq!(
            names(&next.due),
            ["errors", "quick"],
            "the next tick period"
        );
        for (watch, errors, why) in [
            (false, true, "failure_watch: false"),
            (true, false, "no error query"),
        ] {
            let config = crate::config::parse(&text(watch, errors)).expect("valid");
            let mut last = HashMap::new();
            step_pulls(&config.adaptive, &mut last, 1_700_000_000_000, &none);
            let off = step_pulls(&config.adaptive, &mut last, 1_700_000_001_000, &none);
            assert_eq!(names(&off.due), ["quick"]);
            assert!(off.watched.is_empty(), "{why}");
        }
    }

    #[test]
    fn parses_an_instant_vector() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"pod":"a"},"value":[1700000000.5,"0.25"]},
            {"metric":{"pod":"b"},"value":[1700000000.5,"NaN"]}]}}"#;
        let series = parse_response(body).expect("parses");
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].labels["pod"], "a");
        assert_eq!(
            series[0].sample,
            Sample {
                value: 0.25,
                timestamp_ms: 1_700_000_000_500
            }
        );
        assert!(
            series[1].sample.value.is_nan(),
            "NaN is kept for weighting to drop and count"
        );
    }

    #[test]
    fn pods_with_a_request_rate_and_no_error_series_served_without_errors() {
        let set = |entries: &[(&str, f64, i64)]| SampleSet {
            join_by: Default::default(),
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
        };
        let rps = set(&[("a", 100.0, 5_000), ("b", 80.0, 5_000)]);
        let errors = set(&[("a", 90.0, 5_000), ("gone", 1.0, 5_000)]);
        let filled = with_zero_errors(errors, &rps);
        assert_eq!(filled.samples.len(), 3);
        assert_eq!(filled.samples["a"].value, 90.0);
        assert_eq!(
            filled.samples["b"],
            Sample {
                value: 0.0,
                timestamp_ms: 5_000
            }
        );
        assert_eq!(filled.samples["gone"].value, 1.0);
    }

    #[test]
    fn reports_errors_and_garbage() {
        let error = parse_response(
            br#"{"status":"error","errorType":"bad_data","error":"parse error at char 4"}"#,
        )
        .expect_err("error");
        assert_eq!(
            error.to_string(),
            "PromQL error (bad_data): parse error at char 4"
        );
        assert!(parse_response(b"<html>").is_err());
        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(parse_response(matrix)
            .expect_err("matrix")
            .to_string()
            .contains("instant vector"));
        let bad_value = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"x"]}]}}"#;
        assert!(parse_response(bad_value).is_err());
    }

    #[test]
    fn replicas_a_few_milliseconds_apart_name_the_same_grid_instant() {
        let at = |millis: u64| UNIX_EPOCH + Duration::from_millis(millis);
        let second = Duration::from_secs(1);
        // Pulls start PULL_DELAY after an instant; clocks 80 ms apart still name it.
        for (now, instant) in [
            (1_700_000_000_100, 1_700_000_000_000),
            (1_700_000_000_180, 1_700_000_000_000),
            (1_700_000_000_999, 1_700_000_000_000),
            (1_700_000_001_000, 1_700_000_001_000),
        ] {
            assert_eq!(grid_instant(at(now), second), instant, "{now}");
        }
        let half = Duration::from_millis(500);
        assert_eq!(grid_instant(at(1_700_000_000_700), half), 1_700_000_000_500);
        // The next pull: just after the next instant, wherever in the step we are.
        assert_eq!(
            until_next_pull(at(1_700_000_000_130), second),
            Duration::from_millis(870) + PULL_DELAY
        );
        assert_eq!(
            until_next_pull(at(1_700_000_000_000), second),
            second + PULL_DELAY
        );
        assert_eq!(format_unix_millis(1_700_000_000_050), "1700000000.050");
    }

    #[test]
    fn a_cluster_is_due_once_per_period_of_its_tick() {
        let ten = Duration::from_secs(10);
        // Instants a second apart: a 10 s cluster is due at 1_700_000_010_000 and not again
        // until 1_700_000_020_000, on every replica alike.
        let periods: Vec<u64> = (0..25)
            .map(|second| tick_period(1_700_000_000_000 + second * 1000, ten))
            .collect();
        let changes = periods.windows(2).filter(|pair| pair[0] != pair[1]).count();
        assert_eq!(changes, 2, "{periods:?}");
        assert_eq!(
            tick_period(1_700_000_009_000, ten),
            tick_period(1_700_000_000_000, ten)
        );
        assert_ne!(
            tick_period(1_700_000_010_000, ten),
            tick_period(1_700_000_009_000, ten)
        );
        // Pulled in the period of 1_700_000_000_000: not due again within it, unless eager.
        let last = Some(tick_period(1_700_000_000_000, ten));
        assert!(!is_due(last, 1_700_000_004_000, ten, false));
        assert!(is_due(last, 1_700_000_004_000, ten, true));
        assert!(is_due(last, 1_700_000_010_000, ten, false));
        assert!(is_due(None, 1_700_000_004_000, ten, false));
    }
}

#[cfg(test)]
mod slow_server_tests {
    use super::*;
    use crate::config::metrics::{JoinBy, TlsConfig};
    use std::collections::BTreeMap;

    /// A stand-in metrics server on loopback that never answers in time (a real store cannot be
    /// made slow on demand; this is the only fake here).
    #[tokio::test]
    async fn a_slow_server_times_out_without_blocking() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let app = axum::Router::new().route(
            "/api/v1/query",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let client = PromQlClient::new(PullSettings {
            url: format!("http://{address}"),
            timeout: Duration::from_millis(300),
            headers: BTreeMap::from([("Authorization".to_string(), "Bearer s3cret".to_string())]),
            tls: TlsConfig::default(),
            join_label: "pod".into(),
            join_by: JoinBy::Pod,
            batch: true,
            failure_watch: true,
        })
        .expect("client");
        let started = std::time::Instant::now();
        let error = client.query("up").await.expect_err("times out");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
        assert!(matches!(error, QueryError::Transport { .. }), "{error}");
        assert!(!error.to_string().contains("s3cret"));
        server.abort();
    }
}

#[cfg(test)]
mod batched_pull_tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// What the stand-in store does with each query.
    #[derive(Clone, Copy)]
    enum Store {
        /// Answers with one series per cluster (and one of a namespace nobody asked for).
        Answers,
        /// HTTP 503.
        Down,
        /// Never answers in time.
        Slow,
    }

    /// A stand-in PromQL endpoint on loopback that records each raw query string (a real store
    /// cannot be made to fail or stall on demand; the e2e test covers a real one).
    async fn store(
        behaviour: Store,
    ) -> (
        std::net::SocketAddr,
        Arc<Mutex<Vec<String>>>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&seen);
        let app = axum::Router::new().route(
            "/api/v1/query",
            axum::routing::get(move |axum::extract::RawQuery(query): axum::extract::RawQuery| {
                let recorded = Arc::clone(&recorded);
                async move {
                    if let Ok(mut seen) = recorded.lock() {
                        seen.push(query.unwrap_or_default());
                    }
                    match behaviour {
                        Store::Answers => (
                            axum::http::StatusCode::OK,
                            r#"{"status":"success","data":{"resultType":"vector","result":[
                                {"metric":{"pod":"a","namespace":"shop","container":"web"},"value":[1700000000,"0.5"]},
                                {"metric":{"pod":"b","namespace":"pay","container":"web"},"value":[1700000000,"0.25"]},
                                {"metric":{"pod":"a","namespace":"other","container":"web"},"value":[1700000000,"9"]}]}}"#,
                        ),
                        Store::Down => (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down"),
                        Store::Slow => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            (axum::http::StatusCode::OK, "late")
                        }
                    }
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (address, seen, task)
    }

    fn config(address: std::net::SocketAddr) -> crate::config::ValidConfig {
        let endpoints =
            "[{ address: 10.0.0.1, port: 80, pod: a }, { address: 10.0.0.2, port: 80, pod: b }]";
        crate::config::parse(&format!(
            "metrics: {{ prometheus: {{ url: \"http://{address}\", timeout: 300ms }} }}\nclusters:\n  - {{ name: shop, namespace: shop, container: web, endpoints: {endpoints} }}\n  - {{ name: pay, namespace: pay, container: web, endpoints: {endpoints} }}\n"
        ))
        .expect("valid config")
    }

    /// Pulls both clusters once; returns the table, the metrics and how long it took.
    async fn pull_once(
        valid: &crate::config::ValidConfig,
    ) -> (SampleTable, Metrics, std::time::Duration) {
        let settings = valid.adaptive.prometheus.clone().expect("pull settings");
        let plans = TemplatePlans::new(valid.adaptive.query_templates.as_ref(), "pod");
        let client = PromQlClient::new(settings).expect("client");
        let due: Vec<(&str, &ClusterSettings)> = valid
            .adaptive
            .clusters
            .iter()
            .map(|(name, settings)| (name.as_str(), settings))
            .collect();
        let (table, (metrics, _registry)) = (SampleTable::default(), Metrics::registered());
        let started = std::time::Instant::now();
        client
            .pull(&due, &plans, &table, &metrics, None, None)
            .await;
        (table, metrics, started.elapsed())
    }

    fn counted(metrics: &Metrics, cluster: &str, result: &str) -> u64 {
        metrics
            .metric_queries
            .get_or_create(&QueryLabels {
                cluster: cluster.into(),
                signal: "cpu".into(),
                result: result.into(),
            })
            .get()
    }

    #[tokio::test]
    async fn one_query_serves_both_clusters_each_with_its_own_series() {
        let (address, seen, task) = store(Store::Answers).await;
        let valid = config(address);
        let (table, metrics, _) = pull_once(&valid).await;
        let seen = seen.lock().expect("seen").clone();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(
            seen[0].contains("shop") && seen[0].contains("pay"),
            "{seen:?}"
        );
        let cpu = |cluster: &str| -> Vec<Option<f64>> {
            table
                .loads(
                    cluster,
                    &valid.clusters[cluster],
                    std::time::SystemTime::now(),
                )
                .iter()
                .map(|load| load.cpu.map(|reading| reading.value))
                .collect()
        };
        // Pod `b` of shop and pod `a` of pay have no series in their own namespace.
        assert_eq!(cpu("shop"), vec![Some(0.5), None]);
        assert_eq!(cpu("pay"), vec![None, Some(0.25)]);
        for cluster in ["shop", "pay"] {
            assert_eq!(counted(&metrics, cluster, "ok"), 1);
        }
        task.abort();
    }

    #[tokio::test]
    async fn a_failed_or_late_batch_counts_an_error_for_each_of_its_clusters() {
        for behaviour in [Store::Down, Store::Slow] {
            let (address, seen, task) = store(behaviour).await;
            let (table, metrics, took) = pull_once(&config(address)).await;
            assert_eq!(seen.lock().expect("seen").len(), 1);
            assert!(took < Duration::from_secs(3), "took {took:?}");
            for cluster in ["shop", "pay"] {
                assert_eq!(counted(&metrics, cluster, "error"), 1, "{cluster}");
                assert_eq!(counted(&metrics, cluster, "ok"), 0, "{cluster}");
            }
            assert!(table
                .loads(
                    "shop",
                    &config(address).clusters["shop"],
                    std::time::SystemTime::now()
                )
                .iter()
                .all(|load| load.cpu.is_none()));
            task.abort();
        }
    }
}
