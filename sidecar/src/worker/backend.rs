//! The model a worker serves, seen from the server: metadata and a batched
//! forward pass. The candle models implement this; tests use a linear fake.

use crate::protocol::ModelInfo;

/// A model that answers batches of rows. Called on a blocking thread, one
/// batch at a time per worker unless `--batch-concurrency` says otherwise.
pub trait Backend: Send + Sync + 'static {
    /// Name, versions, input and output specs; read once at startup.
    fn metadata(&self) -> ModelInfo;

    /// Runs the model on `shape[0]` rows; `shape` is `[rows, ..input shape]`
    /// and `data` holds `rows × input.row_len()` values, row-major. Returns
    /// `rows × output.row_len()` values.
    fn infer_batch(&self, shape: &[usize], data: &[f32]) -> Result<Vec<f32>, BackendError>;
}

/// The model failed on a batch; the server answers 500 with this message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(#[from] pub Box<dyn std::error::Error + Send + Sync>);

impl BackendError {
    /// Wraps any error, e.g. a `candle_core::Error`.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        BackendError(Box::new(e))
    }

    pub fn msg(message: impl Into<String>) -> Self {
        BackendError(message.into().into())
    }
}

/// Lets a shared model (`Arc<M>`) be served directly.
impl<B: Backend + ?Sized> Backend for std::sync::Arc<B> {
    fn metadata(&self) -> ModelInfo {
        (**self).metadata()
    }

    fn infer_batch(&self, shape: &[usize], data: &[f32]) -> Result<Vec<f32>, BackendError> {
        (**self).infer_batch(shape, data)
    }
}
