//! Parse cost of one LRS report with Envoy 1.40's ~61 KB Node: our decoder (node read on a
//! stream's first message only, skipped after) against the generated `LoadStatsRequest`, and the
//! aggregation of one decoded report.
//!
//! `cargo bench --bench lrs` (release). Under `cargo test --all-targets` each case runs once.

use std::time::{Duration, Instant, SystemTime};

use adaptive_eds::{
    lrs::{aggregate::LoadReports, wire::decode_report},
    model::{Endpoint, HealthStatus, Locality},
    samples::SampleTable,
    snapshot::{ClusterResource, ServedEndpoint, Snapshot, SnapshotStore},
    telemetry::Metrics,
};
use bytes::Bytes;
use envoy_types::pb::{
    envoy::{
        config::{
            core::v3::Node,
            endpoint::v3::{ClusterStats, UpstreamLocalityStats},
        },
        service::load_stats::v3::LoadStatsRequest,
    },
    google::protobuf,
};
use prost::Message;

#[path = "../tests/support/envoy_lrs.rs"]
mod envoy_lrs;

/// Endpoints per reported cluster.
const ENDPOINTS: usize = 10;

fn main() {
    divan::main();
}

/// The ids of the Node every benchmark report carries.
const NODE_ID: &str = "sidecar~10.0.0.9~frontend-6c4b9d7f8-x2x7q.shop~shop.svc.cluster.local";

fn node() -> Node {
    envoy_lrs::envoy_node(NODE_ID, "frontend.shop")
}

fn cluster_stats() -> ClusterStats {
    envoy_lrs::cluster_stats("checkout", ENDPOINTS, 95, 5, 3)
}

fn report() -> Vec<u8> {
    LoadStatsRequest {
        node: Some(node()),
        cluster_stats: vec![cluster_stats()],
    }
    .encode_to_vec()
}

/// What the service does with a received report (in a `Bytes` buffer, as tonic hands it over):
/// decode it, then decode in full the cluster we serve.
fn decode_served(bytes: &Bytes, first: bool) -> Option<Vec<ClusterStats>> {
    let report = decode_report(divan::black_box(bytes.clone()), first).ok()?;
    report
        .cluster_stats
        .iter()
        .filter(|encoded| encoded.name() == "checkout")
        .map(|encoded| encoded.decode().ok())
        .collect()
}

/// Every report after a stream's first: the node is skipped.
#[divan::bench]
fn decode_later_report(bencher: divan::Bencher) {
    let bytes = Bytes::from(report());
    bencher
        .counter(divan::counter::BytesCount::new(bytes.len()))
        .bench(|| decode_served(&bytes, false));
}

/// A stream's first report: the node's identity is read, its extensions skipped.
#[divan::bench]
fn decode_first_report(bencher: divan::Bencher) {
    let bytes = Bytes::from(report());
    bencher.bench(|| decode_served(&bytes, true));
}

/// What decoding with the generated message would cost (every report).
#[divan::bench]
fn decode_generated_message(bencher: divan::Bencher) {
    let bytes = report();
    bencher.bench(|| LoadStatsRequest::decode(divan::black_box(bytes.as_slice())));
}

/// A sidecar's report with `send_all_clusters`: our cluster and 300 idle ones we do not serve
/// (every cluster istiod gave it), decoded every second.
fn sidecar_report() -> Vec<u8> {
    let idle = (0..300).map(|index| ClusterStats {
        cluster_name: format!("outbound|8080||service-{index}.namespace.svc.cluster.local"),
        load_report_interval: Some(protobuf::Duration {
            seconds: 1,
            nanos: 0,
        }),
        upstream_locality_stats: vec![UpstreamLocalityStats::default()],
        ..Default::default()
    });
    LoadStatsRequest {
        node: Some(node()),
        cluster_stats: std::iter::once(cluster_stats()).chain(idle).collect(),
    }
    .encode_to_vec()
}

/// A later report of a sidecar with 300 idle clusters.
#[divan::bench]
fn decode_later_sidecar_report(bencher: divan::Bencher) {
    let bytes = Bytes::from(sidecar_report());
    bencher
        .counter(divan::counter::BytesCount::new(bytes.len()))
        .bench(|| decode_served(&bytes, false));
}

/// Recording one decoded report into a stream's window.
#[divan::bench]
fn record_report(bencher: divan::Bencher) {
    let store = SnapshotStore::new();
    let served = (0..ENDPOINTS)
        .map(|index| ServedEndpoint {
            endpoint: std::sync::Arc::new(Endpoint {
                address: format!("10.0.0.{}", index + 1).parse().expect("ip"),
                port: 8080,
                configured_weight: None,
                pod: None,
                node: None,
                locality: Locality::default(),
                health: HealthStatus::Healthy,
            }),
            weight: 100,
            reason: Default::default(),
        })
        .collect();
    let clusters = [(
        "checkout".to_string(),
        std::sync::Arc::new(ClusterResource::build("checkout", served)),
    )]
    .into_iter()
    .collect();
    store.publish(Snapshot::new(clusters));
    let reports = LoadReports::new(
        store,
        SampleTable::default(),
        Metrics::default(),
        Duration::from_secs(1),
    );
    let stream = reports.open_stream(1);
    let stats = vec![cluster_stats()];
    let now = Instant::now();
    let wall = SystemTime::now();
    bencher.bench_local(|| stream.record(divan::black_box(&stats), now, wall));
}
