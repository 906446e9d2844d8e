//! What answers infer requests behind the v2 front doors (HTTP routes and
//! the gRPC service), and the one path a decoded request takes to it.

use std::future::Future;

use axum::http::StatusCode;

use super::stats::Stats;
use crate::protocol::v2::Parameters;
use crate::protocol::{
    InferRequest, InferResponse, ModelInfo, ModelInput, NamedTensor, ProtocolError,
};

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

/// Why an infer request got no answer: the caller's mistake in the
/// request, or the engine's refusal or failure.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl InferError {
    /// The HTTP status; the gRPC service maps it to a code.
    pub fn status(&self) -> StatusCode {
        match self {
            InferError::Protocol(e) => e.status(),
            InferError::Engine(e) => e.status,
        }
    }

    /// The `reason` label of the error counter.
    pub fn reason(&self) -> &'static str {
        match self {
            InferError::Protocol(e) => e.reason(),
            InferError::Engine(e) => e.reason,
        }
    }
}

/// `reason` of a request refused for carrying more than
/// `--max-rows-per-request` rows.
pub const TOO_MANY_ROWS: &str = "too_many_rows";

/// Answers a decoded request for `version` of the engine's model (already
/// resolved): takes the model's input out of it, refuses more than
/// `max_rows` rows before any work starts, and asks the engine (counting
/// its time in `stats`). Both front
/// doors go through here, so they answer alike.
pub async fn answer<E: Engine>(
    engine: &E,
    version: String,
    request: &mut InferRequest,
    max_rows: usize,
    stats: &Stats,
) -> Result<InferResponse, InferError> {
    let info = engine.info();
    let input = info.take_input(request)?;
    let (rows, batched) = (input.rows, input.batched);
    if rows > max_rows {
        return Err(InferError::Engine(EngineError::new(
            StatusCode::BAD_REQUEST,
            TOO_MANY_ROWS,
            format!(
                "the request has {rows} rows; this server takes at most {max_rows} per request (--max-rows-per-request): split it"
            ),
        )));
    }
    let answer = if rows == 0 {
        Answer::default()
    } else {
        let started = std::time::Instant::now();
        let answer = engine.infer(input).await?;
        stats.executed(rows, started.elapsed());
        answer
    };
    Ok(InferResponse {
        model_name: info.name.clone(),
        model_version: Some(version),
        id: request.id.take(),
        parameters: answer.parameters,
        outputs: vec![NamedTensor {
            name: info.output.name.clone(),
            shape: info.output_shape(rows, batched),
            data: answer.data,
        }],
    })
}
