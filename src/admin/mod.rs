//! The admin HTTP listener: Prometheus `/metrics`, `/healthz` (alive) and `/readyz` (serving).
//! Read-only; the remote-write receiver served on the same listener lives in `metrics::receiver`.

use std::sync::Arc;

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};
use prometheus_client::registry::Registry;

use crate::snapshot::SnapshotStore;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// Every metric family.
    pub registry: Arc<Registry>,
    /// Readiness follows the first published snapshot.
    pub store: SnapshotStore,
}

/// The admin routes (the server merges the remote-write receiver's in when it is enabled).
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
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
