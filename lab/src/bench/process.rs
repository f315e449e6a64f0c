//! Child processes of a bench run (stopped on drop), their CPU time, and small HTTP helpers:
//! the workspace's `harness` crate, with the bench's slower polling.

use std::future::Future;
use std::time::Duration;

pub use harness::{cpu_seconds, free_port, get_ok, http, machine_busy_seconds, Process};

/// Between two checks: some waits (a rolling restart reaching every Envoy) poll Envoy's
/// `/clusters` while it carries the measured load.
const POLL: Duration = Duration::from_millis(200);

/// Polls `check` every 200 ms until it gives a value, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    harness::wait_for_every(POLL, timeout, what, check).await
}
