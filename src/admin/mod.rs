//! The admin HTTP listener: Prometheus `/metrics`, `/healthz` (alive) and `/readyz` (serving).

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{DefaultBodyLimit, State},
    http::{header, StatusCode},
    response::IntoResponse,
    routing::{get, post},
    Router,
};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::config::adaptive::AdaptiveConfig;
use crate::metrics::remote_write::{self, SeriesStore};
use crate::snapshot::SnapshotStore;
use crate::telemetry::Metrics;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// Every metric family.
    pub registry: Arc<Registry>,
    /// Readiness follows the first published snapshot.
    pub store: SnapshotStore,
    /// Metric handles (remote-write counters).
    pub metrics: Metrics,
    /// Where remote-written samples go, when remote write is enabled.
    pub series: Option<SeriesStore>,
    /// The current adaptive config (remote-write filters and limits).
    pub adaptive: watch::Receiver<Arc<AdaptiveConfig>>,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    let router = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    let router = if state.series.is_some() {
        // The handler enforces metrics.remote_write.max_body_bytes itself (and counts refusals).
        router
            .route("/api/v1/write", post(write))
            .layer(DefaultBodyLimit::disable())
    } else {
        router
    };
    router.with_state(state)
}

/// Prometheus remote-write 1.0 receiver (`vmagent -remoteWrite.url`, Prometheus `remote_write`).
async fn write(State(state): State<AdminState>, body: Body) -> (StatusCode, String) {
    let settings = state.adaptive.borrow().remote_write.clone();
    let (Some(series), Some(settings)) = (&state.series, settings) else {
        return (StatusCode::NOT_FOUND, "remote write is disabled\n".into());
    };
    let body = match axum::body::to_bytes(body, settings.max_body_bytes).await {
        Ok(body) => body,
        Err(_) => {
            state.metrics.refuse("remote_write_body");
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "body over metrics.remote_write.max_body_bytes ({} bytes) or unreadable\n",
                    settings.max_body_bytes
                ),
            );
        }
    };
    match remote_write::decode(&body) {
        Ok(request) => {
            let stats = series.ingest(request, &settings);
            remote_write::record(&state.metrics, stats);
            (StatusCode::NO_CONTENT, String::new())
        }
        Err(error) => {
            state
                .metrics
                .remote_write_samples
                .get_or_create(&crate::telemetry::ResultLabels {
                    result: "bad_request".into(),
                })
                .inc();
            tracing::warn!(%error, "remote-write request refused");
            (StatusCode::BAD_REQUEST, format!("{error}\n"))
        }
    }
}

async fn metrics_page(State(state): State<AdminState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("cannot encode metrics: {error}\n"),
        ),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, &'static str) {
    if state.store.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no snapshot published yet\n",
        )
    }
}
