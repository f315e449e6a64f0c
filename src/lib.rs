//! adaptive-eds: an xDS control plane that weights Envoy endpoints by their real load.
//!
//! Data flows one way (see `docs/ARCHITECTURE.md`): `discovery` feeds endpoints and `metrics`
//! and `lrs` feed load (through `samples`) to the `engine`, which calls the pure `weighting`
//! functions and publishes immutable `snapshot`s; `xds`, `inspect` and `admin` only ever read
//! snapshots. `transport` is the port `xds` and `lrs` share.

pub mod admin;
pub mod config;
pub mod discovery;
pub mod engine;
pub mod inspect;
pub mod lrs;
pub mod metrics;
pub mod model;
pub mod samples;
pub mod server;
pub mod snapshot;
pub mod telemetry;
pub mod transport;
pub mod weighting;
pub mod xds;
