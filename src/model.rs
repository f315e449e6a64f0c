//! The shared vocabulary: endpoints, localities, health and cluster updates.
//!
//! Sources produce these, weighting, snapshot and serving read them; no module imports a source
//! for its types.

use std::{
    fmt,
    net::IpAddr,
    time::{SystemTime, UNIX_EPOCH},
};

/// One backend address of a cluster, as a discovery source knows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// IP address Envoy connects to.
    pub address: IpAddr,
    /// TCP port.
    pub port: u16,
    /// Weight fixed by the source (static config); `None` lets weighting decide.
    pub configured_weight: Option<u32>,
    /// Pod name: the join key with metrics samples.
    pub pod: Option<String>,
    /// Name of the node the pod runs on (Kubernetes `nodeName`): pods of a cluster on one node
    /// run at that node's speed, so a new pod there starts at the cost measured on it.
    pub node: Option<String>,
    /// Envoy locality; the sum of weights is bounded per locality.
    pub locality: Locality,
    /// Health status to report to Envoy.
    pub health: HealthStatus,
}

/// Envoy's `Locality` (region, zone, sub-zone); empty strings when unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    /// Region, e.g. `eu-west-1`.
    pub region: String,
    /// Zone, e.g. `eu-west-1a`.
    pub zone: String,
    /// Sub-zone.
    pub sub_zone: String,
}

impl fmt::Display for Locality {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [
            ("region", &self.region),
            ("zone", &self.zone),
            ("sub_zone", &self.sub_zone),
        ];
        let mut wrote = false;
        for (key, value) in parts.iter().filter(|(_, value)| !value.is_empty()) {
            if wrote {
                write!(formatter, ",")?;
            }
            write!(formatter, "{key}={value}")?;
            wrote = true;
        }
        if !wrote {
            write!(formatter, "(none)")?;
        }
        Ok(())
    }
}

/// Health status as Envoy understands it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HealthStatus {
    /// Receives traffic.
    #[default]
    Healthy,
    /// Finishing in-flight work; Envoy sends no new requests.
    Draining,
    /// Receives no traffic.
    Unhealthy,
}

impl HealthStatus {
    /// Parses the config spelling (`healthy`, `draining`, `unhealthy`).
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "healthy" => Some(Self::Healthy),
            "draining" => Some(Self::Draining),
            "unhealthy" => Some(Self::Unhealthy),
            _ => None,
        }
    }
}

/// A change to one cluster's endpoints, always carrying the whole new set.
#[derive(Clone, Debug, PartialEq)]
pub enum ClusterUpdate {
    /// The cluster now has exactly these endpoints.
    Reset {
        /// EDS resource name.
        cluster: String,
        /// Every endpoint, in source order.
        endpoints: Vec<Endpoint>,
    },
    /// The cluster is gone.
    Removed {
        /// EDS resource name.
        cluster: String,
    },
}

/// Milliseconds since the UNIX epoch (0 before it): the unit of sample timestamps.
pub fn unix_millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
