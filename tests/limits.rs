//! Limits and shutdown: every limit refuses with a clear status (or closes the connection) and
//! counts the refusal while other clients keep working; SIGTERM drains open streams then exits 0.

mod support;

use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DiscoveryRequest,
    DiscoveryResponse,
};
use support::{http_get, InProcess};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{transport::Channel, Code, Streaming};

const CLA: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const CLUSTERS: &str = "clusters:\n  - name: checkout\n    endpoints:\n      - { address: 10.0.0.1, port: 80, weight: 3 }\n";

fn subscribe(names: &[String]) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: CLA.into(),
        resource_names: names.to_vec(),
        ..Default::default()
    }
}

/// Opens an ADS stream, subscribes to `checkout` and returns the first answer (or the error).
async fn open(
    channel: Channel,
) -> (
    mpsc::Sender<DiscoveryRequest>,
    Result<(Streaming<DiscoveryResponse>, DiscoveryResponse), tonic::Status>,
) {
    let (sender, receiver) = mpsc::channel(4);
    sender
        .send(subscribe(&["checkout".to_string()]))
        .await
        .expect("queue request");
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let result = async {
        let mut responses = client
            .stream_aggregated_resources(ReceiverStream::new(receiver))
            .await?
            .into_inner();
        let first = tokio::time::timeout(Duration::from_secs(5), responses.message())
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("no response in 5 s"))??
            .ok_or_else(|| tonic::Status::unavailable("stream closed"))?;
        Ok((responses, first))
    }
    .await;
    (sender, result)
}

#[tokio::test]
async fn max_streams_refuses_the_extra_stream_only() {
    let server = InProcess::start_with(", max_streams: 2", CLUSTERS).await;
    let channel = server.channel().await;
    let (_first_sender, first) = open(channel.clone()).await;
    let (_second_sender, second) = open(channel.clone()).await;
    assert!(first.is_ok() && second.is_ok(), "two streams fit");
    let (_third_sender, third) = open(channel.clone()).await;
    let status = third.expect_err("third stream refused");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("xds.max_streams"),
        "{}",
        status.message()
    );
    drop((first, second, _first_sender, _second_sender, _third_sender));
    let again = support::wait_for(Duration::from_secs(5), "a free stream slot", || {
        let channel = channel.clone();
        async move { open(channel).await.1.ok() }
    })
    .await;
    drop(again);
    server.stop().await;
}

#[tokio::test]
async fn oversized_messages_are_refused_with_out_of_range() {
    let server = InProcess::start_with(", max_message_bytes: 2048", CLUSTERS).await;
    let channel = server.channel().await;
    let (sender, receiver) = mpsc::channel(4);
    let names: Vec<String> = (0..3)
        .map(|index| format!("{index}-{}", "x".repeat(1000)))
        .collect();
    sender.send(subscribe(&names)).await.expect("queue");
    let mut client = AggregatedDiscoveryServiceClient::new(channel.clone());
    let outcome = async {
        let mut responses = client
            .stream_aggregated_resources(ReceiverStream::new(receiver))
            .await?
            .into_inner();
        responses.message().await
    }
    .await;
    let status = outcome.expect_err("refused");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    let (small_sender, normal) = open(channel).await;
    assert!(normal.is_ok(), "small requests still work");
    drop((small_sender, normal, sender));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_closes_the_extra_connection_and_counts_it() {
    let directory = tempfile::tempdir().expect("tempdir");
    let (xds_port, admin_port) = (support::free_port(), support::free_port());
    let config = directory.path().join("config.yaml");
    std::fs::write(
        &config,
        format!("xds: {{ listen: \"127.0.0.1:{xds_port}\", max_connections: 1 }}\nadmin: {{ listen: \"127.0.0.1:{admin_port}\" }}\n{CLUSTERS}"),
    )
    .expect("write config");
    let mut process = support::spawn_server(&config, directory.path());
    support::wait_ready(admin_port).await;
    let url = format!("http://127.0.0.1:{xds_port}");
    let first = Channel::from_shared(url.clone())
        .expect("url")
        .connect()
        .await
        .expect("first connection");
    let (_sender, kept) = open(first.clone()).await;
    assert!(kept.is_ok());
    let second = Channel::from_shared(url)
        .expect("url")
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await;
    let refused = match second {
        Err(_) => true,
        Ok(channel) => open(channel).await.1.is_err(),
    };
    assert!(refused, "the second connection is closed");
    let (_, metrics) = http_get(&format!("http://127.0.0.1:{admin_port}/metrics"))
        .await
        .expect("metrics");
    assert!(
        metrics.contains("adaptive_eds_refusals_total{limit=\"max_connections\"}"),
        "{metrics}"
    );
    let (_sender2, still) = open(first).await;
    assert!(still.is_ok(), "the admitted connection keeps working");
    process.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_streams_then_exits_zero() {
    let directory = tempfile::tempdir().expect("tempdir");
    let (xds_port, admin_port) = (support::free_port(), support::free_port());
    let config = directory.path().join("config.yaml");
    let write = |weight: u32| {
        std::fs::write(
            &config,
            format!(
                "xds: {{ listen: \"127.0.0.1:{xds_port}\", drain_period: 3s }}\nadmin: {{ listen: \"127.0.0.1:{admin_port}\" }}\n{}",
                CLUSTERS.replace("weight: 3", &format!("weight: {weight}"))
            ),
        )
        .expect("write config")
    };
    write(3);
    let mut process = support::spawn_server(&config, directory.path());
    support::wait_ready(admin_port).await;
    let url = format!("http://127.0.0.1:{xds_port}");
    let channel = Channel::from_shared(url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let (sender, opened) = open(channel).await;
    let (mut responses, first) = opened.expect("stream open");
    sender
        .send(DiscoveryRequest {
            version_info: first.version_info.clone(),
            response_nonce: first.nonce.clone(),
            ..subscribe(&["checkout".to_string()])
        })
        .await
        .expect("ack");

    let started = std::time::Instant::now();
    process.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The open stream is still served during the drain: a config change still reaches it.
    write(9);
    let update = tokio::time::timeout(Duration::from_secs(3), responses.message())
        .await
        .expect("update during drain")
        .expect("no error")
        .expect("stream open");
    assert_ne!(update.version_info, first.version_info);
    // New connections are not accepted.
    let refused = Channel::from_shared(url)
        .expect("url")
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await;
    let refused = match refused {
        Err(_) => true,
        Ok(channel) => open(channel).await.1.is_err(),
    };
    assert!(refused, "no new streams while draining");
    let status = process.wait_exit(Duration::from_secs(8));
    assert_eq!(
        status,
        Some(0),
        "exit 0 within the drain period; log:\n{}",
        process.log()
    );
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test]
async fn oversized_remote_write_bodies_get_413_and_are_counted() {
    let server = InProcess::start(&format!(
        "metrics: {{ remote_write: {{ enabled: true, max_body_bytes: 2048 }} }}\n{CLUSTERS}"
    ))
    .await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/api/v1/write", server.admin_url))
        .body(vec![0u8; 4096])
        .send()
        .await
        .expect("post");
    assert_eq!(response.status().as_u16(), 413);
    let garbage = client
        .post(format!("{}/api/v1/write", server.admin_url))
        .body(vec![1u8; 100])
        .send()
        .await
        .expect("post");
    assert_eq!(
        garbage.status().as_u16(),
        400,
        "small garbage is a bad request, not a crash"
    );
    let (_, metrics) = http_get(&format!("{}/metrics", server.admin_url))
        .await
        .expect("metrics");
    assert!(
        metrics.contains("adaptive_eds_refusals_total{limit=\"remote_write_body\"} 1"),
        "{metrics}"
    );
    server.stop().await;
}
