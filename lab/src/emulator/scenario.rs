//! Applies a scenario's timed slowdowns and failures to a running emulated fleet.

use super::RunningNode;
use crate::fleet::{Action, Failing, Scenario};
use tokio::time::Instant;

/// Applies each event at its time offset from `start`; returns when all are applied.
///
/// Load-factor events are only logged: the emulator serves load, it does not make it.
pub async fn run_scenario(nodes: Vec<RunningNode>, scenario: Scenario, start: Instant) {
    for event in scenario.events {
        tokio::time::sleep_until(start + event.at).await;
        match event.action {
            Action::SetSlowdown { pod, factor } => {
                match nodes.iter().find(|running| running.node.name() == pod) {
                    Some(running) => running.node.set_slowdown(factor),
                    None => tracing::warn!(%pod, "scenario names a pod that is not running"),
                }
            }
            Action::SetFailing {
                pod,
                ratio,
                after_ms,
            } => match nodes.iter().find(|running| running.node.name() == pod) {
                Some(running) => running.node.set_failing(Failing { ratio, after_ms }),
                None => tracing::warn!(%pod, "scenario names a pod that is not running"),
            },
            Action::RollingRestart { .. } => {
                tracing::info!(
                    "rolling restart: driven by `lab bench` (endpoint set and /admin/stop), ignored by the emulator"
                );
            }
            Action::SetLoadFactor { factor } => {
                tracing::info!(
                    factor,
                    "load factor event: up to the load generator, ignored by the emulator"
                );
            }
        }
    }
}
