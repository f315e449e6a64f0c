//! The algorithms that plan the fresh endpoints of a cluster: `capacity` and `distance`.

pub(crate) mod capacity;
pub(crate) mod distance;
pub(crate) mod placement;
pub(crate) mod queueing;
