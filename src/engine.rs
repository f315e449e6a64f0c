//! The engine: joins discovered endpoints with weights and publishes a snapshot per change.

use std::{collections::BTreeMap, sync::Arc};

use tokio::sync::mpsc;

use crate::discovery::{ClusterUpdate, Endpoint};
use crate::snapshot::{ClusterResource, ServedEndpoint, Snapshot, SnapshotStore};
use crate::telemetry::{EndpointLabels, Metrics};
use crate::weighting;

/// Current endpoints per cluster and their encoded resources.
pub struct Engine {
    endpoints: BTreeMap<String, Vec<Endpoint>>,
    resources: BTreeMap<String, Arc<ClusterResource>>,
    store: SnapshotStore,
    metrics: Metrics,
}

impl Engine {
    /// An engine with no clusters that publishes into `store`.
    pub fn new(store: SnapshotStore, metrics: Metrics) -> Self {
        Self {
            endpoints: BTreeMap::new(),
            resources: BTreeMap::new(),
            store,
            metrics,
        }
    }

    /// Applies a batch of updates, re-encoding only the clusters they touch.
    pub fn apply(&mut self, updates: Vec<ClusterUpdate>) {
        for update in updates {
            match update {
                ClusterUpdate::Reset { cluster, endpoints } => {
                    let resource = build_resource(&cluster, &endpoints);
                    self.resources.insert(cluster.clone(), Arc::new(resource));
                    self.endpoints.insert(cluster, endpoints);
                }
                ClusterUpdate::Removed { cluster } => {
                    self.resources.remove(&cluster);
                    self.endpoints.remove(&cluster);
                }
            }
        }
    }

    /// Publishes the current state; returns whether the content changed.
    pub fn publish(&self) -> bool {
        let snapshot = Snapshot::new(self.resources.clone());
        let changed = self.store.publish(snapshot);
        if changed {
            self.record_metrics();
            let current = self.store.current();
            tracing::info!(version = %current.version, clusters = current.clusters.len(), "snapshot published");
        }
        changed
    }

    /// Applies updates as they arrive until every source is gone.
    pub async fn run(mut self, mut updates: mpsc::Receiver<Vec<ClusterUpdate>>) {
        while let Some(batch) = updates.recv().await {
            self.apply(batch);
            self.publish();
        }
    }

    fn record_metrics(&self) {
        self.metrics.snapshots.inc();
        self.metrics.clusters.set(self.resources.len() as i64);
        self.metrics.endpoint_weight.clear();
        for resource in self.resources.values() {
            for served in &resource.endpoints {
                let labels = EndpointLabels {
                    cluster: resource.name.clone(),
                    endpoint: format!("{}:{}", served.endpoint.address, served.endpoint.port),
                    pod: served.endpoint.pod.clone().unwrap_or_default(),
                };
                self.metrics
                    .endpoint_weight
                    .get_or_create(&labels)
                    .set(i64::from(served.weight));
            }
        }
    }
}

fn build_resource(cluster: &str, endpoints: &[Endpoint]) -> ClusterResource {
    let weights = weighting::static_weights(endpoints);
    let served = endpoints
        .iter()
        .zip(weights)
        .map(|(endpoint, weight)| ServedEndpoint {
            endpoint: endpoint.clone(),
            weight: weight.weight,
            reason: weight.reason,
        })
        .collect();
    ClusterResource::build(cluster, served)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    #[test]
    fn publishes_weights_and_only_real_changes() {
        let store = SnapshotStore::new();
        let mut engine = Engine::new(store.clone(), Metrics::default());
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
        engine.apply(vec![ClusterUpdate::Removed {
            cluster: "a".into(),
        }]);
        assert!(engine.publish());
        assert!(store.current().clusters.is_empty());
    }
}
