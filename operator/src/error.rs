//! Errors of the reconciler, retried with backoff. A spec the schema should
//! have refused is not one: it is reported in the status and not retried.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the API server failed; retried with backoff.
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),

    /// The resource lacks what every namespaced object has.
    #[error("resource has no {0}")]
    MissingField(&'static str),
}

impl Error {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::MissingField(_) => "missing_field",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
