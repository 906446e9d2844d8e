//! coded-sidecar: the data plane of coded-serving.

pub mod protocol;
pub mod worker;
