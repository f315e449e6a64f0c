//! In-process protocol tests with a tonic xDS client (Envoy's generated client types): SotW,
//! delta and the EDS service, ACK/NACK, updates, unsubscribes, reconnects and hostile requests.

mod support;

use support::InProcess;

use std::{collections::HashMap, time::Duration};

use envoy_types::pb::envoy::{
    config::{core::v3::Node, endpoint::v3::ClusterLoadAssignment},
    service::{
        discovery::v3::{
            aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
            DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
        },
        endpoint::v3::endpoint_discovery_service_client::EndpointDiscoveryServiceClient,
    },
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{transport::Channel, Code, Streaming};

const CLA: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const QUIET: Duration = Duration::from_millis(700);
const SOON: Duration = Duration::from_secs(5);

const CLUSTERS: &str = r#"
clusters:
  - name: checkout
    endpoints:
      - { address: 10.0.0.1, port: 8080, weight: 300, pod: checkout-a, zone: z1 }
      - { address: 10.0.0.2, port: 8080 }
  - name: payments
    endpoints:
      - { address: 10.0.1.1, port: 8080, weight: 5 }
"#;

/// One xDS stream driven by the test: requests in, responses out, with deadlines.
struct TestStream<Request, Response> {
    requests: mpsc::Sender<Request>,
    responses: Streaming<Response>,
}

impl<Request, Response: std::fmt::Debug> TestStream<Request, Response> {
    /// Opens a stream with `open` (one of the generated client calls).
    async fn open<F, Fut>(open: F) -> Self
    where
        F: FnOnce(ReceiverStream<Request>) -> Fut,
        Fut: std::future::Future<
            Output = Result<tonic::Response<Streaming<Response>>, tonic::Status>,
        >,
    {
        let (requests, receiver) = mpsc::channel(16);
        let responses = open(ReceiverStream::new(receiver))
            .await
            .expect("open the stream")
            .into_inner();
        Self {
            requests,
            responses,
        }
    }

    async fn send(&self, request: Request) {
        assert!(self.requests.send(request).await.is_ok(), "send request");
    }

    async fn recv(&mut self) -> Response {
        tokio::time::timeout(SOON, self.responses.message())
            .await
            .expect("a response in time")
            .expect("no stream error")
            .expect("stream open")
    }

    async fn assert_quiet(&mut self) {
        if let Ok(message) = tokio::time::timeout(QUIET, self.responses.message()).await {
            panic!("expected no response, got {message:?}");
        }
    }
}

/// A state-of-the-world stream (ADS or the EDS service).
type Sotw = TestStream<DiscoveryRequest, DiscoveryResponse>;

impl Sotw {
    async fn ads(channel: Channel) -> Self {
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        Self::open(|requests| async move { client.stream_aggregated_resources(requests).await })
            .await
    }

    async fn eds(channel: Channel) -> Self {
        let mut client = EndpointDiscoveryServiceClient::new(channel);
        Self::open(|requests| async move { client.stream_endpoints(requests).await }).await
    }
}

fn request(type_url: &str, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.into(),
        resource_names: names.iter().map(|name| name.to_string()).collect(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        node: Some(Node {
            id: "test-node".into(),
            cluster: "test".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn ack(names: &[&str], response: &DiscoveryResponse) -> DiscoveryRequest {
    request(CLA, names, &response.version_info, &response.nonce)
}

/// `cluster -> [(address:port, weight)]` from a response's resources.
fn weights(
    resources: &[envoy_types::pb::google::protobuf::Any],
) -> HashMap<String, Vec<(String, u32)>> {
    resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, CLA);
            let assignment =
                ClusterLoadAssignment::decode(any.value.as_slice()).expect("decode CLA");
            (
                assignment.cluster_name.clone(),
                endpoint_weights(&assignment),
            )
        })
        .collect()
}

fn endpoint_weights(assignment: &ClusterLoadAssignment) -> Vec<(String, u32)> {
    use envoy_types::pb::envoy::config::{
        core::v3::address, core::v3::socket_address, endpoint::v3::lb_endpoint,
    };
    let mut weights = Vec::new();
    for locality in &assignment.endpoints {
        for endpoint in &locality.lb_endpoints {
            let Some(lb_endpoint::HostIdentifier::Endpoint(host)) = &endpoint.host_identifier
            else {
                continue;
            };
            let Some(address::Address::SocketAddress(socket)) =
                host.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                continue;
            };
            let Some(socket_address::PortSpecifier::PortValue(port)) = socket.port_specifier else {
                continue;
            };
            let weight = endpoint
                .load_balancing_weight
                .as_ref()
                .map(|w| w.value)
                .unwrap_or(0);
            weights.push((format!("{}:{port}", socket.address), weight));
        }
    }
    weights.sort();
    weights
}

fn pairs(items: &[(&str, u32)]) -> Vec<(String, u32)> {
    items
        .iter()
        .map(|(address, weight)| (address.to_string(), *weight))
        .collect()
}

#[tokio::test]
async fn sotw_subscribe_ack_update_unsubscribe() {
    let server = InProcess::start(CLUSTERS).await;
    let mut stream = Sotw::ads(server.channel().await).await;
    stream.send(request(CLA, &["checkout"], "", "")).await;
    let first = stream.recv().await;
    assert_eq!(first.type_url, CLA);
    assert!(!first.nonce.is_empty() && !first.version_info.is_empty());
    assert_eq!(
        weights(&first.resources)["checkout"],
        pairs(&[("10.0.0.1:8080", 300), ("10.0.0.2:8080", 300)])
    );
    stream.send(ack(&["checkout"], &first)).await;
    stream.assert_quiet().await;

    // A change to an unsubscribed cluster sends nothing; a change to ours sends the new weights.
    server.rewrite(&CLUSTERS.replace("weight: 5", "weight: 6"));
    stream.assert_quiet().await;
    server.rewrite(&CLUSTERS.replace("weight: 300", "weight: 40"));
    let update = stream.recv().await;
    assert_ne!(update.version_info, first.version_info);
    assert_ne!(update.nonce, first.nonce);
    assert_eq!(
        weights(&update.resources)["checkout"],
        pairs(&[("10.0.0.1:8080", 40), ("10.0.0.2:8080", 40)])
    );
    stream.send(ack(&["checkout"], &update)).await;

    // Switching the subscription to payments answers with payments only.
    stream.send(ack(&["payments"], &update)).await;
    let switched = stream.recv().await;
    let served = weights(&switched.resources);
    assert_eq!(served.len(), 1);
    assert_eq!(served["payments"], pairs(&[("10.0.1.1:8080", 5)]));
    drop(stream);
    server.stop().await;
}

#[tokio::test]
async fn sotw_nack_keeps_the_last_good_version_without_resending() {
    let server = InProcess::start(CLUSTERS).await;
    let channel = server.channel().await;
    let mut stream = Sotw::ads(channel.clone()).await;
    stream.send(request(CLA, &["checkout"], "", "")).await;
    let first = stream.recv().await;
    stream.send(ack(&["checkout"], &first)).await;
    // Let the ACK land before the change, or it would carry a stale nonce.
    let mut inspect =
        adaptive_eds::inspect::pb::inspect_client::InspectClient::new(channel.clone());
    support::wait_for(SOON, "the ACK to be recorded", || {
        let mut inspect = inspect.clone();
        let version = first.version_info.clone();
        async move {
            let clients = inspect
                .list_clients(adaptive_eds::inspect::pb::ListClientsRequest {})
                .await
                .ok()?
                .into_inner();
            clients
                .clients
                .iter()
                .any(|client| client.last_acked_version == version)
                .then_some(())
        }
    })
    .await;
    server.rewrite(&CLUSTERS.replace("weight: 300", "weight: 41"));
    let rejected = stream.recv().await;
    let mut nack = request(CLA, &["checkout"], &first.version_info, &rejected.nonce);
    nack.error_detail = Some(RpcStatus {
        code: Code::InvalidArgument as i32,
        message: "test rejects this version".into(),
        details: Vec::new(),
    });
    stream.send(nack.clone()).await;
    stream.assert_quiet().await;
    stream.send(nack).await;
    stream.assert_quiet().await;

    let clients = inspect
        .list_clients(adaptive_eds::inspect::pb::ListClientsRequest {})
        .await
        .expect("ListClients")
        .into_inner();
    let client = &clients.clients[0];
    assert_eq!(client.node_id, "test-node");
    assert_eq!(client.stream_kind, "ads-sotw");
    assert_eq!(client.subscribed, vec!["checkout"]);
    assert_eq!(client.last_acked_version, first.version_info);
    assert_eq!(client.last_nack_version, rejected.version_info);
    assert_eq!(client.last_nack_message, "test rejects this version");
    assert_eq!(client.nacks, 2, "each NACK is counted (and logged once)");
    drop(stream);
    server.stop().await;
}

#[tokio::test]
async fn sotw_reconnect_with_the_current_version_gets_no_push() {
    let server = InProcess::start(CLUSTERS).await;
    let mut stream = Sotw::ads(server.channel().await).await;
    stream
        .send(request(CLA, &["checkout", "payments"], "", ""))
        .await;
    let first = stream.recv().await;
    assert_eq!(first.resources.len(), 2);
    drop(stream);

    let mut again = Sotw::ads(server.channel().await).await;
    again
        .send(request(
            CLA,
            &["checkout", "payments"],
            &first.version_info,
            "",
        ))
        .await;
    again.assert_quiet().await;
    server.rewrite(&CLUSTERS.replace("weight: 5", "weight: 9"));
    let update = again.recv().await;
    assert_eq!(
        weights(&update.resources)["payments"],
        pairs(&[("10.0.1.1:8080", 9)])
    );
    drop(again);
    server.stop().await;
}

#[tokio::test]
async fn unknown_names_get_no_invented_endpoints() {
    let server = InProcess::start(CLUSTERS).await;
    let mut stream = Sotw::ads(server.channel().await).await;
    stream
        .send(request(CLA, &["no-such-cluster"], "", ""))
        .await;
    stream.assert_quiet().await;
    server.rewrite(&format!(
        "{CLUSTERS}  - name: no-such-cluster\n    endpoints:\n      - {{ address: 10.9.9.9, port: 1 }}\n"
    ));
    let appeared = stream.recv().await;
    assert_eq!(
        weights(&appeared.resources)["no-such-cluster"],
        pairs(&[("10.9.9.9:1", 100)])
    );
    drop(stream);
    server.stop().await;
}

#[tokio::test]
async fn other_types_on_ads_are_answered_without_breaking_eds() {
    let server = InProcess::start(CLUSTERS).await;
    let mut stream = Sotw::ads(server.channel().await).await;
    stream.send(request(CDS, &[], "", "")).await;
    let clusters = stream.recv().await;
    assert_eq!(clusters.type_url, CDS);
    assert!(clusters.resources.is_empty());
    stream
        .send(request(CDS, &[], &clusters.version_info, &clusters.nonce))
        .await;
    stream.send(request(CLA, &["payments"], "", "")).await;
    let endpoints = stream.recv().await;
    assert_eq!(endpoints.type_url, CLA);
    assert_eq!(
        weights(&endpoints.resources)["payments"],
        pairs(&[("10.0.1.1:8080", 5)])
    );
    stream.send(request("garbage", &[], "", "")).await;
    let garbage = stream.recv().await;
    assert_eq!(garbage.type_url, "garbage");
    server.rewrite(&CLUSTERS.replace("weight: 5", "weight: 8"));
    let update = stream.recv().await;
    assert_eq!(update.type_url, CLA, "EDS still flows after other types");
    drop(stream);
    server.stop().await;
}

#[tokio::test]
async fn two_clients_both_get_updates() {
    let server = InProcess::start(CLUSTERS).await;
    let mut ads = Sotw::ads(server.channel().await).await;
    let mut eds = Sotw::eds(server.channel().await).await;
    ads.send(request(CLA, &["checkout"], "", "")).await;
    eds.send(request(CLA, &["checkout"], "", "")).await;
    let (first_ads, first_eds) = (ads.recv().await, eds.recv().await);
    assert_eq!(
        first_ads.version_info, first_eds.version_info,
        "same content, same version"
    );
    ads.send(ack(&["checkout"], &first_ads)).await;
    eds.send(ack(&["checkout"], &first_eds)).await;
    server.rewrite(&CLUSTERS.replace("weight: 300", "weight: 77"));
    for stream in [&mut ads, &mut eds] {
        let update = stream.recv().await;
        assert_eq!(
            weights(&update.resources)["checkout"][0],
            ("10.0.0.1:8080".to_string(), 77)
        );
    }
    drop((ads, eds));
    server.stop().await;
}

#[tokio::test]
async fn eds_service_refuses_other_types_and_fetch_works() {
    let server = InProcess::start(CLUSTERS).await;
    let mut stream = Sotw::eds(server.channel().await).await;
    stream.send(request(CDS, &[], "", "")).await;
    let error = tokio::time::timeout(SOON, stream.responses.message())
        .await
        .expect("answer in time")
        .expect_err("refused");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().contains("ClusterLoadAssignment"),
        "{}",
        error.message()
    );

    let mut client = EndpointDiscoveryServiceClient::new(server.channel().await);
    let fetched = client
        .fetch_endpoints(request(CLA, &["payments", "missing"], "", ""))
        .await
        .expect("fetch")
        .into_inner();
    let served = weights(&fetched.resources);
    assert_eq!(served.len(), 1);
    assert_eq!(served["payments"], pairs(&[("10.0.1.1:8080", 5)]));
    server.stop().await;
}

#[tokio::test]
async fn hostile_requests_get_clear_statuses_and_empty_nodes_are_served() {
    let server = InProcess::start(CLUSTERS).await;
    let mut stream = Sotw::ads(server.channel().await).await;
    let names: Vec<String> = (0..20_000)
        .map(|index| format!("cluster-{index}"))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    stream.send(request(CLA, &names, "", "")).await;
    let error = tokio::time::timeout(SOON, stream.responses.message())
        .await
        .expect("answer in time")
        .expect_err("refused");
    assert_eq!(error.code(), Code::ResourceExhausted);
    assert!(
        error.message().contains("max_resource_names"),
        "{}",
        error.message()
    );

    let mut anonymous = Sotw::ads(server.channel().await).await;
    let mut no_node = request(CLA, &["payments"], "", "");
    no_node.node = None;
    anonymous.send(no_node).await;
    assert_eq!(anonymous.recv().await.resources.len(), 1);
    drop((stream, anonymous));
    server.stop().await;
}

/// An incremental stream (ADS or the EDS service).
type Delta = TestStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>;

impl Delta {
    async fn ads(channel: Channel) -> Self {
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        Self::open(|requests| async move { client.delta_aggregated_resources(requests).await })
            .await
    }

    async fn eds(channel: Channel) -> Self {
        let mut client = EndpointDiscoveryServiceClient::new(channel);
        Self::open(|requests| async move { client.delta_endpoints(requests).await }).await
    }
}

fn delta_request(subscribe: &[&str], unsubscribe: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: CLA.into(),
        resource_names_subscribe: subscribe.iter().map(|name| name.to_string()).collect(),
        resource_names_unsubscribe: unsubscribe.iter().map(|name| name.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn delta_weights(
    response: &DeltaDiscoveryResponse,
) -> HashMap<String, (String, Vec<(String, u32)>)> {
    response
        .resources
        .iter()
        .map(|resource| {
            let any = resource.resource.as_ref().expect("resource body");
            let assignment = ClusterLoadAssignment::decode(any.value.as_slice()).expect("decode");
            assert_eq!(assignment.cluster_name, resource.name);
            (
                resource.name.clone(),
                (resource.version.clone(), endpoint_weights(&assignment)),
            )
        })
        .collect()
}

#[tokio::test]
async fn delta_subscribe_update_remove_unsubscribe_and_reconnect() {
    let server = InProcess::start(CLUSTERS).await;
    let mut stream = Delta::ads(server.channel().await).await;
    stream
        .send(delta_request(&["checkout", "payments"], &[], ""))
        .await;
    let first = stream.recv().await;
    let served = delta_weights(&first);
    assert_eq!(served.len(), 2);
    assert_eq!(served["payments"].1, pairs(&[("10.0.1.1:8080", 5)]));
    stream.send(delta_request(&[], &[], &first.nonce)).await;
    stream.assert_quiet().await;

    // Only the changed resource is sent.
    server.rewrite(&CLUSTERS.replace("weight: 5", "weight: 6"));
    let update = stream.recv().await;
    let changed = delta_weights(&update);
    assert_eq!(changed.keys().collect::<Vec<_>>(), vec!["payments"]);
    stream.send(delta_request(&[], &[], &update.nonce)).await;

    // A removed cluster is announced in removed_resources.
    let without_payments = CLUSTERS
        .split("  - name: payments")
        .next()
        .expect("split")
        .to_string();
    server.rewrite(&without_payments);
    let removal = stream.recv().await;
    assert!(removal.resources.is_empty());
    assert_eq!(removal.removed_resources, vec!["payments"]);
    stream.send(delta_request(&[], &[], &removal.nonce)).await;

    // After unsubscribing, changes to checkout are not sent.
    stream.send(delta_request(&[], &["checkout"], "")).await;
    stream.assert_quiet().await;
    server.rewrite(&without_payments.replace("weight: 300", "weight: 1"));
    stream.assert_quiet().await;
    drop(stream);

    // Reconnect with what the client holds: nothing is resent; a stale version is refreshed.
    let checkout_version = served["checkout"].0.clone();
    let mut again = Delta::eds(server.channel().await).await;
    let mut reconnect = delta_request(&["checkout"], &[], "");
    reconnect
        .initial_resource_versions
        .insert("checkout".into(), checkout_version);
    again.send(reconnect).await;
    let refreshed = again.recv().await;
    assert_eq!(
        delta_weights(&refreshed)["checkout"].1,
        pairs(&[("10.0.0.1:8080", 1), ("10.0.0.2:8080", 1)])
    );
    let current = delta_weights(&refreshed)["checkout"].0.clone();
    drop(again);
    let mut third = Delta::eds(server.channel().await).await;
    let mut up_to_date = delta_request(&["checkout"], &[], "");
    up_to_date
        .initial_resource_versions
        .insert("checkout".into(), current);
    third.send(up_to_date).await;
    third.assert_quiet().await;
    drop(third);
    server.stop().await;
}

#[tokio::test]
async fn restart_serves_the_same_version_for_the_same_config() {
    let mut versions = Vec::new();
    for _ in 0..2 {
        let server = InProcess::start(CLUSTERS).await;
        let mut stream = Sotw::ads(server.channel().await).await;
        stream.send(request(CLA, &["checkout"], "", "")).await;
        versions.push(stream.recv().await.version_info);
        drop(stream);
        server.stop().await;
    }
    assert_eq!(versions[0], versions[1]);
}
