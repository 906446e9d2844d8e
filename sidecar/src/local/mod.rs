//! `coded-sidecar local`: coded serving on one machine. Trains (or loads
//! from the cache) a base and a parity model, starts model workers, parity
//! workers and a frontend as child processes on loopback, and stops them
//! all on Ctrl-C or SIGTERM.

pub mod cluster;
pub mod models;
pub mod process;
pub mod prometheus;

pub use cluster::{Cluster, ClusterSpec};
pub use models::{ModelDirs, ModelPlan, default_cache_dir};
pub use process::{Child, stop_all};
