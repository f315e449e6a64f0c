//! The remote-write HTTP endpoint (`POST /api/v1/write`): Prometheus remote-write 1.0 from
//! `vmagent -remoteWrite.url` or Prometheus `remote_write`, served on the admin listener.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{DefaultBodyLimit, State},
    http::StatusCode,
    routing::post,
    Router,
};
use tokio::sync::watch;

use super::remote_write::{self, SeriesStore};
use crate::config::adaptive::AdaptiveConfig;
use crate::telemetry::Metrics;

/// What the receiver reads and writes.
#[derive(Clone)]
pub struct ReceiverState {
    /// Metric handles (remote-write counters, refusals).
    pub metrics: Metrics,
    /// Where remote-written samples go.
    pub series: SeriesStore,
    /// The current adaptive config (remote-write filters and limits).
    pub adaptive: watch::Receiver<Arc<AdaptiveConfig>>,
}

/// The receiver's route, to merge into the admin listener's router.
pub fn router(state: ReceiverState) -> Router {
    // The handler enforces metrics.remote_write.max_body_bytes itself (and counts refusals).
    Router::new()
        .route("/api/v1/write", post(write))
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// Prometheus remote-write 1.0 receiver (`vmagent -remoteWrite.url`, Prometheus `remote_write`).
async fn write(State(state): State<ReceiverState>, body: Body) -> (StatusCode, String) {
    let settings = state.adaptive.borrow().remote_write.clone();
    let (series, Some(settings)) = (&state.series, settings) else {
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
