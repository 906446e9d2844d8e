//! `coded-sidecar worker`: one model (base or parity) served over v2.
//!
//! Layers, bottom up: the model behind [`Backend`], the [`batcher`] that
//! groups concurrent requests into model calls, the v2 [`server`] (on the
//! shared [`crate::http`] surface) and its [`metrics`].

pub mod backend;
pub mod batcher;
pub mod candle;
pub mod metrics;
pub mod server;
pub mod service_time;

pub use backend::{Backend, BackendError};
pub use server::{ServeOptions, Server, WorkerError, serve};
pub use service_time::{ServiceTime, ServiceTimeArgs};
