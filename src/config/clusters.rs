//! The `clusters:` section: static clusters and their endpoints, validated into the endpoints
//! served (addresses, ports, weights within what Envoy accepts per locality).

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use serde::Deserialize;

use super::{duration, problem, weighting::WeightingConfig, Problem};
use crate::model::{Endpoint, HealthStatus, Locality};

/// One `clusters[]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The EDS resource name Envoy asks for (`eds_cluster_config.service_name`, else the cluster
    /// name; Istio uses `outbound|PORT||HOST`).
    pub name: String,
    /// Kubernetes namespace, for `${namespace}` in queries and remote-write series selection.
    pub namespace: Option<String>,
    /// Container name, for `${container}`.
    pub container: Option<String>,
    /// Service name, for `${service}`.
    pub service: Option<String>,
    /// This cluster's tick (default: the global `tick`).
    pub tick: Option<duration::ConfigDuration>,
    /// Overrides of the global `weighting:` keys for this cluster.
    pub weighting: Option<WeightingConfig>,
    /// The cluster's endpoints.
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
}

/// One `clusters[].endpoints[]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// IPv4 or IPv6 address (EDS endpoints are addresses, not host names).
    pub address: String,
    /// TCP port, 1..65535.
    pub port: u32,
    /// Static `load_balancing_weight`, 1..2^32-1. Unset: the mean of the cluster's set weights,
    /// or 100 when none is set, so unset endpoints get an equal share.
    pub weight: Option<u64>,
    /// Pod name: the key that joins this endpoint with its metrics.
    pub pod: Option<String>,
    /// Node the pod runs on: a new pod on a node where the cluster was measured starts at the
    /// cost measured there (`latency`).
    pub node: Option<String>,
    /// Locality region.
    pub region: Option<String>,
    /// Locality zone.
    pub zone: Option<String>,
    /// Locality sub-zone.
    pub sub_zone: Option<String>,
    /// Health status sent to Envoy: `healthy` (default), `draining` or `unhealthy`.
    pub health: Option<String>,
}

/// Validates every cluster (names unique and not empty) and returns its endpoints, by name.
pub(super) fn validate(
    clusters: &[ClusterConfig],
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, Vec<Endpoint>> {
    let mut valid = BTreeMap::new();
    let mut first_index: HashMap<&str, usize> = HashMap::new();
    for (index, cluster) in clusters.iter().enumerate() {
        let field = format!("clusters[{index}]");
        if cluster.name.trim().is_empty() {
            problems.push(problem(format!("{field}.name"), "must not be empty"));
        } else if let Some(first) = first_index.get(cluster.name.as_str()) {
            problems.push(problem(
                format!("{field}.name"),
                format!(
                    "duplicate cluster name {:?} (first defined at clusters[{first}])",
                    cluster.name
                ),
            ));
        } else {
            first_index.insert(&cluster.name, index);
        }
        let endpoints = validate_endpoints(&field, cluster, problems);
        valid.insert(cluster.name.clone(), endpoints);
    }
    valid
}

fn validate_endpoints(
    cluster_field: &str,
    cluster: &ClusterConfig,
    problems: &mut Vec<Problem>,
) -> Vec<Endpoint> {
    let mut endpoints = Vec::with_capacity(cluster.endpoints.len());
    let mut seen: HashMap<(IpAddr, u16), usize> = HashMap::new();
    for (index, endpoint) in cluster.endpoints.iter().enumerate() {
        let field = format!("{cluster_field}.endpoints[{index}]");
        if let Some(valid) = validate_endpoint(&field, endpoint, problems) {
            let key = (valid.address, valid.port);
            if let Some(first) = seen.get(&key) {
                problems.push(problem(
                    field,
                    format!(
                        "duplicate endpoint {}:{} (first at {cluster_field}.endpoints[{first}])",
                        valid.address, valid.port
                    ),
                ));
            } else {
                seen.insert(key, index);
                endpoints.push(valid);
            }
        }
    }
    check_locality_totals(cluster_field, &endpoints, problems);
    endpoints
}

fn validate_endpoint(
    field: &str,
    endpoint: &EndpointConfig,
    problems: &mut Vec<Problem>,
) -> Option<Endpoint> {
    let before = problems.len();
    let address = endpoint.address.trim().parse::<IpAddr>().ok();
    if address.is_none() {
        problems.push(problem(
            format!("{field}.address"),
            format!(
                "expected an IPv4 or IPv6 address, got {:?}",
                endpoint.address
            ),
        ));
    }
    let port = u16::try_from(endpoint.port).ok().filter(|port| *port != 0);
    if port.is_none() {
        problems.push(problem(
            format!("{field}.port"),
            format!("expected 1..65535, got {}", endpoint.port),
        ));
    }
    let weight = match endpoint.weight {
        None => None,
        Some(weight) => match u32::try_from(weight) {
            Ok(weight) if weight >= 1 => Some(weight),
            _ => {
                problems.push(problem(
                    format!("{field}.weight"),
                    format!("expected 1..{}, got {weight}", u32::MAX),
                ));
                None
            }
        },
    };
    let health = match endpoint.health.as_deref() {
        None => Some(HealthStatus::Healthy),
        Some(text) => {
            let parsed = HealthStatus::parse(text);
            if parsed.is_none() {
                problems.push(problem(
                    format!("{field}.health"),
                    format!("expected healthy, draining or unhealthy, got {text:?}"),
                ));
            }
            parsed
        }
    };
    if problems.len() > before {
        return None;
    }
    Some(Endpoint {
        address: address?,
        port: port?,
        configured_weight: weight,
        pod: endpoint.pod.clone(),
        node: endpoint.node.clone().filter(|node| !node.trim().is_empty()),
        locality: Locality {
            region: endpoint.region.clone().unwrap_or_default(),
            zone: endpoint.zone.clone().unwrap_or_default(),
            sub_zone: endpoint.sub_zone.clone().unwrap_or_default(),
        },
        health: health?,
    })
}

fn check_locality_totals(cluster_field: &str, endpoints: &[Endpoint], problems: &mut Vec<Problem>) {
    let weights = crate::weighting::static_weights(endpoints);
    let mut totals: BTreeMap<&Locality, u64> = BTreeMap::new();
    for (endpoint, weight) in endpoints.iter().zip(&weights) {
        *totals.entry(&endpoint.locality).or_default() += u64::from(weight.weight);
    }
    for (locality, total) in totals {
        if total > u64::from(u32::MAX) {
            problems.push(problem(
                format!("{cluster_field}.endpoints"),
                format!(
                    "weights in locality {locality} add up to {total}; Envoy needs the sum below 2^32 ({})",
                    u64::from(u32::MAX) + 1
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::problem_lines as problems;

    #[test]
    fn locality_total_must_stay_below_two_to_the_32() {
        let found = problems(
            r#"
clusters:
  - name: big
    endpoints:
      - { address: 10.0.0.1, port: 80, weight: 4294967295, zone: a }
      - { address: 10.0.0.2, port: 80, weight: 1, zone: a }
      - { address: 10.0.0.3, port: 80, weight: 4294967295, zone: b }
"#,
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with(
                "clusters[0].endpoints: weights in locality zone=a add up to 4294967296"
            ),
            "{found:?}"
        );
    }
}
