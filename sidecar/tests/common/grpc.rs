//! Helpers of the gRPC tests (tests/grpc.rs, tests/grpc_processes.rs): a
//! tonic client, requests with raw or typed contents, their HTTP twins,
//! and readers of the answers.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use coded_sidecar::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use coded_sidecar::grpc::proto::infer_parameter::ParameterChoice;
use coded_sidecar::grpc::proto::model_infer_request::InferInputTensor;
use coded_sidecar::grpc::proto::{InferTensorContents, ModelInferRequest, ModelInferResponse};
use coded_sidecar::protocol::client::{Client, Encoding};
use coded_sidecar::protocol::{InferRequest, InferResponse, NamedTensor, OutputSelection};
use tonic::transport::Channel;

pub type Grpc = GrpcInferenceServiceClient<Channel>;

pub async fn connect(addr: impl std::fmt::Display) -> Grpc {
    GrpcInferenceServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("gRPC connects")
        // Big enough for the oversized request test: the server, not the
        // client, is to refuse it.
        .max_decoding_message_size(usize::MAX)
}

pub fn rows(n: usize, row_len: usize, seed: usize) -> Vec<f32> {
    (0..n * row_len)
        .map(|i| ((i * 7 + seed * 13) % 17) as f32 / 17.0)
        .collect()
}

pub fn le(values: &[f32]) -> Bytes {
    values.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn from_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn tensor(name: &str, shape: &[i64], contents: Option<Vec<f32>>) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: "FP32".into(),
        shape: shape.to_vec(),
        parameters: HashMap::new(),
        contents: contents.map(|fp32_contents| InferTensorContents {
            fp32_contents,
            ..Default::default()
        }),
    }
}

/// `data` as one input of `shape`, raw (what tritonclient sends) or typed.
pub fn infer_request(
    model: &str,
    input: &str,
    shape: &[i64],
    data: &[f32],
    raw: bool,
) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        id: "req-1".into(),
        inputs: vec![tensor(input, shape, (!raw).then(|| data.to_vec()))],
        raw_input_contents: if raw { vec![le(data)] } else { Vec::new() },
        ..Default::default()
    }
}

/// The one output of a response, wherever it came.
pub fn output(response: &ModelInferResponse) -> Vec<f32> {
    match response.raw_output_contents.first() {
        Some(raw) => from_le(raw),
        None => response.outputs[0]
            .contents
            .as_ref()
            .expect("typed contents")
            .fp32_contents
            .clone(),
    }
}

pub fn reconstructed(response: &ModelInferResponse) -> bool {
    response
        .parameters
        .get("reconstructed")
        .and_then(|p| p.parameter_choice.clone())
        == Some(ParameterChoice::BoolParam(true))
}

pub fn http_request(input: &str, shape: &[usize], data: &[f32]) -> InferRequest {
    InferRequest {
        id: None,
        parameters: Default::default(),
        inputs: vec![NamedTensor {
            name: input.into(),
            shape: shape.to_vec(),
            data: data.to_vec(),
        }],
        outputs: OutputSelection::default(),
    }
}

pub async fn http_infer(url: &str, model: &str, request: &InferRequest) -> InferResponse {
    Client::new(url, Duration::from_secs(10))
        .expect("client")
        .infer(model, None, request, Encoding::Binary)
        .await
        .expect("HTTP infer")
}

pub fn assert_close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{a:?} vs {b:?}");
    }
}

pub fn code_of(
    result: Result<tonic::Response<ModelInferResponse>, tonic::Status>,
) -> tonic::Status {
    match result {
        Ok(r) => panic!("expected an error, got {:?}", r.into_inner()),
        Err(s) => s,
    }
}
