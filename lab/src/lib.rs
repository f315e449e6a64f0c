//! Lab crate root: backend emulator, fleet files and a discrete-event simulator.

#![warn(missing_docs)]

pub mod bench;
pub mod emulator;
pub mod fleet;
pub mod service_time;
pub mod sim;
pub mod xds_load;
