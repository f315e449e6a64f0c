//! The static YAML file source: reloads the config when it changes, keeps the last good one.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};

use super::{ClusterUpdate, Endpoint};
use crate::config::{self, adaptive::AdaptiveConfig, ValidConfig};
use crate::telemetry::Metrics;

/// How often the file is re-read. Polling the content (not inotify) also follows editors that
/// replace the file and Kubernetes ConfigMaps that swap a symlink.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Turns the difference between two cluster maps into updates (whole sets, `Reset`-style).
pub fn diff(
    old: &BTreeMap<String, Vec<Endpoint>>,
    new: &BTreeMap<String, Vec<Endpoint>>,
) -> Vec<ClusterUpdate> {
    let removed = old
        .keys()
        .filter(|name| !new.contains_key(*name))
        .map(|name| ClusterUpdate::Removed {
            cluster: name.clone(),
        });
    let changed = new
        .iter()
        .filter(|(name, endpoints)| old.get(*name) != Some(endpoints))
        .map(|(name, endpoints)| ClusterUpdate::Reset {
            cluster: name.clone(),
            endpoints: endpoints.clone(),
        });
    removed.chain(changed).collect()
}

/// Logs what `check` warns about (a valid config that probably does not do what is meant).
fn log_warnings(path: &std::path::Path, config: &ValidConfig) {
    for warning in config.warnings() {
        tracing::warn!(file = %path.display(), field = %warning.field, "{}", warning.message);
    }
}

/// Watches one config file and sends cluster updates for every valid change.
///
/// The file also carries the tick, metrics and weighting settings: they are published on a
/// `watch` channel that the engine and the metrics sources follow.
pub struct FileSource {
    path: PathBuf,
    current: ValidConfig,
    content_hash: [u8; 32],
    metrics: Metrics,
    settings: watch::Sender<Arc<AdaptiveConfig>>,
}

impl FileSource {
    /// Starts from the config already loaded at startup (`text` is the content it came from).
    pub fn new(path: PathBuf, current: ValidConfig, text: &str, metrics: Metrics) -> Self {
        log_warnings(&path, &current);
        let (settings, _) = watch::channel(Arc::new(current.adaptive.clone()));
        Self {
            path,
            current,
            content_hash: Sha256::digest(text.as_bytes()).into(),
            metrics,
            settings,
        }
    }

    /// Follows the tick, metrics and weighting settings of the last good config.
    pub fn settings(&self) -> watch::Receiver<Arc<AdaptiveConfig>> {
        self.settings.subscribe()
    }

    /// The updates that describe the initial config, from an empty state.
    pub fn initial_updates(&self) -> Vec<ClusterUpdate> {
        diff(&BTreeMap::new(), &self.current.clusters)
    }

    /// Polls until `updates` is closed; logs and skips invalid files.
    pub async fn run(mut self, updates: mpsc::Sender<Vec<ClusterUpdate>>) {
        let mut interval = tokio::time::interval(POLL_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if updates.is_closed() {
                return;
            }
            if let Some(batch) = self.poll().await {
                if !batch.is_empty() && updates.send(batch).await.is_err() {
                    return;
                }
            }
        }
    }

    async fn poll(&mut self) -> Option<Vec<ClusterUpdate>> {
        let text = match tokio::fs::read_to_string(&self.path).await {
            Ok(text) => text,
            Err(error) => {
                tracing::warn!(file = %self.path.display(), %error, "cannot read config file; keeping the last good config");
                return None;
            }
        };
        let hash: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        if hash == self.content_hash {
            return None;
        }
        self.content_hash = hash;
        self.apply(&text)
    }

    fn apply(&mut self, text: &str) -> Option<Vec<ClusterUpdate>> {
        match config::parse(text) {
            Ok(next) => {
                self.warn_about_restart_only_keys(&next);
                if next.warnings() != self.current.warnings() {
                    log_warnings(&self.path, &next);
                }
                let updates = diff(&self.current.clusters, &next.clusters);
                tracing::info!(file = %self.path.display(), changed_clusters = updates.len(), "config reloaded");
                self.metrics.config_reloads.get_or_create(&ok_label()).inc();
                self.settings.send_if_modified(|settings| {
                    let changed = **settings != next.adaptive;
                    if changed {
                        *settings = Arc::new(next.adaptive.clone());
                    }
                    changed
                });
                self.current = next;
                Some(updates)
            }
            Err(problems) => {
                let error = config::ConfigError {
                    file: self.path.clone(),
                    problems,
                };
                tracing::error!(error = %error, "config change rejected; the last good config stays in service");
                self.metrics
                    .config_reloads
                    .get_or_create(&error_label())
                    .inc();
                None
            }
        }
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

fn ok_label() -> crate::telemetry::ResultLabels {
    crate::telemetry::ResultLabels {
        result: "ok".into(),
    }
}

fn error_label() -> crate::telemetry::ResultLabels {
    crate::telemetry::ResultLabels {
        result: "error".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clusters(text: &str) -> BTreeMap<String, Vec<Endpoint>> {
        config::parse(text).expect("valid").clusters
    }

    #[test]
    fn diff_reports_changed_added_and_removed_clusters_only() {
        let old = clusters(
            "clusters:\n- name: a\n  endpoints: [{address: 10.0.0.1, port: 1}]\n- name: b\n  endpoints: []\n- name: c\n  endpoints: []\n",
        );
        let new = clusters(
            "clusters:\n- name: a\n  endpoints: [{address: 10.0.0.1, port: 2}]\n- name: c\n  endpoints: []\n- name: d\n  endpoints: []\n",
        );
        let names: Vec<String> = diff(&old, &new)
            .into_iter()
            .map(|update| match update {
                ClusterUpdate::Reset { cluster, .. } => format!("reset {cluster}"),
                ClusterUpdate::Removed { cluster } => format!("removed {cluster}"),
            })
            .collect();
        assert_eq!(names, vec!["removed b", "reset a", "reset d"]);
    }

    #[tokio::test]
    async fn invalid_change_keeps_the_last_good_config_and_a_valid_one_is_sent() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("config.yaml");
        let first = "clusters:\n- name: a\n  endpoints: [{address: 10.0.0.1, port: 1}]\n";
        std::fs::write(&path, first).expect("write");
        let loaded = config::load(&path).expect("valid");
        let mut source = FileSource::new(path.clone(), loaded, first, Metrics::default());
        assert!(
            source.poll().await.is_none(),
            "unchanged file sends nothing"
        );

        std::fs::write(
            &path,
            "clusters:\n- name: a\n  endpoints: [{address: 10.0.0.1, port: 0}]\n",
        )
        .expect("write");
        assert!(source.poll().await.is_none(), "invalid file sends nothing");
        assert_eq!(
            source.current.clusters["a"][0].port, 1,
            "last good config kept"
        );

        std::fs::write(
            &path,
            "clusters:\n- name: a\n  endpoints: [{address: 10.0.0.1, port: 3}]\n",
        )
        .expect("write");
        let updates = source.poll().await.expect("valid change is sent");
        assert!(
            matches!(&updates[..], [ClusterUpdate::Reset { endpoints, .. }] if endpoints[0].port == 3)
        );
    }

    #[tokio::test]
    async fn garbage_truncated_or_deleted_files_keep_the_last_good_config() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("config.yaml");
        let good = "clusters:\n- name: a\n  endpoints: [{address: 10.0.0.1, port: 1, weight: 5}]\n";
        std::fs::write(&path, good).expect("write");
        let loaded = config::load(&path).expect("valid");
        let mut source = FileSource::new(path.clone(), loaded, good, Metrics::default());
        for broken in [
            &b"\x00\xff\xfe garbage {{{"[..],
            &good.as_bytes()[..good.len() / 2],
            b"clusters: 7",
        ] {
            std::fs::write(&path, broken).expect("write");
            assert!(
                source.poll().await.is_none(),
                "{:?} is rejected",
                String::from_utf8_lossy(broken)
            );
            assert_eq!(source.current.clusters["a"][0].configured_weight, Some(5));
        }
        std::fs::remove_file(&path).expect("delete");
        assert!(
            source.poll().await.is_none(),
            "a deleted file changes nothing"
        );
        std::fs::write(&path, good.replace("weight: 5", "weight: 6")).expect("write");
        assert!(
            source.poll().await.is_some(),
            "a good file is picked up again"
        );
    }
}
