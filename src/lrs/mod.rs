//! Envoy's Load Reporting Service (LRS): Envoys stream their per-endpoint request counts to us
//! on the xDS port, and [`aggregate`] turns them into request, error, in-flight, latency and ORCA
//! CPU samples for weighting.
//!
//! `service` drives each stream, `wire` decodes reports without the Node Envoy resends in each.

pub mod aggregate;
pub mod service;
pub mod wire;

pub use aggregate::LoadReports;
pub use service::LrsService;

/// Generated LRS server (our request type; see `build.rs`).
// The generated code builds the (unit) codec with `default()`.
#[allow(clippy::default_constructed_unit_structs)]
pub mod lrs_server {
    include!(concat!(
        env!("OUT_DIR"),
        "/envoy.service.load_stats.v3.LoadReportingService.rs"
    ));
}
