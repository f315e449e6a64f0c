//! Prometheus remote-write in: keep the newest samples per series (bounded) and turn counters into rates.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use prost::Message;
use tokio::sync::{mpsc, watch};

use crate::config::adaptive::AdaptiveConfig;
use crate::config::metrics::{ErrorSource, LabelPatterns, RemoteWriteSettings};
use crate::samples::{unix_millis, Arrived, Sample, SampleSet, SampleTable, Signal, SourceKind};
use crate::telemetry::{Metrics, ResultLabels};
use crate::weighting::params::Algorithm;

/// Generated remote-write messages (`proto/prometheus/remote.proto`).
pub mod pb {
    tonic::include_proto!("prometheus");
}

/// Largest decompressed request accepted.
pub const MAX_DECOMPRESSED_BYTES: usize = 64 * 1024 * 1024;
/// Most points kept per series.
const MAX_POINTS: usize = 600;
/// Series whose newest point is older than this are forgotten.
const SERIES_RETENTION: Duration = Duration::from_secs(30 * 60);

/// Why a write request was refused.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Not snappy, or too large once decompressed.
    #[error("body is not a snappy block (remote-write 1.0): {0}")]
    Snappy(String),
    /// Not a `WriteRequest`.
    #[error("body is not a prometheus.WriteRequest: {0}")]
    Protobuf(#[from] prost::DecodeError),
}

/// What one request did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngestStats {
    /// Samples stored.
    pub accepted: usize,
    /// Samples of series outside the configured metrics or labels.
    pub filtered: usize,
    /// Samples of new series refused because `max_series` was reached.
    pub over_limit: usize,
    /// Samples that were NaN, infinite or out of order.
    pub invalid: usize,
}

#[derive(Debug)]
struct Series {
    metric: String,
    labels: BTreeMap<String, String>,
    points: VecDeque<(i64, f64)>,
    /// Whether older points were dropped: then one point left is not a new series.
    trimmed: bool,
}

impl Series {
    /// Whether this is a series of `metric` with every label of `selector`.
    fn is(&self, metric: &str, selector: &BTreeMap<String, String>) -> bool {
        self.metric == metric
            && selector
                .iter()
                .all(|(name, value)| self.labels.get(name) == Some(value))
    }
}

/// Adds `value` to the sample of `key`, stamped with the newest time added.
fn add_to(sums: &mut HashMap<String, Sample>, key: &str, value: f64, time: i64) {
    let entry = sums.entry(key.to_owned()).or_insert(Sample {
        value: 0.0,
        timestamp_ms: time,
    });
    entry.value += value;
    entry.timestamp_ms = entry.timestamp_ms.max(time);
}

/// The newest points of every accepted series, shared by the HTTP handler and the aggregator.
#[derive(Clone, Debug, Default)]
pub struct SeriesStore {
    series: Arc<Mutex<HashMap<String, Series>>>,
}

/// Decodes a remote-write body (snappy block + protobuf).
pub fn decode(body: &[u8]) -> Result<pb::WriteRequest, WriteError> {
    let length =
        snap::raw::decompress_len(body).map_err(|error| WriteError::Snappy(error.to_string()))?;
    if length > MAX_DECOMPRESSED_BYTES {
        return Err(WriteError::Snappy(format!(
            "decompresses to {length} bytes, more than the {MAX_DECOMPRESSED_BYTES} allowed"
        )));
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|error| WriteError::Snappy(error.to_string()))?;
    Ok(pb::WriteRequest::decode(raw.as_slice())?)
}

impl SeriesStore {
    /// Stores the samples of `request` that the settings keep.
    pub fn ingest(&self, request: pb::WriteRequest, settings: &RemoteWriteSettings) -> IngestStats {
        let mut stats = IngestStats::default();
        let Ok(mut store) = self.series.lock() else {
            return stats;
        };
        for series in request.timeseries {
            let labels: BTreeMap<String, String> = series
                .labels
                .into_iter()
                .map(|label| (label.name, label.value))
                .collect();
            let metric = labels.get("__name__").cloned().unwrap_or_default();
            let wanted = metric == settings.cpu_metric
                || settings.rps_metric.as_deref() == Some(metric.as_str())
                || settings.cpu_limit_metric.as_deref() == Some(metric.as_str())
                || matches!(&settings.errors, Some(ErrorSource::Metric(errors)) if *errors == metric);
            let matches = settings
                .match_labels
                .iter()
                .all(|(name, value)| labels.get(name) == Some(value));
            if !wanted || !matches {
                stats.filtered += series.samples.len();
                continue;
            }
            let key = series_key(&labels);
            if !store.contains_key(&key) && store.len() >= settings.max_series {
                stats.over_limit += series.samples.len();
                continue;
            }
            let entry = store.entry(key).or_insert_with(|| Series {
                metric,
                labels,
                points: VecDeque::new(),
                trimmed: false,
            });
            for sample in series.samples {
                let in_order = entry
                    .points
                    .back()
                    .is_none_or(|(last, _)| sample.timestamp > *last);
                if !sample.value.is_finite() || !in_order {
                    stats.invalid += 1;
                    continue;
                }
                entry.points.push_back((sample.timestamp, sample.value));
                stats.accepted += 1;
            }
            while entry.points.len() > MAX_POINTS {
                entry.points.pop_front();
                entry.trimmed = true;
            }
        }
        stats
    }

    /// Number of series held.
    pub fn len(&self) -> usize {
        self.series.lock().map(|store| store.len()).unwrap_or(0)
    }

    /// True when no series is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Per value of `join_label`: the sum of the newest values of the gauge `metric` for series
    /// matching `selector` (and newer than `max_age_ms`), stamped with the newest point used.
    pub fn latest(
        &self,
        metric: &str,
        selector: &BTreeMap<String, String>,
        join_label: &str,
        max_age_ms: i64,
        now_ms: i64,
    ) -> HashMap<String, Sample> {
        let mut sums: HashMap<String, Sample> = HashMap::new();
        let Ok(store) = self.series.lock() else {
            return sums;
        };
        for series in store.values() {
            if !series.is(metric, selector) {
                continue;
            }
            let (Some(key), Some(&(time, value))) =
                (series.labels.get(join_label), series.points.back())
            else {
                continue;
            };
            if now_ms - time > max_age_ms {
                continue;
            }
            add_to(&mut sums, key, value, time);
        }
        sums
    }

    /// Per value of `join_label`: the summed rate of `metric` over `window` for series matching
    /// `selector`, stamped with the newest point used. Old points and series are dropped.
    pub fn rates(
        &self,
        metric: &str,
        selector: &BTreeMap<String, String>,
        join_label: &str,
        window: Duration,
        now_ms: i64,
    ) -> HashMap<String, Sample> {
        self.rates_of(
            metric,
            selector,
            &|_| true,
            None,
            join_label,
            window,
            now_ms,
        )
        .0
    }

    /// Per value of `join_label`: errors per second from the counter `metric` (an error counter,
    /// or the request counter with `patterns` picking its error series), for series matching
    /// `selector`; and the values that have such a series at all.
    ///
    /// A series with no point in the `window` before the newest of its pod's `metric` series is
    /// left out: a process that restarted does not export its old error series again until its
    /// first new error, and that series' last rate must not hold the pod down.
    ///
    /// A series with one point is new: a client library creates an error series (`code="503"`)
    /// at its first error, so where the pod's `requests` series (the request counter) was
    /// scraped before that point within the window, the error counter read 0 then, and its rate
    /// runs from the earliest such scrape, as the request rate does. A failing pod is thus seen
    /// at the first scrape of its errors, not the second. A pod whose series are all new has
    /// no such scrape: unknown until the next.
    #[allow(clippy::too_many_arguments)]
    pub fn error_rates(
        &self,
        metric: &str,
        selector: &BTreeMap<String, String>,
        patterns: Option<&LabelPatterns>,
        requests: &str,
        join_label: &str,
        window: Duration,
        now_ms: i64,
    ) -> (HashMap<String, Sample>, HashSet<String>) {
        let keep =
            |series: &Series| patterns.is_none_or(|patterns| patterns.matches(&series.labels));
        let born = Some(requests);
        self.rates_of(metric, selector, &keep, born, join_label, window, now_ms)
    }

    /// [`Self::rates`] of the series that `keep` accepts, and the join values those series have;
    /// with `born_after`, a one-point series starts from 0 at the earliest point in the window
    /// of its pod's series of that metric (see [`Self::error_rates`]).
    #[allow(clippy::too_many_arguments)]
    fn rates_of(
        &self,
        metric: &str,
        selector: &BTreeMap<String, String>,
        keep: &dyn Fn(&Series) -> bool,
        born_after: Option<&str>,
        join_label: &str,
        window: Duration,
        now_ms: i64,
    ) -> (HashMap<String, Sample>, HashSet<String>) {
        let mut sums: HashMap<String, Sample> = HashMap::new();
        let mut seen = HashSet::new();
        let Ok(mut store) = self.series.lock() else {
            return (sums, seen);
        };
        let retention_ms = i64::try_from(SERIES_RETENTION.as_millis()).unwrap_or(i64::MAX);
        store.retain(|_, series| {
            series
                .points
                .back()
                .is_some_and(|(last, _)| now_ms - last < retention_ms)
        });
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        // The newest point of each pod's series: a series a window older than that is gone (a
        // container that restarted under a new cAdvisor `id`, a process that restarted and has
        // not failed again since), and its last rate must not be added to the live ones.
        let mut pod_newest: HashMap<&str, i64> = HashMap::new();
        for series in store.values() {
            if let (true, Some(key), Some(&(newest, _))) = (
                series.is(metric, selector),
                series.labels.get(join_label),
                series.points.back(),
            ) {
                let entry = pod_newest.entry(key.as_str()).or_insert(newest);
                *entry = (*entry).max(newest);
            }
        }
        let pod_newest: HashMap<String, i64> = pod_newest
            .into_iter()
            .map(|(key, newest)| (key.to_owned(), newest))
            .collect();
        // The times each pod's reference series were scraped at, for its series born since;
        // gathered only for pods that have such a series (rarely any).
        let mut scraped: HashMap<String, BTreeSet<i64>> = HashMap::new();
        if let Some(reference) = born_after {
            for series in store.values() {
                if series.points.len() == 1
                    && !series.trimmed
                    && series.is(metric, selector)
                    && keep(series)
                {
                    if let Some(key) = series.labels.get(join_label) {
                        scraped.entry(key.clone()).or_default();
                    }
                }
            }
            if !scraped.is_empty() {
                for series in store.values() {
                    if !series.is(reference, selector) {
                        continue;
                    }
                    let times = series
                        .labels
                        .get(join_label)
                        .and_then(|key| scraped.get_mut(key));
                    if let Some(times) = times {
                        times.extend(series.points.iter().map(|(time, _)| *time));
                    }
                }
            }
        }
        for series in store.values_mut() {
            if !series.is(metric, selector) || !keep(series) {
                continue;
            }
            let Some(key) = series.labels.get(join_label) else {
                continue;
            };
            let Some(&(newest, _)) = series.points.back() else {
                continue;
            };
            if pod_newest
                .get(key)
                .is_some_and(|pod| pod.saturating_sub(newest) > window_ms)
            {
                continue;
            }
            seen.insert(key.clone());
            while series
                .points
                .front()
                .is_some_and(|(time, _)| newest - time > 2 * window_ms)
            {
                series.points.pop_front();
                series.trimmed = true;
            }
            let rate = match (series.points.len(), series.trimmed, scraped.get(key)) {
                (1, false, Some(times)) => born_rate(newest, series.points[0].1, times, window_ms),
                _ => counter_rate(&series.points, newest - window_ms),
            };
            let Some(rate) = rate else {
                continue;
            };
            add_to(&mut sums, key, rate, newest);
        }
        (sums, seen)
    }
}

/// Per-second rate of a counter first seen at `at_ms` with `value`, that read 0 at the earliest
/// of `scraped` within `window_ms` before it; none without such a scrape.
fn born_rate(at_ms: i64, value: f64, scraped: &BTreeSet<i64>, window_ms: i64) -> Option<f64> {
    let since = scraped
        .range(at_ms.saturating_sub(window_ms)..at_ms)
        .next()?;
    let seconds = (at_ms - since) as f64 / 1000.0;
    (seconds > 0.0 && value >= 0.0).then_some(value / seconds)
}

/// Per-second increase of a counter over the points at or after `since_ms`, allowing resets.
pub fn counter_rate(points: &VecDeque<(i64, f64)>, since_ms: i64) -> Option<f64> {
    let window: Vec<&(i64, f64)> = points
        .iter()
        .filter(|(time, _)| *time >= since_ms)
        .collect();
    let (first, last) = (window.first()?, window.last()?);
    let seconds = (last.0 - first.0) as f64 / 1000.0;
    if window.len() < 2 || seconds <= 0.0 {
        return None;
    }
    let increase: f64 = window
        .windows(2)
        .map(|pair| {
            if pair[1].1 >= pair[0].1 {
                pair[1].1 - pair[0].1
            } else {
                pair[1].1
            }
        })
        .sum();
    Some(increase / seconds)
}

fn series_key(labels: &BTreeMap<String, String>) -> String {
    let mut key = String::new();
    for (name, value) in labels {
        key.push_str(name);
        key.push('\u{1}');
        key.push_str(value);
        key.push('\u{2}');
    }
    key
}

/// Label selector for a cluster's remote-written series: its namespace and container, when set.
pub fn cluster_selector(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(name, _)| matches!(name.as_str(), "namespace" | "container"))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// Turns stored series into samples for every adaptive cluster every second (or the shortest
/// tick), and names on `arrived` the clusters whose samples are newer than the pass before (a
/// scrape came), whose weights are then due.
pub async fn aggregate(
    mut config: watch::Receiver<Arc<AdaptiveConfig>>,
    store: SeriesStore,
    table: SampleTable,
    arrived: mpsc::Sender<Arrived>,
) {
    let mut newest: HashMap<String, i64> = HashMap::new();
    loop {
        let current = config.borrow_and_update().clone();
        if let Some(settings) = &current.remote_write {
            let written = aggregate_once(&current, settings, &store, &table, SystemTime::now());
            let clusters = newer_clusters(&mut newest, written);
            if !clusters.is_empty() {
                let samples = Arrived {
                    source: SourceKind::RemoteWrite,
                    clusters,
                    failure_watch: false,
                };
                // Fails only once the engine has stopped, and then nothing is served any more.
                let _ = arrived.send(samples).await;
            }
        }
        let wait = tokio::time::sleep(current.shortest_tick().min(Duration::from_secs(1)));
        tokio::select! {
            _ = wait => {}
            changed = config.changed() => if changed.is_err() { return },
        }
    }
}

/// Raises `cluster`'s newest sample time in `newest` to the newest of `samples`.
fn note_newest(
    newest: &mut BTreeMap<String, i64>,
    cluster: &str,
    samples: &HashMap<String, Sample>,
) {
    if let Some(at) = samples.values().map(|sample| sample.timestamp_ms).max() {
        let cluster_newest = newest.entry(cluster.to_string()).or_insert(at);
        *cluster_newest = (*cluster_newest).max(at);
    }
}

/// The clusters of `written` (cluster, newest sample) whose newest sample is newer than in
/// `newest`, which is updated; clusters no longer written are forgotten.
fn newer_clusters(
    newest: &mut HashMap<String, i64>,
    written: BTreeMap<String, i64>,
) -> Vec<String> {
    let newer = written
        .iter()
        .filter(|(cluster, at)| newest.get(*cluster).is_none_or(|before| *at > before))
        .map(|(cluster, _)| cluster.clone())
        .collect();
    *newest = written.into_iter().collect();
    newer
}

/// One aggregation pass (separate for tests): the newest CPU, request-rate or error sample of
/// each cluster that has any, in UNIX ms.
pub fn aggregate_once(
    config: &AdaptiveConfig,
    settings: &RemoteWriteSettings,
    store: &SeriesStore,
    table: &SampleTable,
    now: SystemTime,
) -> BTreeMap<String, i64> {
    let mut newest = BTreeMap::new();
    let now_ms = unix_millis(now);
    for (cluster, cluster_settings) in &config.clusters {
        if cluster_settings.params.algorithm == Algorithm::Static {
            continue;
        }
        let selector = cluster_selector(&cluster_settings.labels);
        // An application's request counter carries the pod's namespace but usually no
        // `container` label (that one comes from cAdvisor), as in the default `rps_query`.
        let mut rps_selector = selector.clone();
        rps_selector.remove("container");
        let metrics = [
            (Signal::Cpu, Some(&settings.cpu_metric), &selector),
            (Signal::Rps, settings.rps_metric.as_ref(), &rps_selector),
        ];
        if let Some(metric) = &settings.cpu_limit_metric {
            let mut limit_selector = selector.clone();
            limit_selector.extend(settings.cpu_limit_labels.clone());
            // A limit changes rarely: a point is good for as long as a series is kept.
            let retention_ms = i64::try_from(SERIES_RETENTION.as_millis()).unwrap_or(i64::MAX);
            let samples = store.latest(
                metric,
                &limit_selector,
                &settings.join_label,
                retention_ms,
                now_ms,
            );
            table.replace(
                SourceKind::RemoteWrite,
                cluster,
                Signal::CpuLimit,
                SampleSet {
                    join_by: settings.join_by,
                    samples,
                },
            );
        }
        let mut rps = None;
        for (signal, metric, selector) in metrics {
            let Some(metric) = metric else { continue };
            let samples = store.rates(
                metric,
                selector,
                &settings.join_label,
                settings.rate_window,
                now_ms,
            );
            note_newest(&mut newest, cluster, &samples);
            if signal == Signal::Rps {
                rps = Some(samples.clone());
            }
            table.replace(
                SourceKind::RemoteWrite,
                cluster,
                signal,
                SampleSet {
                    join_by: settings.join_by,
                    samples,
                },
            );
        }
        if let (Some(errors), Some(rps_metric), Some(rps)) =
            (&settings.errors, &settings.rps_metric, &rps)
        {
            let samples = errors_per_pod(
                store,
                errors,
                rps_metric,
                &rps_selector,
                settings,
                rps,
                now_ms,
            );
            note_newest(&mut newest, cluster, &samples);
            table.replace(
                SourceKind::RemoteWrite,
                cluster,
                Signal::Errors,
                SampleSet {
                    join_by: settings.join_by,
                    samples,
                },
            );
        }
    }
    newest
}

/// Errors per second per join value, with a zero for every value that has a request rate but no
/// error series at all (labelled series such as `code="503"` appear at their first use, so a pod
/// that never failed has none). A value whose error series has no rate yet (one point, and no
/// earlier scrape of its request series: see [`SeriesStore::error_rates`]) is left out:
/// unknown, not zero.
fn errors_per_pod(
    store: &SeriesStore,
    errors: &ErrorSource,
    rps_metric: &str,
    selector: &BTreeMap<String, String>,
    settings: &RemoteWriteSettings,
    rps: &HashMap<String, Sample>,
    now_ms: i64,
) -> HashMap<String, Sample> {
    let (metric, patterns) = match errors {
        ErrorSource::Metric(metric) => (metric.as_str(), None),
        ErrorSource::Labels(patterns) => (rps_metric, Some(patterns)),
    };
    let (mut samples, seen) = store.error_rates(
        metric,
        selector,
        patterns,
        rps_metric,
        &settings.join_label,
        settings.rate_window,
        now_ms,
    );
    for (key, sample) in rps {
        if !seen.contains(key) {
            samples.insert(
                key.clone(),
                Sample {
                    value: 0.0,
                    timestamp_ms: sample.timestamp_ms,
                },
            );
        }
    }
    samples
}

/// Records an ingest in the metrics.
pub fn record(metrics: &Metrics, stats: IngestStats) {
    for (result, count) in [
        ("accepted", stats.accepted),
        ("filtered", stats.filtered),
        ("over_limit", stats.over_limit),
        ("invalid", stats.invalid),
    ] {
        if count > 0 {
            metrics
                .remote_write_samples
                .get_or_create(&ResultLabels {
                    result: result.into(),
                })
                .inc_by(count as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RemoteWriteSettings {
        RemoteWriteSettings {
            cpu_metric: "cpu_total".into(),
            rps_metric: Some("requests_total".into()),
            cpu_limit_metric: Some("limits".into()),
            cpu_limit_labels: BTreeMap::from([("resource".to_string(), "cpu".to_string())]),
            errors: None,
            join_label: "pod".into(),
            join_by: Default::default(),
            rate_window: Duration::from_secs(60),
            max_series: 3,
            match_labels: BTreeMap::from([("namespace".to_string(), "shop".to_string())]),
            max_body_bytes: 1 << 20,
        }
    }

    fn series(metric: &str, pod: &str, namespace: &str, points: &[(i64, f64)]) -> pb::TimeSeries {
        pb::TimeSeries {
            labels: [("__name__", metric), ("namespace", namespace), ("pod", pod)]
                .iter()
                .map(|(name, value)| pb::Label {
                    name: name.to_string(),
                    value: value.to_string(),
                })
                .collect(),
            samples: points
                .iter()
                .map(|(timestamp, value)| pb::Sample {
                    value: *value,
                    timestamp: *timestamp,
                })
                .collect(),
        }
    }

    #[test]
    fn counter_rate_handles_resets() {
        let points: VecDeque<(i64, f64)> = [(0, 10.0), (1000, 12.0), (2000, 1.0), (3000, 3.0)]
            .into_iter()
            .collect();
        // increases: 2, 1 (reset to 1), 2 = 5 over 3 s
        let rate = counter_rate(&points, 0).expect("rate");
        assert!((rate - 5.0 / 3.0).abs() < 1e-9, "{rate}");
        assert_eq!(counter_rate(&points, 3000), None, "one point is no rate");
    }

    #[test]
    fn ingest_filters_caps_and_rates_by_pod() {
        let store = SeriesStore::default();
        let request = pb::WriteRequest {
            timeseries: vec![
                series(
                    "cpu_total",
                    "a",
                    "shop",
                    &[(0, 0.0), (10_000, 5.0), (20_000, 10.0)],
                ),
                series("cpu_total", "b", "shop", &[(0, 0.0), (20_000, 40.0)]),
                series("cpu_total", "c", "other", &[(0, 0.0)]),
                series("unrelated", "a", "shop", &[(0, 0.0)]),
                series(
                    "requests_total",
                    "a",
                    "shop",
                    &[(0, 0.0), (20_000, f64::NAN), (20_000, 200.0)],
                ),
                series("requests_total", "b", "shop", &[(0, 0.0)]),
            ],
        };
        let stats = store.ingest(request, &settings());
        assert_eq!(
            stats,
            IngestStats {
                accepted: 7,
                filtered: 2,
                over_limit: 1,
                invalid: 1
            }
        );
        assert_eq!(store.len(), 3);
        let selector = BTreeMap::from([("namespace".to_string(), "shop".to_string())]);
        let cpu = store.rates(
            "cpu_total",
            &selector,
            "pod",
            Duration::from_secs(60),
            21_000,
        );
        assert!((cpu["a"].value - 0.5).abs() < 1e-9);
        assert!((cpu["b"].value - 2.0).abs() < 1e-9);
        assert_eq!(cpu["a"].timestamp_ms, 20_000);
        let rps = store.rates(
            "requests_total",
            &selector,
            "pod",
            Duration::from_secs(60),
            21_000,
        );
        assert!((rps["a"].value - 10.0).abs() < 1e-9);
    }

    #[test]
    fn decode_rejects_garbage_and_reads_snappy_protobuf() {
        assert!(matches!(
            decode(b"not snappy at all"),
            Err(WriteError::Snappy(_)) | Err(WriteError::Protobuf(_))
        ));
        let request = pb::WriteRequest {
            timeseries: vec![series("cpu_total", "a", "shop", &[(1, 1.0)])],
        };
        let body = snap::raw::Encoder::new()
            .compress_vec(&request.encode_to_vec())
            .expect("compress");
        assert_eq!(decode(&body).expect("decodes"), request);
    }

    fn with_code(metric: &str, pod: &str, code: &str, points: &[(i64, f64)]) -> pb::TimeSeries {
        let mut series = series(metric, pod, "shop", points);
        series.labels.push(pb::Label {
            name: "code".into(),
            value: code.into(),
        });
        series
    }

    fn one_cluster(settings: &RemoteWriteSettings) -> AdaptiveConfig {
        let text = "metrics: { remote_write: { enabled: true } }\nclusters: [{ name: c, namespace: shop }]\n";
        let mut config = crate::config::parse(text).expect("valid").adaptive;
        config.remote_write = Some(settings.clone());
        config
    }

    fn errors_of(table: &SampleTable, pods: &[&str], now: SystemTime) -> Vec<Option<f64>> {
        let endpoints: Vec<crate::model::Endpoint> = pods
            .iter()
            .map(|pod| crate::model::Endpoint {
                address: "10.0.0.1".parse().expect("ip"),
                port: 80,
                configured_weight: None,
                pod: Some((*pod).to_string()),
                node: None,
                locality: Default::default(),
                health: crate::model::HealthStatus::Healthy,
            })
            .collect();
        table
            .loads("c", &endpoints, now)
            .iter()
            .map(|load| load.errors.map(|reading| reading.value))
            .collect()
    }

    fn assert_near(found: &[Option<f64>], expected: &[Option<f64>]) {
        assert_eq!(found.len(), expected.len(), "{found:?}");
        for (found, expected) in found.iter().zip(expected) {
            match (found, expected) {
                (Some(found), Some(expected)) => {
                    assert!((found - expected).abs() < 1e-9, "{found} != {expected}")
                }
                _ => assert_eq!(found, expected),
            }
        }
    }

    #[test]
    fn status_labels_pick_the_error_series_of_the_request_counter() {
        let text = "metrics: { remote_write: { enabled: true, rps_metric: requests_total, rate_window: 60s, error_labels: { code: \"5..\" } } }\n";
        let settings = crate::config::parse(text)
            .expect("valid")
            .adaptive
            .remote_write
            .expect("remote-write");
        let store = SeriesStore::default();
        let request = pb::WriteRequest {
            timeseries: vec![
                // a: 100 rps, of which 503s at 20/s and 500s at 10/s; the 503 counter resets.
                with_code("requests_total", "a", "200", &[(0, 0.0), (10_000, 700.0)]),
                with_code(
                    "requests_total",
                    "a",
                    "503",
                    &[(0, 100.0), (5_000, 200.0), (10_000, 100.0)],
                ),
                with_code("requests_total", "a", "500", &[(0, 0.0), (10_000, 100.0)]),
                // b: no error series at all (a client library creates `code="503"` at the first
                // 503): it served without errors.
                with_code("requests_total", "b", "200", &[(0, 0.0), (10_000, 500.0)]),
                // c: its first 503s arrived in the last scrape: the series is new, so it read 0
                // at the scrape before (its 200 series was scraped then): 3 over 10 s.
                with_code("requests_total", "c", "200", &[(0, 0.0), (10_000, 500.0)]),
                with_code("requests_total", "c", "503", &[(10_000, 3.0)]),
                // f: every series of the pod is new: no earlier scrape, unknown.
                with_code("requests_total", "f", "200", &[(10_000, 50.0)]),
                with_code("requests_total", "f", "503", &[(10_000, 3.0)]),
                // d: a 4xx is not an error here, and "1500" does not match the anchored "5..".
                with_code("requests_total", "d", "404", &[(0, 0.0), (10_000, 50.0)]),
                with_code("requests_total", "d", "1500", &[(0, 0.0), (10_000, 50.0)]),
                // e: an old 503 series from before a restart, not written for 2 minutes.
                with_code(
                    "requests_total",
                    "e",
                    "200",
                    &[(0, 0.0), (120_000, 1200.0), (130_000, 1300.0)],
                ),
                with_code("requests_total", "e", "503", &[(0, 0.0), (10_000, 900.0)]),
            ],
        };
        let settings = RemoteWriteSettings {
            max_series: 100,
            match_labels: BTreeMap::new(),
            ..settings
        };
        assert_eq!(store.ingest(request, &settings).accepted, 23);
        let table = SampleTable::default();
        let config = one_cluster(&settings);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(131);
        aggregate_once(&config, &settings, &store, &table, now);
        // a: 503s 100 + 0 (reset to 100: counted as 100) = 200 over 10 s, plus 500s 10/s.
        let found = errors_of(&table, &["a", "b", "c", "d", "e", "f", "missing"], now);
        assert_near(
            &found,
            &[
                Some(30.0),
                Some(0.0),
                Some(0.3),
                Some(0.0),
                Some(0.0),
                None,
                None,
            ],
        );
        // The zero of b is as old as b's request rate.
        let endpoints = [crate::model::Endpoint {
            address: "10.0.0.2".parse().expect("ip"),
            port: 80,
            configured_weight: None,
            node: None,
            pod: Some("b".into()),
            locality: Default::default(),
            health: crate::model::HealthStatus::Healthy,
        }];
        let load = &table.loads("c", &endpoints, now)[0];
        assert_eq!(
            load.errors.map(|reading| reading.age),
            Some(Duration::from_secs(121))
        );
        assert!((load.rps.expect("rps").value - 50.0).abs() < 1e-9);
        let rps = |pod: &str| {
            let endpoint = crate::model::Endpoint {
                pod: Some(pod.into()),
                ..endpoints[0].clone()
            };
            table.loads("c", &[endpoint], now)[0]
                .rps
                .map(|reading| reading.value)
        };
        // Errors are a part of the requests: a's rate counts every code ...
        assert_near(&[rps("a")], &[Some(100.0)]);
        // ... but not e's gone 503 series (its rate would count 90/s more).
        assert_near(&[rps("e")], &[Some(10.0)]);
    }

    #[test]
    fn an_error_counter_is_kept_and_rated() {
        let plain = settings();
        let settings = RemoteWriteSettings {
            errors: Some(ErrorSource::Metric("failures_total".into())),
            max_series: 100,
            ..settings()
        };
        let store = SeriesStore::default();
        let request = pb::WriteRequest {
            timeseries: vec![
                series("requests_total", "a", "shop", &[(0, 0.0), (10_000, 1000.0)]),
                series("failures_total", "a", "shop", &[(0, 5.0), (10_000, 905.0)]),
                series("requests_total", "b", "shop", &[(0, 0.0), (10_000, 1000.0)]),
                series("failures_total", "b", "shop", &[(0, 7.0), (10_000, 7.0)]),
                series("requests_total", "c", "shop", &[(0, 0.0), (10_000, 1000.0)]),
            ],
        };
        let stats = store.ingest(request, &settings);
        assert_eq!((stats.accepted, stats.filtered), (10, 0));
        let table = SampleTable::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(11);
        let written = aggregate_once(&one_cluster(&settings), &settings, &store, &table, now);
        assert_eq!(written, BTreeMap::from([("c".to_string(), 10_000)]));
        assert_near(
            &errors_of(&table, &["a", "b", "c"], now),
            &[Some(90.0), Some(0.0), Some(0.0)],
        );
        // Without an error source no error samples are written.
        let table = SampleTable::default();
        aggregate_once(&one_cluster(&plain), &plain, &store, &table, now);
        assert_near(&errors_of(&table, &["a"], now), &[None]);
    }

    #[test]
    fn a_cluster_is_named_when_its_samples_are_newer_than_the_pass_before() {
        let mut newest = HashMap::new();
        let mut pass = |written: &[(&str, i64)]| {
            let written = written
                .iter()
                .map(|(cluster, at)| ((*cluster).to_string(), *at))
                .collect();
            newer_clusters(&mut newest, written)
        };
        assert_eq!(pass(&[("a", 10), ("b", 10)]), ["a", "b"]);
        assert_eq!(pass(&[("a", 10), ("b", 25)]), ["b"], "only b was scraped");
        assert!(pass(&[("a", 10), ("b", 25)]).is_empty());
        // A cluster without samples for a pass is named again when they come back.
        assert!(pass(&[("b", 25)]).is_empty());
        assert_eq!(pass(&[("a", 10), ("b", 25)]), ["a"]);
    }

    fn limit(pod: &str, resource: &str, time: i64, value: f64) -> pb::TimeSeries {
        let mut series = series("limits", pod, "shop", &[(time, value)]);
        series.labels.push(pb::Label {
            name: "resource".into(),
            value: resource.into(),
        });
        series
    }

    #[test]
    fn cpu_limits_are_the_newest_gauge_value_of_the_cpu_rows() {
        let store = SeriesStore::default();
        let settings = RemoteWriteSettings {
            max_series: 10,
            ..settings()
        };
        let request = pb::WriteRequest {
            timeseries: vec![
                limit("a", "cpu", 1_000, 2.0),
                limit("a", "memory", 1_000, 4e9),
                limit("b", "cpu", 1_000, 4.0),
            ],
        };
        assert_eq!(store.ingest(request, &settings).accepted, 3);
        let later = pb::WriteRequest {
            timeseries: vec![limit("b", "cpu", 2_000, 0.5)],
        };
        store.ingest(later, &settings);
        let selector = BTreeMap::from([
            ("namespace".to_string(), "shop".to_string()),
            ("resource".to_string(), "cpu".to_string()),
        ]);
        let limits = store.latest("limits", &selector, "pod", 60_000, 3_000);
        assert_eq!(limits.len(), 2);
        assert!(
            (limits["a"].value - 2.0).abs() < 1e-12,
            "memory row left out"
        );
        assert!((limits["b"].value - 0.5).abs() < 1e-12, "newest value");
        assert_eq!(limits["b"].timestamp_ms, 2_000);
        // Too old: left out.
        assert!(store
            .latest("limits", &selector, "pod", 500, 3_000)
            .is_empty());
    }
}
