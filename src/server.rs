//! Wires the pipeline: file and Kubernetes sources -> engine -> snapshots -> gRPC and admin listeners.

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context;
use tokio::{net::TcpListener, sync::mpsc};
use tonic::service::interceptor::InterceptedService;

use crate::admin::{self, AdminState};
use crate::config::{reload::ConfigWatch, xds::XdsConfig};
use crate::discovery::{file::FileSource, kubernetes::KubernetesSource};
use crate::engine::Engine;
use crate::inspect::{self, InspectService};
use crate::lrs::{LoadReports, LrsService};
use crate::metrics::{
    prometheus,
    receiver::{self, ReceiverState},
    remote_write::{self, SeriesStore},
};
use crate::samples::SampleTable;
use crate::snapshot::SnapshotStore;
use crate::telemetry::Metrics;
use crate::transport::{connections, port::XdsContext, registry::ClientRegistry, tls::TlsReloader};
use crate::xds::{self, service::XdsService};

/// The addresses a running server actually bound (useful when the config says port 0).
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    /// gRPC (xDS, reflection, health, Inspect).
    pub xds: SocketAddr,
    /// Admin HTTP.
    pub admin: SocketAddr,
}

/// Loads `config_path`, binds both listeners and serves until `shutdown` completes.
///
/// `on_bound` is called once both listeners are bound.
pub async fn serve(
    config_path: PathBuf,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(Bound),
) -> anyhow::Result<()> {
    // Every task started here ends with `serve`, on success or error: an in-process server
    // that returns must not keep querying metrics stores or watching files.
    let mut tasks = Tasks::default();
    let (metrics, registry) = Metrics::registered();
    let mut config_watch = ConfigWatch::open(config_path.clone(), metrics.clone())?;
    let config = config_watch.config().clone();
    let store = SnapshotStore::new();
    let clients = Arc::new(ClientRegistry::default());
    let table = SampleTable::default();
    let series = config
        .adaptive
        .remote_write
        .as_ref()
        .map(|_| SeriesStore::default());

    let source = FileSource::new(config_watch.clusters());
    let kubernetes = match config.kubernetes.clone() {
        Some(kubernetes) => Some(KubernetesSource::connect(kubernetes).await?),
        None => None,
    };
    if let Some(kubernetes) = &kubernetes {
        config_watch.follow_discovered(kubernetes.discovered());
    }
    let settings = config_watch.settings();
    let mut engine = Engine::new(
        settings.borrow().clone(),
        table.clone(),
        store.clone(),
        metrics.clone(),
    );
    engine.apply(source.initial_updates());
    engine.publish();
    let (updates_sender, updates) = mpsc::channel(16);
    // Pulls, remote-write and load reports name the clusters whose samples they have just written.
    let (arrived_sender, arrived) = mpsc::channel(4);
    tasks.spawn(prometheus::run(
        settings.clone(),
        table.clone(),
        metrics.clone(),
        arrived_sender.clone(),
        engine.eager_pulls(),
    ));
    if let Some(series) = &series {
        tasks.spawn(remote_write::aggregate(
            settings.clone(),
            series.clone(),
            table.clone(),
            arrived_sender.clone(),
        ));
    }
    tasks.spawn(engine.run(updates, settings.clone(), arrived));
    if let Some(kubernetes) = kubernetes {
        tasks.spawn(kubernetes.run(updates_sender.clone()));
    }
    tasks.spawn(source.run(updates_sender));
    tasks.spawn(config_watch.run());

    let xds_listener = TcpListener::bind(config.xds_listen)
        .await
        .with_context(|| format!("xds.listen: cannot bind {}", config.xds_listen))?;
    let admin_listener = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("admin.listen: cannot bind {}", config.admin_listen))?;
    let bound = Bound {
        xds: xds_listener.local_addr().context("xds listener address")?,
        admin: admin_listener
            .local_addr()
            .context("admin listener address")?,
    };
    tracing::info!(xds = %bound.xds, admin = %bound.admin, config = %config_path.display(), "adaptive-eds serving");
    on_bound(bound);

    let context = XdsContext {
        store: store.clone(),
        registry: Arc::clone(&clients),
        metrics,
        max_resource_names: config.raw.xds.max_resource_names,
        max_streams: config.raw.xds.max_streams,
    };
    let mut admin_app = admin::router(AdminState {
        registry: Arc::new(registry),
        store: store.clone(),
    });
    if let Some(series) = series {
        admin_app = admin_app.merge(receiver::router(ReceiverState {
            metrics: context.metrics.clone(),
            series,
            adaptive: settings,
        }));
    }
    let xds_config = &config.raw.xds;
    let drain_clients = Arc::clone(&clients);
    let tls = match &config.xds_tls {
        Some(settings) => {
            let reloader = TlsReloader::new(settings.clone())?;
            tasks.spawn(reloader.clone().watch());
            Some(reloader)
        }
        None => None,
    };
    let incoming = connections::accept_limited(
        xds_listener,
        xds_config.max_connections,
        tls,
        context.metrics.clone(),
    );
    // LRS settings are read once: Envoys are told the interval when their stream opens.
    let load_reports = config.adaptive.load_reports.as_ref().map(|settings| {
        // Shared through the metrics store, a replica's own (partial) aggregates must not reach
        // its weights: they would win over the pulled sums, being newer. They still reach the
        // `adaptive_eds_lrs_endpoint_*` gauges, which the store scrapes and sums.
        let samples = if settings.shared_via_store {
            SampleTable::default()
        } else {
            table.clone()
        };
        LoadReports::new(
            store.clone(),
            samples,
            context.metrics.clone(),
            settings.interval,
        )
    });
    if let Some(reports) = &load_reports {
        tasks.spawn(reports.clone().run(arrived_sender));
    }
    let lrs = LrsService::new(context.clone(), load_reports);
    let grpc = grpc_router(context, clients, lrs, xds_config)?;
    let drain_period = xds_config.drain_period();

    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    tasks.spawn(async move {
        shutdown.await;
        let _ = stop_sender.send(true);
    });
    let mut grpc_stop = stop.clone();
    let mut admin_stop = stop.clone();
    let mut drain_stop = stop;
    let grpc = grpc.serve_with_incoming_shutdown(incoming, async move {
        let _ = grpc_stop.wait_for(|stopped| *stopped).await;
    });
    let admin = axum::serve(admin_listener, admin_app).with_graceful_shutdown(async move {
        let _ = admin_stop.wait_for(|stopped| *stopped).await;
    });
    // After the signal, open streams keep being served (no new connections are accepted) until
    // they end or the drain period is over.
    let drained = async move {
        let _ = drain_stop.wait_for(|stopped| *stopped).await;
        tracing::info!(
            ?drain_period,
            open_streams = drain_clients.len(),
            "draining: no new connections; open streams served until the drain period ends"
        );
        tokio::time::sleep(drain_period).await;
    };
    tokio::select! {
        (grpc_result, admin_result) = async { tokio::join!(grpc, admin) } => {
            grpc_result.context("gRPC server failed")?;
            admin_result.context("admin server failed")?;
        }
        () = drained => {
            tracing::info!("drain period over; closing the remaining streams");
        }
    }
    tracing::info!("adaptive-eds stopped");
    Ok(())
}

/// Tasks that are aborted when dropped (when `serve` returns).
#[derive(Default)]
struct Tasks(Vec<tokio::task::AbortHandle>);

impl Tasks {
    fn spawn<F>(&mut self, future: F)
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0.push(tokio::spawn(future).abort_handle());
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

fn grpc_router(
    context: XdsContext,
    clients: Arc<ClientRegistry>,
    lrs: LrsService,
    limits: &XdsConfig,
) -> anyhow::Result<tonic::transport::server::Router> {
    let xds_service = XdsService::new(context.clone());
    let operators = OperatorGate::new(limits, context.metrics.clone());
    let inspect_service = limits.inspect.then(|| {
        InterceptedService::new(
            InspectService::new(context.store.clone(), clients).server(),
            operators.clone(),
        )
    });
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let mut names = vec![
        "",
        "envoy.service.discovery.v3.AggregatedDiscoveryService",
        "envoy.service.endpoint.v3.EndpointDiscoveryService",
        "envoy.service.load_stats.v3.LoadReportingService",
    ];
    if limits.inspect {
        names.push("adaptive_eds.inspect.v1.Inspect");
    }
    for name in names {
        tokio::spawn({
            let reporter = health_reporter.clone();
            async move {
                reporter
                    .set_service_status(name, tonic_health::ServingStatus::Serving)
                    .await
            }
        });
    }
    let (reflection_v1, reflection_v1alpha) = if limits.reflection {
        (
            Some(InterceptedService::new(
                reflection_builder(limits.inspect)
                    .build_v1()
                    .context("building gRPC reflection (v1)")?,
                operators.clone(),
            )),
            Some(InterceptedService::new(
                reflection_builder(limits.inspect)
                    .build_v1alpha()
                    .context("building gRPC reflection (v1alpha)")?,
                operators,
            )),
        )
    } else {
        (None, None)
    };
    Ok(tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(limits.keepalive_interval()))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout()))
        .add_service(xds_service.ads(limits.max_message_bytes))
        .add_service(xds_service.eds(limits.max_message_bytes))
        .add_service(lrs.server(limits.max_message_bytes))
        .add_service(health_service)
        .add_optional_service(inspect_service)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha))
}

/// Lets only the configured operator identities call `Inspect` and reflection (all callers when
/// `xds.tls.operator_identities` is empty).
#[derive(Clone)]
struct OperatorGate {
    allowed: Arc<Vec<String>>,
    metrics: Metrics,
}

impl OperatorGate {
    fn new(limits: &XdsConfig, metrics: Metrics) -> Self {
        let allowed = limits
            .tls
            .as_ref()
            .map(|tls| tls.operator_identities.clone())
            .unwrap_or_default();
        Self {
            allowed: Arc::new(allowed),
            metrics,
        }
    }
}

impl tonic::service::Interceptor for OperatorGate {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if self.allowed.is_empty() {
            return Ok(request);
        }
        let identities = request
            .extensions()
            .get::<connections::PeerInfo>()
            .map(|peer| Arc::clone(&peer.identities))
            .unwrap_or_default();
        if identities
            .iter()
            .any(|identity| self.allowed.contains(identity))
        {
            return Ok(request);
        }
        self.metrics.refuse("operator_identity");
        Err(tonic::Status::permission_denied(
            "Inspect and reflection are limited to xds.tls.operator_identities",
        ))
    }
}

/// Reflection over every service on the port, so both reflection versions list all of them
/// (grpcurl 1.8.6 speaks only `v1alpha`).
fn reflection_builder(with_inspect: bool) -> tonic_reflection::server::Builder<'static> {
    let builder = tonic_reflection::server::Builder::configure();
    let builder = if with_inspect {
        builder.register_encoded_file_descriptor_set(inspect::FILE_DESCRIPTOR_SET)
    } else {
        builder
    };
    builder
        .register_encoded_file_descriptor_set(xds::ENVOY_FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .include_reflection_service(false)
}
