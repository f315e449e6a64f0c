//! The `Inspect` gRPC service: what we serve and who is connected, for operators and grpcurl.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::model::HealthStatus;
use crate::snapshot::SnapshotStore;
use crate::transport::registry::ClientRegistry;

/// Generated types and server for `adaptive_eds.inspect.v1`.
pub mod pb {
    tonic::include_proto!("adaptive_eds.inspect.v1");
}

/// Encoded descriptor of `inspect.proto`, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/inspect_descriptor.bin"));

/// Reads snapshots and the client registry; never changes anything.
#[derive(Clone, Debug)]
pub struct InspectService {
    store: SnapshotStore,
    registry: Arc<ClientRegistry>,
}

impl InspectService {
    /// A service over the given snapshots and clients.
    pub fn new(store: SnapshotStore, registry: Arc<ClientRegistry>) -> Self {
        Self { store, registry }
    }

    /// The gRPC server for this service.
    pub fn server(self) -> pb::inspect_server::InspectServer<Self> {
        pb::inspect_server::InspectServer::new(self)
    }
}

fn health_name(health: HealthStatus) -> &'static str {
    match health {
        HealthStatus::Healthy => "HEALTHY",
        HealthStatus::Draining => "DRAINING",
        HealthStatus::Unhealthy => "UNHEALTHY",
    }
}

#[tonic::async_trait]
impl pb::inspect_server::Inspect for InspectService {
    async fn list_clusters(
        &self,
        _request: Request<pb::ListClustersRequest>,
    ) -> Result<Response<pb::ListClustersResponse>, Status> {
        let snapshot = self.store.current();
        let clusters = snapshot
            .clusters
            .values()
            .map(|cluster| pb::ClusterSummary {
                name: cluster.name.clone(),
                version: cluster.version.clone(),
                endpoint_count: u32::try_from(cluster.endpoints.len()).unwrap_or(u32::MAX),
                total_weight: cluster.endpoints.iter().map(|e| u64::from(e.weight)).sum(),
                mode: self
                    .store
                    .explanation(&cluster.name)
                    .map(|explanation| explanation.mode.as_str().to_string())
                    .unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::ListClustersResponse {
            snapshot_version: snapshot.version.clone(),
            clusters,
            published_unix_ms: snapshot
                .published_at
                .map(crate::model::unix_millis)
                .unwrap_or_default(),
        }))
    }

    async fn get_cluster(
        &self,
        request: Request<pb::GetClusterRequest>,
    ) -> Result<Response<pb::Cluster>, Status> {
        let name = &request.get_ref().name;
        let snapshot = self.store.current();
        let cluster = snapshot.clusters.get(name).ok_or_else(|| {
            Status::not_found(format!(
                "no cluster named {name:?}; ListClusters shows the served ones"
            ))
        })?;
        let explanation = self.store.explanation(name);
        let explained = |endpoint: &crate::model::Endpoint| {
            explanation.as_ref().and_then(|explanation| {
                explanation
                    .endpoints
                    .iter()
                    .find(|(known, _)| {
                        known.address == endpoint.address && known.port == endpoint.port
                    })
                    .map(|(_, weight)| weight.clone())
            })
        };
        let endpoints = cluster
            .endpoints
            .iter()
            .map(|served| {
                let computed = explained(&served.endpoint).unwrap_or_default();
                pb::Endpoint {
                    address: served.endpoint.address.to_string(),
                    port: u32::from(served.endpoint.port),
                    weight: served.weight,
                    pod: served.endpoint.pod.clone().unwrap_or_default(),
                    node: served.endpoint.node.clone().unwrap_or_default(),
                    zone: served.endpoint.locality.zone.clone(),
                    health: health_name(served.endpoint.health).into(),
                    reason: served.reason.to_string(),
                    source: computed.source.as_str().into(),
                    computed_weight: computed.weight,
                    previous_weight: computed.previous,
                    cpu_cores: computed.cpu,
                    requests_per_second: computed.rps,
                    utilization: computed.utilization,
                    sample_age_seconds: computed.sample_age.map(|age| age.as_secs_f64()),
                    errors_per_second: computed.errors,
                    error_ratio: computed.error_ratio(),
                    requests_in_flight: computed.in_flight,
                    observed_latency_seconds: computed.latency,
                }
            })
            .collect();
        Ok(Response::new(pb::Cluster {
            name: cluster.name.clone(),
            version: cluster.version.clone(),
            endpoints,
            mode: explanation
                .as_ref()
                .map(|explanation| explanation.mode.as_str().to_string())
                .unwrap_or_default(),
            computed_seconds_ago: explanation.as_ref().map(|explanation| {
                explanation
                    .computed_at
                    .elapsed()
                    .map(|elapsed| elapsed.as_secs_f64())
                    .unwrap_or(0.0)
            }),
        }))
    }

    async fn list_clients(
        &self,
        _request: Request<pb::ListClientsRequest>,
    ) -> Result<Response<pb::ListClientsResponse>, Status> {
        let clients = self
            .registry
            .list()
            .into_iter()
            .map(|client| pb::Client {
                stream_id: client.stream_id,
                node_id: client.node_id,
                node_cluster: client.node_cluster,
                stream_kind: client.kind.label().into(),
                subscribed: client.subscribed,
                last_sent_version: client.last_sent_version,
                last_acked_version: client.last_acked_version,
                last_nack_version: client.last_nack_version,
                last_nack_message: client.last_nack_message,
                pushes: client.pushes,
                acks: client.acks,
                nacks: client.nacks,
                connected_seconds: client.connected_at.elapsed().as_secs(),
            })
            .collect();
        Ok(Response::new(pb::ListClientsResponse {
            snapshot_version: self.store.current().version.clone(),
            clients,
        }))
    }
}
