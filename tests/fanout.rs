//! Small, deterministic versions of the scale properties (the benchmark in `lab/` measures them
//! at size): each version is encoded once whatever the number of subscribers, and a client that
//! stops reading neither delays the others nor makes the server queue versions for it.

mod support;

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DiscoveryRequest,
    DiscoveryResponse,
};
use support::{http_get, InProcess};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const CLA: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

fn clusters(weight: u32, endpoints: usize) -> String {
    let mut yaml = String::from("clusters:\n  - name: big\n    endpoints:\n");
    for index in 0..endpoints {
        yaml.push_str(&format!(
            "      - {{ address: 10.{}.{}.{}, port: 8080, weight: {} }}\n",
            index / 65536,
            (index / 256) % 256,
            index % 256,
            weight + (index as u32 % 7)
        ));
    }
    yaml
}

/// Opens an ADS stream on its own connection with HTTP/2's default 64 KiB receive windows (as a
/// busy Envoy would present), so a client that stops reading exerts back-pressure quickly.
async fn subscribe(
    server: &InProcess,
) -> (mpsc::Sender<DiscoveryRequest>, Streaming<DiscoveryResponse>) {
    let (sender, receiver) = mpsc::channel(8);
    sender
        .send(DiscoveryRequest {
            type_url: CLA.into(),
            resource_names: vec!["big".into()],
            ..Default::default()
        })
        .await
        .expect("queue");
    let channel = tonic::transport::Channel::from_shared(server.url.clone())
        .expect("url")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let responses = client
        .stream_aggregated_resources(ReceiverStream::new(receiver))
        .await
        .expect("open")
        .into_inner();
    (sender, responses)
}

async fn counter(server: &InProcess, name: &str) -> u64 {
    let (_, text) = http_get(&format!("{}/metrics", server.admin_url))
        .await
        .expect("metrics");
    text.lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_version_is_encoded_once_whatever_the_subscribers() {
    let server = InProcess::start(&clusters(10, 50)).await;
    let mut streams = Vec::new();
    for _ in 0..25 {
        let (sender, mut responses) = subscribe(&server).await;
        let first = responses.message().await.expect("ok").expect("first");
        streams.push((sender, responses, first));
    }
    let before = counter(&server, "adaptive_eds_encodes_total").await;
    server.rewrite(&clusters(20, 50));
    for (_, responses, first) in &mut streams {
        let update = tokio::time::timeout(Duration::from_secs(5), responses.message())
            .await
            .expect("in time")
            .expect("ok")
            .expect("update");
        assert_ne!(update.version_info, first.version_info);
    }
    let after = counter(&server, "adaptive_eds_encodes_total").await;
    assert_eq!(
        after - before,
        1,
        "one changed cluster, one encode, 25 subscribers"
    );
    drop(streams);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_delay_the_others() {
    // ~2,000 endpoints: each response is far larger than the HTTP/2 flow-control window, so the
    // stalled client's connection really blocks.
    let server = InProcess::start(&clusters(1, 2000)).await;
    let (_stalled_sender, mut stalled) = subscribe(&server).await;
    let (_fast_sender, mut fast) = subscribe(&server).await;
    let _ = stalled.message().await.expect("ok").expect("first");
    let _ = fast.message().await.expect("ok").expect("first");
    let changes = 15;
    let mut worst = Duration::ZERO;
    let mut last_version = String::new();
    for change in 0..changes {
        let started = Instant::now();
        server.rewrite(&clusters(100 + change, 2000));
        let update = tokio::time::timeout(Duration::from_secs(5), fast.message())
            .await
            .expect("the reading client keeps getting updates")
            .expect("ok")
            .expect("update");
        worst = worst.max(started.elapsed());
        last_version = update.version_info;
    }
    eprintln!("slowest update to the reading client while the other stalled: {worst:?}");
    assert!(worst < Duration::from_secs(3), "{worst:?}");
    // The stalled client resumes and converges to the newest version, skipping most of the
    // intermediate ones (the server never queued them).
    let mut received = 0;
    loop {
        let update = tokio::time::timeout(Duration::from_secs(5), stalled.message())
            .await
            .expect("the stalled client catches up")
            .expect("ok")
            .expect("update");
        received += 1;
        if update.version_info == last_version {
            break;
        }
    }
    eprintln!("the stalled client got {received} responses for {changes} changes");
    assert!(
        received < changes as usize,
        "intermediate versions were skipped ({received})"
    );
    drop((stalled, fast, _stalled_sender, _fast_sender));
    server.stop().await;
}
