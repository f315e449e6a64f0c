//! An xDS load client: many Envoy-like subscribers that ACK every response and record when each
//! version arrives and how many bytes it took.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::Context;
use envoy_types::pb::envoy::{
    config::core::v3::Node,
    service::discovery::v3::{
        aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
        DeltaDiscoveryRequest, DiscoveryRequest,
    },
};
use prost::Message;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// Type URL of EDS resources.
pub const CLUSTER_LOAD_ASSIGNMENT: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// How the simulated Envoys subscribe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// ADS, state of the world.
    Sotw,
    /// ADS, incremental.
    Delta,
}

/// One response as a client saw it.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    /// Which client.
    pub client: usize,
    /// When it arrived.
    pub at: SystemTime,
    /// Encoded size of the response.
    pub bytes: usize,
}

/// Arrivals per version (SotW `version_info`, delta `system_version_info`).
#[derive(Clone, Debug, Default)]
pub struct Arrivals {
    by_version: Arc<Mutex<HashMap<String, Vec<Arrival>>>>,
}

impl Arrivals {
    fn record(&self, version: String, arrival: Arrival) {
        if let Ok(mut by_version) = self.by_version.lock() {
            by_version.entry(version).or_default().push(arrival);
        }
    }

    /// The arrivals of `version`.
    pub fn of(&self, version: &str) -> Vec<Arrival> {
        self.by_version
            .lock()
            .map(|by_version| by_version.get(version).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    /// How many clients have received any response.
    pub fn clients_with_any(&self) -> usize {
        self.by_version
            .lock()
            .map(|by_version| {
                let mut clients: Vec<usize> = by_version
                    .values()
                    .flatten()
                    .map(|arrival| arrival.client)
                    .collect();
                clients.sort_unstable();
                clients.dedup();
                clients.len()
            })
            .unwrap_or(0)
    }
}

/// Connected clients; dropping it closes every stream.
pub struct Fleet {
    /// What they received.
    pub arrivals: Arrivals,
    senders: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for task in &self.senders {
            task.abort();
        }
    }
}

/// Opens `clients` streams to `url`, `per_connection` streams on each HTTP/2 connection, each
/// subscribing to `names` and ACKing every response.
pub async fn connect(
    url: &str,
    clients: usize,
    per_connection: usize,
    mode: Mode,
    names: Vec<String>,
) -> anyhow::Result<Fleet> {
    let arrivals = Arrivals::default();
    let connecting = Arc::new(Semaphore::new(256));
    let mut tasks = Vec::with_capacity(clients);
    let mut channel: Option<Channel> = None;
    for client in 0..clients {
        if client % per_connection.max(1) == 0 {
            let _permit = connecting.acquire().await.context("semaphore closed")?;
            let endpoint = Endpoint::from_shared(url.to_string())
                .context("server URL")?
                .connect_timeout(Duration::from_secs(10))
                .initial_stream_window_size(1 << 20)
                .initial_connection_window_size(1 << 20);
            channel = Some(
                endpoint
                    .connect()
                    .await
                    .with_context(|| format!("client {client}: connect"))?,
            );
        }
        let Some(channel) = channel.clone() else {
            continue;
        };
        let names = names.clone();
        let arrivals = arrivals.clone();
        tasks.push(tokio::spawn(async move {
            let result = match mode {
                Mode::Sotw => run_sotw(channel, client, names, arrivals).await,
                Mode::Delta => run_delta(channel, client, names, arrivals).await,
            };
            if let Err(error) = result {
                tracing::debug!(client, %error, "load client stream ended");
            }
        }));
    }
    Ok(Fleet {
        arrivals,
        senders: tasks,
    })
}

fn node(client: usize) -> Option<Node> {
    Some(Node {
        id: format!("load-{client}"),
        cluster: "xds-load".into(),
        ..Default::default()
    })
}

async fn run_sotw(
    channel: Channel,
    client: usize,
    names: Vec<String>,
    arrivals: Arrivals,
) -> anyhow::Result<()> {
    let (sender, receiver) = mpsc::channel(4);
    sender
        .send(DiscoveryRequest {
            node: node(client),
            type_url: CLUSTER_LOAD_ASSIGNMENT.into(),
            resource_names: names.clone(),
            ..Default::default()
        })
        .await?;
    let mut responses = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(256 << 20)
        .stream_aggregated_resources(ReceiverStream::new(receiver))
        .await?
        .into_inner();
    while let Some(response) = responses.message().await? {
        let at = SystemTime::now();
        let bytes = response.encoded_len();
        sender
            .send(DiscoveryRequest {
                type_url: CLUSTER_LOAD_ASSIGNMENT.into(),
                resource_names: names.clone(),
                version_info: response.version_info.clone(),
                response_nonce: response.nonce.clone(),
                ..Default::default()
            })
            .await?;
        arrivals.record(response.version_info, Arrival { client, at, bytes });
    }
    Ok(())
}

async fn run_delta(
    channel: Channel,
    client: usize,
    names: Vec<String>,
    arrivals: Arrivals,
) -> anyhow::Result<()> {
    let (sender, receiver) = mpsc::channel(4);
    sender
        .send(DeltaDiscoveryRequest {
            node: node(client),
            type_url: CLUSTER_LOAD_ASSIGNMENT.into(),
            resource_names_subscribe: names,
            ..Default::default()
        })
        .await?;
    let mut responses = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(256 << 20)
        .delta_aggregated_resources(ReceiverStream::new(receiver))
        .await?
        .into_inner();
    while let Some(response) = responses.message().await? {
        let at = SystemTime::now();
        let bytes = response.encoded_len();
        sender
            .send(DeltaDiscoveryRequest {
                type_url: CLUSTER_LOAD_ASSIGNMENT.into(),
                response_nonce: response.nonce.clone(),
                ..Default::default()
            })
            .await?;
        arrivals.record(response.system_version_info, Arrival { client, at, bytes });
    }
    Ok(())
}
