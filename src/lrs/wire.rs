//! The LRS request as we decode it: the Node Envoy resends in every report is read once per
//! stream and skipped, without being parsed or copied, in every later report.
//!
//! Envoy 1.40 puts its full `Node` (about 61 KB with its extension list) in every
//! `LoadStatsRequest`. Decoding it with the generated message would allocate hundreds of strings
//! per report, a second; the stream's decoder ([`LrsDecoder`]) keeps one bit of state, and after
//! the first message decodes a message type that does not declare field 1, which prost skips in
//! one step (a length-delimited field is skipped by advancing past its length).
//!
//! With `send_all_clusters` a report also carries every other cluster the Envoy has (a sidecar:
//! every cluster istiod gave it, idle or not). So each `ClusterStats` is kept encoded (a slice of
//! the received buffer, not a copy) with only its names read ([`EncodedClusterStats`]); the
//! aggregation decodes in full only the clusters we serve.

use bytes::Bytes;
use envoy_types::pb::envoy::{
    config::endpoint::v3::ClusterStats, service::load_stats::v3::LoadStatsResponse,
};
use tonic::{
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
    Status,
};

/// The parts of `envoy.config.core.v3.Node` we keep: who is reporting and what it supports.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct NodeIdentity {
    /// `node.id`.
    #[prost(string, tag = "1")]
    pub id: String,
    /// `node.cluster`.
    #[prost(string, tag = "2")]
    pub cluster: String,
    /// `node.client_features` (`envoy.lrs.supports_send_all_clusters`, ...).
    #[prost(string, repeated, tag = "10")]
    pub client_features: Vec<String>,
}

/// A stream's first `LoadStatsRequest`: the node (its identity only) and any stats.
#[derive(Clone, PartialEq, prost::Message)]
struct FirstRequest {
    #[prost(message, optional, tag = "1")]
    node: Option<NodeIdentity>,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    cluster_stats: Vec<Bytes>,
}

/// Every later `LoadStatsRequest`: field 1 (the node) is not declared, so it is skipped.
#[derive(Clone, PartialEq, prost::Message)]
struct LaterRequest {
    #[prost(bytes = "bytes", repeated, tag = "2")]
    cluster_stats: Vec<Bytes>,
}

/// The names of a `ClusterStats`; its other fields are skipped.
#[derive(Clone, PartialEq, prost::Message)]
struct ClusterNames {
    #[prost(string, tag = "1")]
    cluster_name: String,
    #[prost(string, tag = "6")]
    cluster_service_name: String,
}

/// One `ClusterStats` of a report, still encoded, and where in it is the EDS resource name it
/// is about (read without allocating: a sidecar reports hundreds of clusters we do not serve).
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedClusterStats {
    bytes: Bytes,
    name: std::ops::Range<usize>,
}

impl EncodedClusterStats {
    /// Finds the names of an encoded `ClusterStats`.
    pub fn new(bytes: Bytes) -> Result<Self, prost::DecodeError> {
        match Self::find_name(&bytes) {
            Some(name) => Ok(Self { bytes, name }),
            None => {
                // Not well formed: prost says why. Should it read the bytes after all, the
                // cluster has no name we could serve.
                use prost::Message;
                ClusterNames::decode(bytes.clone())?;
                Ok(Self { bytes, name: 0..0 })
            }
        }
    }

    /// The byte range of `cluster_service_name` (field 6) when set, else of `cluster_name`
    /// (field 1), each the last one written, as protobuf reads repeated scalars; `None` when the
    /// bytes are not a well-formed message or a name is not UTF-8.
    fn find_name(bytes: &Bytes) -> Option<std::ops::Range<usize>> {
        use bytes::Buf;
        use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
        let total = bytes.len();
        let mut buf: &[u8] = bytes;
        let (mut cluster_name, mut service_name) = (0..0, 0..0);
        while buf.has_remaining() {
            let (tag, wire_type) = decode_key(&mut buf).ok()?;
            if wire_type == WireType::LengthDelimited && (tag == 1 || tag == 6) {
                let length = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
                if length > buf.len() {
                    return None;
                }
                let start = total - buf.len();
                std::str::from_utf8(&buf[..length]).ok()?;
                if tag == 1 {
                    cluster_name = start..start + length;
                } else {
                    service_name = start..start + length;
                }
                buf.advance(length);
            } else {
                skip_field(wire_type, tag, &mut buf, DecodeContext::default()).ok()?;
            }
        }
        Some(if service_name.is_empty() {
            cluster_name
        } else {
            service_name
        })
    }

    /// The cluster's EDS `service_name` when set (Istio's clusters set it), else its name.
    pub fn name(&self) -> &str {
        self.bytes
            .get(self.name.clone())
            .and_then(|name| std::str::from_utf8(name).ok())
            .unwrap_or_default()
    }

    /// Encodes `stats` (for tests and benchmarks).
    pub fn encode(stats: &ClusterStats) -> Self {
        use prost::Message;
        let bytes = Bytes::from(stats.encode_to_vec());
        let name = Self::find_name(&bytes).unwrap_or_default();
        Self { bytes, name }
    }

    /// The whole message.
    pub fn decode(&self) -> Result<ClusterStats, prost::DecodeError> {
        use prost::Message;
        ClusterStats::decode(self.bytes.clone())
    }
}

/// One decoded `envoy.service.load_stats.v3.LoadStatsRequest`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    /// The node's identity: only on the stream's first message.
    pub node: Option<NodeIdentity>,
    /// `cluster_stats` (field 2), still encoded.
    pub cluster_stats: Vec<EncodedClusterStats>,
}

/// Decodes `bytes` as a `LoadStatsRequest`; `first` says whether the node is read.
///
/// This is what [`LrsDecoder`] does with each message (public for the fuzz tests and the
/// parse-cost measurement).
pub fn decode_report(
    bytes: impl bytes::Buf,
    first: bool,
) -> Result<LoadReport, prost::DecodeError> {
    use prost::Message;
    let (node, encoded) = if first {
        let request = FirstRequest::decode(bytes)?;
        (request.node, request.cluster_stats)
    } else {
        (None, LaterRequest::decode(bytes)?.cluster_stats)
    };
    Ok(LoadReport {
        node,
        cluster_stats: encoded
            .into_iter()
            .map(EncodedClusterStats::new)
            .collect::<Result<_, _>>()?,
    })
}

/// The codec of the LRS service: our stateful decoder, prost encoding of the response.
#[derive(Debug, Default)]
pub struct LrsCodec;

/// Initial encode buffer: responses are a few bytes.
const ENCODE_BUFFER_BYTES: usize = 256;
/// Initial decode buffer: reports carry the node on the first message only after we decode it,
/// but Envoy still sends it every time, so the buffer grows to the report's size once and stays.
const DECODE_BUFFER_BYTES: usize = 8 * 1024;
/// Encoded bytes after which tonic hands the buffer to HTTP/2 (its default).
const YIELD_BYTES: usize = 32 * 1024;

impl Codec for LrsCodec {
    type Encode = LoadStatsResponse;
    type Decode = LoadReport;
    type Encoder = tonic_prost::ProstEncoder<LoadStatsResponse>;
    type Decoder = LrsDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(BufferSettings::new(ENCODE_BUFFER_BYTES, YIELD_BYTES))
    }

    fn decoder(&mut self) -> Self::Decoder {
        LrsDecoder::default()
    }
}

/// One stream's decoder: reads the node from the first message only.
#[derive(Debug, Default)]
pub struct LrsDecoder {
    node_read: bool,
}

impl Decoder for LrsDecoder {
    type Item = LoadReport;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        let report = decode_report(src, !self.node_read).map_err(|error| {
            Status::invalid_argument(format!("malformed LoadStatsRequest: {error}"))
        })?;
        self.node_read = true;
        Ok(Some(report))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(DECODE_BUFFER_BYTES, YIELD_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::{
        config::core::v3::{Extension, Node},
        service::load_stats::v3::LoadStatsRequest,
    };
    use prost::Message;

    fn request() -> LoadStatsRequest {
        LoadStatsRequest {
            node: Some(Node {
                id: "envoy-1".into(),
                cluster: "demo".into(),
                client_features: vec!["envoy.lrs.supports_send_all_clusters".into()],
                extensions: vec![Extension {
                    name: "envoy.filters.http.router".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            cluster_stats: vec![ClusterStats {
                cluster_name: "checkout".into(),
                total_dropped_requests: 3,
                ..Default::default()
            }],
        }
    }

    #[test]
    fn first_message_keeps_the_identity_later_ones_skip_the_node() {
        let bytes = request().encode_to_vec();
        let first = decode_report(bytes.as_slice(), true).expect("decodes");
        let node = first.node.clone().expect("node on the first message");
        assert_eq!(node.id, "envoy-1");
        assert_eq!(node.cluster, "demo");
        assert_eq!(
            node.client_features,
            vec!["envoy.lrs.supports_send_all_clusters"]
        );
        let decoded = |report: &LoadReport| -> Vec<ClusterStats> {
            report
                .cluster_stats
                .iter()
                .map(|encoded| encoded.decode().expect("decodes"))
                .collect()
        };
        assert_eq!(decoded(&first), request().cluster_stats);
        assert_eq!(first.cluster_stats[0].name(), "checkout");
        let later = decode_report(bytes.as_slice(), false).expect("decodes");
        assert_eq!(later.node, None);
        assert_eq!(decoded(&later), request().cluster_stats);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&[0x12, 0x05, 0x0a][..], &[0xff; 12][..], &[0x0a, 0x80][..]] {
            assert!(decode_report(bytes, true).is_err(), "{bytes:?}");
            assert!(decode_report(bytes, false).is_err(), "{bytes:?}");
        }
    }
}
