//! What answers infer requests behind the v2 routes.

use std::future::Future;

use axum::http::StatusCode;

use crate::protocol::v2::Parameters;
use crate::protocol::{ModelInfo, ModelInput};

/// The outputs for every row of one request, row-major, and response
/// parameters (the frontend marks reconstructed answers there).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    pub data: Vec<f32>,
    pub parameters: Parameters,
}

impl Answer {
    pub fn new(data: Vec<f32>) -> Self {
        Answer {
            data,
            parameters: Parameters::new(),
        }
    }
}

/// A request the engine could not answer: the status, a short machine
/// reason for the error counter, and a message for the caller.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct EngineError {
    pub status: StatusCode,
    pub reason: &'static str,
    pub message: String,
}

impl EngineError {
    pub fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        EngineError {
            status,
            reason,
            message: message.into(),
        }
    }
}

/// Serves one model: its metadata, and answers for rows already checked
/// against that metadata's input shape.
pub trait Engine: Send + Sync + 'static {
    fn info(&self) -> &ModelInfo;

    /// Ready to answer (the server also reports not ready while draining).
    fn ready(&self) -> bool {
        true
    }

    /// Outputs for `input.rows` rows; `input.rows` is at least 1.
    fn infer(&self, input: ModelInput) -> impl Future<Output = Result<Answer, EngineError>> + Send;
}
