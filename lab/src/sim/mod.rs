//! Deterministic discrete-event simulator of Envoy clients balancing over a fleet.

mod balancer;
mod config;
mod cswrr;
mod edf;
mod endpoint;
mod engine;
mod engine_weights;
mod latency;
mod report;
mod scrape;
mod weights;

pub use balancer::{Balancer, LeastRequestSettings, Policy};
pub use config::{ConfigError, SimConfig};
pub use cswrr::{CswrrSettings, OrcaReport, OrcaWeights};
pub use edf::EdfScheduler;
pub use endpoint::Endpoint;
pub use engine::{simulate, SimError};
pub use engine_weights::EngineWeights;
pub use latency::{LatencyRecorder, LatencySummary};
pub use report::{render_markdown, EndpointReport, SimReport, TimedReport};
pub use scrape::Scrape;
pub use weights::{
    EndpointSample, EqualWeights, InverseCpuPerRequest, KnownCapacity, WeightProvider,
    MIN_TRUSTED_REQUESTS_PER_SECOND, WEIGHT_SCALE,
};
