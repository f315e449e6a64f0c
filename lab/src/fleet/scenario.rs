//! Scenarios: timed changes (node slowdowns, offered load) applied during a run.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A named list of timed events.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Human-readable name printed in reports.
    pub name: String,
    /// Events, applied in time order.
    #[serde(default)]
    pub events: Vec<Event>,
}

/// One change at a time offset from the start of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Offset from the start of the run, such as `30s`.
    #[serde(with = "humantime_serde")]
    pub at: Duration,
    /// What changes.
    pub action: Action,
}

/// A change to the fleet or to the offered load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Multiplies every service time of `pod` by `factor` (1.0 restores normal speed).
    SetSlowdown {
        /// Pod name, `<group>-<index>`.
        pod: String,
        /// Service-time multiplier, > 0.
        factor: f64,
    },
    /// From now on `pod` answers a share `ratio` of its requests with `503` after `after_ms`
    /// (default 0.2 ms) instead of serving them; ratio 0 recovers.
    SetFailing {
        /// Pod name, `<group>-<index>`.
        pod: String,
        /// Share of requests in [0, 1] answered with an error.
        ratio: f64,
        /// Time a failed request holds its slot, milliseconds (default 0.2).
        #[serde(default = "super::default_fail_after_ms")]
        after_ms: f64,
    },
    /// Multiplies the base offered load (requests per second) by `factor`.
    SetLoadFactor {
        /// Load multiplier, > 0.
        factor: f64,
    },
    /// Replaces every pod, one by one in fleet order, one step every `every`: pod
    /// `<group>-<i>` by a new pod `<group>-v2-<i>` (new name, new port). Each step waits for
    /// the new pod to be ready and in every Envoy, then removes the old one from the endpoint
    /// set and stops it once no Envoy routes to it (as a rollout with a preStop hook does).
    RollingRestart {
        /// Time between the starts of two replacements, such as `2s`.
        #[serde(with = "humantime_serde")]
        every: Duration,
        /// The node each new pod runs on, as the control plane is told (`node` of the endpoint).
        #[serde(default)]
        node: RestartNode,
    },
}

/// Where a rolling restart's new pods run. Every pod of the lab runs on a node of its own (its
/// speed is the node's); what changes is whether the control plane has measured that node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartNode {
    /// On a node never measured (`node-<new pod>`): as when a rollout lands on fresh nodes.
    #[default]
    New,
    /// On the node of the pod it replaces (`node-<old pod>`): as when a rollout reuses the
    /// nodes the cluster already runs on.
    Same,
}

/// Suffix of the replacement group of a rolling restart: `fib25-0` is replaced by `fib25-v2-0`.
pub const REPLACEMENT_SUFFIX: &str = "-v2";

impl Scenario {
    /// Load multiplier in force at `now` (1.0 before any load event).
    pub fn load_factor_at(&self, now: Duration) -> f64 {
        self.events
            .iter()
            .rev()
            .filter(|event| event.at <= now)
            .filter_map(|event| match event.action {
                Action::SetLoadFactor { factor } => Some(factor),
                Action::SetSlowdown { .. }
                | Action::SetFailing { .. }
                | Action::RollingRestart { .. } => None,
            })
            .next()
            .unwrap_or(1.0)
    }

    /// The same scenario with every event `by` later (for runs with a longer warm-up than the
    /// one its times were written for).
    pub fn shifted(&self, by: Duration) -> Scenario {
        let mut scenario = self.clone();
        for event in &mut scenario.events {
            event.at += by;
        }
        scenario
    }

    /// Highest load multiplier of the run (1.0 without load events or when they only lower it).
    pub fn peak_load_factor(&self) -> f64 {
        self.events
            .iter()
            .filter_map(|event| match event.action {
                Action::SetLoadFactor { factor } => Some(factor),
                Action::SetSlowdown { .. }
                | Action::SetFailing { .. }
                | Action::RollingRestart { .. } => None,
            })
            .fold(1.0, f64::max)
    }

    /// When the rolling restart starts and the time between its steps, if the scenario has one.
    pub fn rolling_restart(&self) -> Option<(Duration, Duration)> {
        self.events.iter().find_map(|event| match event.action {
            Action::RollingRestart { every, .. } => Some((event.at, every)),
            _ => None,
        })
    }

    /// Where the rolling restart's new pods run (`New` without a rolling restart).
    pub fn restart_node(&self) -> RestartNode {
        self.events
            .iter()
            .find_map(|event| match event.action {
                Action::RollingRestart { node, .. } => Some(node),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// Times at which the offered load changes, in order.
    pub fn load_change_times(&self) -> Vec<Duration> {
        self.events
            .iter()
            .filter(|event| matches!(event.action, Action::SetLoadFactor { .. }))
            .map(|event| event.at)
            .collect()
    }
}
