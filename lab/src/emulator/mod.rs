//! Backend emulator: runs every pod of a fleet as an HTTP server on 127.0.0.1.

mod metrics;
mod node;
mod precise_timer;
mod recent_load;
mod scenario;
mod server;

pub use metrics::NodeMetrics;
pub use node::{Answer, Node, NodeError, ORCA_WINDOW};
pub use precise_timer::PreciseTimer;
pub use recent_load::{LoadReport, RecentLoad};
pub use scenario::run_scenario;
pub use server::{router, ORCA_HEADER};

use crate::fleet::Fleet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// A pod's settings are not usable.
    #[error("pod {pod}: {source}")]
    Pod {
        /// Pod name.
        pod: String,
        /// What is wrong with it.
        source: crate::service_time::ServiceTimeError,
    },
    /// A port could not be bound or the timer thread could not start.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// `base_port + index` overflows the port range.
    #[error("base port {base_port} leaves no room for {count} pods")]
    PortRange {
        /// First port asked for.
        base_port: u16,
        /// Number of pods.
        count: usize,
    },
}

/// A node that is being served, with the address it listens on.
#[derive(Debug, Clone)]
pub struct RunningNode {
    /// The emulated pod.
    pub node: Arc<Node>,
    /// Where it listens.
    pub address: SocketAddr,
}

/// A running fleet; call [`RunningFleet::shutdown`] to stop every server.
#[derive(Debug)]
pub struct RunningFleet {
    nodes: Vec<RunningNode>,
    stop: watch::Sender<bool>,
    servers: JoinSet<()>,
}

fn node_port(base_port: u16, index: usize, count: usize) -> Result<u16, EmulatorError> {
    if base_port == 0 {
        return Ok(0);
    }
    u16::try_from(index)
        .ok()
        .and_then(|offset| base_port.checked_add(offset))
        .ok_or(EmulatorError::PortRange { base_port, count })
}

/// Starts one HTTP server per pod, on `base_port + index` (or ephemeral ports if 0).
pub async fn start_fleet(fleet: &Fleet, base_port: u16) -> Result<RunningFleet, EmulatorError> {
    let timer = PreciseTimer::start().map_err(|source| EmulatorError::Io {
        context: "starting the precise timer thread".to_owned(),
        source,
    })?;
    let pods = fleet.pods();
    let (stop, stop_receiver) = watch::channel(false);
    let mut servers = JoinSet::new();
    let mut nodes = Vec::with_capacity(pods.len());
    for (index, pod) in pods.iter().enumerate() {
        let node = Node::new(pod, &fleet.namespace, fleet.orca, timer.clone())
            .map_err(|source| EmulatorError::Pod {
                pod: pod.name.clone(),
                source,
            })?
            .with_orca_eps(fleet.orca_eps);
        let node = Arc::new(node);
        let port = node_port(base_port, index, pods.len())?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .await
            .map_err(|source| EmulatorError::Io {
                context: format!("binding 127.0.0.1:{port} for pod {}", pod.name),
                source,
            })?;
        let address = listener.local_addr().map_err(|source| EmulatorError::Io {
            context: format!("reading the address of pod {}", pod.name),
            source,
        })?;
        servers.spawn(serve(listener, Arc::clone(&node), stop_receiver.clone()));
        nodes.push(RunningNode { node, address });
    }
    Ok(RunningFleet {
        nodes,
        stop,
        servers,
    })
}

async fn serve(listener: TcpListener, node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let name = node.name().to_owned();
    let mut own = node.stopped();
    let shutdown = async move {
        // Either a stop was sent or the sender is gone: both mean stop, for the whole fleet or
        // for this pod alone.
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => {}
            _ = own.wait_for(|stopped| *stopped) => {}
        }
    };
    if let Err(error) = axum::serve(listener, router(node))
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(pod = %name, %error, "server failed");
    }
}

impl RunningFleet {
    /// The nodes in fleet order.
    pub fn nodes(&self) -> &[RunningNode] {
        &self.nodes
    }

    /// The node serving `pod`, if there is one.
    pub fn node(&self, pod: &str) -> Option<&RunningNode> {
        self.nodes.iter().find(|running| running.node.name() == pod)
    }

    /// Stops every server, waiting at most `grace` for open requests to finish.
    pub async fn shutdown(mut self, grace: Duration) {
        // Receivers may all be gone already; the servers then stopped on their own.
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout(grace, async {
            while self.servers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("servers did not stop within {grace:?}; aborting them");
            self.servers.abort_all();
            while self.servers.join_next().await.is_some() {}
        }
    }
}
