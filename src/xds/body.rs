//! Streaming xDS responses written to HTTP/2 as shared `Bytes`, not copied into a stream buffer.
//!
//! tonic encodes every response of a stream into one `BytesMut` that lives as long as the stream
//! and keeps the capacity of the largest response it ever held (29 KiB for a 1,000-endpoint
//! cluster, then idle for hours). Our resources are already encoded and shared by every stream
//! (`wire.rs`), so the streaming RPCs bypass tonic's encoder: each response becomes a few data
//! chunks, the small fields copied into one short-lived chunk and every large resource handed to
//! HTTP/2 as the shared `Bytes` itself (h2 writes it from there, without a copy). Nothing
//! response-sized stays allocated on an idle stream. Requests are still decoded by tonic, and
//! every other method (`FetchEndpoints`) is served by the generated service.

use std::{
    collections::VecDeque,
    convert::Infallible,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use http_body::Frame;
use prost::encoding::{self, WireType};
use tonic::{
    body::Body,
    codegen::http::{self, header, HeaderMap, HeaderValue},
    server::NamedService,
    Status, Streaming,
};

use super::{
    delta::DeltaState,
    sotw::SotwState,
    stream::{serve, Protocol},
    wire::{request_decoder, DeltaResponse, SotwResponse},
};
use crate::transport::{
    port::{ResponseStream, XdsContext},
    registry::StreamKind,
};

/// Resources at least this long are sent by reference; shorter ones are copied next to their
/// field header, so a response of many small resources is not a train of tiny DATA frames.
const BY_REFERENCE_BYTES: usize = 4096;

/// Length of the gRPC message prefix (compression flag, big-endian length).
const GRPC_PREFIX_BYTES: usize = 5;

/// A response that can lay itself out as gRPC data chunks.
pub trait Chunked {
    /// Appends this response, gRPC prefix included, to `out`.
    fn write_chunks(&self, out: &mut VecDeque<Bytes>) -> Result<(), Status>;
}

/// Collects the copied fields of one response and the shared resources between them.
struct ChunkWriter<'a> {
    out: &'a mut VecDeque<Bytes>,
    small: BytesMut,
}

impl ChunkWriter<'_> {
    /// Starts a message of `encoded_len` bytes, `shared_len` of which will be sent by reference.
    fn start<'a>(
        out: &'a mut VecDeque<Bytes>,
        encoded_len: usize,
        shared_len: usize,
    ) -> Result<ChunkWriter<'a>, Status> {
        let length = u32::try_from(encoded_len).map_err(|_| {
            Status::resource_exhausted(format!(
                "response of {encoded_len} bytes is over gRPC's 4 GiB message limit"
            ))
        })?;
        // Exactly what is copied, so the chunk never reallocates.
        let mut small = BytesMut::with_capacity(GRPC_PREFIX_BYTES + encoded_len - shared_len);
        small.put_u8(0);
        small.put_u32(length);
        Ok(ChunkWriter { out, small })
    }

    fn resource(&mut self, tag: u32, resource: &Bytes) {
        encoding::encode_key(tag, WireType::LengthDelimited, &mut self.small);
        encoding::encode_varint(resource.len() as u64, &mut self.small);
        if resource.len() < BY_REFERENCE_BYTES {
            self.small.put_slice(resource);
        } else {
            self.flush();
            self.out.push_back(resource.clone());
        }
    }

    fn flush(&mut self) {
        if !self.small.is_empty() {
            self.out.push_back(self.small.split().freeze());
        }
    }
}

impl Drop for ChunkWriter<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

fn shared_len(resources: &[Bytes]) -> usize {
    resources
        .iter()
        .map(Bytes::len)
        .filter(|len| *len >= BY_REFERENCE_BYTES)
        .sum()
}

fn string_if_set(tag: u32, value: &String, buf: &mut BytesMut) {
    if !value.is_empty() {
        encoding::string::encode(tag, value, buf);
    }
}

impl Chunked for SotwResponse {
    fn write_chunks(&self, out: &mut VecDeque<Bytes>) -> Result<(), Status> {
        // Field order and presence as in `prost::Message for SotwResponse`.
        let length = prost::Message::encoded_len(self);
        let mut writer = ChunkWriter::start(out, length, shared_len(&self.resources))?;
        string_if_set(1, &self.version_info, &mut writer.small);
        for resource in &self.resources {
            writer.resource(2, resource);
        }
        string_if_set(4, &self.type_url, &mut writer.small);
        string_if_set(5, &self.nonce, &mut writer.small);
        Ok(())
    }
}

impl Chunked for DeltaResponse {
    fn write_chunks(&self, out: &mut VecDeque<Bytes>) -> Result<(), Status> {
        // Field order and presence as in `prost::Message for DeltaResponse`.
        let length = prost::Message::encoded_len(self);
        let mut writer = ChunkWriter::start(out, length, shared_len(&self.resources))?;
        string_if_set(1, &self.system_version_info, &mut writer.small);
        for resource in &self.resources {
            writer.resource(2, resource);
        }
        string_if_set(4, &self.type_url, &mut writer.small);
        string_if_set(5, &self.nonce, &mut writer.small);
        encoding::string::encode_repeated(6, &self.removed_resources, &mut writer.small);
        Ok(())
    }
}

/// The HTTP/2 body of one streaming RPC: the chunks of each response, then the gRPC status.
struct ChunkedBody<R> {
    responses: ResponseStream<R>,
    /// Chunks of the response being sent (a few; they reference shared resources).
    queued: VecDeque<Bytes>,
    finished: bool,
}

impl<R: Chunked> http_body::Body for ChunkedBody<R> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        loop {
            if let Some(chunk) = this.queued.pop_front() {
                if this.queued.is_empty() && this.queued.capacity() > 8 {
                    // A response of many small resources made the queue long; idle streams
                    // should not keep that.
                    this.queued = VecDeque::new();
                }
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            let status = match ready!(this.responses.as_mut().poll_next(context)) {
                Some(Ok(response)) => match response.write_chunks(&mut this.queued) {
                    Ok(()) => continue,
                    Err(status) => status,
                },
                Some(Err(status)) => status,
                None => Status::ok(""),
            };
            this.finished = true;
            let mut trailers = HeaderMap::new();
            if let Err(status) = status.add_header(&mut trailers) {
                // Only a message that cannot be a header value gets here; say so without it.
                trailers.clear();
                let _ = Status::new(status.code(), "").add_header(&mut trailers);
            }
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }
}

/// The generated ADS or EDS service, with its streaming methods served by [`ChunkedBody`].
#[derive(Clone)]
pub struct ChunkedStreams<S> {
    inner: S,
    context: XdsContext,
    max_message_bytes: usize,
}

impl<S> ChunkedStreams<S> {
    /// Wraps `inner`; requests over `max_message_bytes` end their stream with `OUT_OF_RANGE`.
    pub fn new(inner: S, context: XdsContext, max_message_bytes: usize) -> Self {
        Self {
            inner,
            context,
            max_message_bytes,
        }
    }

    fn stream<P>(&self, kind: StreamKind, request: http::Request<Body>) -> http::Response<Body>
    where
        P: Protocol,
        P::Response: Chunked,
        P::Request: prost::Message + Default,
    {
        if let Some(encoding) = request.headers().get("grpc-encoding") {
            if encoding != "identity" {
                return Status::unimplemented(format!(
                    "grpc-encoding {encoding:?} is not supported; send uncompressed messages"
                ))
                .into_http();
            }
        }
        if let Err(status) = self.context.admit_stream() {
            return status.into_http();
        }
        let inbound = Streaming::new_request(
            request_decoder::<P::Request>(),
            request.into_body(),
            None,
            Some(self.max_message_bytes),
        );
        let body = ChunkedBody {
            responses: serve::<P>(self.context.clone(), kind, inbound),
            queued: VecDeque::new(),
            finished: false,
        };
        let mut response = http::Response::new(Body::new(body));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        response
    }
}

impl<S: NamedService> NamedService for ChunkedStreams<S> {
    const NAME: &'static str = S::NAME;
}

const ADS_SOTW: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const ADS_DELTA: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
const EDS_SOTW: &str = "/envoy.service.endpoint.v3.EndpointDiscoveryService/StreamEndpoints";
const EDS_DELTA: &str = "/envoy.service.endpoint.v3.EndpointDiscoveryService/DeltaEndpoints";

impl<S> tower::Service<http::Request<Body>> for ChunkedStreams<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let response = match request.uri().path() {
            ADS_SOTW => self.stream::<SotwState>(StreamKind::AdsSotw, request),
            ADS_DELTA => self.stream::<DeltaState>(StreamKind::AdsDelta, request),
            EDS_SOTW => self.stream::<SotwState>(StreamKind::EdsSotw, request),
            EDS_DELTA => self.stream::<DeltaState>(StreamKind::EdsDelta, request),
            _ => return Box::pin(self.inner.call(request)),
        };
        Box::pin(std::future::ready(Ok(response)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn joined(chunks: &VecDeque<Bytes>) -> Vec<u8> {
        chunks
            .iter()
            .flat_map(|chunk| chunk.iter().copied())
            .collect()
    }

    fn framed(message: &impl Message) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut out = vec![0u8];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn chunks_are_the_encoded_message_with_large_resources_shared() {
        let large = Bytes::from(vec![7u8; BY_REFERENCE_BYTES + 10]);
        let response = SotwResponse {
            version_info: "v1".into(),
            resources: vec![Bytes::from_static(b"small"), large.clone(), Bytes::new()],
            type_url: "type.googleapis.com/example".into(),
            nonce: "9".into(),
        };
        let mut chunks = VecDeque::new();
        response.write_chunks(&mut chunks).expect("chunks");
        assert_eq!(joined(&chunks), framed(&response));
        assert_eq!(chunks.len(), 3, "head, the shared resource, tail");
        assert_eq!(
            chunks[1].as_ptr(),
            large.as_ptr(),
            "the large resource is the shared bytes, not a copy"
        );
    }

    #[test]
    fn delta_chunks_are_the_encoded_message() {
        let response = DeltaResponse {
            system_version_info: "s1".into(),
            resources: vec![
                Bytes::from(vec![1u8; BY_REFERENCE_BYTES]),
                Bytes::from_static(b"r"),
            ],
            type_url: "type.googleapis.com/example".into(),
            nonce: "3".into(),
            removed_resources: vec!["gone".into()],
        };
        let mut chunks = VecDeque::new();
        response.write_chunks(&mut chunks).expect("chunks");
        assert_eq!(joined(&chunks), framed(&response));
        let empty = DeltaResponse::default();
        let mut chunks = VecDeque::new();
        empty.write_chunks(&mut chunks).expect("chunks");
        assert_eq!(joined(&chunks), vec![0, 0, 0, 0, 0]);
    }
}
