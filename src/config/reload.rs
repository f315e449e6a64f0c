//! Follows the config file: reads it at start and every 500 ms, keeps the last good config, and
//! publishes its settings (with the clusters discovered at run time merged in) and its static
//! clusters on `watch` channels for the engine, the metrics sources and the file endpoint source.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::watch;

use super::{
    adaptive::AdaptiveConfig, kubernetes::DiscoveredClusters, parse_file, read, ConfigError,
    ValidConfig,
};
use crate::model::Endpoint;
use crate::telemetry::{Metrics, ResultLabels};

/// How often the file is re-read. Polling the content (not inotify) also follows editors that
/// replace the file and Kubernetes ConfigMaps that swap a symlink.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The file's static clusters: endpoints per cluster name.
pub type StaticClusters = BTreeMap<String, Vec<Endpoint>>;

/// The config file being followed, and the channels that publish its last good content.
pub struct ConfigWatch {
    path: PathBuf,
    current: ValidConfig,
    digest: [u8; 32],
    metrics: Metrics,
    /// The clusters discovered at run time, as last seen; they get settings like the file's.
    discovered: DiscoveredClusters,
    discovered_changes: Option<watch::Receiver<DiscoveredClusters>>,
    settings: watch::Sender<Arc<AdaptiveConfig>>,
    clusters: watch::Sender<Arc<StaticClusters>>,
}

impl ConfigWatch {
    /// Reads and validates the file (every problem named, as `check` does); logs its warnings.
    pub fn open(path: PathBuf, metrics: Metrics) -> Result<Self, ConfigError> {
        let text = read(&path)?;
        let current = parse_file(&path, &text.text)?;
        log_warnings(&path, &current);
        let (settings, _) = watch::channel(Arc::new(current.adaptive.clone()));
        let (clusters, _) = watch::channel(Arc::new(current.clusters.clone()));
        Ok(Self {
            path,
            current,
            digest: text.digest,
            metrics,
            discovered: DiscoveredClusters::new(),
            discovered_changes: None,
            settings,
            clusters,
        })
    }

    /// The last good config.
    pub fn config(&self) -> &ValidConfig {
        &self.current
    }

    /// Follows the tick, metrics and weighting settings of the last good config, discovered
    /// clusters included.
    pub fn settings(&self) -> watch::Receiver<Arc<AdaptiveConfig>> {
        self.settings.subscribe()
    }

    /// Follows the static clusters of the last good config.
    pub fn clusters(&self) -> watch::Receiver<Arc<StaticClusters>> {
        self.clusters.subscribe()
    }

    /// Adds the clusters a source discovers at run time (Kubernetes) to the published settings
    /// (`AdaptiveConfig::with_discovered`), so the engine and the metrics sources treat a
    /// discovered cluster like one the file names.
    pub fn follow_discovered(&mut self, mut discovered: watch::Receiver<DiscoveredClusters>) {
        // `borrow_and_update` marks the value as seen, so `changed()` waits for the next one.
        self.discovered = discovered.borrow_and_update().clone();
        self.discovered_changes = Some(discovered);
        self.publish_settings();
    }

    /// Re-reads the file and follows the discovered clusters until nobody follows the channels.
    pub async fn run(mut self) {
        let mut interval = tokio::time::interval(POLL_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut discovered = self.discovered_changes.take();
        loop {
            let wake = tokio::select! {
                _ = interval.tick() => Wake::Poll,
                changed = next_change(&mut discovered) => Wake::Discovered(changed.is_ok()),
            };
            match wake {
                Wake::Poll => self.poll().await,
                Wake::Discovered(true) => {
                    if let Some(receiver) = discovered.as_mut() {
                        self.discovered = receiver.borrow_and_update().clone();
                    }
                    self.publish_settings();
                }
                // The source is gone: its clusters keep the settings they had.
                Wake::Discovered(false) => discovered = None,
            }
            if self.settings.is_closed() && self.clusters.is_closed() {
                return;
            }
        }
    }

    /// Takes the file's content when it changed and is valid; logs and skips anything else.
    async fn poll(&mut self) {
        let path = self.path.clone();
        let text = match tokio::task::spawn_blocking(move || read(&path)).await {
            Ok(Ok(text)) => text,
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot read config file; keeping the last good config");
                return;
            }
            Err(error) => {
                tracing::warn!(file = %self.path.display(), %error, "cannot read config file; keeping the last good config");
                return;
            }
        };
        if text.digest == self.digest {
            return;
        }
        self.digest = text.digest;
        self.apply(&text.text);
    }

    fn apply(&mut self, text: &str) {
        match parse_file(&self.path, text) {
            Ok(next) => {
                self.warn_about_restart_only_keys(&next);
                if next.warnings() != self.current.warnings() {
                    log_warnings(&self.path, &next);
                }
                let changed_clusters = changed_clusters(&self.current.clusters, &next.clusters);
                tracing::info!(file = %self.path.display(), changed_clusters, "config reloaded");
                self.metrics.config_reloads.get_or_create(&ok_label()).inc();
                self.current = next;
                // Settings first: the endpoints of a changed cluster then meet its new settings.
                self.publish_settings();
                self.clusters.send_if_modified(|clusters| {
                    let changed = **clusters != self.current.clusters;
                    if changed {
                        *clusters = Arc::new(self.current.clusters.clone());
                    }
                    changed
                });
            }
            Err(error) => {
                tracing::error!(error = %error, "config change rejected; the last good config stays in service");
                self.metrics
                    .config_reloads
                    .get_or_create(&error_label())
                    .inc();
            }
        }
    }

    /// Publishes the last good settings with the discovered clusters, if they differ from what
    /// is published.
    fn publish_settings(&self) {
        let next = self.current.adaptive.with_discovered(&self.discovered);
        self.settings.send_if_modified(|settings| {
            let changed = **settings != next;
            if changed {
                *settings = Arc::new(next);
            }
            changed
        });
    }

    fn warn_about_restart_only_keys(&self, next: &ValidConfig) {
        let remote_write = |config: &ValidConfig| config.adaptive.remote_write.is_some();
        if next.raw.xds != self.current.raw.xds
            || next.raw.admin != self.current.raw.admin
            || remote_write(next) != remote_write(&self.current)
            || next.adaptive.load_reports != self.current.adaptive.load_reports
            || next.raw.kubernetes != self.current.raw.kubernetes
        {
            tracing::warn!(file = %self.path.display(), "xds, admin, kubernetes, metrics.remote_write.enabled or metrics.load_reports changed; that takes effect only after a restart");
        }
    }
}

/// What woke the watch.
enum Wake {
    /// Time to re-read the file.
    Poll,
    /// The discovered clusters changed (`true`) or their source is gone (`false`).
    Discovered(bool),
}

/// The next change of the discovered clusters; never, without a source of them.
async fn next_change(
    discovered: &mut Option<watch::Receiver<DiscoveredClusters>>,
) -> Result<(), watch::error::RecvError> {
    match discovered {
        Some(receiver) => receiver.changed().await,
        None => std::future::pending().await,
    }
}

/// How many clusters were added, removed or changed.
fn changed_clusters(old: &StaticClusters, new: &StaticClusters) -> usize {
    let removed = old.keys().filter(|name| !new.contains_key(*name)).count();
    let changed = new
        .iter()
        .filter(|(name, endpoints)| old.get(*name) != Some(endpoints))
        .count();
    removed + changed
}

/// Logs what `check` warns about (a valid config that probably does not do what is meant).
fn log_warnings(path: &std::path::Path, config: &ValidConfig) {
    for warning in config.warnings() {
        tracing::warn!(file = %path.display(), field = %warning.field, "{}", warning.message);
    }
}

fn ok_label() -> ResultLabels {
    ResultLabels {
        result: "ok".into(),
    }
}

fn error_label() -> ResultLabels {
    ResultLabels {
        result: "error".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch_of(path: &std::path::Path) -> ConfigWatch {
        ConfigWatch::open(path.to_path_buf(), Metrics::default()).expect("valid")
    }

    #[tokio::test]
    async fn invalid_change_keeps_the_last_good_config_and_a_valid_one_is_sent() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("config.yaml");
        let first = "clusters:\n- name: a\n  endpoints: [{address: 10.0.0.1, port: 1}]\n";
        std::fs::write(&path, first).expect("write");
        let mut watch = watch_of(&path);
        let mut clusters = watch.clusters();
        watch.poll().await;
        assert!(
            !clusters.has_changed().expect("open"),
            "unchanged file sends nothing"
        );

        std::fs::write(
            &path,
            "clusters:\n- name: a\n  endpoints: [{address: 10.0.0.1, port: 0}]\n",
        )
        .expect("write");
        watch.poll().await;
        assert!(
            !clusters.has_changed().expect("open"),
            "invalid file sends nothing"
        );
        assert_eq!(
            watch.current.clusters["a"][0].port, 1,
            "last good config kept"
        );

        std::fs::write(
            &path,
            "clusters:\n- name: a\n  endpoints: [{address: 10.0.0.1, port: 3}]\n",
        )
        .expect("write");
        watch.poll().await;
        assert!(
            clusters.has_changed().expect("open"),
            "valid change is sent"
        );
        assert_eq!(clusters.borrow_and_update()["a"][0].port, 3);
    }

    #[tokio::test]
    async fn garbage_truncated_or_deleted_files_keep_the_last_good_config() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("config.yaml");
        let good = "clusters:\n- name: a\n  endpoints: [{address: 10.0.0.1, port: 1, weight: 5}]\n";
        std::fs::write(&path, good).expect("write");
        let mut watch = watch_of(&path);
        let clusters = watch.clusters();
        for broken in [
            &b"\x00\xff\xfe garbage {{{"[..],
            &good.as_bytes()[..good.len() / 2],
            b"clusters: 7",
        ] {
            std::fs::write(&path, broken).expect("write");
            watch.poll().await;
            assert!(
                !clusters.has_changed().expect("open"),
                "{:?} is rejected",
                String::from_utf8_lossy(broken)
            );
            assert_eq!(watch.current.clusters["a"][0].configured_weight, Some(5));
        }
        std::fs::remove_file(&path).expect("delete");
        watch.poll().await;
        assert!(
            !clusters.has_changed().expect("open"),
            "a deleted file changes nothing"
        );
        std::fs::write(&path, good.replace("weight: 5", "weight: 6")).expect("write");
        watch.poll().await;
        assert!(
            clusters.has_changed().expect("open"),
            "a good file is picked up again"
        );
    }

    #[tokio::test]
    async fn settings_follow_the_file_and_the_discovered_clusters() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("config.yaml");
        let text = |tick: &str| {
            format!("tick: {tick}\nmetrics: {{ prometheus: {{ url: \"http://127.0.0.1:1\" }} }}\n")
        };
        std::fs::write(&path, text("10s")).expect("write");
        let mut watch = watch_of(&path);
        let mut settings = watch.settings();
        let (discovered_sender, discovered) = watch::channel(DiscoveredClusters::new());
        watch.follow_discovered(discovered);
        assert!(
            !settings.has_changed().expect("open"),
            "nothing discovered yet: the file's settings as they were"
        );
        let labels =
            super::super::kubernetes::discovered_labels("shop-cart", "shop", "cart", "web");
        discovered_sender.send_replace(BTreeMap::from([("shop-cart".to_string(), labels)]));
        let run = tokio::spawn(watch.run());
        let deadline = Duration::from_secs(5);
        tokio::time::timeout(deadline, settings.changed())
            .await
            .expect("a discovered cluster is published in time")
            .expect("open");
        assert!(settings
            .borrow_and_update()
            .settings("shop-cart")
            .queries
            .as_ref()
            .is_some_and(|queries| queries.cpu.contains("namespace=\"shop\"")));

        std::fs::write(&path, text("2s")).expect("write");
        tokio::time::timeout(deadline, settings.changed())
            .await
            .expect("a file change is published in time")
            .expect("open");
        let current = settings.borrow_and_update().clone();
        assert_eq!(current.tick, Duration::from_secs(2));
        assert!(
            current.clusters.contains_key("shop-cart"),
            "discovered clusters stay merged"
        );
        run.abort();
    }
}
