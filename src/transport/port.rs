//! What every stream on the xDS port shares, and the port-wide stream limits it enforces.

use std::{pin::Pin, sync::Arc};

use futures::Stream;
use tonic::Status;

use super::registry::ClientRegistry;
use crate::snapshot::SnapshotStore;
use crate::telemetry::Metrics;

/// A boxed stream of responses, as tonic wants it.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What every stream on the xDS port (xDS and LRS alike) shares: the snapshots it serves, the
/// registry of open streams, metrics and the port's limits (the `xds:` config section).
#[derive(Clone, Debug)]
pub struct XdsContext {
    /// Where snapshots come from.
    pub store: SnapshotStore,
    /// Open streams on the port.
    pub registry: Arc<ClientRegistry>,
    /// Metric handles.
    pub metrics: Metrics,
    /// Most resource names one stream may subscribe to.
    pub max_resource_names: usize,
    /// Most open streams on this server.
    pub max_streams: usize,
}

impl XdsContext {
    /// Counts a refusal by `limit`.
    pub fn refuse(&self, limit: &str) {
        self.metrics.refuse(limit);
    }

    /// Refuses a new stream when `max_streams` are already open.
    pub fn admit_stream(&self) -> Result<(), Status> {
        if self.registry.len() >= self.max_streams {
            self.refuse("max_streams");
            return Err(Status::resource_exhausted(format!(
                "this server already has {} open xDS streams (xds.max_streams); retry later or use another replica",
                self.max_streams
            )));
        }
        Ok(())
    }
}
