//! The config file's static clusters as an endpoint source: each change of them (published by
//! `config::reload`) becomes `ClusterUpdate`s for the clusters that changed, whole sets.

use std::{collections::BTreeMap, sync::Arc};

use tokio::sync::{mpsc, watch};

use super::{ClusterUpdate, Endpoint};
use crate::config::reload::StaticClusters;

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

/// Follows the file's static clusters and sends updates for every change.
pub struct FileSource {
    clusters: watch::Receiver<Arc<StaticClusters>>,
    sent: Arc<StaticClusters>,
}

impl FileSource {
    /// Starts from the clusters published now (see [`FileSource::initial_updates`]).
    pub fn new(mut clusters: watch::Receiver<Arc<StaticClusters>>) -> Self {
        let sent = clusters.borrow_and_update().clone();
        Self { clusters, sent }
    }

    /// The updates that describe the initial clusters, from an empty state.
    pub fn initial_updates(&self) -> Vec<ClusterUpdate> {
        diff(&BTreeMap::new(), &self.sent)
    }

    /// Sends the changed clusters after every change, until `updates` or the clusters' channel
    /// is closed.
    pub async fn run(mut self, updates: mpsc::Sender<Vec<ClusterUpdate>>) {
        loop {
            tokio::select! {
                changed = self.clusters.changed() => if changed.is_err() { return },
                () = updates.closed() => return,
            }
            if let Some(batch) = self.next_batch() {
                if updates.send(batch).await.is_err() {
                    return;
                }
            }
        }
    }

    /// The updates from what was sent to what is published now, if any.
    fn next_batch(&mut self) -> Option<Vec<ClusterUpdate>> {
        let next = self.clusters.borrow_and_update().clone();
        let batch = diff(&self.sent, &next);
        self.sent = next;
        (!batch.is_empty()).then_some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

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

    #[test]
    fn a_published_change_is_sent_as_the_changed_clusters_only() {
        let first = clusters(
            "clusters:\n- name: a\n  endpoints: [{address: 10.0.0.1, port: 1}]\n- name: b\n  endpoints: []\n",
        );
        let (publish, published) = watch::channel(Arc::new(first));
        let mut source = FileSource::new(published);
        assert_eq!(source.initial_updates().len(), 2);
        assert!(source.next_batch().is_none(), "nothing new, nothing sent");
        publish.send_replace(Arc::new(clusters(
            "clusters:\n- name: a\n  endpoints: [{address: 10.0.0.1, port: 3}]\n- name: b\n  endpoints: []\n",
        )));
        let updates = source.next_batch().expect("a change is sent");
        assert!(
            matches!(&updates[..], [ClusterUpdate::Reset { endpoints, .. }] if endpoints[0].port == 3)
        );
    }
}
