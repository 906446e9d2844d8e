//! The frontend's bearer token (`--auth-token-file`): inference and
//! metadata need `Authorization: Bearer <token>` over HTTP and the
//! `authorization` metadata over gRPC; health checks stay open for probes.

mod common;

use std::time::Duration;

use coded_sidecar::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use coded_sidecar::grpc::proto::{
    ModelMetadataRequest, ServerLiveRequest, ServerMetadataRequest, ServerReadyRequest,
};
use common::grpc::{Grpc, assert_close, infer_request, output, rows};
use common::linear::{INPUTS, expected};
use common::{Linear, options, start, start_frontend_grpc};
use reqwest::StatusCode;
use tonic::Code;
use tonic::metadata::MetadataValue;

const TOKEN: &str = "t0ken-for-tests";

/// A frontend requiring [`TOKEN`] in front of linear workers: its HTTP URL
/// and gRPC client.
async fn guarded() -> (String, Grpc, Vec<common::Running>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).expect("write token");
    let models = vec![
        start(options(), Linear::default()).await,
        start(options(), Linear::default()).await,
    ];
    let parity = start(options(), Linear::default()).await;
    let (url, grpc, _task) = start_frontend_grpc(&models, &parity, |o| {
        o.auth_token_file = Some(file.clone());
    })
    .await;
    let grpc = GrpcInferenceServiceClient::connect(format!("http://{}", grpc.expect("gRPC on")))
        .await
        .expect("gRPC connects");
    let mut workers = models;
    workers.push(parity);
    (url, grpc, workers, dir)
}

fn infer_body(data: &[f32]) -> serde_json::Value {
    serde_json::json!({
        "inputs": [{"name": "input", "shape": [data.len() / INPUTS, INPUTS], "datatype": "FP32", "data": data}]
    })
}

#[tokio::test]
async fn http_needs_the_token_except_for_health() {
    let (url, _grpc, _workers, _dir) = guarded().await;
    let http = reqwest::Client::new();
    let data = rows(2, INPUTS, 1);
    let infer = |auth: Option<&str>| {
        let mut r = http
            .post(format!("{url}/v2/models/linear/infer"))
            .json(&infer_body(&data));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    for auth in [
        None,
        Some("Bearer wrong"),
        Some(TOKEN),
        Some("Basic t0ken-for-tests"),
    ] {
        let r = infer(auth).await.expect("answered");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(
            r.headers().get("www-authenticate").map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
        let body: serde_json::Value = r.json().await.expect("JSON error");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("bearer token")),
            "{body}"
        );
    }
    let r = infer(Some(&format!("Bearer {TOKEN}")))
        .await
        .expect("answered");
    assert_eq!(r.status(), StatusCode::OK);
    let body: serde_json::Value = r.json().await.expect("JSON");
    let got: Vec<f32> = serde_json::from_value(body["outputs"][0]["data"].clone()).expect("data");
    let want: Vec<f32> = data.chunks(INPUTS).flat_map(expected).collect();
    assert_close(&got, &want);

    // Metadata (and /metrics) are guarded too; health is not.
    for path in [
        "/v2",
        "/v2/models/linear",
        "/v2/models/linear/ready",
        "/metrics",
    ] {
        let r = http
            .get(format!("{url}{path}"))
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        let r = http
            .get(format!("{url}{path}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    for path in ["/v2/health/live", "/v2/health/ready"] {
        let r = http
            .get(format!("{url}{path}"))
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status(), StatusCode::OK, "{path} open for probes");
    }
}

fn with_auth<T>(message: T, auth: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(a) = auth {
        request
            .metadata_mut()
            .insert("authorization", MetadataValue::try_from(a).expect("ASCII"));
    }
    request
}

#[tokio::test]
async fn grpc_needs_the_token_except_for_health() {
    let (_url, mut c, _workers, _dir) = guarded().await;
    let data = rows(3, INPUTS, 2);
    let request = || infer_request("linear", "input", &[3, INPUTS as i64], &data, true);
    for auth in [None, Some("Bearer wrong"), Some(TOKEN)] {
        let status = c
            .model_infer(with_auth(request(), auth))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{auth:?}: {status}");
        let status = c
            .model_metadata(with_auth(
                ModelMetadataRequest {
                    name: "linear".into(),
                    version: String::new(),
                },
                auth,
            ))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated);
        let status = c
            .server_metadata(with_auth(ServerMetadataRequest {}, auth))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    let bearer = format!("Bearer {TOKEN}");
    let response = c
        .model_infer(with_auth(request(), Some(&bearer)))
        .await
        .expect("admitted")
        .into_inner();
    let want: Vec<f32> = data.chunks(INPUTS).flat_map(expected).collect();
    assert_close(&output(&response), &want);
    // Probes need no token.
    assert!(
        c.server_live(ServerLiveRequest {})
            .await
            .expect("live")
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(ServerReadyRequest {})
            .await
            .expect("ready")
            .into_inner()
            .ready
    );
}

#[tokio::test]
async fn an_unreadable_token_file_stops_the_frontend() {
    let worker = start(options(), Linear::default()).await;
    let mut o = coded_sidecar::frontend::FrontendOptions::new(
        std::slice::from_ref(&worker.url),
        std::slice::from_ref(&worker.url),
    );
    o.http.port = 0;
    o.model_name = Some("linear".into());
    o.auth_token_file = Some("/nonexistent/token".into());
    let e = tokio::time::timeout(Duration::from_secs(10), coded_sidecar::frontend::bind(&o))
        .await
        .expect("fails at once")
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("cannot read the auth token file /nonexistent/token"),
        "{e}"
    );
}

#[tokio::test]
async fn the_metrics_port_serves_metrics_alone_and_without_the_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("token");
    std::fs::write(&file, TOKEN).expect("write token");
    let models = [
        start(options(), Linear::default()).await,
        start(options(), Linear::default()).await,
    ];
    let parity = start(options(), Linear::default()).await;
    let mut o = coded_sidecar::frontend::FrontendOptions::new(
        &models.iter().map(|w| w.url.clone()).collect::<Vec<_>>(),
        std::slice::from_ref(&parity.url),
    );
    o.http.port = 0;
    o.http.metrics_port = Some(0);
    o.model_name = Some("linear".into());
    o.parity_model = Some("linear".into());
    o.auth_token_file = Some(file);
    let server = coded_sidecar::frontend::bind(&o)
        .await
        .expect("frontend starts");
    let url = format!("http://{}", server.local_addr().expect("addr"));
    let metrics_url = format!("http://{}", server.metrics_addr().expect("metrics port"));
    let _task = tokio::spawn(server.run(std::future::pending()));

    let http = reqwest::Client::new();
    let r = http
        .get(format!("{metrics_url}/metrics"))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.expect("text");
    assert!(text.contains("coded_frontend_"), "{text}");
    // Nothing but /metrics there: no inference, no metadata.
    for path in ["/v2", "/v2/models/linear", "/v2/health/ready"] {
        let r = http
            .get(format!("{metrics_url}{path}"))
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let r = http
        .post(format!("{metrics_url}/v2/models/linear/infer"))
        .json(&infer_body(&rows(1, INPUTS, 0)))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // The serving port keeps /metrics, behind the token.
    let r = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}
