//! The gRPC front door (`inference.GRPCInferenceService`) with a tonic
//! client: against a worker serving the linear fake model and the coding
//! frontend in front of such workers (in this process), against a real
//! `worker` process serving a trained candle MLP, and against the frontend
//! that `coded-sidecar local` starts. Answers must equal the HTTP path's;
//! mistakes and limits get their gRPC codes before any work is done.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use coded_sidecar::grpc::GrpcPort;
use coded_sidecar::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use coded_sidecar::grpc::proto::infer_parameter::ParameterChoice;
use coded_sidecar::grpc::proto::model_infer_request::{
    InferInputTensor, InferRequestedOutputTensor,
};
use coded_sidecar::grpc::proto::{
    InferTensorContents, ModelInferRequest, ModelInferResponse, ModelMetadataRequest,
    ModelReadyRequest, ServerLiveRequest, ServerMetadataRequest, ServerReadyRequest,
};
use coded_sidecar::local::Child;
use coded_sidecar::protocol::client::{Client, Encoding};
use coded_sidecar::protocol::{InferRequest, InferResponse, NamedTensor, OutputSelection};
use common::linear::{INPUTS, OUTPUTS, expected};
use common::{Linear, options, start, start_frontend_grpc};
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::Code;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_coded-sidecar");

type Grpc = GrpcInferenceServiceClient<Channel>;

async fn connect(addr: impl std::fmt::Display) -> Grpc {
    GrpcInferenceServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("gRPC connects")
        // Big enough for the oversized request test: the server, not the
        // client, is to refuse it.
        .max_decoding_message_size(usize::MAX)
}

fn rows(n: usize, row_len: usize, seed: usize) -> Vec<f32> {
    (0..n * row_len)
        .map(|i| ((i * 7 + seed * 13) % 17) as f32 / 17.0)
        .collect()
}

fn le(values: &[f32]) -> Bytes {
    values.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn tensor(name: &str, shape: &[i64], contents: Option<Vec<f32>>) -> InferInputTensor {
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
fn infer_request(
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
fn output(response: &ModelInferResponse) -> Vec<f32> {
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

fn reconstructed(response: &ModelInferResponse) -> bool {
    response
        .parameters
        .get("reconstructed")
        .and_then(|p| p.parameter_choice.clone())
        == Some(ParameterChoice::BoolParam(true))
}

fn http_request(input: &str, shape: &[usize], data: &[f32]) -> InferRequest {
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

async fn http_infer(url: &str, model: &str, request: &InferRequest) -> InferResponse {
    Client::new(url, Duration::from_secs(10))
        .expect("client")
        .infer(model, None, request, Encoding::Binary)
        .await
        .expect("HTTP infer")
}

fn assert_close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{a:?} vs {b:?}");
    }
}

fn code_of(result: Result<tonic::Response<ModelInferResponse>, tonic::Status>) -> tonic::Status {
    match result {
        Ok(r) => panic!("expected an error, got {:?}", r.into_inner()),
        Err(s) => s,
    }
}

#[tokio::test]
async fn health_and_metadata_over_grpc() {
    let worker = start(options(), Linear::default()).await;
    let mut c = connect(worker.grpc.expect("gRPC on by default")).await;
    assert!(
        c.server_live(ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let ready = |name: &str, version: &str| ModelReadyRequest {
        name: name.into(),
        version: version.into(),
    };
    assert!(
        c.model_ready(ready("linear", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        c.model_ready(ready("linear", "1"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        !c.model_ready(ready("linear", "2"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        !c.model_ready(ready("nope", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );

    let server = c
        .server_metadata(ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(server.name, "coded-sidecar");
    assert!(server.extensions.contains(&"binary_tensor_data".to_owned()));

    let meta = c
        .model_metadata(ModelMetadataRequest {
            name: "linear".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (meta.name.as_str(), meta.platform.as_str()),
        ("linear", "test-linear")
    );
    assert_eq!(meta.versions, vec!["1"]);
    assert_eq!(meta.inputs[0].name, "input");
    assert_eq!(meta.inputs[0].shape, vec![-1, INPUTS as i64]);
    assert_eq!(meta.outputs[0].shape, vec![-1, OUTPUTS as i64]);
    let missing = c
        .model_metadata(ModelMetadataRequest {
            name: "nope".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(
        missing.message().contains("unknown model 'nope'"),
        "{missing:?}"
    );
}

#[tokio::test]
async fn raw_and_typed_infer_equal_the_model_and_http() {
    let worker = start(options(), Linear::default()).await;
    let mut c = connect(worker.grpc.unwrap()).await;
    let data = rows(5, INPUTS, 1);
    let want: Vec<f32> = data.chunks(INPUTS).flat_map(expected).collect();
    let shape = [5, INPUTS as i64];

    let raw = c
        .model_infer(infer_request("linear", "input", &shape, &data, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(raw.raw_output_contents.len(), 1, "raw asked, raw answered");
    assert_eq!(raw.outputs[0].contents, None);
    assert_eq!(
        (raw.model_name.as_str(), raw.model_version.as_str()),
        ("linear", "1")
    );
    assert_eq!(raw.id, "req-1");
    assert_eq!(raw.outputs[0].name, "logits");
    assert_eq!(raw.outputs[0].datatype, "FP32");
    assert_eq!(raw.outputs[0].shape, vec![5, OUTPUTS as i64]);
    assert_close(&output(&raw), &want);

    let typed = c
        .model_infer(infer_request("linear", "input", &shape, &data, false))
        .await
        .unwrap()
        .into_inner();
    assert!(
        typed.raw_output_contents.is_empty(),
        "typed asked, typed answered"
    );
    assert_close(&output(&typed), &want);

    let http = http_infer(
        &worker.url,
        "linear",
        &http_request("input", &[5, INPUTS], &data),
    )
    .await;
    assert_close(&output(&raw), &http.outputs[0].data);

    // One row without a batch dimension, an explicit version and output.
    let mut one = infer_request("linear", "input", &[INPUTS as i64], &data[..INPUTS], true);
    one.model_version = "1".into();
    one.outputs = vec![InferRequestedOutputTensor {
        name: "logits".into(),
        parameters: HashMap::new(),
    }];
    let one = c.model_infer(one).await.unwrap().into_inner();
    assert_eq!(one.outputs[0].shape, vec![OUTPUTS as i64]);
    assert_close(&output(&one), &want[..OUTPUTS]);

    // Counted with the HTTP requests on the same metrics.
    let metrics = reqwest::get(format!("{}/metrics", worker.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("coded_worker_requests_total{model=\"linear\"} 4"),
        "{metrics}"
    );
}

#[tokio::test]
async fn malformed_requests_are_invalid_argument_and_compute_nothing() {
    let model = Linear::default();
    let worker = start(options(), model).await;
    let mut c = connect(worker.grpc.unwrap()).await;
    let data = rows(2, INPUTS, 2);
    let good = || infer_request("linear", "input", &[2, INPUTS as i64], &data, true);
    let mut cases: Vec<(ModelInferRequest, Code, &str)> = Vec::new();
    let mut r = good();
    r.inputs[0].shape = vec![2, INPUTS as i64 + 1];
    cases.push((r, Code::InvalidArgument, "bytes of data"));
    let mut r = good();
    r.inputs[0].shape = vec![1, 2, INPUTS as i64];
    cases.push((r, Code::InvalidArgument, "has shape [1, 2, 4]"));
    let mut r = good();
    r.inputs[0].name = "other".into();
    cases.push((r, Code::InvalidArgument, "unexpected input 'other'"));
    let mut r = good();
    r.inputs[0].datatype = "FLOAT".into();
    cases.push((r, Code::InvalidArgument, "unknown datatype"));
    let mut r = good();
    r.raw_input_contents.clear();
    cases.push((r, Code::InvalidArgument, "has no data"));
    let mut r = good();
    r.outputs.push(InferRequestedOutputTensor {
        name: "probs".into(),
        parameters: HashMap::new(),
    });
    cases.push((r, Code::InvalidArgument, "unexpected output 'probs'"));
    let mut r = good();
    r.model_version = "7".into();
    cases.push((r, Code::NotFound, "version '7'"));
    let mut r = good();
    r.model_name = "nope".into();
    cases.push((r, Code::NotFound, "unknown model 'nope'"));
    for (request, code, needle) in cases {
        let status = code_of(c.model_infer(request).await);
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains(needle),
            "{needle:?} not in {status:?}"
        );
    }
    assert!(
        worker.model.batches.lock().unwrap().is_empty(),
        "nothing computed"
    );
    // The server is still fine.
    assert_eq!(
        output(&c.model_infer(good()).await.unwrap().into_inner()).len(),
        2 * OUTPUTS
    );
}

#[tokio::test]
async fn over_the_limits_is_resource_exhausted_before_any_work() {
    let mut o = options();
    o.http.max_rows_per_request = 4;
    o.http.max_body_bytes = 4096;
    let worker = start(o, Linear::default()).await;
    let mut c = connect(worker.grpc.unwrap()).await;

    let five = rows(5, INPUTS, 3);
    let status = code_of(
        c.model_infer(infer_request(
            "linear",
            "input",
            &[5, INPUTS as i64],
            &five,
            true,
        ))
        .await,
    );
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("--max-rows-per-request"),
        "{status:?}"
    );

    // 300 rows of 4 floats: 4800 bytes of tensor alone.
    let big = rows(300, INPUTS, 4);
    let status = code_of(
        c.model_infer(infer_request(
            "linear",
            "input",
            &[300, INPUTS as i64],
            &big,
            true,
        ))
        .await,
    );
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("4096"), "{status:?}");
    assert!(
        worker.model.batches.lock().unwrap().is_empty(),
        "nothing computed"
    );

    let metrics = reqwest::get(format!("{}/metrics", worker.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("reason=\"too_many_rows\"} 1"), "{metrics}");
    // Within the limits it answers.
    let four = rows(4, INPUTS, 5);
    let ok = c
        .model_infer(infer_request(
            "linear",
            "input",
            &[4, INPUTS as i64],
            &four,
            true,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(output(&ok).len(), 4 * OUTPUTS);
}

#[tokio::test]
async fn grpc_can_be_turned_off_and_drains_with_http() {
    let mut off = options();
    off.http.grpc_port = Some(GrpcPort::Off);
    assert_eq!(start(off, Linear::default()).await.grpc, None);

    let mut o = options();
    o.http.drain_delay_ms = 400;
    let mut worker = start(o, Linear::default()).await;
    let addr = worker.grpc.unwrap();
    let mut c = connect(addr).await;
    worker.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Draining: not ready, still answering.
    assert!(
        !c.server_ready(ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let data = rows(1, INPUTS, 6);
    let r = c
        .model_infer(infer_request(
            "linear",
            "input",
            &[1, INPUTS as i64],
            &data,
            true,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_close(&output(&r), &expected(&data));
    tokio::time::timeout(Duration::from_secs(5), &mut worker.task)
        .await
        .expect("the server stops after the drain")
        .unwrap()
        .expect("clean stop");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "gRPC listener closed"
    );
}

#[tokio::test]
async fn the_frontend_answers_over_grpc_as_over_http() {
    let mut workers = Vec::new();
    for _ in 0..2 {
        workers.push(start(options(), Linear::default()).await);
    }
    let parity = start(options(), Linear::default()).await;
    let (url, grpc, _task) = start_frontend_grpc(&workers, &parity, |_| {}).await;
    let mut c = connect(grpc.expect("the frontend serves gRPC")).await;
    assert!(
        c.server_ready(ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let meta = c
        .model_metadata(ModelMetadataRequest {
            name: "linear".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.platform, "coded-sidecar-frontend");

    let data = rows(6, INPUTS, 7);
    let want: Vec<f32> = data.chunks(INPUTS).flat_map(expected).collect();
    for raw in [true, false] {
        let r = c
            .model_infer(infer_request(
                "linear",
                "input",
                &[6, INPUTS as i64],
                &data,
                raw,
            ))
            .await
            .unwrap()
            .into_inner();
        // The sum code is exact for a linear model: rebuilt or not, equal.
        assert_close(&output(&r), &want);
        assert!(
            matches!(
                r.parameters
                    .get("reconstructed")
                    .and_then(|p| p.parameter_choice.clone()),
                Some(ParameterChoice::BoolParam(_))
            ),
            "{r:?}"
        );
    }
    let http = http_infer(&url, "linear", &http_request("input", &[6, INPUTS], &data)).await;
    assert_close(&http.outputs[0].data, &want);

    let mut o = infer_request("linear", "input", &[2, INPUTS as i64], &data[..8], true);
    o.inputs[0].shape = vec![3, INPUTS as i64];
    assert_eq!(
        code_of(c.model_infer(o).await).code(),
        Code::InvalidArgument
    );
}

/// A base MLP and its k = 2 parity model, trained in seconds, laid out as
/// `local`'s model cache for `--base-epochs 1 --parity-epochs 1`.
fn models() -> PathBuf {
    static CACHE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CACHE
        .get_or_init(|| {
            let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("grpc-models");
            let _ = std::fs::remove_dir_all(&cache);
            let (base, parity) = common::models::train_pair(
                BIN,
                &cache.join("trained"),
                &["--epochs", "1", "--limit", "2000"],
                &["--epochs", "1", "--limit", "2000"],
            );
            std::fs::rename(base, cache.join("mlp-e1-s0")).unwrap();
            std::fs::rename(parity, cache.join("mlp-e1-s0-parity-k2-sum-e1")).unwrap();
            cache
        })
        .clone()
}

/// The same 784-value rows over gRPC (raw) and HTTP to one server; both
/// answers must agree. Through a frontend, rebuilt answers are asked again.
async fn compare_with_http(grpc: &str, url: &str, name: &str) {
    let mut c = connect(grpc).await;
    let meta = c
        .model_metadata(ModelMetadataRequest {
            name: name.into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.inputs[0].shape, vec![-1, 1, 28, 28]);
    assert_eq!(meta.outputs[0].shape, vec![-1, 10]);
    let data = rows(3, 784, 8);
    let mut last = None;
    for _ in 0..5 {
        let g = c
            .model_infer(infer_request(name, "input", &[3, 1, 28, 28], &data, true))
            .await
            .unwrap()
            .into_inner();
        let h = http_infer(url, name, &http_request("input", &[3, 1, 28, 28], &data)).await;
        let h_rebuilt = h.parameters.get("reconstructed") == Some(&serde_json::Value::Bool(true));
        if !reconstructed(&g) && !h_rebuilt {
            assert_close(&output(&g), &h.outputs[0].data);
            return;
        }
        last = Some(g);
    }
    panic!("every answer was rebuilt: {last:?}");
}

#[tokio::test]
async fn a_worker_process_serves_grpc_like_http() {
    let cache = models();
    let worker = Child::spawn_exe(
        BIN.as_ref(),
        "worker",
        &[
            "worker".to_owned(),
            "--model".to_owned(),
            cache.join("mlp-e1-s0").display().to_string(),
            "--port".to_owned(),
            "0".to_owned(),
        ],
        "warn",
    )
    .await
    .expect("worker starts");
    let grpc = worker.grpc.clone().expect("a free gRPC port with --port 0");
    compare_with_http(&grpc, &worker.url, "fashion-mlp").await;
    worker.stop().await;
}

#[tokio::test]
async fn the_frontend_of_local_serves_grpc_like_http() {
    let cache = models();
    let mut command = tokio::process::Command::new(BIN);
    command
        .args([
            "local",
            "--base-epochs",
            "1",
            "--parity-epochs",
            "1",
            "--port",
            "0",
        ])
        .arg("--cache-dir")
        .arg(&cache)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    coded_sidecar::local::process::die_with_parent(&mut command);
    let mut child = command.spawn().expect("local starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let (mut url, mut grpc) = (None, None);
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(at) = line.find(" at http://") {
                let rest = &line[at + 4..];
                url = rest
                    .split_whitespace()
                    .next()
                    .map(|u| u.trim_end_matches(':').to_owned());
            }
            if let Some(rest) = line.trim_start().strip_prefix("gRPC: ") {
                grpc = rest.split_whitespace().next().map(str::to_owned);
                break;
            }
        }
    })
    .await
    .expect("local prints its banner");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let (url, grpc) = (url.expect("frontend URL"), grpc.expect("gRPC address"));
    let addr: SocketAddr = grpc.parse().expect("host:port");
    assert_ne!(addr.port(), 8001, "--port 0 gives gRPC a free port too");
    compare_with_http(&grpc, &url, "fashion-mlp").await;

    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("local stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

/// Below the service: frames that are not a protobuf message and methods
/// not served, as any HTTP/2 client can send them, get the codes of gRPC's
/// status table (INTERNAL for an unparsable request, UNIMPLEMENTED for an
/// unknown method), and the server serves on.
#[tokio::test]
async fn undecodable_messages_and_unserved_methods_get_grpc_codes() {
    coded_sidecar::tls::init();
    let worker = start(options(), Linear::default()).await;
    let base = format!(
        "http://{}/inference.GRPCInferenceService",
        worker.grpc.unwrap()
    );
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    // One length-prefixed gRPC frame around `payload`.
    let frame = |payload: &[u8]| {
        let mut f = vec![0u8];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    let status = |response: &reqwest::Response| {
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .map(Code::from)
    };
    let call = |method: &str, body: Vec<u8>| {
        h2.post(format!("{base}/{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(body)
            .send()
    };
    // A field 1 (model_name) that claims 100 bytes but has 2.
    let garbage = call("ModelInfer", frame(&[0x0a, 100, b'h', b'i']))
        .await
        .unwrap();
    assert_eq!(status(&garbage), Some(Code::Internal), "{garbage:?}");
    let config = call("ModelConfig", frame(&[])).await.unwrap();
    assert_eq!(status(&config), Some(Code::Unimplemented), "{config:?}");
    assert!(
        worker.model.batches.lock().unwrap().is_empty(),
        "nothing computed"
    );
    let mut c = connect(worker.grpc.unwrap()).await;
    assert!(
        c.server_live(ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
}
