//! Open streams on the xDS port (xDS and LRS clients): who they are, what they asked for and
//! what they ACKed.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use dashmap::DashMap;

use crate::telemetry::Metrics;

/// The four streaming RPCs we serve, as shown in `Inspect` and metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// ADS, state of the world.
    AdsSotw,
    /// ADS, incremental.
    AdsDelta,
    /// EDS service, state of the world.
    EdsSotw,
    /// EDS service, incremental.
    EdsDelta,
    /// Load reporting (LRS): an Envoy sending us its load reports.
    Lrs,
}

impl StreamKind {
    /// The label used in metrics and `Inspect`.
    pub fn label(self) -> &'static str {
        match self {
            Self::AdsSotw => "ads-sotw",
            Self::AdsDelta => "ads-delta",
            Self::EdsSotw => "eds-sotw",
            Self::EdsDelta => "eds-delta",
            Self::Lrs => "lrs",
        }
    }

    /// True for the aggregated service (which may carry other resource types).
    pub fn is_aggregated(self) -> bool {
        matches!(self, Self::AdsSotw | Self::AdsDelta)
    }
}

/// What we know about one connected stream.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    /// Server-assigned stream id.
    pub stream_id: u64,
    /// `node.id` from the first request that carried a node.
    pub node_id: String,
    /// `node.cluster`.
    pub node_cluster: String,
    /// Which RPC.
    pub kind: StreamKind,
    /// Subscribed EDS resource names (`*` for wildcard).
    pub subscribed: Vec<String>,
    /// Last version sent.
    pub last_sent_version: String,
    /// Last version ACKed.
    pub last_acked_version: String,
    /// Version of the last NACKed response.
    pub last_nack_version: String,
    /// The client's error message for the last NACK.
    pub last_nack_message: String,
    /// Responses sent.
    pub pushes: u64,
    /// ACKs received.
    pub acks: u64,
    /// NACKs received.
    pub nacks: u64,
    /// When the stream opened.
    pub connected_at: Instant,
}

/// Every open stream, readable by `Inspect` while streams update their own entry.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    clients: DashMap<u64, ClientInfo>,
    next_id: AtomicU64,
}

impl ClientRegistry {
    /// Registers a new stream; the guard removes it when the stream ends.
    pub fn register(self: &Arc<Self>, kind: StreamKind, metrics: &Metrics) -> ClientGuard {
        let stream_id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.clients.insert(
            stream_id,
            ClientInfo {
                stream_id,
                node_id: String::new(),
                node_cluster: String::new(),
                kind,
                subscribed: Vec::new(),
                last_sent_version: String::new(),
                last_acked_version: String::new(),
                last_nack_version: String::new(),
                last_nack_message: String::new(),
                pushes: 0,
                acks: 0,
                nacks: 0,
                connected_at: Instant::now(),
            },
        );
        metrics
            .streams
            .get_or_create(&Metrics::kind(kind.label()))
            .inc();
        ClientGuard {
            registry: Arc::clone(self),
            stream_id,
            kind,
            metrics: metrics.clone(),
        }
    }

    /// A copy of every entry, ordered by stream id.
    pub fn list(&self) -> Vec<ClientInfo> {
        let mut clients: Vec<ClientInfo> = self
            .clients
            .iter()
            .map(|entry| entry.value().clone())
            .collect();
        clients.sort_by_key(|client| client.stream_id);
        clients
    }

    /// Number of open streams.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// True when no stream is open.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// Owns one registry entry; dropping it (stream end) removes the entry.
#[derive(Debug)]
pub struct ClientGuard {
    registry: Arc<ClientRegistry>,
    stream_id: u64,
    kind: StreamKind,
    metrics: Metrics,
}

impl ClientGuard {
    /// Changes this stream's entry.
    pub fn update(&self, change: impl FnOnce(&mut ClientInfo)) {
        if let Some(mut entry) = self.registry.clients.get_mut(&self.stream_id) {
            change(entry.value_mut());
        }
    }

    /// This stream's id.
    pub fn stream_id(&self) -> u64 {
        self.stream_id
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.registry.clients.remove(&self.stream_id);
        self.metrics
            .streams
            .get_or_create(&Metrics::kind(self.kind.label()))
            .dec();
    }
}
