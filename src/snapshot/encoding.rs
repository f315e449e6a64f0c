//! Endpoint sets encoded once, so that each new set of weights is encoded by copying bytes.

use std::collections::BTreeMap;

use envoy_types::pb::{
    envoy::config::{
        core::v3::{self as core, address, socket_address},
        endpoint::v3::{self as endpoint, lb_endpoint},
    },
    google::protobuf::UInt32Value,
};
use prost::{
    encoding::{encode_key, encode_varint, encoded_len_varint, key_len, message, WireType},
    Message,
};

use crate::model::{Endpoint, HealthStatus, Locality};

/// Field number of `ClusterLoadAssignment.endpoints`.
const ENDPOINTS_FIELD: u32 = 2;
/// Field number of `LocalityLbEndpoints.lb_endpoints`.
const LB_ENDPOINTS_FIELD: u32 = 2;
/// Field number of `LbEndpoint.load_balancing_weight`.
const WEIGHT_FIELD: u32 = 4;

/// One cluster's `ClusterLoadAssignment` with every part but the weights already encoded.
///
/// Built once per endpoint set; [`EncodedEndpoints::encode`] then writes the assignment for any
/// weights by copying bytes, with no message built and no address formatted on the hot path.
/// The bytes are exactly those prost encodes for the same message, so versions (hashes of the
/// bytes) are the same as when the whole message is built and encoded.
#[derive(Clone, Debug, Default)]
pub struct EncodedEndpoints {
    /// EDS resource name.
    cluster_name: String,
    /// The encoded `cluster_name` field.
    name_field: Vec<u8>,
    /// One `LocalityLbEndpoints` per locality, in `Locality` order.
    groups: Vec<LocalityGroup>,
}

/// The endpoints of one locality, in source order.
#[derive(Clone, Debug)]
struct LocalityGroup {
    /// The encoded `locality` field of `LocalityLbEndpoints`.
    locality_field: Vec<u8>,
    /// Its endpoints.
    members: Vec<EncodedEndpoint>,
}

/// One `LbEndpoint` without its weight.
#[derive(Clone, Debug)]
struct EncodedEndpoint {
    /// Position of the endpoint in the source order (the index of its weight).
    index: usize,
    /// Every field of the `LbEndpoint` but the weight. Prost writes fields in field-number
    /// order and the weight (4) has the highest number set, so it goes right after these.
    fields: Box<[u8]>,
}

impl EncodedEndpoints {
    /// Encodes the parts of `endpoints` that do not change from tick to tick.
    pub fn new<'a>(cluster_name: &str, endpoints: impl IntoIterator<Item = &'a Endpoint>) -> Self {
        let mut localities: BTreeMap<&Locality, Vec<EncodedEndpoint>> = BTreeMap::new();
        for (index, endpoint) in endpoints.into_iter().enumerate() {
            localities
                .entry(&endpoint.locality)
                .or_default()
                .push(EncodedEndpoint::new(index, endpoint));
        }
        let name_field = endpoint::ClusterLoadAssignment {
            cluster_name: cluster_name.into(),
            ..Default::default()
        }
        .encode_to_vec();
        let groups = localities
            .into_iter()
            .map(|(locality, members)| LocalityGroup {
                locality_field: endpoint::LocalityLbEndpoints {
                    locality: Some(locality_message(locality)),
                    ..Default::default()
                }
                .encode_to_vec(),
                members,
            })
            .collect();
        Self {
            cluster_name: cluster_name.into(),
            name_field,
            groups,
        }
    }

    /// The EDS resource name.
    pub fn cluster_name(&self) -> &str {
        &self.cluster_name
    }

    /// The encoded `ClusterLoadAssignment` with `weights` (index-aligned with the endpoints;
    /// a missing or zero weight is served as 1).
    pub fn encode(&self, weights: &[u32]) -> Vec<u8> {
        let lengths: Vec<usize> = self
            .groups
            .iter()
            .map(|group| group.encoded_len(weights))
            .collect();
        let total = self.name_field.len()
            + lengths
                .iter()
                .map(|length| delimited_len(ENDPOINTS_FIELD, *length))
                .sum::<usize>();
        let mut buffer = Vec::with_capacity(total);
        buffer.extend_from_slice(&self.name_field);
        for (group, length) in self.groups.iter().zip(lengths) {
            encode_key(ENDPOINTS_FIELD, WireType::LengthDelimited, &mut buffer);
            encode_varint(length as u64, &mut buffer);
            group.encode(weights, &mut buffer);
        }
        buffer
    }
}

impl LocalityGroup {
    /// Length of the encoded `LocalityLbEndpoints`.
    fn encoded_len(&self, weights: &[u32]) -> usize {
        self.locality_field.len()
            + self
                .members
                .iter()
                .map(|member| delimited_len(LB_ENDPOINTS_FIELD, member.encoded_len(weights)))
                .sum::<usize>()
    }

    /// Writes the encoded `LocalityLbEndpoints` (without its own key and length).
    fn encode(&self, weights: &[u32], buffer: &mut Vec<u8>) {
        buffer.extend_from_slice(&self.locality_field);
        for member in &self.members {
            let weight = weight_message(weights, member.index);
            let length = member.fields.len() + message::encoded_len(WEIGHT_FIELD, &weight);
            encode_key(LB_ENDPOINTS_FIELD, WireType::LengthDelimited, buffer);
            encode_varint(length as u64, buffer);
            buffer.extend_from_slice(&member.fields);
            message::encode(WEIGHT_FIELD, &weight, buffer);
        }
    }
}

impl EncodedEndpoint {
    /// Encodes every field of `endpoint`'s `LbEndpoint` but the weight.
    fn new(index: usize, endpoint: &Endpoint) -> Self {
        let fields = endpoint::LbEndpoint {
            load_balancing_weight: None,
            ..lb_endpoint_message(endpoint, 1)
        }
        .encode_to_vec()
        .into_boxed_slice();
        Self { index, fields }
    }

    /// Length of the encoded `LbEndpoint` with its weight.
    fn encoded_len(&self, weights: &[u32]) -> usize {
        self.fields.len() + message::encoded_len(WEIGHT_FIELD, &weight_message(weights, self.index))
    }
}

/// The served weight of endpoint `index` (at least 1).
fn weight_message(weights: &[u32], index: usize) -> UInt32Value {
    UInt32Value {
        value: weights.get(index).copied().unwrap_or(1).max(1),
    }
}

/// Length of a length-delimited field whose content is `length` bytes long.
fn delimited_len(field: u32, length: usize) -> usize {
    key_len(field) + encoded_len_varint(length as u64) + length
}

/// Envoy's `Locality` for ours.
pub(crate) fn locality_message(locality: &Locality) -> core::Locality {
    core::Locality {
        region: locality.region.clone(),
        zone: locality.zone.clone(),
        sub_zone: locality.sub_zone.clone(),
    }
}

/// The whole `LbEndpoint` message of `endpoint` served with `weight` (at least 1).
pub(crate) fn lb_endpoint_message(endpoint: &Endpoint, weight: u32) -> endpoint::LbEndpoint {
    let socket = core::SocketAddress {
        address: endpoint.address.to_string(),
        port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
            endpoint.port,
        ))),
        ..Default::default()
    };
    endpoint::LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(endpoint::Endpoint {
            address: Some(core::Address {
                address: Some(address::Address::SocketAddress(socket)),
            }),
            hostname: endpoint.pod.clone().unwrap_or_default(),
            ..Default::default()
        })),
        health_status: health_status(endpoint.health) as i32,
        load_balancing_weight: Some(UInt32Value {
            value: weight.max(1),
        }),
        ..Default::default()
    }
}

fn health_status(health: HealthStatus) -> core::HealthStatus {
    match health {
        HealthStatus::Healthy => core::HealthStatus::Healthy,
        HealthStatus::Draining => core::HealthStatus::Draining,
        HealthStatus::Unhealthy => core::HealthStatus::Unhealthy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The assignment built as a whole message, as prost encodes it: the reference.
    fn reference(name: &str, endpoints: &[Endpoint], weights: &[u32]) -> Vec<u8> {
        let mut localities: BTreeMap<&Locality, Vec<endpoint::LbEndpoint>> = BTreeMap::new();
        for (index, endpoint) in endpoints.iter().enumerate() {
            let weight = weights.get(index).copied().unwrap_or(1);
            localities
                .entry(&endpoint.locality)
                .or_default()
                .push(lb_endpoint_message(endpoint, weight));
        }
        endpoint::ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: localities
                .into_iter()
                .map(|(locality, lb_endpoints)| endpoint::LocalityLbEndpoints {
                    locality: Some(locality_message(locality)),
                    lb_endpoints,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn endpoint_strategy() -> impl Strategy<Value = Endpoint> {
        (
            any::<[u8; 4]>(),
            any::<bool>(),
            any::<u16>(),
            proptest::option::of("[a-z0-9-]{0,200}"),
            "(|a|b)",
            "(|z1|zone-two)",
            0..3u8,
        )
            .prop_map(|(octets, six, port, pod, region, zone, health)| Endpoint {
                address: if six {
                    std::net::IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, u16::from(octets[0]), 1])
                } else {
                    std::net::IpAddr::from(octets)
                },
                port,
                configured_weight: None,
                pod,
                node: None,
                locality: Locality {
                    region,
                    zone,
                    sub_zone: String::new(),
                },
                health: match health {
                    0 => HealthStatus::Healthy,
                    1 => HealthStatus::Draining,
                    _ => HealthStatus::Unhealthy,
                },
            })
    }

    proptest! {
        #[test]
        fn bytes_are_exactly_what_prost_encodes(
            name in "[a-z|0-9]{0,40}",
            endpoints in proptest::collection::vec(endpoint_strategy(), 0..40),
            weights in proptest::collection::vec(any::<u32>(), 0..45),
        ) {
            let encoded = EncodedEndpoints::new(&name, &endpoints);
            prop_assert_eq!(encoded.encode(&weights), reference(&name, &endpoints, &weights));
        }
    }
}
