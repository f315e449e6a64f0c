//! `lab bench` pieces: open-loop load, process control, configuration texts and reports.

pub mod capacity;
pub mod loadgen;
pub mod matrix;
pub mod pipeline;
pub mod plot;
pub mod process;
pub mod report;
pub mod setup;
pub mod utilization;
