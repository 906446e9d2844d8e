//! Benchmarks (not tests): load generation, latency histograms, and the
//! experiments of `coded-sidecar bench`.

pub mod capacity;
pub mod chaos;
pub mod echo;
pub mod latency;
pub mod load;
pub mod netns;
pub mod overhead;
pub mod overload;
pub mod plot;
pub mod request;
pub mod slowdown;
pub mod spread;
pub mod stragglers;
