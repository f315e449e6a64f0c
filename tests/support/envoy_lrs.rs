//! Load reports as Envoy 1.40 sends them, for the LRS tests, `benches/lrs.rs` and
//! `examples/lrs_load.rs` (which include this file by path): its Node, 61 KB encoded, and one
//! cluster's per-endpoint stats.

use envoy_types::pb::envoy::{
    config::{
        core::v3::{
            address, socket_address::PortSpecifier, Address, BuildVersion, Extension, Node,
            SocketAddress,
        },
        endpoint::v3::{ClusterStats, UpstreamEndpointStats, UpstreamLocalityStats},
    },
    r#type::v3::SemanticVersion,
};

/// A Node like Envoy 1.40's: its id, cluster, client features and 415 extensions (61 KB encoded,
/// as measured on a real Envoy).
pub fn envoy_node(id: &str, cluster: &str) -> Node {
    Node {
        id: id.into(),
        cluster: cluster.into(),
        user_agent_name: "envoy".into(),
        client_features: vec![
            "envoy.lb.does_not_support_overprovisioning".into(),
            "envoy.lrs.supports_send_all_clusters".into(),
        ],
        extensions: (0..415)
            .map(|index| Extension {
                name: format!("envoy.filters.http.extension_number_{index}"),
                category: "envoy.filters.http".into(),
                type_urls: vec![format!(
                    "type.googleapis.com/envoy.extensions.filters.http.extension_{index}.v3.Config"
                )],
                version: Some(BuildVersion {
                    version: Some(SemanticVersion {
                        major_number: 1,
                        minor_number: 40,
                        patch: 0,
                    }),
                    metadata: None,
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// One second of `cluster`'s stats for endpoints `10.0.0.1..=N:8080`, each with these counts
/// (issued = successful + errors).
pub fn cluster_stats(
    cluster: &str,
    endpoints: usize,
    successful: u64,
    errors: u64,
    in_progress: u64,
) -> ClusterStats {
    ClusterStats {
        cluster_name: cluster.into(),
        load_report_interval: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 1,
            nanos: 0,
        }),
        upstream_locality_stats: vec![UpstreamLocalityStats {
            upstream_endpoint_stats: (0..endpoints)
                .map(|index| UpstreamEndpointStats {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: format!("10.0.0.{}", index + 1),
                            port_specifier: Some(PortSpecifier::PortValue(8080)),
                            ..Default::default()
                        })),
                    }),
                    total_successful_requests: successful,
                    total_error_requests: errors,
                    total_issued_requests: successful + errors,
                    total_requests_in_progress: in_progress,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}
