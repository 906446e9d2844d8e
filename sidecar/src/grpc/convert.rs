//! gRPC messages to the protocol's own types and back, so that an infer
//! request takes the same path to the engine whichever door it came in by.
//!
//! A tensor's elements come either as `raw_input_contents` (one entry per
//! input, little-endian, what tritonclient sends) or as the typed
//! `contents` field of each input; a response answers in kind, raw for raw
//! and typed for typed, so that a client that only reads typed contents
//! gets them by sending them.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::Value;

use super::proto::infer_parameter::ParameterChoice;
use super::proto::model_infer_request::InferInputTensor;
use super::proto::model_infer_response::InferOutputTensor;
use super::proto::{InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse};
use crate::protocol::binary::RequestedOutput;
use crate::protocol::tensor::{decode_raw, decode_values};
use crate::protocol::v2::{self, Datatype, Parameters};
use crate::protocol::{InferRequest, InferResponse, OutputSelection, ProtocolError};

/// A request's tensors, decoded, and whether they came as raw contents.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub request: InferRequest,
    pub raw: bool,
}

/// Decodes a `ModelInferRequest` (everything but the model name and
/// version, which the caller resolves first).
pub fn decode_request(message: ModelInferRequest) -> Result<Decoded, ProtocolError> {
    let ModelInferRequest {
        id,
        parameters,
        inputs,
        outputs,
        raw_input_contents,
        ..
    } = message;
    let raw = !raw_input_contents.is_empty();
    if raw && raw_input_contents.len() != inputs.len() {
        return Err(ProtocolError::BinaryMismatch(format!(
            "raw_input_contents has {} entries for {} inputs: give one per input, in order",
            raw_input_contents.len(),
            inputs.len()
        )));
    }
    let mut raw_contents = raw_input_contents.into_iter();
    let mut tensors = Vec::with_capacity(inputs.len());
    for input in inputs {
        let InferInputTensor {
            name,
            datatype,
            shape,
            contents,
            ..
        } = input;
        let tensor = match (raw_contents.next(), contents) {
            (Some(_), Some(_)) => {
                return Err(ProtocolError::BadData {
                    name,
                    reason: "has typed contents while the request uses raw_input_contents; send one kind"
                        .to_owned(),
                });
            }
            (Some(bytes), None) => decode_raw(&name, &shape, &datatype, &bytes)?,
            (None, Some(contents)) => {
                let values = typed_values(&name, &datatype, contents)?;
                decode_values(&name, &shape, &datatype, values)?
            }
            (None, None) => {
                return Err(ProtocolError::BadData {
                    name,
                    reason: "has no data: give its contents or raw_input_contents".to_owned(),
                });
            }
        };
        tensors.push(tensor);
    }
    let requested = outputs
        .into_iter()
        .map(|o| RequestedOutput {
            name: o.name,
            binary: raw,
        })
        .collect();
    Ok(Decoded {
        request: InferRequest {
            id: (!id.is_empty()).then_some(id),
            parameters: parameters_to_json(parameters),
            inputs: tensors,
            outputs: OutputSelection {
                requested,
                binary_by_default: raw,
            },
        },
        raw,
    })
}

/// The elements of a tensor's typed contents as `f32`, from the one field
/// its datatype uses; any other field set is a mistake worth naming.
fn typed_values(
    name: &str,
    datatype: &str,
    contents: InferTensorContents,
) -> Result<Vec<f32>, ProtocolError> {
    let dt = v2::numeric_datatype(name, datatype)?;
    let total = contents.bool_contents.len()
        + contents.int_contents.len()
        + contents.int64_contents.len()
        + contents.uint_contents.len()
        + contents.uint64_contents.len()
        + contents.fp32_contents.len()
        + contents.fp64_contents.len()
        + contents.bytes_contents.len();
    let (field, values): (&str, Vec<f32>) = match dt {
        Datatype::Fp32 => ("fp32_contents", contents.fp32_contents),
        Datatype::Fp64 => (
            "fp64_contents",
            contents.fp64_contents.iter().map(|&x| x as f32).collect(),
        ),
        Datatype::Int8 | Datatype::Int16 | Datatype::Int32 => (
            "int_contents",
            contents.int_contents.iter().map(|&x| x as f32).collect(),
        ),
        Datatype::Int64 => (
            "int64_contents",
            contents.int64_contents.iter().map(|&x| x as f32).collect(),
        ),
        Datatype::Uint8 | Datatype::Uint16 | Datatype::Uint32 => (
            "uint_contents",
            contents.uint_contents.iter().map(|&x| x as f32).collect(),
        ),
        Datatype::Uint64 => (
            "uint64_contents",
            contents.uint64_contents.iter().map(|&x| x as f32).collect(),
        ),
        Datatype::Bool => (
            "bool_contents",
            contents
                .bool_contents
                .iter()
                .map(|&x| f32::from(u8::from(x)))
                .collect(),
        ),
        Datatype::Fp16 | Datatype::Bf16 | Datatype::Bytes => {
            return Err(ProtocolError::BadData {
                name: name.to_owned(),
                reason: format!("{dt} has no typed contents: send it in raw_input_contents"),
            });
        }
    };
    if values.len() != total {
        return Err(ProtocolError::BadData {
            name: name.to_owned(),
            reason: format!(
                "a {dt} tensor's elements go in contents.{field}, but other fields of its contents are set"
            ),
        });
    }
    Ok(values)
}

/// Encodes a response: the outputs `selection` asks for, FP32, as raw
/// contents when `raw` else typed.
pub fn encode_response(
    response: InferResponse,
    selection: &OutputSelection,
    raw: bool,
) -> ModelInferResponse {
    let InferResponse {
        model_name,
        model_version,
        id,
        parameters,
        outputs,
    } = response;
    let mut tensors = Vec::with_capacity(outputs.len());
    let mut raw_output_contents = Vec::new();
    for output in outputs {
        if selection.lookup(&output.name).is_none() {
            continue;
        }
        let contents = if raw {
            let mut bytes = Vec::with_capacity(output.data.len() * 4);
            for x in &output.data {
                bytes.extend_from_slice(&x.to_le_bytes());
            }
            raw_output_contents.push(Bytes::from(bytes));
            None
        } else {
            Some(InferTensorContents {
                fp32_contents: output.data,
                ..Default::default()
            })
        };
        tensors.push(InferOutputTensor {
            name: output.name,
            datatype: Datatype::Fp32.as_str().to_owned(),
            // Shapes come from tensors we built, far below i64::MAX.
            shape: output.shape.iter().map(|&d| d as i64).collect(),
            parameters: HashMap::new(),
            contents,
        });
    }
    ModelInferResponse {
        model_name,
        model_version: model_version.unwrap_or_default(),
        id: id.unwrap_or_default(),
        parameters: parameters_from_json(parameters),
        outputs: tensors,
        raw_output_contents,
    }
}

/// A `ModelInferRequest` for `model` with `request`'s inputs as raw
/// contents (what tritonclient sends): the client side, for benchmarks.
pub fn raw_request(model: &str, request: &InferRequest) -> ModelInferRequest {
    let (inputs, raw_input_contents) = request
        .inputs
        .iter()
        .map(|t| {
            let tensor = InferInputTensor {
                name: t.name.clone(),
                datatype: Datatype::Fp32.as_str().to_owned(),
                // Shapes of tensors we built, far below i64::MAX.
                shape: t.shape.iter().map(|&d| d as i64).collect(),
                parameters: HashMap::new(),
                contents: None,
            };
            let bytes: Vec<u8> = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
            (tensor, Bytes::from(bytes))
        })
        .unzip();
    ModelInferRequest {
        model_name: model.to_owned(),
        id: request.id.clone().unwrap_or_default(),
        parameters: parameters_from_json(request.parameters.clone()),
        inputs,
        raw_input_contents,
        ..Default::default()
    }
}

/// gRPC parameters as the JSON map the rest of the server reads.
pub fn parameters_to_json(parameters: HashMap<String, InferParameter>) -> Parameters {
    parameters
        .into_iter()
        .map(|(key, p)| {
            let value = match p.parameter_choice {
                Some(ParameterChoice::BoolParam(b)) => Value::Bool(b),
                Some(ParameterChoice::Int64Param(i)) => Value::from(i),
                Some(ParameterChoice::Uint64Param(u)) => Value::from(u),
                Some(ParameterChoice::StringParam(s)) => Value::String(s),
                // NaN and infinities have no JSON form.
                Some(ParameterChoice::DoubleParam(d)) => Value::from(d),
                None => Value::Null,
            };
            (key, value)
        })
        .collect()
}

/// Response parameters (e.g. the frontend's `reconstructed`) as gRPC
/// parameters; what has no scalar form travels as its JSON text.
pub fn parameters_from_json(parameters: Parameters) -> HashMap<String, InferParameter> {
    parameters
        .into_iter()
        .map(|(key, value)| {
            let choice = match value {
                Value::Bool(b) => ParameterChoice::BoolParam(b),
                Value::String(s) => ParameterChoice::StringParam(s),
                Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                    (Some(i), _, _) => ParameterChoice::Int64Param(i),
                    (None, Some(u), _) => ParameterChoice::Uint64Param(u),
                    (None, None, Some(f)) => ParameterChoice::DoubleParam(f),
                    (None, None, None) => ParameterChoice::StringParam(n.to_string()),
                },
                other => ParameterChoice::StringParam(other.to_string()),
            };
            (
                key,
                InferParameter {
                    parameter_choice: Some(choice),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::proto::model_infer_request::InferRequestedOutputTensor;
    use crate::protocol::NamedTensor;

    fn input(
        shape: Vec<i64>,
        datatype: &str,
        contents: Option<InferTensorContents>,
    ) -> InferInputTensor {
        InferInputTensor {
            name: "x".into(),
            datatype: datatype.into(),
            shape,
            parameters: HashMap::new(),
            contents,
        }
    }

    fn raw_request(shape: Vec<i64>, datatype: &str, bytes: Vec<u8>) -> ModelInferRequest {
        ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![input(shape, datatype, None)],
            raw_input_contents: vec![Bytes::from(bytes)],
            ..Default::default()
        }
    }

    fn le(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn raw_fp32_and_other_raw_datatypes_decode() {
        let d =
            decode_request(raw_request(vec![2, 2], "FP32", le(&[1.0, -2.0, 3.5, 0.0]))).unwrap();
        assert!(d.raw);
        assert_eq!(d.request.inputs[0].shape, vec![2, 2]);
        assert_eq!(d.request.inputs[0].data, vec![1.0, -2.0, 3.5, 0.0]);
        assert!(d.request.outputs.binary_by_default);
        let ints: Vec<u8> = [7i32, -1].iter().flat_map(|x| x.to_le_bytes()).collect();
        let d = decode_request(raw_request(vec![2], "INT32", ints)).unwrap();
        assert_eq!(d.request.inputs[0].data, vec![7.0, -1.0]);
        // FP16 travels only as raw bytes: 1.0 and -2.0.
        let d = decode_request(raw_request(vec![2], "FP16", vec![0x00, 0x3c, 0x00, 0xc0])).unwrap();
        assert_eq!(d.request.inputs[0].data, vec![1.0, -2.0]);
    }

    #[test]
    fn typed_contents_decode_from_the_datatypes_field() {
        let fp32 = InferTensorContents {
            fp32_contents: vec![0.5, 1.5, 2.5],
            ..Default::default()
        };
        let request = ModelInferRequest {
            id: "7".into(),
            inputs: vec![input(vec![1, 3], "FP32", Some(fp32))],
            outputs: vec![InferRequestedOutputTensor {
                name: "y".into(),
                parameters: HashMap::new(),
            }],
            ..Default::default()
        };
        let d = decode_request(request).unwrap();
        assert!(!d.raw);
        assert_eq!(d.request.id.as_deref(), Some("7"));
        assert_eq!(d.request.inputs[0].data, vec![0.5, 1.5, 2.5]);
        assert_eq!(d.request.outputs.lookup("y"), Some(false));
        assert_eq!(d.request.outputs.lookup("z"), None);

        let ints = InferTensorContents {
            int64_contents: vec![3, -4],
            ..Default::default()
        };
        let d = decode_request(ModelInferRequest {
            inputs: vec![input(vec![2], "INT64", Some(ints))],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(d.request.inputs[0].data, vec![3.0, -4.0]);
    }

    fn error(request: ModelInferRequest) -> String {
        decode_request(request).unwrap_err().to_string()
    }

    #[test]
    fn malformed_requests_are_named() {
        let cases = [
            (
                raw_request(vec![3], "FP32", le(&[1.0, 2.0])),
                "takes 12 bytes",
            ),
            (
                raw_request(vec![-1, 2], "FP32", le(&[1.0, 2.0])),
                "non-negative",
            ),
            (
                raw_request(vec![1], "FLOAT", le(&[1.0])),
                "unknown datatype",
            ),
            (raw_request(vec![1], "BYTES", le(&[1.0])), "not supported"),
            (
                ModelInferRequest {
                    inputs: vec![input(vec![1], "FP32", None)],
                    ..Default::default()
                },
                "has no data",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input(vec![1], "FP32", None), input(vec![1], "FP32", None)],
                    raw_input_contents: vec![Bytes::from(le(&[1.0]))],
                    ..Default::default()
                },
                "1 entries for 2 inputs",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input(
                        vec![1],
                        "FP32",
                        Some(InferTensorContents {
                            fp32_contents: vec![1.0],
                            ..Default::default()
                        }),
                    )],
                    raw_input_contents: vec![Bytes::from(le(&[1.0]))],
                    ..Default::default()
                },
                "send one kind",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input(
                        vec![1],
                        "FP32",
                        Some(InferTensorContents {
                            int_contents: vec![1],
                            ..Default::default()
                        }),
                    )],
                    ..Default::default()
                },
                "go in contents.fp32_contents",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input(
                        vec![2],
                        "FP32",
                        Some(InferTensorContents {
                            fp32_contents: vec![1.0],
                            ..Default::default()
                        }),
                    )],
                    ..Default::default()
                },
                "2 elements",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input(vec![1], "FP16", Some(InferTensorContents::default()))],
                    ..Default::default()
                },
                "no typed contents",
            ),
        ];
        for (request, needle) in cases {
            let e = error(request);
            assert!(e.contains(needle), "{needle:?} not in {e}");
        }
    }

    fn response() -> InferResponse {
        let mut parameters = Parameters::new();
        parameters.insert("reconstructed".into(), Value::Bool(true));
        InferResponse {
            model_name: "m".into(),
            model_version: Some("1".into()),
            id: Some("9".into()),
            parameters,
            outputs: vec![NamedTensor {
                name: "y".into(),
                shape: vec![1, 2],
                data: vec![0.25, -1.0],
            }],
        }
    }

    #[test]
    fn responses_answer_in_kind() {
        let all = OutputSelection::all(true);
        let raw = encode_response(response(), &all, true);
        assert_eq!(
            raw.raw_output_contents,
            vec![Bytes::from(le(&[0.25, -1.0]))]
        );
        assert_eq!(raw.outputs[0].contents, None);
        assert_eq!(raw.outputs[0].shape, vec![1, 2]);
        assert_eq!(raw.outputs[0].datatype, "FP32");
        assert_eq!((raw.id.as_str(), raw.model_version.as_str()), ("9", "1"));
        assert_eq!(
            raw.parameters["reconstructed"].parameter_choice,
            Some(ParameterChoice::BoolParam(true))
        );

        let typed = encode_response(response(), &all, false);
        assert!(typed.raw_output_contents.is_empty());
        assert_eq!(
            typed.outputs[0]
                .contents
                .as_ref()
                .map(|c| c.fp32_contents.clone()),
            Some(vec![0.25, -1.0])
        );

        let none = OutputSelection {
            requested: vec![RequestedOutput {
                name: "other".into(),
                binary: true,
            }],
            binary_by_default: true,
        };
        let empty = encode_response(response(), &none, true);
        assert!(empty.outputs.is_empty() && empty.raw_output_contents.is_empty());
    }

    #[test]
    fn a_raw_request_decodes_to_what_it_was_built_from() {
        let request = InferRequest {
            id: Some("5".into()),
            inputs: vec![NamedTensor {
                name: "x".into(),
                shape: vec![2, 2],
                data: vec![1.0, 2.0, 3.0, -4.0],
            }],
            outputs: OutputSelection::all(true),
            ..Default::default()
        };
        let message = super::raw_request("m", &request);
        assert_eq!(message.model_name, "m");
        let decoded = decode_request(message).unwrap();
        assert!(decoded.raw);
        assert_eq!(decoded.request, request);
    }

    #[test]
    fn parameters_round_trip() {
        let mut p = HashMap::new();
        for (key, choice) in [
            ("b", ParameterChoice::BoolParam(true)),
            ("i", ParameterChoice::Int64Param(-3)),
            ("u", ParameterChoice::Uint64Param(u64::MAX)),
            ("s", ParameterChoice::StringParam("x".into())),
            ("d", ParameterChoice::DoubleParam(0.5)),
        ] {
            p.insert(
                key.to_owned(),
                InferParameter {
                    parameter_choice: Some(choice),
                },
            );
        }
        let json = parameters_to_json(p.clone());
        assert_eq!(json["u"], Value::from(u64::MAX));
        assert_eq!(parameters_from_json(json), p);
        let mut nested = Parameters::new();
        nested.insert("list".into(), serde_json::json!([1, 2]));
        assert_eq!(
            parameters_from_json(nested)["list"].parameter_choice,
            Some(ParameterChoice::StringParam("[1,2]".into()))
        );
    }
}
