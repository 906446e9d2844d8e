//! What a served model looks like over v2, and checking requests against it.
//!
//! Our models take one FP32 tensor and give one FP32 tensor. A request may
//! carry the input's shape exactly (one row) or with a leading batch
//! dimension of N rows; each row is one query for coding.

use std::time::Duration;

use super::binary::{InferRequest, OutputSelection};
use super::error::ProtocolError;
use super::v2::{Datatype, ModelMetadata, TensorMetadata, size_parameter};

/// Name, shape (without the batch dimension) and datatype of a tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub datatype: Datatype,
}

impl TensorSpec {
    pub fn fp32(name: impl Into<String>, shape: Vec<usize>) -> Self {
        TensorSpec {
            name: name.into(),
            shape,
            datatype: Datatype::Fp32,
        }
    }

    /// Elements in one row.
    pub fn row_len(&self) -> usize {
        self.shape.iter().product()
    }

    fn metadata(&self) -> TensorMetadata {
        TensorMetadata {
            name: self.name.clone(),
            datatype: self.datatype.as_str().to_owned(),
            shape: std::iter::once(-1)
                .chain(self.shape.iter().map(|&d| d as i64))
                .collect(),
        }
    }
}

/// A model as the v2 surface presents it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub name: String,
    /// Served versions, e.g. `["1"]`; the last one answers unversioned calls.
    pub versions: Vec<String>,
    /// Free text shown as `platform` in metadata, e.g. `candle`.
    pub platform: String,
    pub input: TensorSpec,
    pub output: TensorSpec,
}

/// The rows of one request, ready for the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInput {
    pub rows: usize,
    /// Whether the request had a batch dimension (the response mirrors it).
    pub batched: bool,
    /// `rows × input.row_len()` values, row-major.
    pub data: Vec<f32>,
    /// The request's `timeout` parameter (Triton's schedule policy, in
    /// µs; absent or 0: none).
    pub timeout: Option<Duration>,
    /// The request's `priority` parameter (Triton's: 1 is the most urgent
    /// level; absent or 0 is the default level, after every given one).
    pub priority: u64,
}

impl ModelInfo {
    /// Metadata for `GET /v2/models/{name}`; `-1` marks the batch dimension.
    pub fn metadata(&self) -> ModelMetadata {
        ModelMetadata {
            name: self.name.clone(),
            versions: self.versions.clone(),
            platform: self.platform.clone(),
            inputs: vec![self.input.metadata()],
            outputs: vec![self.output.metadata()],
        }
    }

    /// Checks a model name and optional version from a URL; returns the
    /// version that answers.
    pub fn resolve(&self, name: &str, version: Option<&str>) -> Result<String, ProtocolError> {
        let unknown = || ProtocolError::UnknownModel {
            name: name.to_owned(),
            version: version.map(str::to_owned),
        };
        if name != self.name {
            return Err(unknown());
        }
        match version {
            Some(v) if self.versions.iter().any(|x| x == v) => Ok(v.to_owned()),
            Some(_) => Err(unknown()),
            None => Ok(self
                .versions
                .last()
                .cloned()
                .unwrap_or_else(|| "1".to_owned())),
        }
    }

    /// Takes the model's input out of a request and checks its shape and
    /// the requested outputs.
    pub fn take_input(&self, request: &mut InferRequest) -> Result<ModelInput, ProtocolError> {
        self.check_outputs(&request.outputs)?;
        let mut found = None;
        for (i, input) in request.inputs.iter().enumerate() {
            if input.name != self.input.name {
                return Err(ProtocolError::UnknownInput {
                    name: input.name.clone(),
                    expected: self.input.name.clone(),
                });
            }
            if found.replace(i).is_some() {
                return Err(ProtocolError::DuplicateInput(input.name.clone()));
            }
        }
        let index = found.ok_or_else(|| ProtocolError::MissingInput(self.input.name.clone()))?;
        let tensor = request.inputs.swap_remove(index);

        let expected = &self.input.shape;
        let (rows, batched) = if &tensor.shape == expected {
            (1, false)
        } else if tensor.shape.len() == expected.len() + 1 && &tensor.shape[1..] == expected {
            (tensor.shape[0], true)
        } else {
            return Err(ProtocolError::WrongShape {
                name: tensor.name,
                got: tensor.shape,
                expected: expected.clone(),
            });
        };
        let timeout = size_parameter(&request.parameters, "timeout")?
            .filter(|&us| us > 0)
            .map(|us| Duration::from_micros(us as u64));
        let priority = size_parameter(&request.parameters, "priority")?.unwrap_or(0) as u64;
        Ok(ModelInput {
            rows,
            batched,
            data: tensor.data,
            timeout,
            priority,
        })
    }

    /// Rejects requests for outputs the model does not have.
    pub fn check_outputs(&self, selection: &OutputSelection) -> Result<(), ProtocolError> {
        match selection
            .requested
            .iter()
            .find(|o| o.name != self.output.name)
        {
            Some(o) => Err(ProtocolError::UnknownOutput {
                name: o.name.clone(),
                expected: self.output.name.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Shape of the output for `rows` rows, with a batch dimension if the
    /// input had one.
    pub fn output_shape(&self, rows: usize, batched: bool) -> Vec<usize> {
        if batched {
            std::iter::once(rows)
                .chain(self.output.shape.iter().copied())
                .collect()
        } else {
            self.output.shape.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::binary::{NamedTensor, RequestedOutput};

    fn info() -> ModelInfo {
        ModelInfo {
            name: "mlp".into(),
            versions: vec!["1".into()],
            platform: "test".into(),
            input: TensorSpec::fp32("input", vec![4]),
            output: TensorSpec::fp32("logits", vec![2]),
        }
    }

    fn request(inputs: Vec<(&str, Vec<usize>)>) -> InferRequest {
        InferRequest {
            inputs: inputs
                .into_iter()
                .map(|(name, shape)| NamedTensor {
                    name: name.into(),
                    data: vec![0.0; shape.iter().product()],
                    shape,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn rows_with_and_without_batch_dimension() {
        let m = info();
        let one = m
            .take_input(&mut request(vec![("input", vec![4])]))
            .unwrap();
        assert_eq!((one.rows, one.batched, one.data.len()), (1, false, 4));
        let three = m
            .take_input(&mut request(vec![("input", vec![3, 4])]))
            .unwrap();
        assert_eq!((three.rows, three.batched, three.data.len()), (3, true, 12));
        assert_eq!(m.output_shape(3, true), vec![3, 2]);
        assert_eq!(m.output_shape(1, false), vec![2]);
    }

    #[test]
    fn wrong_inputs_are_rejected() {
        let m = info();
        let cases = [
            (vec![("input", vec![5])], "has shape [5]"),
            (vec![("input", vec![2, 2, 4])], "has shape [2, 2, 4]"),
            (vec![("other", vec![4])], "unexpected input 'other'"),
            (vec![], "missing input 'input'"),
            (
                vec![("input", vec![4]), ("input", vec![4])],
                "more than once",
            ),
        ];
        for (inputs, needle) in cases {
            let e = m.take_input(&mut request(inputs)).unwrap_err();
            assert!(e.to_string().contains(needle), "{needle:?} not in {e}");
        }
        let mut r = request(vec![("input", vec![4])]);
        r.outputs.requested.push(RequestedOutput {
            name: "probs".into(),
            binary: false,
        });
        let e = m.take_input(&mut r).unwrap_err();
        assert!(e.to_string().contains("unexpected output 'probs'"), "{e}");
    }

    #[test]
    fn resolves_names_and_versions() {
        let m = info();
        assert_eq!(m.resolve("mlp", None).unwrap(), "1");
        assert_eq!(m.resolve("mlp", Some("1")).unwrap(), "1");
        let e = m.resolve("mlp", Some("2")).unwrap_err();
        assert_eq!(e.to_string(), "unknown model 'mlp' version '2'");
        assert_eq!(e.status(), http::StatusCode::NOT_FOUND);
        assert!(m.resolve("resnet", None).is_err());
        assert_eq!(m.metadata().inputs[0].shape, vec![-1, 4]);
    }
}
