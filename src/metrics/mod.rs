//! Where load comes from: PromQL pull and Prometheus remote-write, each writing timestamped
//! samples into the shared [`crate::samples::SampleTable`].

pub mod batch;
pub mod prometheus;
pub mod receiver;
pub mod remote_write;
