//! The Open Inference Protocol (KServe v2) over HTTP, with Triton's binary
//! tensor extension: the wire types ([`v2`]), bodies with binary tensors
//! ([`binary`]), models as the protocol sees them ([`model`]), the caller's
//! mistakes ([`error`]) and a client for v2 servers ([`client`]).
//!
//! Nothing here knows about candle; the worker and the frontend build on it.

pub mod binary;
pub mod body;
pub mod client;
pub mod error;
pub mod model;
pub mod tensor;
pub mod v2;

pub use binary::{InferRequest, InferResponse, NamedTensor, OutputSelection};
pub use error::ProtocolError;
pub use model::{ModelInfo, ModelInput, TensorSpec};
