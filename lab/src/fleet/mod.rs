//! Fleet and scenario descriptions read from YAML files.

mod load;
mod scenario;

pub use load::{load_fleet, load_scenario, parse_fleet, parse_scenario, FleetError};
pub use scenario::{Action, Event, RestartNode, Scenario, REPLACEMENT_SUFFIX};

/// Default time a failed request holds its worker slot before the error answer, milliseconds:
/// a fast failure (a refused dependency, an open circuit breaker) costs a fraction of a request.
pub const DEFAULT_FAIL_AFTER_MS: f64 = 0.2;

use crate::service_time::ServiceTimeSpec;
use serde::{Deserialize, Serialize};

/// A set of pods, described as groups of identical replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// Kubernetes-style namespace put on every metric, like cAdvisor does.
    pub namespace: String,
    /// When true, every emulated response carries the ORCA `endpoint-load-metrics` header.
    #[serde(default)]
    pub orca: bool,
    /// When true (and `orca`), the header also carries `eps`, errors per second, which Envoy's
    /// CSWRR turns into a penalty (`error_utilization_penalty`, default 1.0). Off by default:
    /// most ORCA middlewares report CPU and request rate only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub orca_eps: bool,
    /// Groups of identical pods.
    pub groups: Vec<Group>,
}

/// A group of identical pods named `<name>-<index>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Prefix of the pod names in this group.
    pub name: String,
    /// How many pods the group has.
    pub replicas: u32,
    /// Worker slots per pod (requests served at the same time).
    pub cores: u32,
    /// Container label value used in metrics (defaults to `app`).
    #[serde(default = "default_container")]
    pub container: String,
    /// Time one request holds a worker slot.
    pub service_time: ServiceTimeSpec,
    /// Optional fast failure of every pod of the group from the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing: Option<Failing>,
}

/// A pod that answers a share of its requests with `503` after a short time instead of
/// serving them: the failure that looks like the cheapest pod in the fleet when the control
/// plane reads only CPU per request.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failing {
    /// Share of requests in [0, 1] answered with an error.
    pub ratio: f64,
    /// Time a failed request holds its worker slot before the answer, milliseconds (> 0).
    #[serde(default = "default_fail_after_ms")]
    pub after_ms: f64,
}

fn default_fail_after_ms() -> f64 {
    DEFAULT_FAIL_AFTER_MS
}

impl Failing {
    /// No failure at all.
    pub const NONE: Failing = Failing {
        ratio: 0.0,
        after_ms: DEFAULT_FAIL_AFTER_MS,
    };

    /// Checks the numbers, so sampling never sees a ratio outside [0, 1] or a bad time.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.ratio) {
            return Err(format!("ratio must be in [0, 1], got {}", self.ratio));
        }
        if !(self.after_ms.is_finite() && self.after_ms > 0.0) {
            return Err(format!("after_ms must be > 0, got {}", self.after_ms));
        }
        Ok(())
    }
}

fn default_container() -> String {
    "app".to_owned()
}

/// One pod of a fleet, with the group's settings resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Pod {
    /// Unique pod name, `<group>-<index>`.
    pub name: String,
    /// Container label value.
    pub container: String,
    /// Worker slots.
    pub cores: u32,
    /// Service-time distribution.
    pub service_time: ServiceTimeSpec,
    /// Fast failure at the start ([`Failing::NONE`] when the group has none).
    pub failing: Failing,
}

impl Fleet {
    /// The same fleet with every service time (and failure time) multiplied by `factor`.
    pub fn scaled(&self, factor: f64) -> Fleet {
        let mut fleet = self.clone();
        for group in &mut fleet.groups {
            group.service_time.mean_ms *= factor;
            if let Some(failing) = &mut group.failing {
                failing.after_ms *= factor;
            }
        }
        fleet
    }

    /// The fleet followed by a copy of each group named `<group>-v2`: the pods that replace
    /// the originals in a rolling restart (the replacement of pod `i` of [`Fleet::pods`] is pod
    /// `i + n` of the result's, `n` the original count).
    pub fn with_replacements(&self) -> Fleet {
        let mut fleet = self.clone();
        fleet.groups.extend(self.groups.iter().map(|group| Group {
            name: format!("{}{REPLACEMENT_SUFFIX}", group.name),
            ..group.clone()
        }));
        fleet
    }

    /// Expands the groups into their pods, in file order.
    pub fn pods(&self) -> Vec<Pod> {
        self.groups
            .iter()
            .flat_map(|group| {
                (0..group.replicas).map(move |index| Pod {
                    name: format!("{}-{index}", group.name),
                    container: group.container.clone(),
                    cores: group.cores,
                    service_time: group.service_time,
                    failing: group.failing.unwrap_or(Failing::NONE),
                })
            })
            .collect()
    }
}
