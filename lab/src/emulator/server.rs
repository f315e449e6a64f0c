//! HTTP/1.1 routes of an emulated node: work, metrics, slowdown and failure knobs, stop.

use super::node::Node;
use crate::fleet::{Failing, DEFAULT_FAIL_AFTER_MS};
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
/// `POST /admin/slowdown` (body: a number) changes the node's speed, `POST /admin/failing`
/// (body: `ratio [after_ms]`) makes it answer that share of its requests with a fast `503`,
/// `POST /admin/stop` stops the pod's server (open requests finish; then connections are refused).
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/", get(work))
        .route("/metrics", get(metrics))
        .route("/admin/slowdown", post(set_slowdown))
        .route("/admin/failing", post(set_failing))
        .route("/admin/stop", post(stop))
        .with_state(node)
}

async fn stop(State(node): State<Arc<Node>>) -> Response {
    node.stop();
    (
        StatusCode::OK,
        "stopping
",
    )
        .into_response()
}

async fn work(State(node): State<Arc<Node>>) -> Response {
    match node.serve().await {
        Ok(answer) => {
            let mut response = if answer.failed {
                (StatusCode::SERVICE_UNAVAILABLE, "failing\n").into_response()
            } else {
                (StatusCode::OK, "ok\n").into_response()
            };
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

/// Parses `ratio [after_ms]` (after_ms defaults to 0.2) into a validated failure.
fn parse_failing(body: &str) -> Result<Failing, String> {
    let mut words = body.split_whitespace();
    let number = |word: Option<&str>, name: &str| -> Result<Option<f64>, String> {
        word.map(|word| {
            word.parse::<f64>()
                .map_err(|_| format!("{name} must be a number, got {word:?}"))
        })
        .transpose()
    };
    let ratio = number(words.next(), "ratio")?.ok_or("body must be `ratio [after_ms]`")?;
    let after_ms = number(words.next(), "after_ms")?.unwrap_or(DEFAULT_FAIL_AFTER_MS);
    if words.next().is_some() {
        return Err("body must be `ratio [after_ms]`".to_owned());
    }
    let failing = Failing { ratio, after_ms };
    failing.validate()?;
    Ok(failing)
}

async fn set_failing(State(node): State<Arc<Node>>, body: String) -> Response {
    match parse_failing(&body) {
        Ok(failing) => {
            node.set_failing(failing);
            (
                StatusCode::OK,
                format!("{} {}\n", failing.ratio, failing.after_ms),
            )
                .into_response()
        }
        Err(message) => (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_bodies_parse_and_bad_ones_are_refused() {
        assert_eq!(
            parse_failing("0.9"),
            Ok(Failing {
                ratio: 0.9,
                after_ms: DEFAULT_FAIL_AFTER_MS
            })
        );
        assert_eq!(parse_failing(" 0 1.5\n").map(|f| f.after_ms), Ok(1.5));
        for bad in ["", "x", "1.1", "0.5 0", "0.5 1 2", "NaN"] {
            assert!(parse_failing(bad).is_err(), "{bad:?}");
        }
    }
}
