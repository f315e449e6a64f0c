//! The LRS gRPC service: tells each Envoy what to report and how often, and hands its reports
//! to the aggregation. It shares the xDS port's TLS, identity allow-list, connection, stream and
//! message-size limits (an LRS stream counts toward `xds.max_streams`) and its stream registry.

use std::{sync::Arc, time::Instant};

use envoy_types::pb::{envoy::service::load_stats::v3::LoadStatsResponse, google::protobuf};
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use super::{
    aggregate::{LoadReports, Outcome, StreamReports},
    lrs_server::load_reporting_service_server::{LoadReportingService, LoadReportingServiceServer},
    wire::LoadReport,
};
use crate::snapshot::Snapshot;
use crate::telemetry::{Metrics, ResultLabels};
use crate::transport::{
    port::{ResponseStream, XdsContext},
    registry::{ClientGuard, StreamKind},
};

/// The client feature with which Envoy says it honours `send_all_clusters`.
pub const SEND_ALL_CLUSTERS_FEATURE: &str = "envoy.lrs.supports_send_all_clusters";

/// The interval asked for while LRS is disabled: Envoys whose bootstrap reports to us keep one
/// idle stream open instead of retrying (with their whole Node) every 5 seconds.
const DISABLED_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Serves `StreamLoadStats`; with `reports` unset (LRS disabled) it asks for nothing.
#[derive(Clone, Debug)]
pub struct LrsService {
    context: XdsContext,
    reports: Option<LoadReports>,
}

impl LrsService {
    /// A service over `context`, recording into `reports` when LRS is enabled.
    pub fn new(context: XdsContext, reports: Option<LoadReports>) -> Self {
        Self { context, reports }
    }

    /// The gRPC service, refusing requests over `max_message_bytes`.
    pub fn server(&self, max_message_bytes: usize) -> LoadReportingServiceServer<Self> {
        LoadReportingServiceServer::new(self.clone()).max_decoding_message_size(max_message_bytes)
    }
}

#[tonic::async_trait]
impl LoadReportingService for LrsService {
    type StreamLoadStatsStream = ResponseStream<LoadStatsResponse>;

    async fn stream_load_stats(
        &self,
        request: Request<Streaming<LoadReport>>,
    ) -> Result<Response<Self::StreamLoadStatsStream>, Status> {
        self.context.admit_stream()?;
        let guard = self
            .context
            .registry
            .register(StreamKind::Lrs, &self.context.metrics);
        let reports = self
            .reports
            .as_ref()
            .map(|reports| reports.open_stream(guard.stream_id()));
        let driver = Driver {
            metrics: self.context.metrics.clone(),
            interval: self
                .reports
                .as_ref()
                .map(LoadReports::interval)
                .unwrap_or(DISABLED_INTERVAL),
            snapshots: self.context.store.subscribe(),
            inbound: request.into_inner(),
            guard,
            reports,
            send_all: None,
            asked: None,
            finished: false,
        };
        Ok(Response::new(Box::pin(futures::stream::unfold(
            driver,
            |mut driver| async move { driver.next().await.map(|item| (item, driver)) },
        ))))
    }
}

/// One LRS stream.
struct Driver {
    metrics: Metrics,
    interval: std::time::Duration,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    inbound: Streaming<LoadReport>,
    guard: ClientGuard,
    /// `None` when LRS is disabled.
    reports: Option<StreamReports>,
    /// Whether the Envoy honours `send_all_clusters`; `None` until its first message.
    send_all: Option<bool>,
    /// The clusters last asked for (when not `send_all`).
    asked: Option<Vec<String>>,
    finished: bool,
}

impl Driver {
    async fn next(&mut self) -> Option<Result<LoadStatsResponse, Status>> {
        loop {
            if self.finished {
                return None;
            }
            // Envoys that cannot take `send_all_clusters` are asked for our clusters by name,
            // again whenever the served set changes.
            let follow_snapshots = self.send_all == Some(false) && self.reports.is_some();
            tokio::select! {
                message = self.inbound.message() => match message {
                    Ok(Some(report)) => {
                        if let Some(response) = self.on_report(report) {
                            return Some(Ok(response));
                        }
                    }
                    Ok(None) => return None,
                    Err(status) => {
                        self.finished = true;
                        match status.code() {
                            tonic::Code::OutOfRange => {
                                self.metrics.refuse("max_message_bytes");
                                tracing::warn!(stream_id = self.guard.stream_id(), %status, "load report over xds.max_message_bytes; stream closed");
                                return Some(Err(status));
                            }
                            tonic::Code::InvalidArgument => {
                                self.count_report("malformed");
                                tracing::warn!(stream_id = self.guard.stream_id(), %status, "malformed load report; stream closed");
                                return Some(Err(status));
                            }
                            _ => {
                                tracing::debug!(stream_id = self.guard.stream_id(), %status, "LRS stream ended by the client");
                                return None;
                            }
                        }
                    }
                },
                changed = self.snapshots.changed(), if follow_snapshots => {
                    if changed.is_err() {
                        return None;
                    }
                    let names = served_names(&self.snapshots.borrow_and_update());
                    if self.asked.as_ref() != Some(&names) {
                        return Some(Ok(self.respond(names)));
                    }
                }
            }
        }
    }

    /// Handles one report; the response to send, if any (only after the first message).
    fn on_report(&mut self, report: LoadReport) -> Option<LoadStatsResponse> {
        self.count_report("ok");
        let first = self.send_all.is_none();
        let mut response = None;
        if first {
            let node = report.node.unwrap_or_default();
            let send_all = node
                .client_features
                .iter()
                .any(|feature| feature == SEND_ALL_CLUSTERS_FEATURE);
            self.send_all = Some(send_all);
            tracing::info!(stream_id = self.guard.stream_id(), node = %node.id, send_all, "load reporting stream opened");
            let subscribed = if send_all {
                vec!["*".to_string()]
            } else {
                Vec::new()
            };
            self.guard.update(|info| {
                info.node_id = node.id;
                info.node_cluster = node.cluster;
                info.subscribed = subscribed;
            });
            let names = if send_all || self.reports.is_none() {
                Vec::new()
            } else {
                served_names(&self.snapshots.borrow_and_update())
            };
            response = Some(self.respond(names));
        }
        match &self.reports {
            Some(reports) => {
                // The first message carries only the node; every later one is a report, even
                // without clusters (none had activity).
                if !first || !report.cluster_stats.is_empty() {
                    reports.record_encoded(
                        &report.cluster_stats,
                        Instant::now(),
                        std::time::SystemTime::now(),
                    );
                }
            }
            None => {
                self.metrics
                    .lrs_cluster_stats
                    .get_or_create(&ResultLabels {
                        result: Outcome::Disabled.as_str().into(),
                    })
                    .inc_by(report.cluster_stats.len() as u64);
            }
        }
        response
    }

    /// The response asking for `names` (or all clusters when the Envoy takes `send_all`).
    fn respond(&mut self, names: Vec<String>) -> LoadStatsResponse {
        let enabled = self.reports.is_some();
        let send_all = enabled && self.send_all == Some(true);
        if !send_all {
            let shown = names.clone();
            self.guard.update(|info| info.subscribed = shown);
            self.asked = Some(names.clone());
        }
        self.metrics
            .pushes
            .get_or_create(&Metrics::kind(StreamKind::Lrs.label()))
            .inc();
        self.guard.update(|info| info.pushes += 1);
        LoadStatsResponse {
            clusters: if send_all { Vec::new() } else { names },
            send_all_clusters: send_all,
            load_reporting_interval: Some(protobuf::Duration {
                seconds: i64::try_from(self.interval.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(self.interval.subsec_nanos()).unwrap_or(0),
            }),
            report_endpoint_granularity: enabled,
        }
    }

    fn count_report(&self, result: &str) {
        self.metrics
            .lrs_reports
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }
}

/// The clusters a snapshot serves, by EDS name (what Envoy calls them when it has no
/// `service_name`; Envoys that name clusters otherwise take `send_all_clusters`).
fn served_names(snapshot: &Snapshot) -> Vec<String> {
    snapshot.clusters.keys().cloned().collect()
}
