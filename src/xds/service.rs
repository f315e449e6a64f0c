//! The tonic services (ADS and EDS): thin adapters from gRPC calls to the stream driver.

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use tonic::{Request, Response, Status, Streaming};

use super::{
    ads_server::aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    },
    body::ChunkedStreams,
    delta::DeltaState,
    eds_server::endpoint_discovery_service_server::{
        EndpointDiscoveryService, EndpointDiscoveryServiceServer,
    },
    sotw::SotwState,
    stream::serve,
    type_state::WILDCARD,
    wire::{DeltaResponse, SotwResponse},
};
use crate::snapshot::{combined_version, CLUSTER_LOAD_ASSIGNMENT};
use crate::transport::{
    port::{ResponseStream, XdsContext},
    registry::StreamKind,
};

/// Serves ADS (SotW and delta) and the EDS service from the same snapshots.
#[derive(Clone, Debug)]
pub struct XdsService {
    context: XdsContext,
}

impl XdsService {
    /// A service over `context`.
    pub fn new(context: XdsContext) -> Self {
        Self { context }
    }

    /// The ADS gRPC service, refusing requests over `max_message_bytes`; its streams write
    /// shared response bytes without a per-stream encode buffer ([`ChunkedStreams`]).
    pub fn ads(
        &self,
        max_message_bytes: usize,
    ) -> ChunkedStreams<AggregatedDiscoveryServiceServer<Self>> {
        ChunkedStreams::new(
            AggregatedDiscoveryServiceServer::new(self.clone())
                .max_decoding_message_size(max_message_bytes),
            self.context.clone(),
            max_message_bytes,
        )
    }

    /// The EDS gRPC service, refusing requests over `max_message_bytes` (streams as for ADS;
    /// `FetchEndpoints` by the generated service).
    pub fn eds(
        &self,
        max_message_bytes: usize,
    ) -> ChunkedStreams<EndpointDiscoveryServiceServer<Self>> {
        ChunkedStreams::new(
            EndpointDiscoveryServiceServer::new(self.clone())
                .max_decoding_message_size(max_message_bytes),
            self.context.clone(),
            max_message_bytes,
        )
    }

    fn fetch(&self, request: &DiscoveryRequest) -> Result<SotwResponse, Status> {
        if !request.type_url.is_empty() && request.type_url != CLUSTER_LOAD_ASSIGNMENT {
            return Err(Status::invalid_argument(format!(
                "the EDS service serves {CLUSTER_LOAD_ASSIGNMENT} only, got type_url {:?}",
                request.type_url
            )));
        }
        if request.resource_names.len() > self.context.max_resource_names {
            self.context.refuse("max_resource_names");
            return Err(Status::resource_exhausted(format!(
                "request names {} resources; at most {} allowed (xds.max_resource_names)",
                request.resource_names.len(),
                self.context.max_resource_names
            )));
        }
        let snapshot = self.context.store.current();
        let all = request.resource_names.is_empty()
            || request.resource_names.iter().any(|name| name == WILDCARD);
        let resources: Vec<_> = if all {
            snapshot.clusters.values().collect()
        } else {
            request
                .resource_names
                .iter()
                .filter_map(|name| snapshot.clusters.get(name))
                .collect()
        };
        Ok(SotwResponse {
            version_info: combined_version(
                resources
                    .iter()
                    .map(|resource| (resource.name.as_str(), resource.version.as_str())),
            ),
            resources: resources
                .iter()
                .map(|resource| resource.any.clone())
                .collect(),
            type_url: CLUSTER_LOAD_ASSIGNMENT.into(),
            nonce: String::new(),
        })
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsService {
    type StreamAggregatedResourcesStream = ResponseStream<SotwResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        self.context.admit_stream()?;
        let stream = serve::<SotwState>(
            self.context.clone(),
            StreamKind::AdsSotw,
            request.into_inner(),
        );
        Ok(Response::new(stream))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        self.context.admit_stream()?;
        let stream = serve::<DeltaState>(
            self.context.clone(),
            StreamKind::AdsDelta,
            request.into_inner(),
        );
        Ok(Response::new(stream))
    }
}

#[tonic::async_trait]
impl EndpointDiscoveryService for XdsService {
    type StreamEndpointsStream = ResponseStream<SotwResponse>;
    type DeltaEndpointsStream = ResponseStream<DeltaResponse>;

    async fn stream_endpoints(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamEndpointsStream>, Status> {
        self.context.admit_stream()?;
        let stream = serve::<SotwState>(
            self.context.clone(),
            StreamKind::EdsSotw,
            request.into_inner(),
        );
        Ok(Response::new(stream))
    }

    async fn delta_endpoints(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaEndpointsStream>, Status> {
        self.context.admit_stream()?;
        let stream = serve::<DeltaState>(
            self.context.clone(),
            StreamKind::EdsDelta,
            request.into_inner(),
        );
        Ok(Response::new(stream))
    }

    async fn fetch_endpoints(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<SotwResponse>, Status> {
        self.context
            .metrics
            .pushes
            .get_or_create(&crate::telemetry::Metrics::kind("eds-fetch"))
            .inc();
        self.fetch(request.get_ref()).map(Response::new)
    }
}
