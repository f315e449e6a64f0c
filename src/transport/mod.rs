//! The xDS port under the services on it (xDS and LRS): accepting connections within
//! `xds.max_connections`, TLS and client identities, the registry of open streams and the
//! limits every stream on the port shares.
//!
//! It knows no protocol: the xDS state machines and the LRS aggregation sit above it and never
//! import each other.

pub mod connections;
pub mod port;
pub mod registry;
pub mod tls;
