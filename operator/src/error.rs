//! Errors of the reconciler. Their variant names label the error metric.

use crate::crd::InvalidSpec;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the API server failed; retried with backoff.
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),

    /// The resource lacks what every namespaced object has.
    #[error("resource has no {0}")]
    MissingField(&'static str),

    /// The spec breaks a rule the schema should have enforced.
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] InvalidSpec),

    /// Serialising a child object failed.
    #[error("could not serialise {kind}: {source}")]
    Serialize {
        kind: &'static str,
        source: serde_json::Error,
    },
}

impl Error {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::MissingField(_) => "missing_field",
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Serialize { .. } => "serialize",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
