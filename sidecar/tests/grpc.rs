//! The gRPC front door (`inference.GRPCInferenceService`) with a tonic
//! client, in this process: against a worker serving the linear fake model
//! and the coding frontend in front of such workers. Answers must equal the
//! HTTP path's; mistakes and limits get their gRPC codes before any work is
//! done. Real processes: tests/grpc_processes.rs.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use coded_sidecar::grpc::GrpcPort;
use coded_sidecar::grpc::proto::infer_parameter::ParameterChoice;
use coded_sidecar::grpc::proto::model_infer_request::InferRequestedOutputTensor;
use coded_sidecar::grpc::proto::{
    ModelInferRequest, ModelMetadataRequest, ModelReadyRequest, RepositoryIndexRequest,
    ServerLiveRequest, ServerMetadataRequest, ServerReadyRequest,
};
use common::grpc::*;
use common::linear::{INPUTS, OUTPUTS, expected};
use common::{Linear, options, start, start_frontend_grpc};
use tonic::Code;

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

/// Triton's repository index over both doors, the extensions listed in
/// the server metadata, and the request id echoed on every path.
#[tokio::test]
async fn repository_index_extensions_and_request_ids() {
    let worker = start(options(), Linear::default()).await;
    let mut c = connect(worker.grpc.unwrap()).await;
    let index = c
        .repository_index(RepositoryIndexRequest {
            repository_name: String::new(),
            ready: true,
        })
        .await
        .unwrap()
        .into_inner()
        .models;
    assert_eq!(index.len(), 1);
    assert_eq!(
        (
            index[0].name.as_str(),
            index[0].version.as_str(),
            index[0].state.as_str()
        ),
        ("linear", "1", "READY")
    );
    let http = reqwest::Client::new();
    let listed: serde_json::Value = http
        .post(format!("{}/v2/repository/index", worker.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed,
        serde_json::json!([{"name": "linear", "version": "1", "state": "READY"}])
    );
    let bad = http
        .post(format!("{}/v2/repository/index", worker.url))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let extensions = c
        .server_metadata(ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner()
        .extensions;
    let v2: serde_json::Value = reqwest::get(format!("{}/v2", worker.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v2["extensions"], serde_json::json!(extensions));
    for e in ["binary_tensor_data", "model_repository", "schedule_policy"] {
        assert!(extensions.iter().any(|x| x == e), "{extensions:?}");
    }

    // gRPC, raw and typed; HTTP's JSON and binary paths are in the
    // stock-client tests (tests/python/test_extensions.py).
    for raw in [true, false] {
        let mut r = infer_request(
            "linear",
            "input",
            &[1, INPUTS as i64],
            &rows(1, INPUTS, 1),
            raw,
        );
        r.id = format!("id-{raw}");
        let answer = c.model_infer(r).await.unwrap().into_inner();
        assert_eq!(answer.id, format!("id-{raw}"));
    }
}
