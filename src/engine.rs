//! The engine: joins endpoints with load samples each tick, calls weighting, publishes snapshots.
//!
//! It owns every cluster's endpoints, weighting memory and encoded resource. Sources feed it
//! (endpoint updates on a channel, samples through the [`SampleTable`]); it never does I/O.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, SystemTime},
};

// Tokio's clock, so tests can pause it; the same as the monotonic clock otherwise.
use tokio::time::Instant;

use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::AtomicU64;
use tokio::sync::{mpsc, watch};

use crate::config::adaptive::{AdaptiveConfig, ClusterSettings};
use crate::model::{ClusterUpdate, Endpoint};
use crate::samples::{Arrived, SampleTable, SourceKind};
use crate::snapshot::{
    ClusterExplanation, ClusterResource, EncodedEndpoints, ServedEndpoint, Snapshot, SnapshotStore,
};
use crate::telemetry::{ClusterLabels, EndpointLabels, Metrics, ModeLabels};
use crate::weighting::{self, params::Algorithm, ClusterMemory, ClusterMode, Weight, WeightSource};

/// Whether an endpoint has not served a measured request yet: no sample at all, or a request
/// rate of zero (a new pod is often scraped before it joins, so its first samples read 0).
fn unmeasured(weight: &Weight) -> bool {
    weight.source == WeightSource::NewPod || weight.rps.is_none_or(|rps| rps <= 0.0)
}

/// How long after a cluster gained an endpoint its pull may run at every grid step while one of
/// its endpoints is [`unmeasured`]: two scrapes of a 60 s interval and the store's lag. A pod
/// whose metrics never come costs a couple of minutes of such pulls, not more.
const EAGER_PULLS_FOR: Duration = Duration::from_secs(150);

/// Whether a cluster last ticked at `last` is due at `now` for a tick of `period`; a tick 50 ms
/// early counts, so timers and sources a little out of step do not skip a whole period.
fn tick_due(last: Option<Duration>, now: Duration, period: Duration) -> bool {
    last.is_none_or(|last| now.saturating_sub(last) + Duration::from_millis(50) >= period)
}

/// One cluster's state between ticks.
#[derive(Debug, Default)]
struct ClusterState {
    /// Shared with the served resource and the explanation, so a tick clones no endpoint.
    endpoints: Vec<Arc<Endpoint>>,
    /// Metric labels of each endpoint, built once per endpoint set.
    labels: Vec<EndpointLabels>,
    /// Handles of each endpoint's weight gauge (setting one is an atomic store, no label lookup).
    weight_gauges: Vec<Gauge>,
    /// Handles of each endpoint's CPU gauge, while it has a sample.
    cpu_gauges: Vec<Option<Gauge<f64, AtomicU64>>>,
    /// The endpoints' assignment with all but the weights encoded, built once per endpoint set.
    encoded: EncodedEndpoints,
    memory: ClusterMemory,
    mode: ClusterMode,
    last_tick: Option<Duration>,
    /// When the endpoint set last gained an endpoint it did not have (engine time).
    gained: Option<Duration>,
    /// When a pushed source (load reports, remote-write) last named this cluster (engine time).
    pushed: Option<Duration>,
    /// When such a source last made it tick (engine time): a timer tick just before new
    /// samples come must not make them wait for the next ones.
    pushed_tick: Option<Duration>,
    /// When pushed samples last brought a tick early because they showed a failure (engine
    /// time): at most one such tick per tick period.
    early_tick: Option<Duration>,
    resource: Option<Arc<ClusterResource>>,
}

/// Current endpoints, weights and encoded resources of every cluster.
pub struct Engine {
    clusters: BTreeMap<String, ClusterState>,
    config: Arc<AdaptiveConfig>,
    table: SampleTable,
    store: SnapshotStore,
    metrics: Metrics,
    started: Instant,
    /// Pull-fed clusters that gained an endpoint lately while one of theirs is still
    /// [`unmeasured`]: the PromQL task pulls them at every grid step, not once per tick, so
    /// that a new pod is measured within a second of the scrape that makes its first rate.
    eager: watch::Sender<BTreeSet<String>>,
}

impl Engine {
    /// An engine with no clusters that publishes into `store`.
    pub fn new(
        config: Arc<AdaptiveConfig>,
        table: SampleTable,
        store: SnapshotStore,
        metrics: Metrics,
    ) -> Self {
        Self {
            clusters: BTreeMap::new(),
            config,
            table,
            store,
            metrics,
            started: Instant::now(),
            eager: watch::Sender::new(BTreeSet::new()),
        }
    }

    /// The clusters to pull at every grid step (see [`Engine::eager`]), for the PromQL task.
    pub fn eager_pulls(&self) -> watch::Receiver<BTreeSet<String>> {
        self.eager.subscribe()
    }

    /// Monotonic time since the engine started (the weighting's `now`).
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Applies endpoint updates; touched clusters are recomputed at once.
    pub fn apply(&mut self, updates: Vec<ClusterUpdate>) {
        for update in updates {
            match update {
                ClusterUpdate::Reset { cluster, endpoints } => {
                    let now = self.now();
                    let state = self.clusters.entry(cluster.clone()).or_default();
                    let known: BTreeSet<(std::net::IpAddr, u16)> = state
                        .endpoints
                        .iter()
                        .map(|endpoint| (endpoint.address, endpoint.port))
                        .collect();
                    if endpoints
                        .iter()
                        .any(|endpoint| !known.contains(&(endpoint.address, endpoint.port)))
                    {
                        state.gained = Some(now);
                    }
                    forget_endpoint_metrics(&self.metrics, &state.labels);
                    state.labels = endpoints
                        .iter()
                        .map(|endpoint| endpoint_labels(&cluster, endpoint))
                        .collect();
                    state.weight_gauges = state
                        .labels
                        .iter()
                        .map(|labels| self.metrics.endpoint_weight.get_or_create(labels).clone())
                        .collect();
                    state.cpu_gauges = vec![None; endpoints.len()];
                    state.encoded = EncodedEndpoints::new(&cluster, &endpoints);
                    state.endpoints = endpoints.into_iter().map(Arc::new).collect();
                    self.recompute(&cluster, true);
                }
                ClusterUpdate::Removed { cluster } => {
                    if let Some(state) = self.clusters.remove(&cluster) {
                        forget_endpoint_metrics(&self.metrics, &state.labels);
                    }
                    self.eager.send_if_modified(|eager| eager.remove(&cluster));
                    self.metrics.endpoints_failing.remove(&ClusterLabels {
                        cluster: cluster.clone(),
                    });
                    self.store.explain(&cluster, None);
                }
            }
        }
    }

    /// Replaces the settings (config reload) and recomputes every cluster.
    pub fn reconfigure(&mut self, config: Arc<AdaptiveConfig>) {
        self.config = config;
        self.recompute_all(true);
    }

    /// Recomputes every cluster now; `force` re-encodes even those whose weights did not move.
    pub fn recompute_all(&mut self, force: bool) {
        let started = Instant::now();
        let names: Vec<String> = self.clusters.keys().cloned().collect();
        for name in names {
            self.recompute(&name, force);
        }
        self.metrics
            .tick_duration
            .observe(started.elapsed().as_secs_f64());
    }

    /// Recomputes every cluster whose tick is due; returns how many were recomputed.
    ///
    /// A cluster fed by the PromQL pull ticks when its pull has answered (see [`Engine::pulled`]),
    /// and one fed by load reports or remote-write when new samples come (see
    /// [`Engine::pushed`]), so its samples are never a tick old; the timer ticks it only when
    /// its source is half a tick late (a hung metrics server, Envoys or scrapes gone), so it
    /// still falls back to holding and equal weights.
    pub fn tick(&mut self) -> usize {
        let now = self.now();
        let due: Vec<String> = self
            .clusters
            .iter()
            .filter(|(name, state)| {
                let settings = self.config.settings(name);
                let pushed = state
                    .pushed
                    .is_some_and(|at| now.saturating_sub(at) < settings.tick * 2);
                let period = if settings.queries.is_some() || pushed {
                    settings.tick + settings.tick / 2
                } else {
                    settings.tick
                };
                tick_due(state.last_tick, now, period)
            })
            .map(|(name, _)| name.clone())
            .collect();
        self.recompute_ticked(&due)
    }

    /// Samples have just arrived for these clusters: their tick. A pull is its cluster's tick;
    /// load reports (once per report interval) and remote-written scrapes come on the senders'
    /// clocks, which may be faster than a cluster's tick, so such a cluster is recomputed only
    /// when its tick is due.
    pub fn arrived(&mut self, arrived: &Arrived) -> usize {
        if arrived.failure_watch {
            return self.watched(&arrived.clusters);
        }
        match arrived.source {
            SourceKind::Pull => self.pulled(&arrived.clusters),
            SourceKind::LoadReports | SourceKind::RemoteWrite => self.pushed(&arrived.clusters),
        }
    }

    /// A pushed source has just written new samples of these clusters: those due are
    /// recomputed. Due is a tick since the last such tick, whatever the timer did meanwhile:
    /// with scrapes every 15 s and a 10 s tick the timer's fallback (every 15 s) would otherwise
    /// fall just before each scrape's samples and hold them back a whole scrape.
    ///
    /// A cluster not due is recomputed all the same when its new samples show an endpoint
    /// beginning to fail (see [`weighting::failure_news`]), at most once per tick period: its
    /// pods are scraped at offsets of their own, so some pod's scrape drives each pushed tick
    /// and a failing pod's scrape could otherwise wait most of a tick to be judged.
    pub fn pushed(&mut self, clusters: &[String]) -> usize {
        let now = self.now();
        let wall = SystemTime::now();
        let mut due = Vec::new();
        for name in clusters {
            let settings = self.config.settings(name);
            let tick = settings.tick;
            let Some(state) = self.clusters.get_mut(name) else {
                continue;
            };
            state.pushed = Some(now);
            if tick_due(state.pushed_tick, now, tick) {
                state.pushed_tick = Some(now);
                due.push(name.clone());
            } else if early_for_failure(&self.table, name, settings, state, now, wall) {
                due.push(name.clone());
            }
        }
        self.recompute_ticked(&due)
    }

    /// The PromQL pull has just written the request and error rates of these clusters between
    /// their ticks: those that show an endpoint beginning to fail are recomputed, at most once
    /// per tick period (as pushed samples are, see [`Engine::pushed`]).
    pub fn watched(&mut self, clusters: &[String]) -> usize {
        let now = self.now();
        let wall = SystemTime::now();
        let mut due = Vec::new();
        for name in clusters {
            let settings = self.config.settings(name);
            let Some(state) = self.clusters.get_mut(name) else {
                continue;
            };
            if early_for_failure(&self.table, name, settings, state, now, wall) {
                due.push(name.clone());
            }
        }
        self.recompute_ticked(&due)
    }

    /// The PromQL pull has just written the samples of these clusters: it is their tick.
    pub fn pulled(&mut self, clusters: &[String]) -> usize {
        let known: Vec<String> = clusters
            .iter()
            .filter(|name| self.clusters.contains_key(*name))
            .cloned()
            .collect();
        self.recompute_ticked(&known)
    }

    fn recompute_ticked(&mut self, names: &[String]) -> usize {
        let started = Instant::now();
        for name in names {
            self.recompute(name, false);
        }
        if !names.is_empty() {
            self.metrics
                .tick_duration
                .observe(started.elapsed().as_secs_f64());
        }
        names.len()
    }

    fn recompute(&mut self, name: &str, force: bool) {
        let now = self.now();
        let settings = self.config.settings(name).clone();
        let wall = SystemTime::now();
        let Some(state) = self.clusters.get_mut(name) else {
            return;
        };
        let (weights, mode, moved) = {
            // Static clusters read no samples; weighting decides what static means.
            let loads = if settings.params.algorithm == Algorithm::Static {
                Vec::new()
            } else {
                self.table.loads(name, &state.endpoints, wall)
            };
            let output = weighting::compute(
                &state.endpoints,
                &loads,
                &state.memory,
                &settings.params,
                now,
            );
            if output.dropped_samples > 0 {
                self.metrics
                    .dropped_samples
                    .get_or_create(&ClusterLabels {
                        cluster: name.to_string(),
                    })
                    .inc_by(output.dropped_samples as u64);
            }
            state.memory = output.memory;
            let failing = output
                .weights
                .iter()
                .filter(|weight| weight.source == weighting::WeightSource::Failing)
                .count();
            self.metrics
                .endpoints_failing
                .get_or_create(&ClusterLabels {
                    cluster: name.to_string(),
                })
                .set(i64::try_from(failing).unwrap_or(i64::MAX));
            (output.weights, output.mode, output.moved)
        };
        state.last_tick = Some(now);
        let waiting = settings.queries.is_some()
            && state
                .gained
                .is_some_and(|gained| now.saturating_sub(gained) < EAGER_PULLS_FOR)
            && weights.iter().any(unmeasured);
        self.eager.send_if_modified(|eager| {
            if waiting {
                eager.insert(name.to_string())
            } else {
                eager.remove(name)
            }
        });
        if state.mode != mode {
            tracing::info!(
                cluster = name,
                from = state.mode.as_str(),
                to = mode.as_str(),
                "cluster weighting mode changed"
            );
            state.mode = mode;
        }
        if force || moved || state.resource.is_none() {
            let resource = build_resource(&state.encoded, &state.endpoints, &weights);
            self.metrics.encodes.inc();
            for (gauge, served) in state.weight_gauges.iter().zip(&resource.endpoints) {
                gauge.set(i64::from(served.weight));
            }
            state.resource = Some(Arc::new(resource));
        }
        let cpu_metrics = &self.metrics.endpoint_cpu;
        for ((labels, gauge), weight) in
            state.labels.iter().zip(&mut state.cpu_gauges).zip(&weights)
        {
            match (weight.cpu, gauge.as_ref()) {
                (Some(cpu), Some(gauge)) => {
                    gauge.set(cpu);
                }
                (Some(cpu), None) => {
                    let created = cpu_metrics.get_or_create(labels).clone();
                    created.set(cpu);
                    *gauge = Some(created);
                }
                (None, Some(_)) => {
                    cpu_metrics.remove(labels);
                    *gauge = None;
                }
                (None, None) => {}
            }
        }
        self.store.explain(
            name,
            Some(ClusterExplanation {
                mode,
                computed_at: wall,
                endpoints: state.endpoints.iter().cloned().zip(weights).collect(),
            }),
        );
    }

    /// Publishes the current state; returns whether the content changed.
    pub fn publish(&self) -> bool {
        let resources = self
            .clusters
            .iter()
            .filter_map(|(name, state)| {
                state
                    .resource
                    .clone()
                    .map(|resource| (name.clone(), resource))
            })
            .collect();
        let changed = self.store.publish(Snapshot::new(resources));
        self.record_metrics(changed);
        if changed {
            let current = self.store.current();
            tracing::info!(version = %current.version, clusters = current.clusters.len(), "snapshot published");
        }
        changed
    }

    /// Runs until every source is gone: applies updates as they come, ticks (on its timer, and
    /// for clusters whose samples `arrived` names), follows config reloads.
    pub async fn run(
        mut self,
        mut updates: mpsc::Receiver<Vec<ClusterUpdate>>,
        mut config: watch::Receiver<Arc<AdaptiveConfig>>,
        mut arrived: mpsc::Receiver<Arrived>,
    ) {
        let mut arriving = true;
        // One timer for the whole run: a sleep started afresh after every update would never
        // fire while updates come more often than the period (a busy Kubernetes source).
        let period = |config: &AdaptiveConfig| config.shortest_tick().min(Duration::from_secs(1));
        let mut ticks = tick_timer(period(&self.config));
        loop {
            tokio::select! {
                batch = updates.recv() => match batch {
                    Some(batch) => self.apply(batch),
                    None => return,
                },
                changed = config.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let next = config.borrow_and_update().clone();
                    if period(&next) != ticks.period() {
                        ticks = tick_timer(period(&next));
                    }
                    self.reconfigure(next);
                }
                _ = ticks.tick() => {
                    self.tick();
                }
                samples = arrived.recv(), if arriving => match samples {
                    Some(samples) => {
                        self.arrived(&samples);
                    }
                    None => arriving = false,
                },
            }
            self.publish();
        }
    }

    fn record_metrics(&self, snapshot_changed: bool) {
        if snapshot_changed {
            self.metrics.snapshots.inc();
        }
        self.metrics.clusters.set(self.clusters.len() as i64);
        self.metrics.cluster_mode.clear();
        for (name, state) in &self.clusters {
            self.metrics
                .cluster_mode
                .get_or_create(&ModeLabels {
                    cluster: name.clone(),
                    mode: state.mode.as_str().into(),
                })
                .set(1);
        }
    }
}

/// Whether a cluster not due for a tick gets one now because its samples in `table` show an
/// endpoint beginning to fail (see [`weighting::failure_news`]); at most one such tick per tick
/// period, recorded in `state`.
fn early_for_failure(
    table: &SampleTable,
    name: &str,
    settings: &ClusterSettings,
    state: &mut ClusterState,
    now: Duration,
    wall: SystemTime,
) -> bool {
    let early = settings.params.algorithm != Algorithm::Static
        && tick_due(state.early_tick, now, settings.tick)
        && weighting::failure_news(
            &state.endpoints,
            &table.loads(name, &state.endpoints, wall),
            &state.memory,
            &settings.params,
        );
    if early {
        state.early_tick = Some(now);
    }
    early
}

/// The engine's wake-up timer: every `period`, the first one a period from now; a late wake-up
/// delays the next ones instead of bunching them.
fn tick_timer(period: Duration) -> tokio::time::Interval {
    let mut timer = tokio::time::interval_at(Instant::now() + period, period);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer
}

/// Removes a cluster's old per-endpoint series (its endpoint set changed or it is gone).
fn forget_endpoint_metrics(metrics: &Metrics, labels: &[EndpointLabels]) {
    for label in labels {
        metrics.endpoint_weight.remove(label);
        metrics.endpoint_cpu.remove(label);
    }
}

fn endpoint_labels(cluster: &str, endpoint: &Endpoint) -> EndpointLabels {
    EndpointLabels {
        cluster: cluster.to_string(),
        endpoint: format!("{}:{}", endpoint.address, endpoint.port),
        pod: endpoint.pod.clone().unwrap_or_default(),
    }
}

fn build_resource(
    encoded: &EncodedEndpoints,
    endpoints: &[Arc<Endpoint>],
    weights: &[Weight],
) -> ClusterResource {
    let served = endpoints
        .iter()
        .zip(weights)
        .map(|(endpoint, weight)| ServedEndpoint {
            endpoint: Arc::clone(endpoint),
            weight: weight.weight.max(1),
            reason: weight.reason.clone(),
        })
        .collect();
    ClusterResource::from_encoded(encoded, served)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    /// A config with one adaptive cluster `a` whose endpoints have these pods.
    fn adaptive_config(pods: &[&str]) -> config::ValidConfig {
        let mut text = String::from(
            "metrics: { prometheus: { url: \"http://127.0.0.1:1\" } }\nclusters:\n- name: a\n  namespace: n\n  container: c\n  endpoints:\n",
        );
        for (index, pod) in pods.iter().enumerate() {
            text.push_str(&format!(
                "  - {{address: 10.0.0.{}, port: 1, pod: {pod}}}\n",
                index + 1
            ));
        }
        config::parse(&text).expect("valid")
    }

    /// A sample table with fresh CPU samples of cluster `a`, by pod.
    fn cpu_table(samples: impl IntoIterator<Item = (String, f64)>) -> SampleTable {
        use crate::config::metrics::JoinBy;
        use crate::samples::{Sample, SampleSet, Signal, SourceKind};
        let now_ms = crate::samples::unix_millis(SystemTime::now());
        let samples = samples
            .into_iter()
            .map(|(pod, value)| {
                (
                    pod,
                    Sample {
                        value,
                        timestamp_ms: now_ms,
                    },
                )
            })
            .collect();
        let table = SampleTable::default();
        table.replace(
            SourceKind::Pull,
            "a",
            Signal::Cpu,
            SampleSet {
                join_by: JoinBy::Pod,
                samples,
            },
        );
        table
    }

    #[test]
    fn publishes_weights_and_only_real_changes() {
        let store = SnapshotStore::new();
        let mut engine = Engine::new(
            Arc::default(),
            SampleTable::default(),
            store.clone(),
            Metrics::default(),
        );
        let clusters = config::parse(
            "clusters:\n- name: a\n  endpoints:\n  - {address: 10.0.0.1, port: 1, weight: 30}\n  - {address: 10.0.0.2, port: 1}\n",
        )
        .expect("valid")
        .clusters;
        engine.apply(crate::discovery::file::diff(&BTreeMap::new(), &clusters));
        assert!(engine.publish());
        assert!(!engine.publish(), "same content publishes nothing");
        let snapshot = store.current();
        let weights: Vec<u32> = snapshot.clusters["a"]
            .endpoints
            .iter()
            .map(|e| e.weight)
            .collect();
        assert_eq!(weights, vec![30, 30]);
        assert_eq!(
            store.explanation("a").map(|e| e.mode),
            Some(ClusterMode::Static)
        );
        engine.apply(vec![ClusterUpdate::Removed {
            cluster: "a".into(),
        }]);
        assert!(engine.publish());
        assert!(store.current().clusters.is_empty());
        assert!(store.explanation("a").is_none());
    }

    #[test]
    fn bad_and_unmatched_samples_never_break_a_tick() {
        let config = adaptive_config(&["nan", "negative", "good", "unmeasured"]);
        let named = [
            ("nan", f64::NAN),
            ("negative", -1.0),
            ("good", 0.5),
            ("stranger", 3.0),
        ]
        .into_iter()
        .map(|(pod, value)| (pod.to_string(), value));
        let unrelated = (0..5000).map(|index| (format!("unrelated-{index}"), 1.0));
        let table = cpu_table(named.chain(unrelated));
        let store = SnapshotStore::new();
        let metrics = Metrics::default();
        let mut engine = Engine::new(
            Arc::new(config.adaptive.clone()),
            table,
            store.clone(),
            metrics.clone(),
        );
        engine.apply(crate::discovery::file::diff(
            &BTreeMap::new(),
            &config.clusters,
        ));
        engine.publish();
        let served = store.current();
        let weights: Vec<u32> = served.clusters["a"]
            .endpoints
            .iter()
            .map(|endpoint| endpoint.weight)
            .collect();
        assert_eq!(weights.len(), 4);
        assert!(weights.iter().all(|weight| *weight >= 1), "{weights:?}");
        let dropped = metrics
            .dropped_samples
            .get_or_create(&ClusterLabels {
                cluster: "a".into(),
            })
            .get();
        assert_eq!(
            dropped, 2,
            "NaN and negative samples are dropped and counted"
        );
        let explanation = store.explanation("a").expect("explained");
        assert_eq!(explanation.endpoints[2].1.cpu, Some(0.5));
        assert!(
            explanation.endpoints[3].1.cpu.is_none(),
            "no invented sample for an unmeasured pod"
        );
    }

    #[test]
    fn weight_and_cpu_gauges_follow_the_served_endpoints() {
        let config = adaptive_config(&["one", "two"]);
        let table = cpu_table([("one".to_string(), 0.2), ("two".to_string(), 0.8)]);
        let (metrics, registry) = Metrics::registered();
        let mut engine = Engine::new(
            Arc::new(config.adaptive.clone()),
            table,
            SnapshotStore::new(),
            metrics,
        );
        engine.apply(crate::discovery::file::diff(
            &BTreeMap::new(),
            &config.clusters,
        ));
        engine.publish();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for pod in ["one", "two"] {
            assert!(
                text.lines()
                    .any(|line| line.starts_with("adaptive_eds_endpoint_weight{")
                        && line.contains(&format!("pod=\"{pod}\""))),
                "weight of {pod} missing:\n{text}"
            );
        }
        assert!(text.contains("pod=\"one\"} 0.2"), "cpu of one:\n{text}");
        assert!(text.contains("pod=\"two\"} 0.8"), "cpu of two:\n{text}");
        engine.apply(vec![ClusterUpdate::Removed {
            cluster: "a".into(),
        }]);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            !text.contains("pod=\"one\""),
            "removed cluster's series are gone:\n{text}"
        );
    }

    /// The `adaptive_eds_tick_duration_seconds_count` of this registry.
    fn ticks(registry: &prometheus_client::registry::Registry) -> u64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
        text.lines()
            .find_map(|line| line.strip_prefix("adaptive_eds_tick_duration_seconds_count "))
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or(0)
    }

    /// A config with one pull-fed cluster `a` (pod `one`) ticking every second, and metrics.
    fn pulled_cluster() -> (
        config::ValidConfig,
        Metrics,
        prometheus_client::registry::Registry,
    ) {
        let config = config::parse(
            "tick: 1s\nmetrics: { prometheus: { url: \"http://127.0.0.1:1\" } }\nclusters:\n- name: a\n  namespace: n\n  container: c\n  endpoints:\n  - {address: 10.0.0.1, port: 1, pod: one}\n",
        )
        .expect("valid");
        let (metrics, registry) = Metrics::registered();
        (config, metrics, registry)
    }

    /// An engine running `config`'s clusters on `table`, with the handles a test drives it by.
    struct Running {
        /// Kept open: the engine stops once its update sources are gone.
        _updates: mpsc::Sender<Vec<ClusterUpdate>>,
        /// The settings' sender, held only to be dropped (the engine stops then); never sent on.
        config: Box<dyn std::any::Any + Send>,
        arrivals: mpsc::Sender<Arrived>,
        task: tokio::task::JoinHandle<()>,
    }

    fn run_engine(config: &config::ValidConfig, table: SampleTable, metrics: Metrics) -> Running {
        let mut engine = Engine::new(
            Arc::new(config.adaptive.clone()),
            table,
            SnapshotStore::new(),
            metrics,
        );
        engine.apply(crate::discovery::file::diff(
            &BTreeMap::new(),
            &config.clusters,
        ));
        let (updates, receiver) = mpsc::channel(1);
        let (config_sender, config_receiver) = watch::channel(Arc::new(config.adaptive.clone()));
        let (arrivals, arrived) = mpsc::channel(1);
        Running {
            _updates: updates,
            config: Box::new(config_sender),
            arrivals,
            task: tokio::spawn(engine.run(receiver, config_receiver, arrived)),
        }
    }

    impl Running {
        /// Closes the config channel and waits for the engine to stop.
        async fn stop(self) {
            drop(self.config);
            self.task.await.expect("stops with its config");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pulled_cluster_ticks_when_its_pull_answers() {
        let (config, metrics, registry) = pulled_cluster();
        let running = run_engine(&config, cpu_table([("one".to_string(), 0.2)]), metrics);
        // Pulls answering every second, 0.4 s out of phase with the engine's timer: ten ticks,
        // all of them on a pull (the timer adds none while the pulls keep the tick).
        tokio::time::sleep(Duration::from_millis(400)).await;
        for _ in 0..10 {
            let arrived = Arrived {
                source: SourceKind::Pull,
                clusters: vec!["a".to_string(), "gone".to_string()],
                failure_watch: false,
            };
            running.arrivals.send(arrived).await.expect("runs");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(ticks(&registry), 10);
        // The pull hangs: the timer ticks every second and a half at most.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let timer_ticks = ticks(&registry) - 10;
        assert!((2..=4).contains(&timer_ticks), "{timer_ticks} ticks in 6 s");
        running.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_reported_cluster_ticks_when_its_reports_are_published() {
        let config = config::parse(
            "tick: 1s\nmetrics: { load_reports: { enabled: true } }\nclusters:\n- name: a\n  endpoints:\n  - {address: 10.0.0.1, port: 1}\n",
        )
        .expect("valid");
        let (metrics, registry) = Metrics::registered();
        let running = run_engine(&config, SampleTable::default(), metrics);
        let report = || Arrived {
            source: SourceKind::LoadReports,
            clusters: vec!["a".to_string(), "gone".to_string()],
            failure_watch: false,
        };
        // Reports published every second, 0.4 s out of phase with the engine's timer: each is a
        // tick at once, and the timer adds none.
        tokio::time::sleep(Duration::from_millis(400)).await;
        for round in 0..10 {
            let before = ticks(&registry);
            running.arrivals.send(report()).await.expect("runs");
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert_eq!(ticks(&registry) - before, 1, "report {round}");
            tokio::time::sleep(Duration::from_millis(990)).await;
        }
        assert_eq!(ticks(&registry), 10);
        // Published four times a second (a report interval shorter than the tick): still one
        // tick per second.
        for _ in 0..16 {
            running.arrivals.send(report()).await.expect("runs");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(ticks(&registry), 14);
        // The reports stop: the timer goes on ticking.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let timer_ticks = ticks(&registry) - 14;
        assert!((3..=6).contains(&timer_ticks), "{timer_ticks} ticks in 6 s");
        running.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn scrapes_slower_than_the_tick_are_used_at_once_though_the_timer_ticked_before() {
        // A 10 s tick, remote-written scrapes every 16 s: the timer's fallback (15 s after the
        // last tick) fires just before each scrape's samples come; they still tick at once.
        let config = config::parse(
            "tick: 10s\nmetrics: { remote_write: { enabled: true } }\nclusters:\n- name: a\n  endpoints:\n  - {address: 10.0.0.1, port: 1}\n",
        )
        .expect("valid");
        let (metrics, registry) = Metrics::registered();
        let running = run_engine(&config, SampleTable::default(), metrics);
        let scrape = || Arrived {
            source: SourceKind::RemoteWrite,
            clusters: vec!["a".to_string()],
            failure_watch: false,
        };
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut timer_ticks = 0;
        for round in 0..4 {
            let before = ticks(&registry);
            running.arrivals.send(scrape()).await.expect("runs");
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert_eq!(ticks(&registry) - before, 1, "scrape {round}");
            let after = ticks(&registry);
            tokio::time::sleep(Duration::from_millis(15_990)).await;
            timer_ticks += ticks(&registry) - after;
        }
        assert_eq!(timer_ticks, 4, "one fallback tick before each next scrape");
        running.stop().await;
    }

    /// CPU and request-rate samples of cluster `a` for these pods (pod, requests per second),
    /// fresh by the wall clock (which a paused tokio clock does not move).
    fn give_samples(table: &SampleTable, pods: &[(&str, f64)]) {
        let pods: Vec<(&str, f64, Option<f64>)> =
            pods.iter().map(|(pod, rps)| (*pod, *rps, None)).collect();
        give_rates(table, SourceKind::Pull, &pods);
    }

    /// CPU (0.02 core per request per second), request and, where given, error rates of
    /// cluster `a` from `source` (pod, requests per second, errors per second), fresh by the
    /// wall clock.
    fn give_rates(table: &SampleTable, source: SourceKind, pods: &[(&str, f64, Option<f64>)]) {
        use crate::config::metrics::JoinBy;
        use crate::samples::{Sample, SampleSet, Signal};
        let now_ms = crate::samples::unix_millis(SystemTime::now());
        for signal in [Signal::Cpu, Signal::Rps, Signal::Errors] {
            let samples: std::collections::HashMap<String, Sample> = pods
                .iter()
                .filter_map(|(pod, rps, errors)| {
                    let value = match signal {
                        Signal::Cpu => rps * 0.02,
                        Signal::Errors => (*errors)?,
                        _ => *rps,
                    };
                    let sample = Sample {
                        value,
                        timestamp_ms: now_ms,
                    };
                    Some(((*pod).to_string(), sample))
                })
                .collect();
            if samples.is_empty() {
                continue;
            }
            let set = SampleSet {
                join_by: JoinBy::Pod,
                samples,
            };
            table.replace(source, "a", signal, set);
        }
    }

    /// An engine over cluster `a` of pods one, two and three (10.0.0.1-3), ticking every 10 s
    /// with this `metrics:` section, and its sample table.
    fn three_pods(metrics: &str) -> (Engine, SampleTable) {
        let config = config::parse(&format!(
            "tick: 10s\nmetrics: {metrics}\nclusters:\n- name: a\n  namespace: n\n  container: c\n  endpoints:\n  - {{address: 10.0.0.1, port: 1, pod: one}}\n  - {{address: 10.0.0.2, port: 1, pod: two}}\n  - {{address: 10.0.0.3, port: 1, pod: three}}\n",
        ))
        .expect("valid");
        let table = SampleTable::default();
        let mut engine = Engine::new(
            Arc::new(config.adaptive.clone()),
            table.clone(),
            SnapshotStore::new(),
            Metrics::registered().0,
        );
        engine.apply(crate::discovery::file::diff(
            &BTreeMap::new(),
            &config.clusters,
        ));
        (engine, table)
    }

    /// Pods one, two and three of `three_pods` at 100 requests per second, with these errors
    /// per second.
    fn give_errors(table: &SampleTable, source: SourceKind, errors: [f64; 3]) {
        let pods: Vec<(&str, f64, Option<f64>)> = ["one", "two", "three"]
            .into_iter()
            .zip(errors)
            .map(|(pod, errors)| (pod, 100.0, Some(errors)))
            .collect();
        give_rates(table, source, &pods);
    }

    #[test]
    fn pushed_samples_showing_a_failure_are_judged_at_once_once_per_tick() {
        let (mut engine, table) = three_pods("{ remote_write: { enabled: true } }");
        let a = || vec!["a".to_string()];
        let push = |errors| give_errors(&table, SourceKind::RemoteWrite, errors);
        let healthy = [0.0, 0.0, 0.0];
        push(healthy);
        assert_eq!(engine.pushed(&a()), 1, "the first samples are due");
        // Healthy samples within the tick wait for it.
        push(healthy);
        assert_eq!(engine.pushed(&a()), 0);
        // Pod one answers half its requests with errors: judged now, not at the next tick.
        let failing = [50.0, 0.0, 0.0];
        push(failing);
        assert_eq!(engine.pushed(&a()), 1, "a failure is news");
        let track = |engine: &Engine| {
            let key = (std::net::IpAddr::from([10, 0, 0, 1]), 1);
            engine.clusters["a"].memory.endpoints[&key].errors
        };
        assert_ne!(
            track(&engine),
            weighting::ErrorTrack::Clear,
            "judged by that tick"
        );
        // Suspected or held, it is left to the ticks; and a second failure within the same
        // tick period waits for the tick too.
        push(failing);
        assert_eq!(engine.pushed(&a()), 0);
        push([50.0, 50.0, 0.0]);
        assert_eq!(
            engine.pushed(&a()),
            0,
            "at most one early tick per tick period"
        );
    }

    #[test]
    fn rates_pulled_between_ticks_are_a_tick_only_when_they_show_a_failure() {
        let (mut engine, table) = three_pods(
            "\n  prometheus:\n    url: http://127.0.0.1:1\n    rps_query: 'sum(rate(r[1m])) by (pod)'\n    error_query: 'sum(rate(e[1m])) by (pod)'",
        );
        let pull = |errors| give_errors(&table, SourceKind::Pull, errors);
        let arrived = |engine: &mut Engine, failure_watch: bool| {
            engine.arrived(&Arrived {
                source: SourceKind::Pull,
                clusters: vec!["a".to_string()],
                failure_watch,
            })
        };
        let healthy = [0.0, 0.0, 0.0];
        pull(healthy);
        assert_eq!(arrived(&mut engine, false), 1, "a tick's pull is its tick");
        pull(healthy);
        assert_eq!(
            arrived(&mut engine, true),
            0,
            "healthy rates wait for the tick"
        );
        let failing = [50.0, 0.0, 0.0];
        pull(failing);
        assert_eq!(arrived(&mut engine, true), 1, "a failure is news");
        let key = (std::net::IpAddr::from([10, 0, 0, 1]), 1);
        assert_ne!(
            engine.clusters["a"].memory.endpoints[&key].errors,
            weighting::ErrorTrack::Clear,
            "judged by that tick"
        );
        pull([50.0, 50.0, 0.0]);
        assert_eq!(
            arrived(&mut engine, true),
            0,
            "at most one early tick per tick period"
        );
        assert_eq!(
            arrived(&mut engine, false),
            1,
            "the tick's pull still ticks"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_pod_is_pulled_at_every_step_until_it_is_measured() {
        use crate::discovery::file::diff;
        let configs: Vec<config::ValidConfig> =
            [&["one"][..], &["one", "two"], &["one", "two", "three"]]
                .iter()
                .map(|pods| adaptive_config(pods))
                .collect();
        let table = SampleTable::default();
        give_samples(&table, &[("one", 10.0)]);
        let (metrics, _registry) = Metrics::registered();
        let mut engine = Engine::new(
            Arc::new(configs[0].adaptive.clone()),
            table.clone(),
            SnapshotStore::new(),
            metrics,
        );
        let eager = engine.eager_pulls();
        engine.apply(diff(&BTreeMap::new(), &configs[0].clusters));
        assert!(eager.borrow().is_empty(), "every pod has a sample");
        // `two` joins without a sample: pulled eagerly, on every tick, until it is measured.
        engine.apply(diff(&configs[0].clusters, &configs[1].clusters));
        assert!(eager.borrow().contains("a"));
        tokio::time::advance(Duration::from_secs(5)).await;
        engine.pulled(&["a".to_string()]);
        assert!(eager.borrow().contains("a"));
        // Scraped before it takes traffic, its first samples read no requests: still unmeasured.
        give_samples(&table, &[("one", 10.0), ("two", 0.0)]);
        engine.pulled(&["a".to_string()]);
        assert!(eager.borrow().contains("a"));
        give_samples(&table, &[("one", 10.0), ("two", 5.0)]);
        engine.pulled(&["a".to_string()]);
        assert!(eager.borrow().is_empty(), "`two` is measured");
        // `three` never gets a sample: eager for a bounded time only.
        engine.apply(diff(&configs[1].clusters, &configs[2].clusters));
        tokio::time::advance(EAGER_PULLS_FOR - Duration::from_secs(10)).await;
        engine.pulled(&["a".to_string()]);
        assert!(eager.borrow().contains("a"));
        tokio::time::advance(Duration::from_secs(11)).await;
        engine.pulled(&["a".to_string()]);
        assert!(eager.borrow().is_empty(), "the bound has passed");
        // A cluster that goes away is no longer pulled.
        engine.apply(diff(&configs[2].clusters, &configs[0].clusters));
        engine.apply(diff(&configs[0].clusters, &configs[2].clusters));
        assert!(eager.borrow().contains("a"), "`three` is new again");
        engine.apply(diff(&configs[2].clusters, &BTreeMap::new()));
        assert!(eager.borrow().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn ticks_go_on_while_updates_keep_coming() {
        // Cluster `a` is only ever ticked; cluster `b` gets an endpoint update every 300 ms (a
        // busy Kubernetes source), more often than the 1 s tick.
        let (config, metrics, registry) = pulled_cluster();
        let engine = Engine::new(
            Arc::new(config.adaptive.clone()),
            cpu_table([("one".to_string(), 0.2)]),
            SnapshotStore::new(),
            metrics,
        );
        let (updates, receiver) = mpsc::channel(4);
        let (_config_sender, config_receiver) = watch::channel(Arc::new(config.adaptive.clone()));
        let (_pulls, pulled) = mpsc::channel(1);
        let running = tokio::spawn(engine.run(receiver, config_receiver, pulled));
        let initial = crate::discovery::file::diff(&BTreeMap::new(), &config.clusters);
        updates.send(initial).await.expect("engine runs");
        for round in 0..34u8 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let endpoint = Endpoint {
                address: format!("10.1.0.{}", round % 2 + 1)
                    .parse()
                    .expect("address"),
                port: 1,
                configured_weight: None,
                pod: None,
                node: None,
                locality: crate::model::Locality::default(),
                health: crate::model::HealthStatus::default(),
            };
            let update = ClusterUpdate::Reset {
                cluster: "b".into(),
                endpoints: vec![endpoint],
            };
            updates.send(vec![update]).await.expect("engine runs");
        }
        drop(updates);
        running
            .await
            .expect("engine stops when its sources are gone");
        // About ten seconds at a 1 s tick (its pull never answers here: the timer's fallback
        // ticks it every second and a half or two).
        let ticks = ticks(&registry);
        assert!(ticks >= 5, "{ticks} ticks in 10 s");
    }
}
