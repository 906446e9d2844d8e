//! Messages, the `GrpcInferenceService` server trait and its client,
//! generated from `proto/inference.proto` by build.rs.

// Generated code: its shape is tonic-prost's, not ours.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("inference");
