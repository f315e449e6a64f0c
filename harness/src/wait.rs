//! Bounded waits: poll a check until it gives a value or a deadline passes.

use anyhow::bail;
use std::future::Future;
use std::time::{Duration, Instant};

/// Between two checks: short next to every readiness the tests and the bench wait for.
const POLL: Duration = Duration::from_millis(100);

/// Polls `check` every 100 ms until it gives a value, or fails after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for_every(POLL, timeout, what, check).await
}

/// As [`wait_for`], checking every `interval`: for checks that cost the process they ask
/// (Envoy's `/clusters` while it carries measured load).
pub async fn wait_for_every<T, F, Fut>(
    interval: Duration,
    timeout: Duration,
    what: &str,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(interval).await;
    }
}

/// Waits until a GET of `url` answers 200; its body.
pub async fn wait_ok(timeout: Duration, what: &str, url: &str) -> anyhow::Result<String> {
    wait_for(timeout, what, || crate::http::get_ok(url)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gives_the_first_value() {
        let mut calls = 0;
        let value = wait_for(Duration::from_secs(5), "the third call", || {
            calls += 1;
            let ready = calls == 3;
            async move { ready.then_some(calls) }
        })
        .await
        .unwrap();
        assert_eq!(value, 3);
    }

    #[tokio::test]
    async fn fails_after_the_timeout_naming_what() {
        let error = wait_for(Duration::from_millis(50), "nothing", || async {
            None::<()>
        })
        .await
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "timed out after 50ms waiting for nothing"
        );
    }
}
