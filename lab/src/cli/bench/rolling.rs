//! A rolling restart during a bench run: each pod replaced by a new one through the endpoint set.

use super::counters::{pod_counters, Stopped};
use super::{envoy_weights, write_server_config, RunContext, Stack};
use anyhow::Context;
use lab::bench::process::{get_ok, http, wait_for};
use std::time::Duration;
use tokio::time::Instant;

/// Longest wait for the endpoint set to reach every Envoy (a tick of the prod pipelines is
/// 10 s; the file is polled every 0.5 s).
const PROPAGATION: Duration = Duration::from_secs(30);

/// True when every Envoy's fleet cluster holds (`present`) or lacks `port`.
async fn every_envoy(admins: &[u16], port: u16, present: bool) -> Option<()> {
    for admin in admins {
        let weights = envoy_weights(*admin).await?;
        if weights.contains_key(&port) != present {
            return None;
        }
    }
    Some(())
}

/// Runs the scenario's rolling restart, if any: from its start, one step every `every` (or at
/// once when a step took longer), pod `i` is replaced by pod `initial + i`. A step waits for the
/// new pod to answer, adds it to the endpoint set and waits until every Envoy routes to it,
/// then removes the old pod and waits until no Envoy does, keeps its last counters and stops
/// it. Returns when it started and ended, from `start`.
pub(super) async fn restart(
    context: &RunContext,
    stack: &Stack,
    start: Instant,
    stopped: &Stopped,
) -> anyhow::Result<Option<(Duration, Duration)>> {
    let Some((at, every)) = context.rolling else {
        return Ok(None);
    };
    let file = stack
        .server_file
        .as_ref()
        .context("a rolling restart needs adaptive-eds serving the endpoint set")?;
    let admins: Vec<u16> = stack.envoys.iter().map(|envoy| envoy.admin).collect();
    let mut endpoints: Vec<usize> = (0..context.initial).collect();
    for step in 0..context.initial {
        let due = at + every * u32::try_from(step).context("too many pods")?;
        tokio::time::sleep_until(start + due).await;
        let (old, new) = (step, context.initial + step);
        let (old_port, new_port) = (context.ports[old], context.ports[new]);
        let (old_name, new_name) = (&context.pods[old].name, &context.pods[new].name);
        let ready = format!("http://127.0.0.1:{new_port}/metrics");
        wait_for(Duration::from_secs(10), &ready, || get_ok(&ready)).await?;
        endpoints.push(new);
        write_server_config(context, file, &endpoints)?;
        wait_for(
            PROPAGATION,
            &format!("every Envoy to route to {new_name}"),
            || every_envoy(&admins, new_port, true),
        )
        .await?;
        endpoints.retain(|index| *index != old);
        write_server_config(context, file, &endpoints)?;
        wait_for(
            PROPAGATION,
            &format!("every Envoy to drop {old_name}"),
            || every_envoy(&admins, old_port, false),
        )
        .await?;
        stopped.keep(&pod_counters(old_port).await?);
        let url = format!("http://127.0.0.1:{old_port}/admin/stop");
        http(hyper::Method::POST, &url, "")
            .await
            .with_context(|| format!("stopping {old_name}"))?;
        tracing::info!(old = %old_name, new = %new_name, "pod replaced");
    }
    Ok(Some((at, start.elapsed())))
}
