//! LRS load: N simulated Envoys, each on its own HTTP/2 connection, reporting every second with
//! Envoy 1.40's 61 KB Node to a running adaptive-eds; prints the server's CPU and RSS (Linux
//! `/proc`) over the run. The reports are encoded once and sent as raw bytes, so the client's own
//! CPU stays small. The server needs `metrics.load_reports` and a cluster `checkout` with
//! endpoints `10.0.0.1..10:8080`:
//!
//! `cargo run --release --example lrs_load -- http://127.0.0.1:18000 SERVER_PID 1000 10`
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};
use envoy_types::pb::envoy::service::load_stats::v3::LoadStatsRequest;
use prost::Message;

#[path = "../tests/support/envoy_lrs.rs"]
mod envoy_lrs;

#[derive(Clone, Default)]
struct Raw;
impl tonic::codec::Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}
impl tonic::codec::Encoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}
impl tonic::codec::Decoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n)))
    }
}

fn report(id: usize, endpoints: usize) -> Bytes {
    let node = envoy_lrs::envoy_node(
        &format!(
            "sidecar~10.0.{}.{}~pod-{id}.shop~shop.svc.cluster.local",
            id / 256,
            id % 256
        ),
        "frontend.shop",
    );
    Bytes::from(
        LoadStatsRequest {
            node: Some(node),
            cluster_stats: vec![envoy_lrs::cluster_stats("checkout", endpoints, 10, 0, 1)],
        }
        .encode_to_vec(),
    )
}

fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn rss_mb(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> Result<(), String> {
    let usage = "usage: lrs_load URL SERVER_PID CLIENTS SECONDS";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, pid, clients, seconds] = args.as_slice() else {
        return Err(usage.into());
    };
    let clients: usize = clients
        .parse()
        .map_err(|error| format!("CLIENTS: {error}; {usage}"))?;
    let seconds: u64 = seconds
        .parse()
        .map_err(|error| format!("SECONDS: {error}; {usage}"))?;
    let endpoints = 10;
    let rss_before = rss_mb(pid);
    let deadline = Instant::now() + Duration::from_secs(seconds + 3);
    let mut tasks = Vec::new();
    for id in 0..clients {
        let url = url.clone();
        let bytes = report(id, endpoints);
        tasks.push(tokio::spawn(async move {
            let Ok(endpoint) = tonic::transport::Channel::from_shared(url) else {
                return;
            };
            let Ok(channel) = endpoint.connect().await else {
                return;
            };
            let mut grpc = tonic::client::Grpc::new(channel);
            if grpc.ready().await.is_err() {
                return;
            }
            let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(2);
            if sender.send(bytes.clone()).await.is_err() {
                return;
            }
            let Ok(response) = grpc
                .streaming(
                    tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(receiver)),
                    tonic::codegen::http::uri::PathAndQuery::from_static(
                        "/envoy.service.load_stats.v3.LoadReportingService/StreamLoadStats",
                    ),
                    Raw,
                )
                .await
            else {
                return;
            };
            let mut inbound = response.into_inner();
            let _ = inbound.message().await;
            // Spread the streams over the second, as independent Envoys are.
            tokio::time::sleep(Duration::from_millis((id as u64 * 997) % 1000)).await;
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            while Instant::now() < deadline {
                ticker.tick().await;
                if sender.send(bytes.clone()).await.is_err() {
                    break;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cpu_before, started) = (cpu_seconds(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let cpu = (cpu_seconds(pid) - cpu_before) / started.elapsed().as_secs_f64();
    println!(
        "clients {clients}: server CPU {cpu:.3} cores over {seconds} s; RSS {rss_before:.0} MB before, {:.0} MB during",
        rss_mb(pid)
    );
    for task in tasks {
        task.abort();
    }
    Ok(())
}
