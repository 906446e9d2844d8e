//! coded-operator: runs a `CodedInferenceService` as model pods, parity-model
//! pods and a coding frontend, all speaking the KServe v2 protocol.
//!
//! Layout: [`crd`] is the API, [`reconcile`] turns it into child objects
//! ([`reconcile::children`]) and a [`status`], [`events`] says what is worth
//! telling the user, and the rest ([`metrics`], [`server`], [`leader`],
//! [`telemetry`]) is the process around the controller.

pub mod crd;
pub mod error;
pub mod events;
pub mod latency;
pub mod leader;
pub mod metrics;
pub mod rbac;
pub mod reconcile;
pub mod server;
pub mod status;
pub mod telemetry;

#[cfg(test)]
mod fixtures;

pub use error::{Error, Result};

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "coded-operator";

/// Port every `coded-sidecar` process serves v2, health and metrics on.
pub const SIDECAR_PORT: i32 = 8080;

/// Port every `coded-sidecar` process serves v2 over gRPC on (Triton's).
pub const SIDECAR_GRPC_PORT: i32 = 8001;

/// Port the frontend serves `/metrics` alone on (`--metrics-port`), so that
/// its NetworkPolicy can open it to the monitoring namespace only.
pub const FRONTEND_METRICS_PORT: i32 = 9090;

/// Namespace whose pods may scrape workers through their NetworkPolicy
/// unless the operator's flags say otherwise (kube-prometheus' default).
pub const DEFAULT_MONITORING_NAMESPACE: &str = "monitoring";

/// Image the pods run unless the resource or the operator's flags say otherwise.
pub const DEFAULT_SIDECAR_IMAGE: &str = concat!(
    "ghcr.io/coded-serving/coded-sidecar:",
    env!("CARGO_PKG_VERSION")
);
