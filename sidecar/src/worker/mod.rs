//! `coded-sidecar worker`: one model (base or parity) served over v2.
//!
//! Layers, bottom up: the model behind [`Backend`], the [`batcher`] that
//! groups concurrent requests into model calls, the HTTP [`server`], its
//! [`metrics`] and the [`shutdown`] signal that starts a drain.

pub mod backend;
pub mod batcher;
pub mod candle;
pub mod metrics;
pub mod server;
pub mod shutdown;

pub use backend::{Backend, BackendError};
pub use server::{ServeOptions, Server, WorkerError, serve};
