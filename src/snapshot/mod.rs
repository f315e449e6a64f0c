//! Immutable, versioned sets of `ClusterLoadAssignment`s: the only state shared by engine and serving.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::SystemTime,
};

use bytes::Bytes;
use envoy_types::pb::{
    envoy::{config::endpoint::v3 as endpoint, service::discovery::v3::Resource},
    google::protobuf::Any,
};
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

mod encoding;

pub use encoding::EncodedEndpoints;

use crate::model::Endpoint;
use crate::weighting::{ClusterMode, Reason, Weight};

/// Type URL of EDS resources.
pub const CLUSTER_LOAD_ASSIGNMENT: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// One endpoint as served: where it is, its weight and why.
#[derive(Clone, Debug, PartialEq)]
pub struct ServedEndpoint {
    /// The endpoint as discovered (shared with the engine and the explanation).
    pub endpoint: Arc<Endpoint>,
    /// `load_balancing_weight` sent to Envoy.
    pub weight: u32,
    /// Why it has that weight.
    pub reason: Reason,
}

/// One cluster's `ClusterLoadAssignment`, encoded once and shared by every stream.
#[derive(Debug)]
pub struct ClusterResource {
    /// EDS resource name.
    pub name: String,
    /// Content-derived version (a hash of the encoded assignment).
    pub version: String,
    /// The endpoints as served, in source order.
    pub endpoints: Vec<ServedEndpoint>,
    /// The assignment wrapped in `google.protobuf.Any`, encoded (for state-of-the-world).
    pub any: Bytes,
    /// The assignment wrapped in `envoy.service.discovery.v3.Resource`, encoded (for delta).
    pub delta_resource: Bytes,
}

impl ClusterResource {
    /// Builds and encodes the assignment for `name`.
    pub fn build(name: &str, endpoints: Vec<ServedEndpoint>) -> Self {
        let encoded = EncodedEndpoints::new(name, endpoints.iter().map(|served| &*served.endpoint));
        Self::from_encoded(&encoded, endpoints)
    }

    /// Encodes the assignment of `endpoints` from their pre-encoded parts (`encoded` must have
    /// been built from the same endpoints, in the same order).
    pub fn from_encoded(encoded: &EncodedEndpoints, endpoints: Vec<ServedEndpoint>) -> Self {
        let weights: Vec<u32> = endpoints.iter().map(|served| served.weight).collect();
        let value = encoded.encode(&weights);
        let version = short_hash(&value);
        let name = encoded.cluster_name();
        let any = Any {
            type_url: CLUSTER_LOAD_ASSIGNMENT.into(),
            value,
        };
        let any_bytes = Bytes::from(any.encode_to_vec());
        let delta_resource = Resource {
            name: name.into(),
            version: version.clone(),
            resource: Some(any),
            ..Default::default()
        };
        Self {
            name: name.into(),
            version,
            endpoints,
            any: any_bytes,
            delta_resource: Bytes::from(delta_resource.encode_to_vec()),
        }
    }

    /// Decodes the served assignment back (for inspection and tests, never on the hot path).
    pub fn assignment(&self) -> Option<endpoint::ClusterLoadAssignment> {
        let any = Any::decode(self.any.clone()).ok()?;
        endpoint::ClusterLoadAssignment::decode(any.value.as_slice()).ok()
    }
}

/// First 16 hex digits of the SHA-256 of `bytes`: stable across processes and restarts.
pub fn short_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A content-derived version for a set of `(name, version)` pairs (order-independent).
pub fn combined_version<'a>(items: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut pairs: Vec<(&str, &str)> = items.into_iter().collect();
    pairs.sort_unstable();
    let mut hasher = Sha256::new();
    for (name, version) in pairs {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(version.as_bytes());
        hasher.update([b'\n']);
    }
    let digest = hasher.finalize();
    digest[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Every cluster served at one moment, with a version derived from their content.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Hash of every cluster's name and version.
    pub version: String,
    /// When it was published (set by [`SnapshotStore::publish`]).
    pub published_at: Option<SystemTime>,
    /// Clusters by EDS resource name.
    pub clusters: BTreeMap<String, Arc<ClusterResource>>,
}

impl Snapshot {
    /// Builds a snapshot and its version.
    pub fn new(clusters: BTreeMap<String, Arc<ClusterResource>>) -> Self {
        let version = combined_version(
            clusters
                .values()
                .map(|cluster| (cluster.name.as_str(), cluster.version.as_str())),
        );
        Self {
            version,
            published_at: None,
            clusters,
        }
    }
}

/// Why a cluster has its weights: the last tick's inputs and results, served or not.
///
/// Kept beside the snapshot, not in it, so a tick that changes only the explanation (new CPU
/// figures, same weights) wakes no xDS stream.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterExplanation {
    /// The cluster's weighting mode.
    pub mode: ClusterMode,
    /// When it was computed.
    pub computed_at: SystemTime,
    /// Each endpoint with its computed weight and inputs, in source order.
    pub endpoints: Vec<(Arc<Endpoint>, Weight)>,
}

/// Publishes snapshots to every reader; readers always see the newest, never a queue.
#[derive(Clone, Debug)]
pub struct SnapshotStore {
    sender: Arc<watch::Sender<Arc<Snapshot>>>,
    ready: Arc<watch::Sender<bool>>,
    explanations: Arc<RwLock<BTreeMap<String, Arc<ClusterExplanation>>>>,
}

impl Default for SnapshotStore {
    fn default() -> Self {
        Self::new()
    }
}

impl SnapshotStore {
    /// An empty store, not ready until the first publish.
    pub fn new() -> Self {
        let (sender, _) = watch::channel(Arc::new(Snapshot::new(BTreeMap::new())));
        let (ready, _) = watch::channel(false);
        Self {
            sender: Arc::new(sender),
            ready: Arc::new(ready),
            explanations: Arc::default(),
        }
    }

    /// Records why `cluster` has its weights (`None` forgets the cluster).
    pub fn explain(&self, cluster: &str, explanation: Option<ClusterExplanation>) {
        if let Ok(mut explanations) = self.explanations.write() {
            match explanation {
                Some(explanation) => {
                    explanations.insert(cluster.to_string(), Arc::new(explanation));
                }
                None => {
                    explanations.remove(cluster);
                }
            }
        }
    }

    /// Why `cluster` has its weights, if known.
    pub fn explanation(&self, cluster: &str) -> Option<Arc<ClusterExplanation>> {
        self.explanations.read().ok()?.get(cluster).cloned()
    }

    /// Replaces the current snapshot if its content differs; returns whether it did.
    pub fn publish(&self, mut snapshot: Snapshot) -> bool {
        self.ready.send_replace(true);
        snapshot.published_at = Some(SystemTime::now());
        let snapshot = Arc::new(snapshot);
        self.sender.send_if_modified(|current| {
            if current.version == snapshot.version {
                false
            } else {
                *current = snapshot;
                true
            }
        })
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.sender.borrow().clone()
    }

    /// A receiver that wakes on every new snapshot (skipping intermediate ones if slow).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.sender.subscribe()
    }

    /// True once the first snapshot has been published.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }
}

/// Snapshots for protocol tests, so serving's tests need not build discovery types.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::model::{HealthStatus, Locality};

    /// One endpoint per cluster, `127.0.0.1:9000` with the given weight.
    pub(crate) fn snapshot(clusters: &[(&str, u32)]) -> Snapshot {
        let mut map = BTreeMap::new();
        for (name, weight) in clusters {
            let served = ServedEndpoint {
                endpoint: Arc::new(Endpoint {
                    address: std::net::IpAddr::from([127, 0, 0, 1]),
                    port: 9000,
                    configured_weight: Some(*weight),
                    pod: None,
                    node: None,
                    locality: Locality::default(),
                    health: HealthStatus::Healthy,
                }),
                weight: *weight,
                reason: Reason::default(),
            };
            map.insert(
                name.to_string(),
                Arc::new(ClusterResource::build(name, vec![served])),
            );
        }
        Snapshot::new(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HealthStatus, Locality};

    fn served(port: u16, weight: u32, zone: &str) -> ServedEndpoint {
        ServedEndpoint {
            endpoint: Arc::new(Endpoint {
                address: "127.0.0.1".parse().expect("ip"),
                port,
                configured_weight: Some(weight),
                pod: Some(format!("pod-{port}")),
                node: None,
                locality: Locality {
                    zone: zone.into(),
                    ..Default::default()
                },
                health: HealthStatus::Healthy,
            }),
            weight,
            reason: Reason::configured(),
        }
    }

    #[test]
    fn assignment_groups_by_locality_and_carries_weights() {
        let resource = ClusterResource::build(
            "checkout",
            vec![
                served(9001, 300, "z1"),
                served(9002, 100, "z2"),
                served(9003, 5, "z1"),
            ],
        );
        let assignment = resource.assignment().expect("decodes");
        assert_eq!(assignment.cluster_name, "checkout");
        assert_eq!(assignment.endpoints.len(), 2);
        let zone_one = &assignment.endpoints[0];
        assert_eq!(
            zone_one.locality.as_ref().map(|l| l.zone.as_str()),
            Some("z1")
        );
        let weights: Vec<u32> = zone_one
            .lb_endpoints
            .iter()
            .filter_map(|lb| lb.load_balancing_weight.as_ref().map(|w| w.value))
            .collect();
        assert_eq!(weights, vec![300, 5]);
    }

    #[test]
    fn versions_follow_content_only() {
        let first = ClusterResource::build("a", vec![served(1, 10, "")]);
        let same = ClusterResource::build("a", vec![served(1, 10, "")]);
        let other = ClusterResource::build("a", vec![served(1, 11, "")]);
        assert_eq!(first.version, same.version);
        assert_ne!(first.version, other.version);
        assert_eq!(first.any, same.any);
        assert_eq!(
            combined_version([("a", "1"), ("b", "2")]),
            combined_version([("b", "2"), ("a", "1")])
        );
        assert_ne!(
            combined_version([("a", "1")]),
            combined_version([("a", "2")])
        );
    }

    #[test]
    fn publish_ignores_identical_content() {
        let store = SnapshotStore::new();
        assert!(!store.is_ready());
        let build = || {
            let mut clusters = BTreeMap::new();
            clusters.insert(
                "a".to_string(),
                Arc::new(ClusterResource::build("a", vec![served(1, 10, "")])),
            );
            Snapshot::new(clusters)
        };
        assert!(store.publish(build()));
        assert!(store.is_ready());
        assert!(!store.publish(build()));
        assert_eq!(store.current().clusters.len(), 1);
    }
}
