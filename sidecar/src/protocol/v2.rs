//! JSON shapes of the Open Inference Protocol (KServe v2), as sent on the wire.
//!
//! These types mirror the protocol document field for field so that any v2
//! client or server (tritonclient, the kserve client, Triton, MLServer, curl)
//! round-trips through them. Tensor contents are turned into `f32` by
//! [`super::binary`]; this module only knows the JSON.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ProtocolError;

/// Free-form `parameters` object of requests, tensors and responses.
pub type Parameters = serde_json::Map<String, Value>;

/// Request parameter asking for every output as binary data (Triton
/// extension; tritonclient sets it when no outputs are listed).
pub const BINARY_DATA_OUTPUT: &str = "binary_data_output";
/// Tensor parameter giving the size in bytes of a tensor sent as binary data.
pub const BINARY_DATA_SIZE: &str = "binary_data_size";
/// Requested-output parameter asking for that output as binary data.
pub const BINARY_DATA: &str = "binary_data";

/// The JSON part of an inference request (the whole body without the binary
/// extension). `D` is the type of tensor `data`: a JSON value when parsing,
/// a borrowed `&[f32]` when encoding (so floats print in their short f32
/// form, not widened to f64).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestJson<D = Value> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Parameters::is_empty")]
    pub parameters: Parameters,
    pub inputs: Vec<InputJson<D>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<RequestedOutputJson>,
}

/// One input tensor: `data` (flat or nested arrays) or, with the binary
/// extension, `parameters.binary_data_size` and the bytes after the JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InputJson<D = Value> {
    pub name: String,
    /// Signed so that a `-1` is reported as a wrong shape, not a JSON error.
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default, skip_serializing_if = "Parameters::is_empty")]
    pub parameters: Parameters,
    // No `default` here: serde would then require `D: Default`; a missing
    // Option field is None anyway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<D>,
}

/// An output the caller wants back, and how (`parameters.binary_data`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestedOutputJson {
    pub name: String,
    #[serde(default, skip_serializing_if = "Parameters::is_empty")]
    pub parameters: Parameters,
}

/// The JSON part of an inference response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResponseJson<D = Value> {
    pub model_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Parameters::is_empty")]
    pub parameters: Parameters,
    pub outputs: Vec<OutputJson<D>>,
}

/// One output tensor of a response: `data` in JSON, or
/// `parameters.binary_data_size` and bytes after the JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutputJson<D = Value> {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default, skip_serializing_if = "Parameters::is_empty")]
    pub parameters: Parameters,
    // No `default` here: serde would then require `D: Default`; a missing
    // Option field is None anyway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<D>,
}

/// `GET /v2`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub extensions: Vec<String>,
}

/// `GET /v2/models/{name}[/versions/{v}]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    pub name: String,
    #[serde(default)]
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// A tensor in model metadata; `-1` marks the variable batch dimension.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Tensor element types of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Datatype {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Bf16,
    Fp32,
    Fp64,
    Bytes,
}

impl Datatype {
    pub fn as_str(self) -> &'static str {
        match self {
            Datatype::Bool => "BOOL",
            Datatype::Uint8 => "UINT8",
            Datatype::Uint16 => "UINT16",
            Datatype::Uint32 => "UINT32",
            Datatype::Uint64 => "UINT64",
            Datatype::Int8 => "INT8",
            Datatype::Int16 => "INT16",
            Datatype::Int32 => "INT32",
            Datatype::Int64 => "INT64",
            Datatype::Fp16 => "FP16",
            Datatype::Bf16 => "BF16",
            Datatype::Fp32 => "FP32",
            Datatype::Fp64 => "FP64",
            Datatype::Bytes => "BYTES",
        }
    }

    /// Bytes per element in the binary extension; `None` for BYTES, whose
    /// elements are length-prefixed.
    pub fn element_size(self) -> Option<usize> {
        match self {
            Datatype::Bool | Datatype::Uint8 | Datatype::Int8 => Some(1),
            Datatype::Uint16 | Datatype::Int16 | Datatype::Fp16 | Datatype::Bf16 => Some(2),
            Datatype::Uint32 | Datatype::Int32 | Datatype::Fp32 => Some(4),
            Datatype::Uint64 | Datatype::Int64 | Datatype::Fp64 => Some(8),
            Datatype::Bytes => None,
        }
    }

    /// Whether values of this type are converted to `f32` for the model.
    /// BOOL and BYTES are not numbers a model of ours could take.
    pub fn is_numeric(self) -> bool {
        !matches!(self, Datatype::Bool | Datatype::Bytes)
    }
}

impl fmt::Display for Datatype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of [`Datatype::from_str`]: the string is not a v2 datatype.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown datatype '{0}'")]
pub struct UnknownDatatype(pub String);

impl FromStr for Datatype {
    type Err = UnknownDatatype;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "BOOL" => Datatype::Bool,
            "UINT8" => Datatype::Uint8,
            "UINT16" => Datatype::Uint16,
            "UINT32" => Datatype::Uint32,
            "UINT64" => Datatype::Uint64,
            "INT8" => Datatype::Int8,
            "INT16" => Datatype::Int16,
            "INT32" => Datatype::Int32,
            "INT64" => Datatype::Int64,
            "FP16" => Datatype::Fp16,
            "BF16" => Datatype::Bf16,
            "FP32" => Datatype::Fp32,
            "FP64" => Datatype::Fp64,
            "BYTES" => Datatype::Bytes,
            _ => return Err(UnknownDatatype(s.to_owned())),
        })
    }
}

/// Parses a tensor's datatype and checks that it is one we turn into `f32`.
pub fn numeric_datatype(tensor: &str, datatype: &str) -> Result<Datatype, ProtocolError> {
    let dt = datatype
        .parse::<Datatype>()
        .map_err(|_| ProtocolError::UnknownDatatype {
            name: tensor.to_owned(),
            datatype: datatype.to_owned(),
        })?;
    if !dt.is_numeric() {
        return Err(ProtocolError::UnsupportedDatatype {
            name: tensor.to_owned(),
            datatype: datatype.to_owned(),
        });
    }
    Ok(dt)
}

/// Flattens JSON tensor `data` (a flat array, nested arrays in row-major
/// order, or a lone number for a scalar) into `f32` values.
///
/// Nesting is not checked against the shape: like Triton, only the element
/// count matters, which the caller checks. Depth is bounded by serde_json's
/// recursion limit, so this recursion cannot overflow the stack.
pub fn flatten_json_data(tensor: &str, data: &Value) -> Result<Vec<f32>, ProtocolError> {
    let mut out = Vec::new();
    flatten_into(tensor, data, &mut out)?;
    Ok(out)
}

fn flatten_into(tensor: &str, value: &Value, out: &mut Vec<f32>) -> Result<(), ProtocolError> {
    match value {
        Value::Array(items) => {
            out.reserve(items.len());
            for item in items {
                flatten_into(tensor, item, out)?;
            }
            Ok(())
        }
        // Precision beyond f32 is dropped on purpose: the models are f32.
        Value::Number(n) => match n.as_f64() {
            Some(x) => {
                out.push(x as f32);
                Ok(())
            }
            None => Err(bad_element(tensor, value)),
        },
        _ => Err(bad_element(tensor, value)),
    }
}

fn bad_element(tensor: &str, value: &Value) -> ProtocolError {
    let mut shown = value.to_string();
    if shown.len() > 40 {
        let cut = (0..=40)
            .rev()
            .find(|&i| shown.is_char_boundary(i))
            .unwrap_or(0);
        shown.truncate(cut);
        shown.push('…');
    }
    ProtocolError::BadData {
        name: tensor.to_owned(),
        reason: format!("data element {shown} is not a number"),
    }
}

/// Reads an optional boolean parameter; anything but a JSON bool is an error.
pub fn bool_parameter(params: &Parameters, key: &str) -> Result<Option<bool>, ProtocolError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ProtocolError::BadParameter {
            name: key.to_owned(),
            reason: format!("expected true or false, got {other}"),
        }),
    }
}

/// Reads an optional non-negative integer parameter.
pub fn size_parameter(params: &Parameters, key: &str) -> Result<Option<usize>, ProtocolError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| ProtocolError::BadParameter {
                name: key.to_owned(),
                reason: format!("expected a non-negative integer, got {v}"),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flattens_flat_nested_and_scalar_data() {
        assert_eq!(
            flatten_json_data("x", &json!([1, 2.5, -3])).unwrap(),
            vec![1.0, 2.5, -3.0]
        );
        assert_eq!(
            flatten_json_data("x", &json!([[1, 2], [3, 4]])).unwrap(),
            vec![1.0, 2.0, 3.0, 4.0]
        );
        assert_eq!(
            flatten_json_data("x", &json!([[[1], [2]], [[3], [4]]])).unwrap(),
            vec![1.0, 2.0, 3.0, 4.0]
        );
        assert_eq!(flatten_json_data("x", &json!(7)).unwrap(), vec![7.0]);
        assert!(flatten_json_data("x", &json!([])).unwrap().is_empty());
    }

    #[test]
    fn rejects_non_numbers_in_data() {
        for bad in [
            json!(["a"]),
            json!([[1], [true]]),
            json!([null]),
            json!({"a": 1}),
        ] {
            let err = flatten_json_data("x", &bad).unwrap_err();
            assert!(matches!(err, ProtocolError::BadData { .. }), "{err}");
            assert!(err.to_string().contains("not a number"), "{err}");
        }
    }

    #[test]
    fn long_bad_elements_are_shortened_on_a_char_boundary() {
        let long = "é".repeat(100);
        let err = flatten_json_data("x", &json!([long])).unwrap_err();
        assert!(err.to_string().len() < 120, "{err}");
    }

    #[test]
    fn datatypes_round_trip_and_classify() {
        for dt in [
            Datatype::Bool,
            Datatype::Uint8,
            Datatype::Uint64,
            Datatype::Int32,
            Datatype::Fp16,
            Datatype::Bf16,
            Datatype::Fp32,
            Datatype::Fp64,
            Datatype::Bytes,
        ] {
            assert_eq!(dt.as_str().parse::<Datatype>().unwrap(), dt);
        }
        assert!("fp32".parse::<Datatype>().is_err());
        assert_eq!(numeric_datatype("x", "FP64").unwrap(), Datatype::Fp64);
        assert!(matches!(
            numeric_datatype("x", "BYTES"),
            Err(ProtocolError::UnsupportedDatatype { .. })
        ));
        assert!(matches!(
            numeric_datatype("x", "FLOAT"),
            Err(ProtocolError::UnknownDatatype { .. })
        ));
    }

    #[test]
    fn request_json_accepts_what_tritonclient_sends() {
        let text = r#"{"id":"7","inputs":[{"name":"input","shape":[2,784],"datatype":"FP32",
            "parameters":{"binary_data_size":6272}}],
            "outputs":[{"name":"logits","parameters":{"binary_data":true}}]}"#;
        let req: RequestJson = serde_json::from_str(text).unwrap();
        assert_eq!(req.id.as_deref(), Some("7"));
        assert_eq!(req.inputs[0].shape, vec![2, 784]);
        assert_eq!(
            size_parameter(&req.inputs[0].parameters, BINARY_DATA_SIZE).unwrap(),
            Some(6272)
        );
        assert_eq!(
            bool_parameter(&req.outputs[0].parameters, BINARY_DATA).unwrap(),
            Some(true)
        );
    }

    #[test]
    fn parameters_of_the_wrong_type_are_errors() {
        let p: Parameters = serde_json::from_str(r#"{"a": "yes", "b": -1, "c": 1.5}"#).unwrap();
        assert!(bool_parameter(&p, "a").is_err());
        assert!(size_parameter(&p, "b").is_err());
        assert!(size_parameter(&p, "c").is_err());
        assert_eq!(bool_parameter(&p, "missing").unwrap(), None);
    }
}
