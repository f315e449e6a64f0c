//! Where endpoints come from: each source emits whole endpoint sets per cluster.

pub mod file;
pub mod kubernetes;

pub use crate::model::{ClusterUpdate, Endpoint, HealthStatus, Locality};
