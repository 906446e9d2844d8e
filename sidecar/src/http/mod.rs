//! The KServe v2 HTTP surface shared by the worker and the frontend: routes,
//! request/response encoding, request metrics, readiness and graceful drain.
//! What answers an infer request is an [`Engine`]: the worker's batcher in
//! front of a model, or the frontend's coder in front of many workers.

pub mod admission;
pub mod auth;
pub mod decode;
pub mod engine;
pub mod metrics;
pub mod repository;
pub mod server;
pub mod shedding;
pub mod shutdown;
pub mod stats;
mod stats_route;

pub use auth::{AuthError, BearerToken};
#[cfg(test)]
mod server_tests;

pub use admission::{Admission, Limit};
pub use engine::{Answer, Engine, EngineError};
pub use metrics::{RequestMetrics, render};
pub use server::{HttpError, HttpOptions, V2Server};
