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

/// The binary bytes after the JSON, handed out tensor by tensor in order.
struct BinaryTail<'a> {
    rest: &'a [u8],
    has_header: bool,
}

impl<'a> BinaryTail<'a> {
    fn new(rest: &'a [u8], has_header: bool) -> Self {
        BinaryTail { rest, has_header }
    }

    fn take(&mut self, tensor: &str, size: usize) -> Result<&'a [u8], ProtocolError> {
        if size > self.rest.len() {
            let hint = if self.has_header {
                ""
            } else {
                " (is the Inference-Header-Content-Length header missing?)"
            };
            return Err(ProtocolError::BinaryMismatch(format!(
                "tensor '{tensor}' has binary_data_size {size} but only {} bytes of binary data remain{hint}",
                self.rest.len()
            )));
        }
        let (chunk, rest) = self.rest.split_at(size);
        self.rest = rest;
        Ok(chunk)
    }

    fn finish(self) -> Result<(), ProtocolError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::BinaryMismatch(format!(
                "{} bytes of binary data after the JSON header belong to no tensor (binary_data_size too small or missing?)",
                self.rest.len()
            )))
        }
    }
}

/// Decodes one tensor from its JSON description and, if binary, its bytes.
fn decode_tensor(
    name: &str,
    shape: &[i64],
    datatype: &str,
    parameters: &Parameters,
    data: Option<&Value>,
    binary: &mut BinaryTail<'_>,
) -> Result<NamedTensor, ProtocolError> {
    let dims = checked_shape(name, shape)?;
    let count = element_count(name, shape, &dims)?;
    let dt = v2::numeric_datatype(name, datatype)?;
    let binary_size = v2::size_parameter(parameters, BINARY_DATA_SIZE)?;

    let values = match (binary_size, data) {
        (Some(_), Some(_)) => {
            return Err(ProtocolError::BadData {
                name: name.to_owned(),
                reason: "has both JSON data and binary_data_size; send one".to_owned(),
            });
        }
        (None, None) => {
            return Err(ProtocolError::BadData {
                name: name.to_owned(),
                reason: "has no data: give 'data' or parameters.binary_data_size".to_owned(),
            });
        }
        (None, Some(json)) => v2::flatten_json_data(name, json)?,
        (Some(size), None) => {
            let bytes = binary.take(name, size)?;
            // element_size is Some for every numeric type.
            let width = dt.element_size().unwrap_or(4);
            if count.checked_mul(width) != Some(size) {
                return Err(ProtocolError::BinaryMismatch(format!(
                    "tensor '{name}' has binary_data_size {size} but shape {dims:?} of {dt} takes {} bytes",
                    count.saturating_mul(width)
                )));
            }
            bytes_to_f32(dt, bytes)
        }
    };
    if values.len() != count {
        return Err(ProtocolError::ElementCount {
            name: name.to_owned(),
            shape: dims,
            expected: count,
            got: values.len(),
        });
    }
    Ok(NamedTensor {
        name: name.to_owned(),
        shape: dims,
        data: values,
    })
}

fn checked_shape(name: &str, shape: &[i64]) -> Result<Vec<usize>, ProtocolError> {
    shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ProtocolError::InvalidShape {
            name: name.to_owned(),
            shape: shape.to_vec(),
            reason: "dimensions must be non-negative".to_owned(),
        })
}

fn element_count(name: &str, shape: &[i64], dims: &[usize]) -> Result<usize, ProtocolError> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| ProtocolError::InvalidShape {
            name: name.to_owned(),
            shape: shape.to_vec(),
            reason: "too many elements".to_owned(),
        })
}

/// Converts little-endian tensor bytes to `f32`. `bytes.len()` is a multiple
/// of the element size (checked by the caller); a ragged end is ignored.
fn bytes_to_f32(dt: Datatype, bytes: &[u8]) -> Vec<f32> {
    fn each<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
        bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect()
    }
    match dt {
        Datatype::Fp32 => each(bytes, f32::from_le_bytes),
        Datatype::Fp64 => each(bytes, |b| f64::from_le_bytes(b) as f32),
        Datatype::Fp16 => each(bytes, |b| f16_to_f32(u16::from_le_bytes(b))),
        Datatype::Bf16 => each(bytes, |b| {
            f32::from_bits(u32::from(u16::from_le_bytes(b)) << 16)
        }),
        Datatype::Int8 => each(bytes, |b: [u8; 1]| f32::from(b[0] as i8)),
        Datatype::Uint8 | Datatype::Bool => each(bytes, |b: [u8; 1]| f32::from(b[0])),
        Datatype::Int16 => each(bytes, |b| f32::from(i16::from_le_bytes(b))),
        Datatype::Uint16 => each(bytes, |b| f32::from(u16::from_le_bytes(b))),
        Datatype::Int32 => each(bytes, |b| i32::from_le_bytes(b) as f32),
        Datatype::Uint32 => each(bytes, |b| u32::from_le_bytes(b) as f32),
        Datatype::Int64 => each(bytes, |b| i64::from_le_bytes(b) as f32),
        Datatype::Uint64 => each(bytes, |b| u64::from_le_bytes(b) as f32),
        // Rejected before we get here (not numeric).
        Datatype::Bytes => Vec::new(),
    }
}

/// IEEE 754 half to single precision (exact: every half is a float).
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    match exp {
        0 => {
            // Zero or subnormal: mant × 2^-24.
            let magnitude = mant as f32 * f32::from_bits(0x3380_0000);
            if sign != 0 { -magnitude } else { magnitude }
        }
        0x1f => f32::from_bits(sign | 0x7f80_0000 | (mant << 13)),
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (mant << 13)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A request body laid out the way tritonclient.http lays it out: the
    /// JSON (with binary_data_size per input and binary outputs requested)
    /// followed by the raw little-endian bytes.
    fn tritonclient_body(shape: &[usize], data: &[f32], outputs: Value) -> (Vec<u8>, usize) {
        let size = data.len() * 4;
        let mut header = json!({
            "inputs": [{"name": "input", "shape": shape, "datatype": "FP32",
                        "parameters": {"binary_data_size": size}}],
        });
        match outputs {
            Value::Null => {
                header["parameters"] = json!({"binary_data_output": true});
            }
            o => header["outputs"] = o,
        }
        let mut body = serde_json::to_vec(&header).unwrap();
        let len = body.len();
        for x in data {
            body.extend_from_slice(&x.to_le_bytes());
        }
        (body, len)
    }

    #[test]
    fn decodes_tritonclient_binary_request_with_default_outputs() {
        let data: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
        let (body, len) = tritonclient_body(&[2, 3], &data, Value::Null);
        let req = decode_request(&body, Some(len)).unwrap();
        assert_eq!(req.inputs.len(), 1);
        assert_eq!(req.inputs[0].shape, vec![2, 3]);
        assert_eq!(req.inputs[0].data, data);
        assert_eq!(req.outputs.lookup("anything"), Some(true));
    }

    #[test]
    fn decodes_requested_outputs_binary_or_json() {
        let (body, len) = tritonclient_body(
            &[1],
            &[1.0],
            json!([{"name": "a", "parameters": {"binary_data": true}}, {"name": "b"}]),
        );
        let req = decode_request(&body, Some(len)).unwrap();
        assert_eq!(req.outputs.lookup("a"), Some(true));
        assert_eq!(req.outputs.lookup("b"), Some(false));
        assert_eq!(req.outputs.lookup("c"), None);
    }

    #[test]
    fn decodes_json_flat_and_nested() {
        let flat = br#"{"id":"q1","inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3,4]}]}"#;
        let nested =
            br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4]]}]}"#;
        let a = decode_request(flat, None).unwrap();
        let b = decode_request(nested, None).unwrap();
        assert_eq!(a.id.as_deref(), Some("q1"));
        assert_eq!(a.inputs, b.inputs);
        assert_eq!(a.inputs[0].data, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(a.outputs.lookup("y"), Some(false));
    }

    #[test]
    fn converts_other_numeric_datatypes() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "FP64",
                [1.5f64, -2.0]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            ),
            (
                "INT64",
                [3i64, -4].iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            ("INT8", vec![3u8, (-4i8) as u8]),
            (
                "UINT16",
                [3u16, 4].iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            // 1.5 and -2.0 in half precision.
            (
                "FP16",
                [0x3e00u16, 0xc000]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            ),
            // 1.5 and -2.0 in bfloat16.
            (
                "BF16",
                [0x3fc0u16, 0xc000]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            ),
        ];
        for (dt, bytes) in cases {
            let header = json!({"inputs": [{"name": "x", "shape": [2], "datatype": dt,
                "parameters": {"binary_data_size": bytes.len()}}]});
            let mut body = serde_json::to_vec(&header).unwrap();
            let len = body.len();
            body.extend_from_slice(&bytes);
            let req = decode_request(&body, Some(len)).unwrap();
            let d = &req.inputs[0].data;
            assert!(d[0] == 1.5 || d[0] == 3.0, "{dt}: {d:?}");
            assert!(d[1] == -2.0 || d[1] == -4.0 || d[1] == 4.0, "{dt}: {d:?}");
        }
    }

    #[test]
    fn half_precision_special_values() {
        assert_eq!(f16_to_f32(0x0000), 0.0);
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn binary_response_round_trips_through_the_client_decoder() {
        let response = InferResponse {
            model_name: "m".into(),
            model_version: Some("1".into()),
            id: Some("x".into()),
            parameters: Parameters::new(),
            outputs: vec![
                NamedTensor {
                    name: "a".into(),
                    shape: vec![2, 2],
                    data: vec![0.1, -0.2, 3.0, f32::MAX],
                },
                NamedTensor {
                    name: "b".into(),
                    shape: vec![1],
                    data: vec![7.0],
                },
            ],
        };
        for selection in [OutputSelection::all(true), OutputSelection::all(false)] {
            let enc = encode_response(&response, &selection);
            assert_eq!(enc.header_length.is_some(), selection.binary_by_default);
            let back = decode_response(&enc.body, enc.header_length).unwrap();
            assert_eq!(back, response);
        }
        // Only the requested output, JSON: short f32 printing, no binary tail.
        let only_b = OutputSelection {
            requested: vec![RequestedOutput {
                name: "a".into(),
                binary: false,
            }],
            binary_by_default: false,
        };
        let enc = encode_response(&response, &only_b);
        let text = String::from_utf8(enc.body).unwrap();
        assert!(text.contains("[0.1,-0.2,3.0,"), "{text}");
        assert!(!text.contains("\"b\""), "{text}");
    }

    #[test]
    fn binary_request_round_trips_through_the_server_decoder() {
        let request = InferRequest {
            id: Some("r".into()),
            parameters: Parameters::new(),
            inputs: vec![NamedTensor {
                name: "input".into(),
                shape: vec![3, 2],
                data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5],
            }],
            outputs: OutputSelection::all(true),
        };
        for binary in [true, false] {
            let enc = encode_request(&request, binary);
            assert_eq!(enc.header_length.is_some(), binary);
            let back = decode_request(&enc.body, enc.header_length).unwrap();
            assert_eq!(back, request);
        }
    }

    fn err(body: &[u8], header: Option<usize>) -> ProtocolError {
        match decode_request(body, header) {
            Ok(r) => panic!("expected an error, got {r:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let cases: Vec<(&[u8], Option<usize>, &str)> = vec![
            (b"{", None, "malformed JSON"),
            (b"[1,2]", None, "malformed JSON"),
            (b"{\"inputs\": 3}", None, "malformed JSON"),
            (br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1]}]}"#, None, "2 elements) but 1"),
            (br#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#, None, "non-negative"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP33","data":[1]}]}"#, None, "unknown datatype 'FP33'"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["a"]}]}"#, None, "BYTES is not supported"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["a"]}]}"#, None, "not a number"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#, None, "has no data"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#, None, "header missing"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":"4"}}]}"#, None, "binary_data_size"),
            (br#"{"inputs":[{"name":"x","shape":[4294967296,4294967296,4294967296],"datatype":"FP32","data":[]}]}"#, None, "too many elements"),
            (br#"{"inputs":[],"parameters":{"binary_data_output":1}}"#, None, "binary_data_output"),
            (br#"{"inputs":[],"outputs":[{"name":"y","parameters":{"binary_data":"yes"}}]}"#, None, "binary_data"),
        ];
        for (body, header, needle) in cases {
            let e = err(body, header);
            assert!(e.to_string().contains(needle), "{needle:?} not in {e}");
            assert!(e.status().is_client_error());
        }
    }

    #[test]
    fn binary_header_mismatches_are_caught() {
        let (body, len) = tritonclient_body(&[2], &[1.0, 2.0], Value::Null);
        // Header longer than the body.
        assert!(
            err(&body, Some(body.len() + 1))
                .to_string()
                .contains("has only")
        );
        // Header too short: the JSON is cut.
        assert!(matches!(
            err(&body, Some(len - 1)),
            ProtocolError::MalformedJson(_)
        ));
        // Header too long: JSON followed by a byte of binary data.
        assert!(matches!(
            err(&body, Some(len + 1)),
            ProtocolError::MalformedJson(_)
        ));
        // Missing bytes.
        let e = err(&body[..body.len() - 1], Some(len));
        assert!(e.to_string().contains("only 7 bytes"), "{e}");
        // Extra bytes.
        let mut long = body.clone();
        long.push(0);
        assert!(
            err(&long, Some(len))
                .to_string()
                .contains("belong to no tensor")
        );
        // Size that does not fit the shape.
        let header = json!({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32",
            "parameters": {"binary_data_size": 4}}]});
        let mut b = serde_json::to_vec(&header).unwrap();
        let l = b.len();
        b.extend_from_slice(&[0; 4]);
        assert!(err(&b, Some(l)).to_string().contains("takes 8 bytes"));
        // Both data and binary.
        let header = json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
            "data": [1], "parameters": {"binary_data_size": 4}}]});
        let mut b = serde_json::to_vec(&header).unwrap();
        let l = b.len();
        b.extend_from_slice(&[0; 4]);
        assert!(err(&b, Some(l)).to_string().contains("both"));
    }

    #[test]
    fn header_length_values() {
        assert_eq!(parse_header_length(None).unwrap(), None);
        assert_eq!(parse_header_length(Some(b"123")).unwrap(), Some(123));
        for bad in [&b"-1"[..], b"abc", b"", b"\xff", b"99999999999999999999999"] {
            assert!(matches!(
                parse_header_length(Some(bad)),
                Err(ProtocolError::BadHeaderLength { .. })
            ));
        }
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;
        use serde_json::{Value, json};

        fn any_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(|x| json!(x)),
                "[a-z]{0,4}".prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 32, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                    prop::collection::btree_map("(name|shape|datatype|data|parameters|binary_data_size|inputs|outputs|id|[a-z]{1,3})", inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            /// Arbitrary bytes with an arbitrary header length never panic.
            #[test]
            fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..600), header in prop::option::of(0usize..700)) {
                let _ = decode_request(&body, header);
                let _ = decode_response(&body, header);
            }

            /// Request-shaped JSON with arbitrary values, plus arbitrary
            /// binary bytes, is accepted only when consistent.
            #[test]
            fn arbitrary_request_json_never_panics(
                inputs in prop::collection::vec(any_json(), 0..3),
                shapes in prop::collection::vec(prop::collection::vec(-2i64..6, 0..4), 3),
                sizes in prop::collection::vec(prop::option::of(0usize..64), 3),
                datatypes in prop::collection::vec(prop_oneof![Just("FP32"), Just("FP16"), Just("INT8"), Just("BYTES"), Just("BOOL"), Just("X")], 3),
                tail in prop::collection::vec(any::<u8>(), 0..64),
            ) {
                let inputs: Vec<Value> = inputs.into_iter().enumerate().map(|(i, data)| {
                    let mut t = json!({"name": format!("t{i}"), "shape": shapes[i], "datatype": datatypes[i], "data": data});
                    if let Some(n) = sizes[i] {
                        t["parameters"] = json!({"binary_data_size": n});
                        if i % 2 == 0 { t.as_object_mut().unwrap().remove("data"); }
                    }
                    t
                }).collect();
                let mut body = serde_json::to_vec(&json!({"inputs": inputs})).unwrap();
                let len = body.len();
                body.extend_from_slice(&tail);
                if let Ok(req) = decode_request(&body, Some(len)) {
                    for t in &req.inputs {
                        prop_assert_eq!(t.data.len(), t.shape.iter().product::<usize>());
                    }
                }
            }

            /// Whatever f32 tensors we send, binary or JSON, the server
            /// decoder gets them back: bit for bit in binary, to f32 precision in
            /// JSON (which has no NaN or infinity).
            #[test]
            fn requests_round_trip(
                rows in 0usize..5,
                cols in 1usize..5,
                seed in prop::collection::vec(any::<f32>(), 25),
                binary in any::<bool>(),
            ) {
                let data: Vec<f32> = seed.iter().take(rows * cols).map(|x| if binary || x.is_finite() { *x } else { 0.0 }).collect();
                let request = InferRequest {
                    inputs: vec![NamedTensor { name: "x".into(), shape: vec![rows, cols], data }],
                    ..Default::default()
                };
                let enc = encode_request(&request, binary);
                let back = decode_request(&enc.body, enc.header_length).unwrap();
                let (got, sent) = (&back.inputs[0].data, &request.inputs[0].data);
                prop_assert_eq!(got.len(), sent.len());
                for (g, s) in got.iter().zip(sent) {
                    if binary {
                        prop_assert_eq!(g.to_bits(), s.to_bits());
                    } else {
                        // JSON text goes through f64 on the way back in.
                        prop_assert!(g == s || (g - s).abs() <= s.abs() * 1e-6, "{} != {}", g, s);
                    }
                }
            }
        }
    }
}
