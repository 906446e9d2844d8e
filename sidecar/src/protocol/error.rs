//! What can be wrong with a v2 request or response, and whose fault it is.

use http::StatusCode;

/// A request (or, on the client side, a response) that does not follow the
/// protocol or does not fit the model. Every variant is the caller's mistake
/// and says what is wrong; [`ProtocolError::status`] gives the 4xx to answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("malformed JSON in inference request: {0}")]
    MalformedJson(String),

    #[error("invalid Inference-Header-Content-Length header {value:?}: {reason}")]
    BadHeaderLength { value: String, reason: String },

    #[error("binary data mismatch: {0}")]
    BinaryMismatch(String),

    #[error("unknown model '{name}'{}", version.as_ref().map(|v| format!(" version '{v}'")).unwrap_or_default())]
    UnknownModel {
        name: String,
        version: Option<String>,
    },

    #[error("unexpected input '{name}': the model takes a single input named '{expected}'")]
    UnknownInput { name: String, expected: String },

    #[error("missing input '{0}'")]
    MissingInput(String),

    #[error("input '{0}' given more than once")]
    DuplicateInput(String),

    #[error(
        "unexpected output '{name}' requested: the model has a single output named '{expected}'"
    )]
    UnknownOutput { name: String, expected: String },

    #[error(
        "input '{name}' has shape {got:?}; the model takes {expected:?}, or {} for N rows",
        batched_shape(expected)
    )]
    WrongShape {
        name: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },

    #[error("tensor '{name}' has an invalid shape {shape:?}: {reason}")]
    InvalidShape {
        name: String,
        shape: Vec<i64>,
        reason: String,
    },

    #[error("tensor '{name}' has shape {shape:?} ({expected} elements) but {got} elements of data")]
    ElementCount {
        name: String,
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },

    #[error("input '{name}': unknown datatype '{datatype}'")]
    UnknownDatatype { name: String, datatype: String },

    #[error(
        "input '{name}': datatype {datatype} is not supported; send FP32 (or FP16, BF16, FP64, INT*, UINT*)"
    )]
    UnsupportedDatatype { name: String, datatype: String },

    #[error("input '{name}': {reason}")]
    BadData { name: String, reason: String },

    #[error("invalid parameter '{name}': {reason}")]
    BadParameter { name: String, reason: String },

    #[error("cannot read the request body: {0}")]
    BodyRead(String),

    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },

    #[error("unsupported Content-Encoding '{0}': send identity, gzip or deflate")]
    UnsupportedEncoding(String),
}

/// `[N, d1, d2, ...]`: how a batched shape is written in messages.
fn batched_shape(shape: &[usize]) -> String {
    let dims: Vec<String> = std::iter::once("N".to_owned())
        .chain(shape.iter().map(usize::to_string))
        .collect();
    format!("[{}]", dims.join(", "))
}

impl ProtocolError {
    /// The HTTP status for this error: 404 for a model that is not served,
    /// 413 for an oversized body, 415 for an unknown encoding, else 400.
    pub fn status(&self) -> StatusCode {
        match self {
            ProtocolError::UnknownModel { .. } => StatusCode::NOT_FOUND,
            ProtocolError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProtocolError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// A short stable label for metrics (`reason` label of the error counter).
    pub fn reason(&self) -> &'static str {
        match self {
            ProtocolError::MalformedJson(_) => "malformed_json",
            ProtocolError::BadHeaderLength { .. } | ProtocolError::BinaryMismatch(_) => {
                "binary_mismatch"
            }
            ProtocolError::UnknownModel { .. } => "unknown_model",
            ProtocolError::UnknownInput { .. }
            | ProtocolError::MissingInput(_)
            | ProtocolError::DuplicateInput(_)
            | ProtocolError::UnknownOutput { .. } => "bad_tensor_name",
            ProtocolError::WrongShape { .. }
            | ProtocolError::InvalidShape { .. }
            | ProtocolError::ElementCount { .. } => "bad_shape",
            ProtocolError::UnknownDatatype { .. } | ProtocolError::UnsupportedDatatype { .. } => {
                "bad_datatype"
            }
            ProtocolError::BadData { .. } => "bad_data",
            ProtocolError::BadParameter { .. } => "bad_parameter",
            ProtocolError::BodyTooLarge { .. } => "too_large",
            ProtocolError::BodyRead(_) => "body_read",
            ProtocolError::UnsupportedEncoding(_) => "bad_encoding",
        }
    }
}
