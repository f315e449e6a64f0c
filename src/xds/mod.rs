//! The xDS protocol: per-stream state machines and the thin tonic services over them.
//!
//! Serving only reads snapshots; it never calls a source.

pub mod body;
pub mod delta;
pub mod service;
pub mod sotw;
pub mod stream;
pub mod type_state;
pub mod wire;

/// Generated ADS server (our response types; see `build.rs`).
pub mod ads_server {
    include!(concat!(
        env!("OUT_DIR"),
        "/envoy.service.discovery.v3.AggregatedDiscoveryService.rs"
    ));
}

/// Generated EDS server (our response types; see `build.rs`).
pub mod eds_server {
    include!(concat!(
        env!("OUT_DIR"),
        "/envoy.service.endpoint.v3.EndpointDiscoveryService.rs"
    ));
}

/// Encoded descriptors of the Envoy discovery services, for gRPC reflection.
pub const ENVOY_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptor.bin"));

/// What a request meant to the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestEvent {
    /// First request for a type on this stream (or one without a nonce).
    Initial,
    /// The client accepted the response with the matching nonce.
    Ack {
        /// Version the client now has.
        version: String,
    },
    /// The client rejected the response with the matching nonce.
    Nack {
        /// Version it rejected.
        version: String,
        /// The client's error message.
        message: String,
    },
    /// Its nonce is not the last one we sent: an old request, ignored.
    Stale,
}

/// Nonces for one stream: unique, increasing, shared by every type on the stream.
#[derive(Debug, Default)]
pub struct Nonces {
    last: u64,
}

impl Nonces {
    /// The next nonce.
    pub fn issue(&mut self) -> String {
        self.last += 1;
        self.last.to_string()
    }
}
