//! Discovery responses that write pre-encoded, shared resources straight onto the wire.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};

/// A `envoy.service.discovery.v3.DiscoveryResponse` (state of the world) whose resources are
/// `google.protobuf.Any` messages encoded once per version and shared by every stream.
///
/// Encoding produces exactly the bytes of the generated `DiscoveryResponse`, so any xDS client
/// decodes it as usual. It is encode-only: decoding skips every field (no server reads it back).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SotwResponse {
    /// `version_info` (field 1).
    pub version_info: String,
    /// Encoded `Any` messages (field 2).
    pub resources: Vec<Bytes>,
    /// `type_url` (field 4).
    pub type_url: String,
    /// `nonce` (field 5).
    pub nonce: String,
}

/// A `envoy.service.discovery.v3.DeltaDiscoveryResponse` whose resources are encoded
/// `envoy.service.discovery.v3.Resource` messages shared by every stream.
///
/// Encode-only, like [`SotwResponse`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeltaResponse {
    /// `system_version_info` (field 1).
    pub system_version_info: String,
    /// Encoded `Resource` messages (field 2).
    pub resources: Vec<Bytes>,
    /// `type_url` (field 4).
    pub type_url: String,
    /// `nonce` (field 5).
    pub nonce: String,
    /// `removed_resources` (field 6).
    pub removed_resources: Vec<String>,
}

fn encoded_bytes_len(tag: u32, items: &[Bytes]) -> usize {
    items
        .iter()
        .map(|item| {
            encoding::key_len(tag) + encoding::encoded_len_varint(item.len() as u64) + item.len()
        })
        .sum()
}

fn encode_bytes(tag: u32, items: &[Bytes], buf: &mut impl BufMut) {
    for item in items {
        encoding::encode_key(tag, WireType::LengthDelimited, buf);
        encoding::encode_varint(item.len() as u64, buf);
        buf.put_slice(item);
    }
}

fn encode_string_if_set(tag: u32, value: &String, buf: &mut impl BufMut) {
    if !value.is_empty() {
        encoding::string::encode(tag, value, buf);
    }
}

fn string_len_if_set(tag: u32, value: &String) -> usize {
    if value.is_empty() {
        0
    } else {
        encoding::string::encoded_len(tag, value)
    }
}

impl prost::Message for SotwResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encode_string_if_set(1, &self.version_info, buf);
        encode_bytes(2, &self.resources, buf);
        encode_string_if_set(4, &self.type_url, buf);
        encode_string_if_set(5, &self.nonce, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        string_len_if_set(1, &self.version_info)
            + encoded_bytes_len(2, &self.resources)
            + string_len_if_set(4, &self.type_url)
            + string_len_if_set(5, &self.nonce)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

impl prost::Message for DeltaResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encode_string_if_set(1, &self.system_version_info, buf);
        encode_bytes(2, &self.resources, buf);
        encode_string_if_set(4, &self.type_url, buf);
        encode_string_if_set(5, &self.nonce, buf);
        encoding::string::encode_repeated(6, &self.removed_resources, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        string_len_if_set(1, &self.system_version_info)
            + encoded_bytes_len(2, &self.resources)
            + string_len_if_set(4, &self.type_url)
            + string_len_if_set(5, &self.nonce)
            + encoding::string::encoded_len_repeated(6, &self.removed_resources)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3 as discovery;
    use prost::Message;

    fn any(value: &[u8]) -> envoy_types::pb::google::protobuf::Any {
        envoy_types::pb::google::protobuf::Any {
            type_url: "type.googleapis.com/example".into(),
            value: value.to_vec(),
        }
    }

    #[test]
    fn sotw_response_is_the_generated_message_on_the_wire() {
        let ours = SotwResponse {
            version_info: "v1".into(),
            resources: vec![
                Bytes::from(any(b"one").encode_to_vec()),
                Bytes::from(any(b"").encode_to_vec()),
            ],
            type_url: "type.googleapis.com/example".into(),
            nonce: "7".into(),
        };
        let decoded = discovery::DiscoveryResponse::decode(ours.encode_to_vec().as_slice())
            .expect("our bytes decode as a DiscoveryResponse");
        assert_eq!(decoded.version_info, "v1");
        assert_eq!(decoded.resources, vec![any(b"one"), any(b"")]);
        assert_eq!(decoded.type_url, "type.googleapis.com/example");
        assert_eq!(decoded.nonce, "7");
        assert_eq!(ours.encoded_len(), ours.encode_to_vec().len());
    }

    #[test]
    fn delta_response_is_the_generated_message_on_the_wire() {
        let resource = discovery::Resource {
            name: "checkout".into(),
            version: "abc".into(),
            resource: Some(any(b"payload")),
            ..Default::default()
        };
        let ours = DeltaResponse {
            system_version_info: "s1".into(),
            resources: vec![Bytes::from(resource.encode_to_vec())],
            type_url: "type.googleapis.com/example".into(),
            nonce: "3".into(),
            removed_resources: vec!["gone".into(), "also-gone".into()],
        };
        let decoded = discovery::DeltaDiscoveryResponse::decode(ours.encode_to_vec().as_slice())
            .expect("our bytes decode as a DeltaDiscoveryResponse");
        assert_eq!(decoded.system_version_info, "s1");
        assert_eq!(decoded.resources, vec![resource]);
        assert_eq!(decoded.nonce, "3");
        assert_eq!(decoded.removed_resources, vec!["gone", "also-gone"]);
        assert_eq!(ours.encoded_len(), ours.encode_to_vec().len());
    }
}

/// The codec of our discovery services: prost encoding with small initial buffers.
///
/// tonic keeps one encode and one decode buffer per stream for the stream's whole life; with
/// the default 8 KiB each, idle streams cost 16 KiB before any response. xDS requests are small
/// and responses grow the encode buffer as needed, so 1 KiB initial buffers cut the memory of an
/// idle connected Envoy without changing the wire.
#[derive(Debug)]
pub struct XdsCodec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Default for XdsCodec<T, U> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

/// Initial encode/decode buffer size of [`XdsCodec`].
const CODEC_BUFFER_BYTES: usize = 1024;
/// Encoded bytes after which tonic hands the buffer to HTTP/2 (its default).
const CODEC_YIELD_BYTES: usize = 32 * 1024;

impl<T, U> tonic::codec::Codec for XdsCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = tonic_prost::ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(tonic::codec::BufferSettings::new(
            CODEC_BUFFER_BYTES,
            CODEC_YIELD_BYTES,
        ))
    }

    fn decoder(&mut self) -> Self::Decoder {
        request_decoder()
    }
}

/// The request decoder of our streams (also used where `body.rs` decodes requests itself).
pub fn request_decoder<U: prost::Message + Default + Send + 'static>(
) -> tonic_prost::ProstDecoder<U> {
    tonic_prost::ProstDecoder::new(tonic::codec::BufferSettings::new(
        CODEC_BUFFER_BYTES,
        CODEC_YIELD_BYTES,
    ))
}
