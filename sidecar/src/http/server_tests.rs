//! The server's limits and decoding, in process, with an engine whose
//! answers the test releases: what is refused while requests are held in
//! the engine, over both doors, and what is served while a large body is
//! being decoded.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use axum::http::StatusCode;
use prometheus::Registry;
use tokio::sync::{Notify, Semaphore};
use tonic::Code;

use super::server::{AppState, router};
use super::shedding::{INTERVAL, MIN_LIMIT, MIN_SAMPLES, ShedConfig};
use super::{Admission, Answer, Engine, EngineError, HttpOptions, Limit, RequestMetrics, V2Server};
use crate::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::grpc::proto::model_infer_request::InferInputTensor;
use crate::grpc::proto::{ModelInferRequest, ServerReadyRequest};
use crate::protocol::{ModelInfo, ModelInput, TensorSpec};

/// y = x0 + x1 per row; when gated, each call of more than one row waits
/// for a permit (one-row calls pass, to show what is served meanwhile).
struct Gated {
    info: ModelInfo,
    gate: Option<Semaphore>,
    calls: AtomicUsize,
    entered: Notify,
}

impl Gated {
    fn new(gated: bool) -> Arc<Self> {
        Arc::new(Gated {
            info: ModelInfo {
                name: "sum".into(),
                versions: vec!["1".into()],
                platform: "test".into(),
                input: TensorSpec::fp32("x", vec![2]),
                output: TensorSpec::fp32("y", vec![1]),
            },
            gate: gated.then(|| Semaphore::new(0)),
            calls: AtomicUsize::new(0),
            entered: Notify::new(),
        })
    }

    fn release(&self) {
        if let Some(g) = &self.gate {
            g.add_permits(1);
        }
    }
}

impl Engine for Gated {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    async fn infer(&self, input: ModelInput) -> Result<Answer, EngineError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.entered.notify_one();
        if let (Some(g), true) = (&self.gate, input.rows > 1) {
            g.acquire().await.expect("gate open").forget();
        }
        Ok(Answer::new(
            input.data.chunks(2).map(|r| r[0] + r[1]).collect(),
        ))
    }
}

struct Served {
    http: String,
    grpc: GrpcInferenceServiceClient<tonic::transport::Channel>,
}

async fn serve(engine: Arc<Gated>, tweak: impl FnOnce(&mut HttpOptions)) -> Served {
    crate::tls::init();
    let mut o = HttpOptions {
        port: 0,
        ..HttpOptions::default()
    };
    tweak(&mut o);
    let registry = Registry::new();
    let metrics = RequestMetrics::register(&registry, "coded_test", "sum").unwrap();
    let server = V2Server::bind(engine, metrics, registry, &o, axum::Router::new(), None)
        .await
        .unwrap();
    let http = format!("http://{}", server.local_addr().unwrap());
    let grpc = server.grpc_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));
    let grpc = GrpcInferenceServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    Served { http, grpc }
}

/// `rows` rows of [1, 2] as JSON, its numbers padded to `pad` digits.
fn json_body(rows: usize, pad: usize) -> String {
    let one = format!("1.0{}", "0".repeat(pad));
    let data = vec![format!("{one}, 2"); rows].join(", ");
    format!(r#"{{"inputs":[{{"name":"x","shape":[{rows},2],"datatype":"FP32","data":[{data}]}}]}}"#)
}

fn grpc_request(rows: usize) -> ModelInferRequest {
    let raw: Vec<u8> = (0..rows)
        .flat_map(|_| [1f32, 2f32])
        .flat_map(f32::to_le_bytes)
        .collect();
    ModelInferRequest {
        model_name: "sum".into(),
        inputs: vec![InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![rows as i64, 2],
            ..Default::default()
        }],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    }
}

fn spawn_post(url: &str, body: String) -> tokio::task::JoinHandle<reqwest::Response> {
    let url = url.to_owned();
    tokio::spawn(async move { post(&url, body).await })
}

async fn post(url: &str, body: String) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{url}/v2/models/sum/infer"))
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn refused_over_http(url: &str, body: String, flag: &str) {
    let r = post(url, body).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "1");
    let error: serde_json::Value = r.json().await.unwrap();
    let message = error["error"].as_str().unwrap();
    assert!(message.contains(flag), "{message}");
}

async fn metrics(url: &str) -> String {
    reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn over_the_request_limit_is_refused_on_both_doors_before_any_work() {
    let engine = Gated::new(true);
    let mut s = serve(engine.clone(), |o| {
        o.max_inflight_requests = Limit::of(1);
    })
    .await;
    let url = s.http.clone();
    let entered = engine.entered.notified();
    let held = spawn_post(&url, json_body(2, 0));
    entered.await;

    refused_over_http(&url, json_body(1, 0), "--max-inflight-requests").await;
    let status = s.grpc.model_infer(grpc_request(1)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("limit of 1 requests"),
        "{status:?}"
    );
    // Probes are never refused.
    let ready = reqwest::get(format!("{url}/v2/health/ready"))
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert!(
        s.grpc
            .server_ready(ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert_eq!(engine.calls.load(Ordering::SeqCst), 1, "nothing else ran");

    engine.release();
    assert_eq!(held.await.unwrap().status(), StatusCode::OK);
    // Its place is free again.
    engine.release();
    let r = s
        .grpc
        .model_infer(grpc_request(3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.raw_output_contents[0].len(), 3 * 4);
    let text = metrics(&url).await;
    assert!(
        text.contains(
            r#"coded_test_requests_refused_total{model="sum",reason="inflight_requests"} 2"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"coded_test_inflight_limit{model="sum"} 1"#),
        "the fixed cap is shown: {text}"
    );
}

#[tokio::test]
async fn over_the_byte_limit_is_refused_on_both_doors_before_any_work() {
    let engine = Gated::new(true);
    let mut s = serve(engine.clone(), |o| {
        o.max_body_bytes = 1000;
        o.max_inflight_bytes = Limit::of(1500);
    })
    .await;
    let url = s.http.clone();
    let big = json_body(10, 75);
    assert!((800..=1000).contains(&big.len()), "{}", big.len());
    let entered = engine.entered.notified();
    let held = spawn_post(&url, big.clone());
    entered.await;

    refused_over_http(&url, big, "--max-inflight-bytes").await;
    // 80 rows of two floats: 640 bytes of tensor.
    let status = s.grpc.model_infer(grpc_request(80)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("limit of 1500 bytes"),
        "{status:?}"
    );
    // A small one fits beside the held one.
    let small = post(&url, json_body(1, 0)).await;
    assert_eq!(small.status(), StatusCode::OK);
    assert_eq!(
        engine.calls.load(Ordering::SeqCst),
        2,
        "the refused ones never ran"
    );

    engine.release();
    assert_eq!(held.await.unwrap().status(), StatusCode::OK);
    engine.release();
    assert!(s.grpc.model_infer(grpc_request(80)).await.is_ok());
    let text = metrics(&url).await;
    assert!(text.contains(r#"reason="inflight_bytes"} 2"#), "{text}");
}

/// Waits until the engine has been called `n` times.
async fn calls_reach(engine: &Gated, n: usize) {
    while engine.calls.load(Ordering::SeqCst) < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_standing_queue_is_shed_on_both_doors_before_any_work() {
    let engine = Gated::new(true);
    let mut s = serve(engine.clone(), |o| {
        o.shed = Some(ShedConfig::with_target(Duration::from_millis(5)));
    })
    .await;
    let url = s.http.clone();
    // Unloaded: one-row requests pass the gate; a window of them, over
    // more than the shedder's interval, teaches it the base latency.
    for i in 0..=MIN_SAMPLES {
        if i == MIN_SAMPLES {
            tokio::time::sleep(INTERVAL + Duration::from_millis(10)).await;
        }
        assert_eq!(post(&url, json_body(1, 0)).await.status(), StatusCode::OK);
    }
    let fast = engine.calls.load(Ordering::SeqCst);
    // A standing queue: 20 requests held in the engine, then all answered
    // late, with more than the floor still in flight.
    let burst: Vec<_> = (0..20).map(|_| spawn_post(&url, json_body(2, 0))).collect();
    calls_reach(&engine, fast + 20).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..20 {
        engine.release();
    }
    for r in burst {
        assert_eq!(
            r.await.unwrap().status(),
            StatusCode::OK,
            "admitted, answered"
        );
    }
    // The cap is cut to the floor: MIN_LIMIT more are admitted...
    let held: Vec<_> = (0..MIN_LIMIT)
        .map(|_| spawn_post(&url, json_body(2, 0)))
        .collect();
    calls_reach(&engine, fast + 20 + MIN_LIMIT).await;
    // ...and one more is refused, unread, on either door.
    refused_over_http(&url, json_body(1, 0), "--shed-queue-delay-ms").await;
    let status = s.grpc.model_infer(grpc_request(1)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("shedding load"), "{status:?}");
    assert_eq!(
        engine.calls.load(Ordering::SeqCst),
        fast + 20 + MIN_LIMIT,
        "the refused never ran"
    );
    for _ in 0..MIN_LIMIT {
        engine.release();
    }
    for r in held {
        assert_eq!(r.await.unwrap().status(), StatusCode::OK);
    }
    let text = metrics(&url).await;
    assert!(
        text.contains(r#"coded_test_requests_refused_total{model="sum",reason="queue_delay"} 2"#),
        "{text}"
    );
    // The learnt cap is shown (too few answers since the cut to revise it).
    assert!(
        text.contains(&format!(
            r#"coded_test_inflight_limit{{model="sum"}} {MIN_LIMIT}"#
        )),
        "{text}"
    );
}

#[tokio::test]
async fn a_byte_limit_below_the_body_limit_is_refused_at_start() {
    let o = HttpOptions {
        port: 0,
        max_body_bytes: 1000,
        max_inflight_bytes: Limit::of(999),
        ..HttpOptions::default()
    };
    let registry = Registry::new();
    let metrics = RequestMetrics::register(&registry, "coded_test", "sum").unwrap();
    let e = V2Server::bind(
        Gated::new(false),
        metrics,
        registry,
        &o,
        axum::Router::new(),
        None,
    )
    .await
    .err()
    .unwrap();
    assert!(e.to_string().contains("--max-inflight-bytes 999"), "{e}");
}

/// With one I/O thread, a small request is answered while a large body
/// is held mid-decoding: its decoding is on another thread. (Were it on
/// the I/O thread, the hook would hold that thread and the small request
/// could only be answered after the hook gave up.)
#[tokio::test(flavor = "current_thread")]
async fn a_small_request_is_answered_while_a_large_body_is_decoded() {
    crate::tls::init();
    let engine = Gated::new(false);
    let registry = Registry::new();
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let gave_up = Arc::new(AtomicBool::new(false));
    let hook_gave_up = gave_up.clone();
    // Holds large bodies only: small ones, decoded inline, pass.
    let hook = move |size: usize| {
        if size <= super::decode::BLOCKING_ABOVE {
            return;
        }
        let _ = entered_tx.send(());
        let released = release_rx
            .lock()
            .map(|rx| rx.recv_timeout(Duration::from_secs(30)).is_ok())
            .unwrap_or(false);
        hook_gave_up.store(!released, Ordering::SeqCst);
    };
    let state = Arc::new(AppState {
        engine: engine.clone(),
        metrics: RequestMetrics::register(&registry, "coded_test", "sum").unwrap(),
        registry,
        draining: Arc::new(AtomicBool::new(false)),
        max_body_bytes: 64 << 20,
        max_rows: 1 << 20,
        admission: Admission::new(
            Limit::OFF,
            Limit::OFF,
            None,
            prometheus::IntCounterVec::new(prometheus::Opts::new("r", "r"), &["reason"]).unwrap(),
            prometheus::IntGauge::new("l", "l").unwrap(),
        ),
        decode_hook: Some(Arc::new(hook)),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await });

    let large = json_body(20_000, 0);
    assert!(large.len() > super::decode::BLOCKING_ABOVE);
    let large = spawn_post(&url, large);
    tokio::task::spawn_blocking(move || entered_rx.recv())
        .await
        .unwrap()
        .unwrap();

    let small = post(&url, json_body(1, 0)).await;
    assert_eq!(small.status(), StatusCode::OK);
    let answer: serde_json::Value = small.json().await.unwrap();
    assert_eq!(answer["outputs"][0]["data"], serde_json::json!([3.0]));

    release_tx.send(()).unwrap();
    assert_eq!(large.await.unwrap().status(), StatusCode::OK);
    assert!(
        !gave_up.load(Ordering::SeqCst),
        "the large body's decoding held the I/O thread"
    );
}
