//! Fleet and scenario descriptions read from YAML files.

mod load;
mod scenario;

pub use load::{load_fleet, load_scenario, parse_fleet, parse_scenario, FleetError};
pub use scenario::{Action, Event, Scenario};

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
}

impl Fleet {
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
                })
            })
            .collect()
    }
}
