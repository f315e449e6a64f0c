//! Drives one xDS stream: reads requests and snapshot changes, feeds the protocol state, emits responses.

use std::{collections::HashMap, collections::VecDeque, sync::Arc};

use envoy_types::pb::envoy::config::core::v3::Node;
use tokio::sync::watch;
use tonic::{Status, Streaming};

use super::{type_state::TypeState, Nonces, RequestEvent};
use crate::snapshot::{Snapshot, CLUSTER_LOAD_ASSIGNMENT};
use crate::telemetry::Metrics;
use crate::transport::{
    port::{ResponseStream, XdsContext},
    registry::{ClientGuard, StreamKind},
};

/// Most distinct non-EDS type URLs one ADS stream may open before further ones are ignored.
const MAX_UNSERVED_TYPES: usize = 32;

/// The protocol state machine of one resource type: state-of-the-world or delta. Each keeps
/// its shared bookkeeping in a [`TypeState`], which the driver reads for the registry.
pub trait Protocol: Send + 'static {
    /// The request message.
    type Request: XdsRequest + Send + 'static;
    /// The response message.
    type Response: Send + 'static;
    /// State for `type_url`; `served` is false for types we answer with nothing.
    fn new_state(type_url: &str, served: bool) -> Self;
    /// Handles a request.
    fn on_request(
        &mut self,
        request: &Self::Request,
        snapshot: &Snapshot,
        nonces: &mut Nonces,
    ) -> (RequestEvent, Option<Self::Response>);
    /// Handles a new snapshot.
    fn on_snapshot(&mut self, snapshot: &Snapshot, nonces: &mut Nonces) -> Option<Self::Response>;
    /// What the client asked for and was sent, and what it acknowledged.
    fn type_state(&self) -> &TypeState;
    /// Subscribed names.
    fn subscribed(&self) -> Vec<String> {
        self.type_state().subscribed()
    }
    /// How many names are subscribed (without copying them).
    fn subscribed_count(&self) -> usize {
        self.type_state().subscribed_count()
    }
    /// Last version sent.
    fn last_sent_version(&self) -> Option<&str> {
        self.type_state().last_sent_version()
    }
    /// Last version ACKed.
    fn acked_version(&self) -> Option<&str> {
        self.type_state().acked_version()
    }
}

/// The parts of a request the driver reads before the state machine does.
pub trait XdsRequest {
    /// Requested type URL.
    fn type_url(&self) -> &str;
    /// The node, if this request carries one.
    fn node(&self) -> Option<&Node>;
    /// How many resource names the request names.
    fn name_count(&self) -> usize;
}

/// Serves one stream until the client closes it or sends something we must refuse.
pub fn serve<P: Protocol>(
    context: XdsContext,
    kind: StreamKind,
    inbound: Streaming<P::Request>,
) -> ResponseStream<P::Response>
where
    Streaming<P::Request>: Send,
    P::Request: prost::Message + Default,
{
    let guard = context.registry.register(kind, &context.metrics);
    let driver = Driver::<P> {
        snapshots: context.store.subscribe(),
        context,
        kind,
        inbound,
        nonces: Nonces::default(),
        assignments: P::new_state(CLUSTER_LOAD_ASSIGNMENT, true),
        unserved: HashMap::new(),
        pending: VecDeque::new(),
        guard,
        finished: false,
        logged_nack: None,
    };
    Box::pin(futures::stream::unfold(driver, |mut driver| async move {
        driver.next().await.map(|item| (item, driver))
    }))
}

struct Driver<P: Protocol> {
    context: XdsContext,
    kind: StreamKind,
    inbound: Streaming<P::Request>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    nonces: Nonces,
    assignments: P,
    unserved: HashMap<String, P>,
    pending: VecDeque<P::Response>,
    guard: ClientGuard,
    finished: bool,
    logged_nack: Option<(String, String)>,
}

impl<P: Protocol> Driver<P>
where
    P::Request: prost::Message + Default,
{
    async fn next(&mut self) -> Option<Result<P::Response, Status>> {
        loop {
            if let Some(response) = self.pending.pop_front() {
                return Some(Ok(response));
            }
            if self.finished {
                return None;
            }
            tokio::select! {
                message = self.inbound.message() => match message {
                    Ok(Some(request)) => {
                        if let Err(status) = self.on_request(request) {
                            self.finished = true;
                            return Some(Err(status));
                        }
                    }
                    Ok(None) => return None,
                    Err(status) => {
                        if status.code() == tonic::Code::OutOfRange {
                            self.context.refuse("max_message_bytes");
                            tracing::warn!(stream_id = self.guard.stream_id(), %status, "request over xds.max_message_bytes; stream closed");
                            self.finished = true;
                            return Some(Err(status));
                        }
                        tracing::debug!(stream_id = self.guard.stream_id(), %status, "stream ended by the client");
                        return None;
                    }
                },
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    let snapshot = self.snapshots.borrow_and_update().clone();
                    if let Some(response) = self.assignments.on_snapshot(&snapshot, &mut self.nonces) {
                        self.queue(response);
                    }
                }
            }
        }
    }

    fn on_request(&mut self, request: P::Request) -> Result<(), Status> {
        let kind = self.kind.label();
        if let Some(node) = request.node() {
            let (id, cluster) = (node.id.clone(), node.cluster.clone());
            self.guard.update(|info| {
                if info.node_id.is_empty() {
                    info.node_id = id;
                    info.node_cluster = cluster;
                }
            });
        }
        if request.name_count() > self.context.max_resource_names {
            self.reject();
            self.context.refuse("max_resource_names");
            return Err(Status::resource_exhausted(format!(
                "request names {} resources; this server allows at most {} per stream (xds.max_resource_names)",
                request.name_count(),
                self.context.max_resource_names
            )));
        }
        let snapshot = self.snapshots.borrow_and_update().clone();
        let type_url = request.type_url();
        let state = if type_url == CLUSTER_LOAD_ASSIGNMENT
            || (type_url.is_empty() && !self.kind.is_aggregated())
        {
            &mut self.assignments
        } else if !self.kind.is_aggregated() {
            self.reject();
            return Err(Status::invalid_argument(format!(
                "the EDS service serves {CLUSTER_LOAD_ASSIGNMENT} only, got type_url {type_url:?}"
            )));
        } else if type_url.is_empty()
            || (!self.unserved.contains_key(type_url) && self.unserved.len() >= MAX_UNSERVED_TYPES)
        {
            tracing::warn!(
                stream_id = self.guard.stream_id(),
                kind,
                type_url,
                "ignoring request with an empty or one-too-many type_url"
            );
            self.reject();
            return Ok(());
        } else {
            if !self.unserved.contains_key(type_url) {
                tracing::info!(
                    stream_id = self.guard.stream_id(),
                    kind,
                    type_url,
                    "answering a type this server does not serve with no resources"
                );
            }
            self.unserved
                .entry(type_url.to_string())
                .or_insert_with(|| P::new_state(type_url, false))
        };
        let (event, response) = state.on_request(&request, &snapshot, &mut self.nonces);
        if self.assignments.subscribed_count() > self.context.max_resource_names {
            self.reject();
            self.context.refuse("max_resource_names");
            return Err(Status::resource_exhausted(format!(
                "stream subscribes to more than {} resources (xds.max_resource_names)",
                self.context.max_resource_names
            )));
        }
        self.record(event);
        if let Some(response) = response {
            self.queue(response);
        }
        self.refresh_info();
        Ok(())
    }

    fn record(&mut self, event: RequestEvent) {
        let labels = Metrics::kind(self.kind.label());
        match event {
            RequestEvent::Ack { .. } => {
                self.context.metrics.acks.get_or_create(&labels).inc();
                self.guard.update(|info| info.acks += 1);
            }
            RequestEvent::Nack { version, message } => {
                self.context.metrics.nacks.get_or_create(&labels).inc();
                let key = (version.clone(), message.clone());
                if self.logged_nack.as_ref() != Some(&key) {
                    tracing::warn!(stream_id = self.guard.stream_id(), kind = labels.kind, %version, error = %message, "client rejected (NACK) a response; keeping the last good version");
                    self.logged_nack = Some(key);
                }
                self.guard.update(|info| {
                    info.nacks += 1;
                    info.last_nack_version = version;
                    info.last_nack_message = message;
                });
            }
            RequestEvent::Initial | RequestEvent::Stale => {}
        }
    }

    fn queue(&mut self, response: P::Response) {
        self.context
            .metrics
            .pushes
            .get_or_create(&Metrics::kind(self.kind.label()))
            .inc();
        self.guard.update(|info| info.pushes += 1);
        self.pending.push_back(response);
        self.refresh_info();
    }

    fn reject(&self) {
        self.context
            .metrics
            .rejected_requests
            .get_or_create(&Metrics::kind(self.kind.label()))
            .inc();
    }

    fn refresh_info(&self) {
        let subscribed = self.assignments.subscribed();
        let sent = self
            .assignments
            .last_sent_version()
            .unwrap_or_default()
            .to_string();
        let acked = self
            .assignments
            .acked_version()
            .unwrap_or_default()
            .to_string();
        self.guard.update(|info| {
            info.subscribed = subscribed;
            info.last_sent_version = sent;
            info.last_acked_version = acked;
        });
    }
}
