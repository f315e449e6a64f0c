//! Per-endpoint load from every reporting Envoy: a short window of report intervals per stream,
//! summed over the streams into completion, error and in-flight figures, Little's-law latency and
//! the ORCA CPU mean, written into the shared [`SampleTable`] as [`SourceKind::LoadReports`].
//!
//! Each stream keeps, per cluster, the last [`WINDOW_REPORTS`] accepted intervals, and per
//! endpoint its counts in those intervals and its in-progress snapshots at their starts and ends.
//! A stream's rate is its completed requests over the window's seconds, so one report with few
//! requests is not the whole truth, and a change is fully seen after two intervals; its requests
//! in flight are the mean of those snapshots, because Little's law (latency = in flight / rate)
//! holds for the time average of what is in flight, and a single snapshot of a few requests is
//! mostly noise (with 2 intervals of 1 s, 3 snapshots: a change is half seen after one report).
//! The endpoint's figures are the sum over the streams that reported within [`STALE_INTERVALS`]
//! intervals; a stream that ends (or falls silent) stops counting. The sums are published once
//! per interval as a report comes, and the engine told which clusters they cover.
//!
//! The first report of a stream for a cluster is not used for rates: after a reconnect Envoy's
//! first report covers the outage (e.g. `load_report_interval` 5 s) with its counts reset, so a
//! rate over its interval would be too low, and a rate over a guessed interval could count twice
//! what the old stream already reported. Dropping it costs a new Envoy one interval (1 s) and
//! gives the in-progress snapshot the impossible-counter checks start from.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use envoy_types::pb::{
    envoy::config::{
        core::v3::{address, socket_address::PortSpecifier, Address},
        endpoint::v3::{ClusterStats, UpstreamEndpointStats},
    },
    google::protobuf,
};

use tokio::sync::{mpsc, Notify};

use super::wire::EncodedClusterStats;
use crate::config::metrics::JoinBy;
use crate::samples::{unix_millis, Arrived, Sample, SampleSet, SampleTable, Signal, SourceKind};
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::telemetry::{EndpointLabels, Metrics};

/// Intervals per stream and cluster that a rate is taken over.
pub const WINDOW_REPORTS: usize = 2;
/// A stream whose last report for a cluster is older than this many intervals stops counting.
pub const STALE_INTERVALS: u32 = 3;
/// The ORCA metric read as CPU utilization (Envoy's name for `cpu_utilization` in
/// `lrs_report_endpoint_metrics`).
pub const CPU_METRIC: &str = "cpu_utilization";
/// The CPU limit published with ORCA CPU: the metric is already a fraction of the limit.
pub const ORCA_CPU_LIMIT: f64 = 1.0;

/// Shortest credible report interval.
const MIN_INTERVAL: Duration = Duration::from_millis(1);
/// Longest credible report interval (Envoy reports every second to minute).
const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// Most completed requests per second one Envoy can report for one endpoint.
const MAX_RATE: f64 = 1e7;
/// Most requests one Envoy can have in flight to one endpoint.
const MAX_IN_PROGRESS: u64 = 10_000_000;
/// Largest credible mean `cpu_utilization` (ORCA allows above 1 past soft limits, not this).
const MAX_CPU_UTILIZATION: f64 = 100.0;

/// How much earlier than a whole interval after the last publish a report may come and still
/// be published: Envoy's report timer is not exact.
const PUBLISH_SLACK: Duration = Duration::from_millis(50);

/// How long a publish waits after the report that makes it due, for the reports that come with
/// it.
const PUBLISH_GATHER: Duration = Duration::from_millis(20);

/// Whether the sums are due again `since` the last publish: once per interval, a little early
/// allowed (see [`PUBLISH_SLACK`]).
fn publish_due(since: Duration, interval: Duration) -> bool {
    since + PUBLISH_SLACK >= interval
}

/// What happened to one `ClusterStats` of a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Used.
    Accepted,
    /// The stream's first report for the cluster: its in-progress snapshot is kept, its counts
    /// are not used (see the module docs).
    First,
    /// A cluster we do not serve.
    UnknownCluster,
    /// `load_report_interval` missing, zero, negative or absurd.
    BadInterval,
    /// Counters that cannot be true (overflow, more completed than could have been in flight,
    /// absurd rates, NaN or negative metrics).
    ImpossibleCounters,
    /// LRS is not enabled (`metrics.load_reports.enabled`): the report is ignored.
    Disabled,
    /// A served cluster's stats that do not decode.
    Malformed,
}

impl Outcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::First => "first_report",
            Self::UnknownCluster => "unknown_cluster",
            Self::BadInterval => "bad_interval",
            Self::ImpossibleCounters => "impossible_counters",
            Self::Disabled => "disabled",
            Self::Malformed => "malformed",
        }
    }
}

/// What one report did, for metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    /// One outcome per `ClusterStats`, in order.
    pub clusters: Vec<Outcome>,
    /// Endpoint entries used.
    pub endpoints: u64,
    /// Endpoint entries for endpoints the cluster does not have (or unreadable addresses).
    pub unknown_endpoints: u64,
}

/// Counts of one endpoint in one interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Counts {
    success: u64,
    error: u64,
    cpu_requests: u64,
    cpu_total: f64,
}

impl Counts {
    fn is_zero(&self) -> bool {
        self.success == 0 && self.error == 0 && self.cpu_requests == 0
    }
}

/// One endpoint as one stream saw it: counts aligned with the newest intervals of its cluster
/// window (older intervals it has no entry for had no activity).
#[derive(Clone, Debug, Default)]
struct EndpointWindow {
    counts: VecDeque<Counts>,
    /// The newest `total_requests_in_progress`.
    in_progress: u64,
    /// The in-progress snapshots at the start and the end of each interval of the window.
    snapshots: VecDeque<u64>,
}

impl EndpointWindow {
    /// Requests in flight over the window: the mean of its snapshots. Little's law holds for
    /// the time average of what is in flight; one snapshot of a few requests is mostly noise.
    fn mean_in_flight(&self) -> f64 {
        if self.snapshots.is_empty() {
            return self.in_progress as f64;
        }
        self.snapshots
            .iter()
            .map(|&value| value as f64)
            .sum::<f64>()
            / self.snapshots.len() as f64
    }
}

/// One cluster as one stream reports it.
#[derive(Clone, Debug)]
struct ClusterWindow {
    /// Seconds of the accepted intervals, oldest first (empty until the second report).
    seconds: VecDeque<f64>,
    endpoints: HashMap<SocketAddr, EndpointWindow>,
    last_report: Instant,
    last_report_ms: i64,
}

/// Everything one stream reported.
#[derive(Debug, Default)]
struct StreamWindows {
    clusters: HashMap<String, ClusterWindow>,
}

/// The clusters and endpoints of one snapshot, for checking reports against what we serve.
#[derive(Debug)]
struct ServedIndex {
    snapshot: Arc<Snapshot>,
    clusters: HashMap<String, HashSet<SocketAddr>>,
}

impl ServedIndex {
    fn build(snapshot: Arc<Snapshot>) -> Self {
        let clusters = snapshot
            .clusters
            .iter()
            .map(|(name, resource)| {
                let endpoints = resource
                    .endpoints
                    .iter()
                    .map(|served| SocketAddr::new(served.endpoint.address, served.endpoint.port))
                    .collect();
                (name.clone(), endpoints)
            })
            .collect();
        Self { snapshot, clusters }
    }
}

/// The per-endpoint figures of one cluster after summing the streams (public for tests).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EndpointFigures {
    /// Completed requests (success + error) per second.
    pub rps: f64,
    /// Errors per second.
    pub errors: f64,
    /// Requests in flight: the sum over the streams of the mean of their window's snapshots.
    pub in_flight: f64,
    /// Little's law: in flight / completions per second (none without completions).
    pub latency: Option<f64>,
    /// Mean ORCA `cpu_utilization` per request that carried it.
    pub cpu: Option<f64>,
    /// Streams whose figures are in the sum.
    pub streams: usize,
}

/// Every stream's windows, the served-endpoint index and where the sums go.
#[derive(Clone, Debug)]
pub struct LoadReports {
    streams: Arc<Mutex<HashMap<u64, Arc<Mutex<StreamWindows>>>>>,
    index: Arc<Mutex<Option<Arc<ServedIndex>>>>,
    store: SnapshotStore,
    table: SampleTable,
    metrics: Metrics,
    interval: Duration,
    gauged: Arc<Mutex<HashSet<EndpointLabels>>>,
    /// Woken by every recorded report, so the sums are published when the reports come.
    arrived: Arc<Notify>,
}

/// One stream's handle: records its reports; dropping it removes its contributions.
#[derive(Debug)]
pub struct StreamReports {
    reports: LoadReports,
    stream_id: u64,
    windows: Arc<Mutex<StreamWindows>>,
}

impl LoadReports {
    /// Aggregates reports requested every `interval`, checked against `store`'s snapshots,
    /// into `table`.
    pub fn new(
        store: SnapshotStore,
        table: SampleTable,
        metrics: Metrics,
        interval: Duration,
    ) -> Self {
        Self {
            streams: Arc::default(),
            index: Arc::default(),
            store,
            table,
            metrics,
            interval,
            gauged: Arc::default(),
            arrived: Arc::default(),
        }
    }

    /// The interval Envoys are asked to report at.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Starts recording the stream `stream_id`.
    pub fn open_stream(&self, stream_id: u64) -> StreamReports {
        let windows = Arc::new(Mutex::new(StreamWindows::default()));
        if let Ok(mut streams) = self.streams.lock() {
            streams.insert(stream_id, Arc::clone(&windows));
        }
        StreamReports {
            reports: self.clone(),
            stream_id,
            windows,
        }
    }

    /// Streams being recorded.
    pub fn stream_count(&self) -> usize {
        self.streams
            .lock()
            .map(|streams| streams.len())
            .unwrap_or(0)
    }

    fn served(&self) -> Arc<ServedIndex> {
        let snapshot = self.store.current();
        let Ok(mut index) = self.index.lock() else {
            return Arc::new(ServedIndex::build(snapshot));
        };
        match index.as_ref() {
            Some(current) if Arc::ptr_eq(&current.snapshot, &snapshot) => Arc::clone(current),
            _ => {
                let built = Arc::new(ServedIndex::build(snapshot));
                *index = Some(Arc::clone(&built));
                built
            }
        }
    }

    /// How long a stream's last report for a cluster keeps counting.
    fn stale_after(&self) -> Duration {
        self.interval * STALE_INTERVALS + Duration::from_millis(500)
    }

    /// Sums every fresh stream's windows of `cluster` at `now`; the newest report time (UNIX ms)
    /// among them. Every served endpoint of a cluster that some stream reports has figures
    /// (zero when no Envoy sent it a request).
    pub fn figures(
        &self,
        now: Instant,
    ) -> HashMap<String, (i64, HashMap<SocketAddr, EndpointFigures>)> {
        let served = self.served();
        let stale_after = self.stale_after();
        let streams: Vec<Arc<Mutex<StreamWindows>>> = match self.streams.lock() {
            Ok(streams) => streams.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        #[derive(Default)]
        struct Sum {
            rps: f64,
            errors: f64,
            in_flight: f64,
            cpu_requests: u64,
            cpu_total: f64,
            streams: usize,
        }
        let mut sums: HashMap<String, (i64, HashMap<SocketAddr, Sum>)> = HashMap::new();
        for stream in streams {
            let Ok(mut windows) = stream.lock() else {
                continue;
            };
            // A silent stream's old windows are dropped here, so memory stays bounded by what
            // is reported.
            windows.clusters.retain(|_, window| {
                now.saturating_duration_since(window.last_report) <= stale_after
            });
            for (cluster, window) in &windows.clusters {
                let seconds: f64 = window.seconds.iter().sum();
                if seconds <= 0.0 || !served.clusters.contains_key(cluster) {
                    continue;
                }
                let entry = sums.entry(cluster.clone()).or_default();
                entry.0 = entry.0.max(window.last_report_ms);
                for (address, endpoint) in &window.endpoints {
                    let sum = entry.1.entry(*address).or_default();
                    let (mut completed, mut errors) = (0u64, 0u64);
                    for counts in &endpoint.counts {
                        completed =
                            completed.saturating_add(counts.success.saturating_add(counts.error));
                        errors = errors.saturating_add(counts.error);
                        sum.cpu_requests = sum.cpu_requests.saturating_add(counts.cpu_requests);
                        sum.cpu_total += counts.cpu_total;
                    }
                    sum.rps += completed as f64 / seconds;
                    sum.errors += errors as f64 / seconds;
                    sum.in_flight += endpoint.mean_in_flight();
                    sum.streams += 1;
                }
            }
        }
        sums.into_iter()
            .filter_map(|(cluster, (newest, sums))| {
                let endpoints = served.clusters.get(&cluster)?;
                let figures = endpoints
                    .iter()
                    .map(|address| {
                        let figures = match sums.get(address) {
                            Some(sum) => EndpointFigures {
                                rps: sum.rps,
                                errors: sum.errors,
                                in_flight: sum.in_flight,
                                latency: (sum.rps > 0.0).then(|| sum.in_flight / sum.rps),
                                cpu: (sum.cpu_requests > 0)
                                    .then(|| sum.cpu_total / sum.cpu_requests as f64),
                                streams: sum.streams,
                            },
                            None => EndpointFigures::default(),
                        };
                        (*address, figures)
                    })
                    .collect();
                Some((cluster, (newest, figures)))
            })
            .collect()
    }

    /// Writes the current sums into the sample table and the per-endpoint gauges; the clusters
    /// written.
    ///
    /// Clusters no stream reports any more are left alone in the table: their samples age
    /// toward `stale_after`, as with the other sources when they fail.
    pub fn publish(&self, now: Instant) -> Vec<String> {
        let figures = self.figures(now);
        let mut gauged = HashSet::new();
        for (cluster, (newest_ms, endpoints)) in &figures {
            let mut sets: HashMap<Signal, HashMap<String, Sample>> = HashMap::new();
            for (address, figures) in endpoints {
                let key = address.to_string();
                let mut put = |signal: Signal, value: f64| {
                    sets.entry(signal).or_default().insert(
                        key.clone(),
                        Sample {
                            value,
                            timestamp_ms: *newest_ms,
                        },
                    );
                };
                put(Signal::Rps, figures.rps);
                put(Signal::Errors, figures.errors);
                put(Signal::InFlight, figures.in_flight);
                if let Some(latency) = figures.latency {
                    put(Signal::Latency, latency);
                }
                if let Some(cpu) = figures.cpu {
                    put(Signal::Cpu, cpu);
                    put(Signal::CpuLimit, ORCA_CPU_LIMIT);
                }
                let labels = EndpointLabels {
                    cluster: cluster.clone(),
                    endpoint: key.clone(),
                    pod: String::new(),
                };
                self.metrics
                    .lrs_endpoint_rps
                    .get_or_create(&labels)
                    .set(figures.rps);
                self.metrics
                    .lrs_endpoint_errors
                    .get_or_create(&labels)
                    .set(figures.errors);
                self.metrics
                    .lrs_endpoint_in_flight
                    .get_or_create(&labels)
                    .set(figures.in_flight);
                gauged.insert(labels);
            }
            for signal in [
                Signal::Rps,
                Signal::Errors,
                Signal::InFlight,
                Signal::Latency,
                Signal::Cpu,
                Signal::CpuLimit,
            ] {
                let samples = sets.remove(&signal).unwrap_or_default();
                self.table.replace(
                    SourceKind::LoadReports,
                    cluster,
                    signal,
                    SampleSet {
                        join_by: JoinBy::Address,
                        samples,
                    },
                );
            }
        }
        if let Ok(mut previous) = self.gauged.lock() {
            for labels in previous.difference(&gauged) {
                self.metrics.lrs_endpoint_rps.remove(labels);
                self.metrics.lrs_endpoint_errors.remove(labels);
                self.metrics.lrs_endpoint_in_flight.remove(labels);
            }
            *previous = gauged;
        }
        figures.into_keys().collect()
    }

    /// Publishes once per `interval`, when a report comes (Envoys report on their own
    /// clocks, so a timer of ours would add up to an interval of delay), and names the clusters
    /// written on `reported`, whose weights are then due. Without reports it still publishes
    /// every 1.5 intervals, so silent streams age out. Runs until `reported` is closed.
    pub async fn run(self, reported: mpsc::Sender<Arrived>) {
        let fallback = self.interval * 3 / 2;
        let mut last: Option<tokio::time::Instant> = None;
        loop {
            let silent = last.unwrap_or_else(tokio::time::Instant::now) + fallback;
            tokio::select! {
                () = self.arrived.notified() => {}
                () = tokio::time::sleep_until(silent) => {}
            }
            let now = tokio::time::Instant::now();
            if last.is_some_and(|last| {
                !publish_due(now.saturating_duration_since(last), self.interval)
            }) {
                continue;
            }
            // Envoys started together report within moments of each other: one publish for them.
            tokio::time::sleep(PUBLISH_GATHER).await;
            let clusters = self.publish(Instant::now());
            if clusters.is_empty() {
                // Nothing to sum yet (a stream's first report): the next report may publish.
                continue;
            }
            last = Some(now);
            let arrived = Arrived {
                source: SourceKind::LoadReports,
                clusters,
                failure_watch: false,
            };
            if reported.send(arrived).await.is_err() {
                return;
            }
        }
    }

    fn count(&self, recorded: &Recorded) {
        for outcome in &recorded.clusters {
            self.metrics
                .lrs_cluster_stats
                .get_or_create(&crate::telemetry::ResultLabels {
                    result: outcome.as_str().into(),
                })
                .inc();
        }
        for (result, count) in [
            ("accepted", recorded.endpoints),
            ("unknown_endpoint", recorded.unknown_endpoints),
        ] {
            if count > 0 {
                self.metrics
                    .lrs_endpoint_stats
                    .get_or_create(&crate::telemetry::ResultLabels {
                        result: result.into(),
                    })
                    .inc_by(count);
            }
        }
    }
}

impl StreamReports {
    /// Records one report's `cluster_stats`, received at `now`.
    /// Records one report's still-encoded `cluster_stats` (as the stream decoder gives them),
    /// received at `now`: only the clusters we serve are decoded in full.
    pub fn record_encoded(
        &self,
        encoded: &[EncodedClusterStats],
        now: Instant,
        wall: SystemTime,
    ) -> Recorded {
        let served = self.reports.served();
        let mut recorded = Recorded::default();
        let Ok(mut windows) = self.windows.lock() else {
            return recorded;
        };
        let now_ms = unix_millis(wall);
        for item in encoded {
            let outcome = if !served.clusters.contains_key(item.name()) {
                Outcome::UnknownCluster
            } else {
                match item.decode() {
                    Ok(stats) => {
                        record_cluster(&mut windows, &served, &stats, now, now_ms, &mut recorded)
                    }
                    Err(_) => {
                        windows.clusters.remove(item.name());
                        Outcome::Malformed
                    }
                }
            };
            recorded.clusters.push(outcome);
        }
        let present: HashSet<&str> = encoded.iter().map(EncodedClusterStats::name).collect();
        record_idle(&mut windows, &served, &present, now, now_ms);
        drop(windows);
        self.reports.count(&recorded);
        self.reports.arrived.notify_one();
        recorded
    }

    /// Records one report's decoded `cluster_stats`, received at `now`.
    pub fn record(
        &self,
        cluster_stats: &[ClusterStats],
        now: Instant,
        wall: SystemTime,
    ) -> Recorded {
        let served = self.reports.served();
        let mut recorded = Recorded::default();
        let Ok(mut windows) = self.windows.lock() else {
            return recorded;
        };
        for stats in cluster_stats {
            let outcome = record_cluster(
                &mut windows,
                &served,
                stats,
                now,
                unix_millis(wall),
                &mut recorded,
            );
            recorded.clusters.push(outcome);
        }
        let present: HashSet<&str> = cluster_stats.iter().map(resource_name).collect();
        record_idle(&mut windows, &served, &present, now, unix_millis(wall));
        drop(windows);
        self.reports.count(&recorded);
        self.reports.arrived.notify_one();
        recorded
    }
}

impl Drop for StreamReports {
    fn drop(&mut self) {
        if let Ok(mut streams) = self.reports.streams.lock() {
            streams.remove(&self.stream_id);
        }
    }
}

/// The EDS resource name a `ClusterStats` is about: the cluster's EDS `service_name` when set
/// (Istio's clusters set it), else its name.
fn resource_name(stats: &ClusterStats) -> &str {
    if stats.cluster_service_name.is_empty() {
        &stats.cluster_name
    } else {
        &stats.cluster_service_name
    }
}

/// A `google.protobuf.Duration` as a credible report interval, in seconds.
fn interval_seconds(duration: Option<&protobuf::Duration>) -> Option<f64> {
    let duration = duration?;
    if duration.seconds < 0 || !(0..1_000_000_000).contains(&duration.nanos) {
        return None;
    }
    let seconds = u64::try_from(duration.seconds).ok()?;
    let nanos = u32::try_from(duration.nanos).ok()?;
    let interval = Duration::new(seconds, nanos);
    (MIN_INTERVAL..=MAX_INTERVAL)
        .contains(&interval)
        .then_some(interval.as_secs_f64())
}

/// `ip:port` of an endpoint's `Address` (socket addresses only).
fn socket_address(address: Option<&Address>) -> Option<SocketAddr> {
    let address::Address::SocketAddress(socket) = address?.address.as_ref()? else {
        return None;
    };
    let ip: IpAddr = socket.address.parse().ok()?;
    let Some(PortSpecifier::PortValue(port)) = socket.port_specifier else {
        return None;
    };
    Some(SocketAddr::new(ip, u16::try_from(port).ok()?))
}

/// An endpoint's entry of one report, checked.
struct Entry {
    counts: Counts,
    in_progress: u64,
    issued: u64,
}

fn entry(stats: &UpstreamEndpointStats) -> Option<Entry> {
    let mut counts = Counts {
        success: stats.total_successful_requests,
        error: stats.total_error_requests,
        cpu_requests: 0,
        cpu_total: 0.0,
    };
    for metric in &stats.load_metric_stats {
        if metric.metric_name == CPU_METRIC {
            let value = metric.total_metric_value;
            if !value.is_finite() || value < 0.0 {
                return None;
            }
            counts.cpu_requests = counts
                .cpu_requests
                .checked_add(metric.num_requests_finished_with_metric)?;
            counts.cpu_total += value;
        }
    }
    Some(Entry {
        counts,
        in_progress: stats.total_requests_in_progress,
        issued: stats.total_issued_requests,
    })
}

/// Merges two entries for the same endpoint (it may appear under two localities).
fn merge(into: &mut Entry, other: Entry) -> Option<()> {
    into.counts.success = into.counts.success.checked_add(other.counts.success)?;
    into.counts.error = into.counts.error.checked_add(other.counts.error)?;
    into.counts.cpu_requests = into
        .counts
        .cpu_requests
        .checked_add(other.counts.cpu_requests)?;
    into.counts.cpu_total += other.counts.cpu_total;
    into.in_progress = into.in_progress.checked_add(other.in_progress)?;
    into.issued = into.issued.checked_add(other.issued)?;
    Some(())
}

/// True when `entry` cannot be a real interval of `seconds` that started with `previous`
/// requests in progress (`None`: unknown, on the stream's first report).
fn impossible(entry: &Entry, seconds: f64, previous: Option<u64>) -> bool {
    let Some(completed) = entry.counts.success.checked_add(entry.counts.error) else {
        return true;
    };
    if entry.in_progress > MAX_IN_PROGRESS
        || completed as f64 / seconds > MAX_RATE
        || entry.issued as f64 / seconds > MAX_RATE
    {
        return true;
    }
    if entry.counts.cpu_requests > 0 {
        let mean = entry.counts.cpu_total / entry.counts.cpu_requests as f64;
        if !(mean.is_finite() && mean <= MAX_CPU_UTILIZATION) {
            return true;
        }
    }
    // What completed must have been in progress before or issued since. Envoy reads its
    // counters and gauges per worker, not atomically, so a few requests of slack are allowed.
    if let Some(previous) = previous {
        let possible = previous.saturating_add(entry.issued);
        if completed > possible.saturating_add(16 + possible / 8) {
            return true;
        }
    }
    false
}

fn record_cluster(
    windows: &mut StreamWindows,
    served: &ServedIndex,
    stats: &ClusterStats,
    now: Instant,
    now_ms: i64,
    recorded: &mut Recorded,
) -> Outcome {
    let name = resource_name(stats);
    let Some(endpoints) = served.clusters.get(name) else {
        return Outcome::UnknownCluster;
    };
    let Some(seconds) = interval_seconds(stats.load_report_interval.as_ref()) else {
        windows.clusters.remove(name);
        return Outcome::BadInterval;
    };
    let mut entries: HashMap<SocketAddr, Entry> = HashMap::new();
    let mut unknown = 0u64;
    for locality in &stats.upstream_locality_stats {
        for endpoint in &locality.upstream_endpoint_stats {
            let Some(address) = socket_address(endpoint.address.as_ref())
                .filter(|address| endpoints.contains(address))
            else {
                unknown += 1;
                continue;
            };
            let Some(entry) = entry(endpoint) else {
                windows.clusters.remove(name);
                return Outcome::ImpossibleCounters;
            };
            match entries.get_mut(&address) {
                Some(existing) => {
                    if merge(existing, entry).is_none() {
                        windows.clusters.remove(name);
                        return Outcome::ImpossibleCounters;
                    }
                }
                None => {
                    entries.insert(address, entry);
                }
            }
        }
    }
    let window = windows.clusters.get(name);
    let first = window.is_none();
    for (address, entry) in &entries {
        let previous = window.map(|window| {
            window
                .endpoints
                .get(address)
                .map(|endpoint| endpoint.in_progress)
                .unwrap_or(0)
        });
        if impossible(entry, seconds, previous) {
            windows.clusters.remove(name);
            return Outcome::ImpossibleCounters;
        }
    }
    recorded.unknown_endpoints += unknown;
    recorded.endpoints += entries.len() as u64;
    if first {
        let endpoints = entries
            .into_iter()
            .map(|(address, entry)| {
                (
                    address,
                    EndpointWindow {
                        counts: VecDeque::new(),
                        in_progress: entry.in_progress,
                        snapshots: VecDeque::from([entry.in_progress]),
                    },
                )
            })
            .collect();
        windows.clusters.insert(
            name.to_string(),
            ClusterWindow {
                seconds: VecDeque::new(),
                endpoints,
                last_report: now,
                last_report_ms: now_ms,
            },
        );
        return Outcome::First;
    }
    let Some(window) = windows.clusters.get_mut(name) else {
        return Outcome::First;
    };
    advance(window, endpoints, seconds, entries, now, now_ms);
    Outcome::Accepted
}

/// Adds one interval of `seconds` to `window`, with `entries` for the endpoints that had
/// activity in it (the others had none).
fn advance(
    window: &mut ClusterWindow,
    endpoints: &HashSet<SocketAddr>,
    seconds: f64,
    entries: HashMap<SocketAddr, Entry>,
    now: Instant,
    now_ms: i64,
) {
    window.seconds.push_back(seconds);
    while window.seconds.len() > WINDOW_REPORTS {
        window.seconds.pop_front();
    }
    window.last_report = now;
    window.last_report_ms = now_ms;
    let depth = window.seconds.len();
    // Endpoints absent from a report had no activity in its interval.
    for (address, endpoint) in window.endpoints.iter_mut() {
        if !entries.contains_key(address) {
            endpoint.counts.push_back(Counts::default());
            endpoint.in_progress = 0;
            endpoint.snapshots.push_back(0);
        }
    }
    for (address, entry) in entries {
        let endpoint = window.endpoints.entry(address).or_default();
        endpoint.counts.push_back(entry.counts);
        endpoint.in_progress = entry.in_progress;
        endpoint.snapshots.push_back(entry.in_progress);
    }
    window.endpoints.retain(|address, endpoint| {
        while endpoint.counts.len() > depth {
            endpoint.counts.pop_front();
        }
        while endpoint.snapshots.len() > depth + 1 {
            endpoint.snapshots.pop_front();
        }
        // Served endpoints only (the snapshot may have changed), and only while they matter.
        endpoints.contains(address)
            && (endpoint.snapshots.iter().any(|&value| value > 0)
                || endpoint.counts.iter().any(|counts| !counts.is_zero()))
    });
}

/// A report without a cluster the stream reported before: Envoy reports every cluster it has,
/// idle or not (measured with 1.40), so one left out is gone from that Envoy or no longer asked
/// for; it had no requests since its last report, an interval our clock measures. Its window runs
/// down to zero within 2 reports, then is dropped as stale.
fn record_idle(
    windows: &mut StreamWindows,
    served: &ServedIndex,
    present: &HashSet<&str>,
    now: Instant,
    now_ms: i64,
) {
    for (name, window) in windows.clusters.iter_mut() {
        if present.contains(name.as_str())
            || window.seconds.is_empty() && window.endpoints.is_empty()
        {
            continue;
        }
        let Some(endpoints) = served.clusters.get(name) else {
            continue;
        };
        let elapsed = now.saturating_duration_since(window.last_report);
        if elapsed < MIN_INTERVAL {
            continue;
        }
        advance(
            window,
            endpoints,
            elapsed.min(MAX_INTERVAL).as_secs_f64(),
            HashMap::new(),
            now,
            now_ms,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, HealthStatus, Locality};
    use crate::snapshot::{ClusterResource, ServedEndpoint};
    use envoy_types::pb::envoy::config::{
        core::v3::SocketAddress,
        endpoint::v3::{EndpointLoadMetricStats, UpstreamLocalityStats},
    };

    fn reports() -> LoadReports {
        let store = SnapshotStore::new();
        let served = ["10.0.0.1", "10.0.0.2"]
            .iter()
            .map(|ip| ServedEndpoint {
                endpoint: Arc::new(endpoint(ip)),
                weight: 100,
                reason: Default::default(),
            })
            .collect();
        let clusters = [(
            "checkout".to_string(),
            Arc::new(ClusterResource::build("checkout", served)),
        )]
        .into_iter()
        .collect();
        store.publish(Snapshot::new(clusters));
        LoadReports::new(
            store,
            SampleTable::default(),
            Metrics::default(),
            Duration::from_secs(1),
        )
    }

    fn endpoint(ip: &str) -> Endpoint {
        Endpoint {
            address: ip.parse().expect("ip"),
            port: 80,
            configured_weight: None,
            pod: None,
            node: None,
            locality: Locality::default(),
            health: HealthStatus::Healthy,
        }
    }

    fn address(ip: &str, port: u32) -> Address {
        Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }
    }

    /// `(ip, success, error, issued, in_progress)` per endpoint.
    fn stats(
        cluster: &str,
        seconds: i64,
        endpoints: &[(&str, u64, u64, u64, u64)],
    ) -> ClusterStats {
        ClusterStats {
            cluster_name: cluster.into(),
            load_report_interval: Some(protobuf::Duration { seconds, nanos: 0 }),
            upstream_locality_stats: vec![UpstreamLocalityStats {
                upstream_endpoint_stats: endpoints
                    .iter()
                    .map(
                        |(ip, success, error, issued, in_progress)| UpstreamEndpointStats {
                            address: Some(address(ip, 80)),
                            total_successful_requests: *success,
                            total_error_requests: *error,
                            total_issued_requests: *issued,
                            total_requests_in_progress: *in_progress,
                            ..Default::default()
                        },
                    )
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn figures_of(reports: &LoadReports, now: Instant, ip: &str) -> EndpointFigures {
        let figures = reports.figures(now);
        let address: SocketAddr = format!("{ip}:80").parse().expect("address");
        figures
            .get("checkout")
            .and_then(|(_, endpoints)| endpoints.get(&address))
            .copied()
            .unwrap_or_default()
    }

    #[test]
    fn publishing_is_due_once_per_interval_a_little_early_allowed() {
        let second = Duration::from_secs(1);
        assert!(!publish_due(Duration::from_millis(900), second));
        assert!(publish_due(Duration::from_millis(960), second));
        assert!(publish_due(Duration::from_secs(3), second));
    }

    #[tokio::test]
    async fn sums_are_published_when_a_report_comes_once_per_interval() {
        // A 10 s interval: only a publish driven by the report can come within the waits here.
        let reports = LoadReports {
            interval: Duration::from_secs(10),
            ..reports()
        };
        let (sender, mut arrived) = mpsc::channel(4);
        let running = tokio::spawn(reports.clone().run(sender));
        let stream = reports.open_stream(1);
        let report = || [stats("checkout", 10, &[("10.0.0.1", 10, 0, 10, 0)])];
        tokio::time::sleep(Duration::from_millis(200)).await;
        stream.record(&report(), Instant::now(), SystemTime::now());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(arrived.try_recv().is_err(), "a first report has no rates");
        stream.record(&report(), Instant::now(), SystemTime::now());
        let published = tokio::time::timeout(Duration::from_secs(2), arrived.recv()).await;
        let expected = Arrived {
            source: SourceKind::LoadReports,
            clusters: vec!["checkout".to_string()],
            failure_watch: false,
        };
        assert_eq!(published.ok().flatten(), Some(expected));
        let loads = reports
            .table
            .loads("checkout", &[endpoint("10.0.0.1")], SystemTime::now());
        assert_eq!(loads[0].rps.map(|rps| rps.value), Some(1.0));
        // The next report within the interval waits for it.
        stream.record(&report(), Instant::now(), SystemTime::now());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            arrived.try_recv().is_err(),
            "published twice in an interval"
        );
        running.abort();
    }

    #[test]
    fn sums_streams_over_a_two_interval_window() {
        let reports = reports();
        let start = Instant::now();
        let wall = SystemTime::now();
        let one = reports.open_stream(1);
        let two = reports.open_stream(2);
        for stream in [&one, &two] {
            assert_eq!(
                stream
                    .record(
                        &[stats("checkout", 1, &[("10.0.0.1", 5, 0, 5, 2)])],
                        start,
                        wall
                    )
                    .clusters,
                vec![Outcome::First]
            );
        }
        // Stream one: 100 then 50 completions in 1 s intervals, 10% errors; stream two: 20/s.
        let t1 = start + Duration::from_secs(1);
        one.record(
            &[stats("checkout", 1, &[("10.0.0.1", 90, 10, 100, 4)])],
            t1,
            wall,
        );
        two.record(
            &[stats("checkout", 1, &[("10.0.0.1", 20, 0, 20, 1)])],
            t1,
            wall,
        );
        let t2 = start + Duration::from_secs(2);
        let recorded = one.record(
            &[stats("checkout", 1, &[("10.0.0.1", 45, 5, 50, 3)])],
            t2,
            wall,
        );
        assert_eq!(recorded.clusters, vec![Outcome::Accepted]);
        two.record(
            &[stats("checkout", 1, &[("10.0.0.1", 20, 0, 20, 1)])],
            t2,
            wall,
        );
        let figures = figures_of(&reports, t2, "10.0.0.1");
        assert_eq!(figures.streams, 2);
        assert!((figures.rps - (75.0 + 20.0)).abs() < 1e-9, "{figures:?}");
        assert!((figures.errors - 7.5).abs() < 1e-9, "{figures:?}");
        // Means over the windows' snapshots: (2 + 4 + 3) / 3 and (2 + 1 + 1) / 3.
        let in_flight = 3.0 + 4.0 / 3.0;
        assert!((figures.in_flight - in_flight).abs() < 1e-9, "{figures:?}");
        assert!((figures.latency.expect("latency") - in_flight / 95.0).abs() < 1e-9);
        // Served but never reported: zero, not missing.
        assert_eq!(
            figures_of(&reports, t2, "10.0.0.2"),
            EndpointFigures::default()
        );
        // A third interval pushes the first out of the window.
        let t3 = start + Duration::from_secs(3);
        one.record(
            &[stats("checkout", 1, &[("10.0.0.1", 45, 5, 50, 3)])],
            t3,
            wall,
        );
        let figures = figures_of(&reports, t3, "10.0.0.1");
        assert!((figures.rps - (50.0 + 20.0)).abs() < 1e-9, "{figures:?}");
        // A stream that ends stops counting.
        drop(two);
        let figures = figures_of(&reports, t3, "10.0.0.1");
        assert_eq!(figures.streams, 1);
        assert!((figures.rps - 50.0).abs() < 1e-9, "{figures:?}");
        // One that falls silent stops counting after STALE_INTERVALS intervals.
        let later = t3 + Duration::from_secs(u64::from(STALE_INTERVALS) + 1);
        assert_eq!(figures_of(&reports, later, "10.0.0.1").streams, 0);
        assert!(reports.figures(later).is_empty());
    }

    #[test]
    fn an_endpoint_missing_from_a_report_had_no_requests() {
        let reports = reports();
        let start = Instant::now();
        let wall = SystemTime::now();
        let stream = reports.open_stream(1);
        stream.record(
            &[stats("checkout", 1, &[("10.0.0.1", 1, 0, 1, 0)])],
            start,
            wall,
        );
        stream.record(
            &[stats("checkout", 1, &[("10.0.0.1", 10, 0, 10, 0)])],
            start,
            wall,
        );
        stream.record(
            &[stats("checkout", 1, &[("10.0.0.2", 10, 0, 10, 0)])],
            start,
            wall,
        );
        assert!((figures_of(&reports, start, "10.0.0.1").rps - 5.0).abs() < 1e-9);
        assert!((figures_of(&reports, start, "10.0.0.2").rps - 5.0).abs() < 1e-9);
        stream.record(&[stats("checkout", 1, &[])], start, wall);
        assert_eq!(figures_of(&reports, start, "10.0.0.1").rps, 0.0);
    }

    #[test]
    fn encoded_reports_decode_only_what_we_serve() {
        let reports = reports();
        let now = Instant::now();
        let wall = SystemTime::now();
        let stream = reports.open_stream(1);
        let ours =
            EncodedClusterStats::encode(&stats("checkout", 1, &[("10.0.0.1", 10, 0, 10, 0)]));
        let theirs = EncodedClusterStats::encode(&stats("other", 1, &[]));
        // Named `checkout`, then a locality entry whose content is truncated.
        let broken = EncodedClusterStats::new(bytes::Bytes::from_static(&[
            0x0a, 0x08, b'c', b'h', b'e', b'c', b'k', b'o', b'u', b't', 0x12, 0x02, 0x0a, 0x05,
        ]))
        .expect("the names read");
        let recorded = stream.record_encoded(&[ours.clone(), theirs.clone()], now, wall);
        assert_eq!(
            recorded.clusters,
            vec![Outcome::First, Outcome::UnknownCluster]
        );
        let recorded =
            stream.record_encoded(&[ours, theirs, broken], now + Duration::from_secs(1), wall);
        assert_eq!(
            recorded.clusters,
            vec![
                Outcome::Accepted,
                Outcome::UnknownCluster,
                Outcome::Malformed
            ]
        );
    }

    #[test]
    fn a_cluster_missing_from_a_report_had_no_requests() {
        let reports = reports();
        let start = Instant::now();
        let wall = SystemTime::now();
        let stream = reports.open_stream(1);
        let busy = stats("checkout", 1, &[("10.0.0.1", 10, 0, 10, 0)]);
        stream.record(std::slice::from_ref(&busy), start, wall);
        stream.record(
            std::slice::from_ref(&busy),
            start + Duration::from_secs(1),
            wall,
        );
        assert!((figures_of(&reports, start, "10.0.0.1").rps - 10.0).abs() < 1e-9);
        // The next report has no `checkout`: a second without requests.
        stream.record(&[], start + Duration::from_secs(2), wall);
        let figures = figures_of(&reports, start + Duration::from_secs(2), "10.0.0.1");
        assert!((figures.rps - 5.0).abs() < 1e-9, "{figures:?}");
        stream.record(&[], start + Duration::from_secs(3), wall);
        let figures = figures_of(&reports, start + Duration::from_secs(3), "10.0.0.1");
        assert_eq!(figures.rps, 0.0, "{figures:?}");
    }

    #[test]
    fn bad_reports_are_dropped_and_named() {
        let reports = reports();
        let now = Instant::now();
        let wall = SystemTime::now();
        let stream = reports.open_stream(1);
        stream.record(
            &[stats("checkout", 1, &[("10.0.0.1", 1, 0, 1, 0)])],
            now,
            wall,
        );
        let mut negative = stats("checkout", 1, &[]);
        negative.load_report_interval = Some(protobuf::Duration {
            seconds: -1,
            nanos: 0,
        });
        let mut missing = stats("checkout", 1, &[]);
        missing.load_report_interval = None;
        let mut bad_nanos = stats("checkout", 0, &[]);
        bad_nanos.load_report_interval = Some(protobuf::Duration {
            seconds: 0,
            nanos: -5,
        });
        let mut orca = stats("checkout", 1, &[("10.0.0.1", 1, 0, 1, 0)]);
        orca.upstream_locality_stats[0].upstream_endpoint_stats[0]
            .load_metric_stats
            .push(EndpointLoadMetricStats {
                metric_name: CPU_METRIC.into(),
                num_requests_finished_with_metric: 1,
                total_metric_value: f64::NAN,
            });
        let cases = [
            (stats("other", 1, &[]), Outcome::UnknownCluster),
            (stats("checkout", 0, &[]), Outcome::BadInterval),
            (stats("checkout", 7200, &[]), Outcome::BadInterval),
            (negative, Outcome::BadInterval),
            (missing, Outcome::BadInterval),
            (bad_nanos, Outcome::BadInterval),
            (orca, Outcome::ImpossibleCounters),
            (
                stats("checkout", 1, &[("10.0.0.1", u64::MAX, 1, 1, 0)]),
                Outcome::ImpossibleCounters,
            ),
            (
                stats("checkout", 1, &[("10.0.0.1", 1000, 0, 10, 0)]),
                Outcome::ImpossibleCounters,
            ),
            (
                stats("checkout", 1, &[("10.0.0.1", 0, 0, 0, u64::MAX)]),
                Outcome::ImpossibleCounters,
            ),
        ];
        for (stats, expected) in cases {
            // Every dropped report resets the stream's window: seed it again first.
            stream.record(
                &[self::stats("checkout", 1, &[("10.0.0.1", 1, 0, 1, 0)])],
                now,
                wall,
            );
            let recorded = stream.record(std::slice::from_ref(&stats), now, wall);
            assert_eq!(recorded.clusters, vec![expected], "{stats:?}");
        }
        let recorded = stream.record(
            &[stats("checkout", 1, &[("10.9.9.9", 1, 0, 1, 0)])],
            now,
            wall,
        );
        assert_eq!(recorded.unknown_endpoints, 1);
    }

    #[test]
    fn orca_cpu_is_the_mean_per_request_and_istio_names_match_the_service_name() {
        let reports = reports();
        let now = Instant::now();
        let wall = SystemTime::now();
        let stream = reports.open_stream(1);
        let with_cpu = |cpu_total: f64| {
            let mut stats = stats("outbound|80||checkout", 1, &[("10.0.0.1", 10, 0, 10, 0)]);
            stats.cluster_service_name = "checkout".into();
            stats.upstream_locality_stats[0].upstream_endpoint_stats[0]
                .load_metric_stats
                .push(EndpointLoadMetricStats {
                    metric_name: CPU_METRIC.into(),
                    num_requests_finished_with_metric: 10,
                    total_metric_value: cpu_total,
                });
            stats
        };
        stream.record(&[with_cpu(1.0)], now, wall);
        stream.record(&[with_cpu(2.0)], now, wall);
        stream.record(&[with_cpu(4.0)], now, wall);
        let figures = figures_of(&reports, now, "10.0.0.1");
        assert!(
            (figures.cpu.expect("cpu") - 0.3).abs() < 1e-9,
            "{figures:?}"
        );
        reports.publish(now);
        let loads = reports
            .table
            .loads("checkout", &[endpoint("10.0.0.1")], wall);
        let load = &loads[0];
        assert!((load.cpu.expect("cpu").value - 0.3).abs() < 1e-9);
        assert_eq!(load.cpu_limit.expect("limit").value, ORCA_CPU_LIMIT);
        assert_eq!(load.rps.expect("rps").value, 10.0);
        assert_eq!(load.errors.expect("errors").value, 0.0);
        assert_eq!(load.in_flight.expect("in flight").value, 0.0);
        // Nothing in flight at the report: Little's law gives zero.
        assert_eq!(load.latency.expect("latency").value, 0.0);
    }
}
