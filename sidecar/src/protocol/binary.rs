//! Request and response bodies, with Triton's binary tensor extension.
//!
//! A body is a JSON object optionally followed by raw tensor bytes. When
//! bytes follow, the `Inference-Header-Content-Length` HTTP header gives the
//! length of the JSON; each binary tensor carries
//! `parameters.binary_data_size`, and the tensors' bytes follow the JSON in
//! the order the tensors are listed (little-endian, row-major, no padding).
//! A requested output is sent back in binary when its
//! `parameters.binary_data` is true, or when none are listed and the request
//! sets `parameters.binary_data_output` (what tritonclient does by default).
//!
//! Server side: [`decode_request`] and [`encode_response`]. Client side:
//! [`encode_request`] and [`decode_response`]. Tensors are `f32` here;
//! other numeric datatypes are converted on the way in.

use serde_json::Value;

use super::error::ProtocolError;
use super::tensor::{BinaryTail, decode_tensor};
use super::v2::{
    self, BINARY_DATA, BINARY_DATA_OUTPUT, BINARY_DATA_SIZE, Datatype, InputJson, OutputJson,
    Parameters, RequestJson, RequestedOutputJson, ResponseJson,
};

/// HTTP header giving the size of the JSON part of a body with binary data.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A tensor decoded to `f32`, row-major.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// An inference request with its inputs decoded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InferRequest {
    pub id: Option<String>,
    pub parameters: Parameters,
    pub inputs: Vec<NamedTensor>,
    pub outputs: OutputSelection,
}

/// Which outputs the caller wants and which of them in binary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutputSelection {
    /// Outputs listed in the request; empty means "all outputs".
    pub requested: Vec<RequestedOutput>,
    /// `parameters.binary_data_output`: binary is the default for all outputs.
    pub binary_by_default: bool,
}

/// One entry of a request's `outputs`.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestedOutput {
    pub name: String,
    pub binary: bool,
}

impl OutputSelection {
    /// Every output, in binary or as JSON.
    pub fn all(binary: bool) -> Self {
        OutputSelection {
            requested: Vec::new(),
            binary_by_default: binary,
        }
    }

    /// `None` if the output was not asked for, else whether to send it in binary.
    pub fn lookup(&self, name: &str) -> Option<bool> {
        if self.requested.is_empty() {
            return Some(self.binary_by_default);
        }
        self.requested
            .iter()
            .find(|o| o.name == name)
            .map(|o| o.binary)
    }
}

/// An inference response with its outputs decoded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: Option<String>,
    pub id: Option<String>,
    pub parameters: Parameters,
    pub outputs: Vec<NamedTensor>,
}

impl InferResponse {
    /// The output with this name, if present.
    pub fn output(&self, name: &str) -> Option<&NamedTensor> {
        self.outputs.iter().find(|o| o.name == name)
    }
}

/// A body ready to send; `header_length` is the value of
/// `Inference-Header-Content-Length`, set only when binary data follows the JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedBody {
    pub body: Vec<u8>,
    pub header_length: Option<usize>,
}

/// Parses the `Inference-Header-Content-Length` header value, if present.
pub fn parse_header_length(value: Option<&[u8]>) -> Result<Option<usize>, ProtocolError> {
    let Some(raw) = value else { return Ok(None) };
    let bad = |reason: &str| ProtocolError::BadHeaderLength {
        value: String::from_utf8_lossy(raw).into_owned(),
        reason: reason.to_owned(),
    };
    let text = std::str::from_utf8(raw).map_err(|_| bad("not ASCII"))?;
    text.trim()
        .parse::<usize>()
        .map(Some)
        .map_err(|_| bad("expected a non-negative integer"))
}

/// Parses a request body: JSON, or JSON plus binary tensors when
/// `header_length` (from `Inference-Header-Content-Length`) is given.
pub fn decode_request(
    body: &[u8],
    header_length: Option<usize>,
) -> Result<InferRequest, ProtocolError> {
    let (json, tail) = split_body(body, header_length)?;
    let parsed: RequestJson =
        serde_json::from_slice(json).map_err(|e| ProtocolError::MalformedJson(e.to_string()))?;

    let mut binary = BinaryTail::new(tail, header_length.is_some());
    let mut inputs = Vec::with_capacity(parsed.inputs.len());
    for input in &parsed.inputs {
        inputs.push(decode_tensor(
            &input.name,
            &input.shape,
            &input.datatype,
            &input.parameters,
            input.data.as_ref(),
            &mut binary,
        )?);
    }
    binary.finish()?;

    let binary_by_default =
        v2::bool_parameter(&parsed.parameters, BINARY_DATA_OUTPUT)?.unwrap_or(false);
    let mut requested = Vec::with_capacity(parsed.outputs.len());
    for output in &parsed.outputs {
        let binary = v2::bool_parameter(&output.parameters, BINARY_DATA)?;
        requested.push(RequestedOutput {
            name: output.name.clone(),
            binary: binary.unwrap_or(binary_by_default),
        });
    }

    // The selection now carries it; keeping it would let it leak into a
    // forwarded request that asks for something else.
    let mut parameters = parsed.parameters;
    parameters.remove(BINARY_DATA_OUTPUT);
    Ok(InferRequest {
        id: parsed.id,
        parameters,
        inputs,
        outputs: OutputSelection {
            requested,
            binary_by_default,
        },
    })
}

/// Encodes a response: the outputs the selection asks for, each in binary or
/// JSON as asked. Outputs not asked for are left out.
pub fn encode_response(response: &InferResponse, selection: &OutputSelection) -> EncodedBody {
    let mut outputs = Vec::with_capacity(response.outputs.len());
    let mut tail = Vec::new();
    for tensor in &response.outputs {
        let Some(binary) = selection.lookup(&tensor.name) else {
            continue;
        };
        outputs.push(tensor_json(tensor, binary, &mut tail));
    }
    let json = ResponseJson::<&[f32]> {
        model_name: response.model_name.clone(),
        model_version: response.model_version.clone(),
        id: response.id.clone(),
        parameters: response.parameters.clone(),
        outputs,
    };
    join_body(&json, tail)
}

/// Encodes a request for a v2 server; inputs go in binary when `binary_inputs`.
pub fn encode_request(request: &InferRequest, binary_inputs: bool) -> EncodedBody {
    let mut tail = Vec::new();
    let inputs = request
        .inputs
        .iter()
        .map(|t| {
            let out = tensor_json(t, binary_inputs, &mut tail);
            InputJson {
                name: out.name,
                shape: out.shape,
                datatype: out.datatype,
                parameters: out.parameters,
                data: out.data,
            }
        })
        .collect();

    let mut parameters = request.parameters.clone();
    parameters.remove(BINARY_DATA_OUTPUT);
    let outputs = if request.outputs.requested.is_empty() {
        if request.outputs.binary_by_default {
            parameters.insert(BINARY_DATA_OUTPUT.to_owned(), Value::Bool(true));
        }
        Vec::new()
    } else {
        request
            .outputs
            .requested
            .iter()
            .map(|o| {
                let mut p = Parameters::new();
                p.insert(BINARY_DATA.to_owned(), Value::Bool(o.binary));
                RequestedOutputJson {
                    name: o.name.clone(),
                    parameters: p,
                }
            })
            .collect()
    };
    let json = RequestJson::<&[f32]> {
        id: request.id.clone(),
        parameters,
        inputs,
        outputs,
    };
    join_body(&json, tail)
}

/// Parses a response body from a v2 server (JSON, or JSON plus binary outputs).
pub fn decode_response(
    body: &[u8],
    header_length: Option<usize>,
) -> Result<InferResponse, ProtocolError> {
    let (json, tail) = split_body(body, header_length)?;
    let parsed: ResponseJson =
        serde_json::from_slice(json).map_err(|e| ProtocolError::MalformedJson(e.to_string()))?;
    let mut binary = BinaryTail::new(tail, header_length.is_some());
    let mut outputs = Vec::with_capacity(parsed.outputs.len());
    for output in &parsed.outputs {
        outputs.push(decode_tensor(
            &output.name,
            &output.shape,
            &output.datatype,
            &output.parameters,
            output.data.as_ref(),
            &mut binary,
        )?);
    }
    binary.finish()?;
    Ok(InferResponse {
        model_name: parsed.model_name,
        model_version: parsed.model_version,
        id: parsed.id,
        parameters: parsed.parameters,
        outputs,
    })
}

/// The JSON description of an FP32 tensor; its bytes go to `tail` if binary.
fn tensor_json<'a>(
    tensor: &'a NamedTensor,
    binary: bool,
    tail: &mut Vec<u8>,
) -> OutputJson<&'a [f32]> {
    let mut parameters = Parameters::new();
    let data = if binary {
        let start = tail.len();
        tail.reserve(tensor.data.len() * 4);
        for x in &tensor.data {
            tail.extend_from_slice(&x.to_le_bytes());
        }
        parameters.insert(BINARY_DATA_SIZE.to_owned(), Value::from(tail.len() - start));
        None
    } else {
        Some(tensor.data.as_slice())
    };
    OutputJson {
        name: tensor.name.clone(),
        // Shapes come from tensors we built, far below i64::MAX.
        shape: tensor.shape.iter().map(|&d| d as i64).collect(),
        datatype: Datatype::Fp32.as_str().to_owned(),
        parameters,
        data,
    }
}

fn join_body<T: serde::Serialize>(json: &T, tail: Vec<u8>) -> EncodedBody {
    // Serialising these plain structs cannot fail: keys are strings and f32
    // values serialise (NaN as null).
    let mut body = serde_json::to_vec(json).unwrap_or_else(|_| b"{}".to_vec());
    if tail.is_empty() {
        return EncodedBody {
            body,
            header_length: None,
        };
    }
    let header_length = Some(body.len());
    body.extend_from_slice(&tail);
    EncodedBody {
        body,
        header_length,
    }
}

fn split_body(body: &[u8], header_length: Option<usize>) -> Result<(&[u8], &[u8]), ProtocolError> {
    match header_length {
        None => Ok((body, &[])),
        Some(n) if n > body.len() => Err(ProtocolError::BinaryMismatch(format!(
            "Inference-Header-Content-Length is {n} but the body has only {} bytes",
            body.len()
        ))),
        Some(n) => Ok(body.split_at(n)),
    }
}

#[cfg(test)]
#[path = "binary_tests.rs"]
mod tests;
