//! The LRS request as we decode it: the Node Envoy resends in every report is read once per
//! stream and skipped, without being parsed or copied, in every later report.
//!
//! Envoy 1.40 puts its full `Node` (about 61 KB with its extension list) in every
//! `LoadStatsRequest`. Decoding it with the generated message would allocate hundreds of strings
//! per report, a second; the stream's decoder ([`LrsDecoder`]) keeps one bit of state, and after
//! the first message decodes a message type that does not declare field 1, which prost skips in
//! one step (a length-delimited field is skipped by advancing past its length).

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
    #[prost(message, repeated, tag = "2")]
    cluster_stats: Vec<ClusterStats>,
}

/// Every later `LoadStatsRequest`: field 1 (the node) is not declared, so it is skipped.
#[derive(Clone, PartialEq, prost::Message)]
struct LaterRequest {
    #[prost(message, repeated, tag = "2")]
    cluster_stats: Vec<ClusterStats>,
}

/// One decoded `envoy.service.load_stats.v3.LoadStatsRequest`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    /// The node's identity: only on the stream's first message.
    pub node: Option<NodeIdentity>,
    /// `cluster_stats` (field 2).
    pub cluster_stats: Vec<ClusterStats>,
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
    if first {
        let request = FirstRequest::decode(bytes)?;
        Ok(LoadReport {
            node: request.node,
            cluster_stats: request.cluster_stats,
        })
    } else {
        let request = LaterRequest::decode(bytes)?;
        Ok(LoadReport {
            node: None,
            cluster_stats: request.cluster_stats,
        })
    }
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
        let node = first.node.expect("node on the first message");
        assert_eq!(node.id, "envoy-1");
        assert_eq!(node.cluster, "demo");
        assert_eq!(
            node.client_features,
            vec!["envoy.lrs.supports_send_all_clusters"]
        );
        assert_eq!(first.cluster_stats, request().cluster_stats);
        let later = decode_report(bytes.as_slice(), false).expect("decodes");
        assert_eq!(later.node, None);
        assert_eq!(later.cluster_stats, request().cluster_stats);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&[0x12, 0x05, 0x0a][..], &[0xff; 12][..], &[0x0a, 0x80][..]] {
            assert!(decode_report(bytes, true).is_err(), "{bytes:?}");
            assert!(decode_report(bytes, false).is_err(), "{bytes:?}");
        }
    }
}
