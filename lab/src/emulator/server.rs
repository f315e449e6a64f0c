//! HTTP/1.1 routes of an emulated node: work, metrics and a slowdown knob.

use super::node::Node;
use axum::extract::State;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

/// Header Envoy parses for per-request ORCA load reports.
pub const ORCA_HEADER: HeaderName = HeaderName::from_static("endpoint-load-metrics");

/// Content type of the OpenMetrics text that prometheus-client writes.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Builds the router of one node: `GET /` does work, `GET /metrics` exposes metrics,
/// `POST /admin/slowdown` (body: a number) changes the node's speed.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/", get(work))
        .route("/metrics", get(metrics))
        .route("/admin/slowdown", post(set_slowdown))
        .with_state(node)
}

async fn work(State(node): State<Arc<Node>>) -> Response {
    match node.serve().await {
        Ok(answer) => {
            let mut response = (StatusCode::OK, "ok\n").into_response();
            let header_value = answer
                .orca_header
                .and_then(|text| HeaderValue::from_str(&text).ok());
            if let Some(value) = header_value {
                response.headers_mut().insert(ORCA_HEADER, value);
            }
            response
        }
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response(),
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    match node.metrics().encode() {
        Ok(text) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

async fn set_slowdown(State(node): State<Arc<Node>>, body: String) -> Response {
    match body.trim().parse::<f64>() {
        Ok(factor) if factor.is_finite() && factor > 0.0 => {
            node.set_slowdown(factor);
            (StatusCode::OK, format!("{factor}\n")).into_response()
        }
        _ => (
            StatusCode::BAD_REQUEST,
            format!("body must be a positive number, got {:?}\n", body.trim()),
        )
            .into_response(),
    }
}
