//! The Open Inference Protocol over gRPC: the KServe v2 / Triton
//! `inference.GRPCInferenceService` (health, metadata, `ModelInfer` with raw
//! or typed tensor contents), a second front door onto the same
//! [`Engine`](crate::http::Engine) as the HTTP routes, on a port of its own
//! (`--grpc-port`, Triton's 8001 by convention).
//!
//! [`proto`] is generated from `proto/inference.proto`; [`convert`] turns
//! its messages into the protocol's own types and back; [`service`] is the
//! thin adapter onto the engine; [`server`] binds and serves it beside the
//! HTTP listener, with the same limits and drain.

pub mod admission;
pub mod convert;
pub mod proto;
pub mod server;
pub mod service;

#[cfg(test)]
mod convert_fuzz;

pub use server::{GrpcError, GrpcPort, GrpcServer};
pub use service::InferenceService;
