//! The v2 worker over real HTTP on 127.0.0.1, with the linear fake model.

mod common;

use std::time::Duration;

use coded_sidecar::protocol::binary::{self, HEADER_LENGTH};
use coded_sidecar::protocol::client::{Client, ClientError, Encoding};
use coded_sidecar::protocol::v2::ErrorBody;
use coded_sidecar::protocol::{InferRequest, NamedTensor, OutputSelection};
use common::linear::{INPUTS, OUTPUTS, expected};
use common::{Linear, options, start};
use serde_json::{Value, json};

fn rows(n: usize, seed: usize) -> Vec<f32> {
    (0..n * INPUTS)
        .map(|i| ((i * 7 + seed * 13) % 17) as f32 / 4.0 - 2.0)
        .collect()
}

fn expected_rows(data: &[f32]) -> Vec<f32> {
    data.chunks(INPUTS).flat_map(expected).collect()
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4)
}

fn as_f32(v: &Value) -> Vec<f32> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<f32>) {
        match v {
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Number(n) => out.push(n.as_f64().unwrap() as f32),
            other => panic!("not a number: {other}"),
        }
    }
    walk(v, &mut out);
    out
}

async fn post_json(url: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn health_and_metadata() {
    let w = start(options(), Linear::default()).await;
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{}{path}", w.url)).send();

    let v2: Value = get("/v2").await.unwrap().json().await.unwrap();
    assert_eq!(
        v2["extensions"],
        json!([
            "binary_tensor_data",
            "model_repository",
            "schedule_policy",
            "statistics"
        ])
    );
    for path in [
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/linear/ready",
        "/v2/models/linear/versions/1/ready",
    ] {
        assert_eq!(get(path).await.unwrap().status(), 200, "{path}");
    }
    for path in ["/v2/models/linear", "/v2/models/linear/versions/1"] {
        let m: Value = get(path).await.unwrap().json().await.unwrap();
        assert_eq!(m["name"], "linear");
        assert_eq!(
            m["inputs"][0],
            json!({"name": "input", "datatype": "FP32", "shape": [-1, 4]})
        );
        assert_eq!(m["outputs"][0]["shape"], json!([-1, 3]));
    }
    for path in [
        "/v2/models/other",
        "/v2/models/linear/versions/2",
        "/v2/models/other/ready",
    ] {
        let r = get(path).await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let e: ErrorBody = r.json().await.unwrap();
        assert!(e.error.contains("unknown model"), "{}", e.error);
    }
    let r = get("/v3").await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(
        r.json::<ErrorBody>()
            .await
            .unwrap()
            .error
            .contains("no such endpoint")
    );
    let r = http.delete(format!("{}/v2", w.url)).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert!(
        r.json::<ErrorBody>()
            .await
            .unwrap()
            .error
            .contains("not allowed")
    );
    // The admin endpoint is off by default.
    assert_eq!(get("/admin/delay").await.unwrap().status(), 404);

    let c = Client::new(&w.url, Duration::from_secs(5)).unwrap();
    assert!(c.server_live().await.unwrap());
    assert!(c.server_ready().await.unwrap());
    assert!(c.model_ready("linear", Some("1")).await.unwrap());
    assert!(!c.model_ready("linear", Some("9")).await.unwrap());
    assert_eq!(
        c.model_metadata("linear", None).await.unwrap().platform,
        "test-linear"
    );
    assert_eq!(c.server_metadata().await.unwrap().name, "coded-sidecar");
}

#[tokio::test]
async fn json_requests_flat_nested_batched_and_not() {
    let w = start(options(), Linear::default()).await;
    let data = rows(3, 1);
    let nested: Vec<Vec<f32>> = data.chunks(INPUTS).map(<[f32]>::to_vec).collect();
    for (path, shape, payload) in [
        ("/v2/models/linear/infer", json!([3, 4]), json!(data)),
        (
            "/v2/models/linear/versions/1/infer",
            json!([3, 4]),
            json!(nested),
        ),
    ] {
        let (status, body) = post_json(
            &format!("{}{path}", w.url),
            json!({"id": "abc", "inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": payload}]}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["id"], "abc");
        assert_eq!(body["model_name"], "linear");
        assert_eq!(body["model_version"], "1");
        let out = &body["outputs"][0];
        assert_eq!(out["name"], "logits");
        assert_eq!(out["datatype"], "FP32");
        assert_eq!(out["shape"], json!([3, 3]));
        assert!(close(&as_f32(&out["data"]), &expected_rows(&data)), "{out}");
    }
    // No batch dimension: one row in, one row out, no batch dimension.
    let one = rows(1, 2);
    let (status, body) = post_json(
        &format!("{}/v2/models/linear/infer", w.url),
        json!({"inputs": [{"name": "input", "shape": [4], "datatype": "FP64", "data": one}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"][0]["shape"], json!([3]));
    assert!(close(&as_f32(&body["outputs"][0]["data"]), &expected(&one)));
    // Zero rows is an empty answer, not an error.
    let (status, body) = post_json(
        &format!("{}/v2/models/linear/infer", w.url),
        json!({"inputs": [{"name": "input", "shape": [0, 4], "datatype": "FP32", "data": []}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"][0]["shape"], json!([0, 3]));
}

/// Builds a request the way tritonclient.http does: JSON header with
/// `binary_data_size`, raw little-endian floats after it, the JSON length
/// in `Inference-Header-Content-Length`, and binary outputs asked for with
/// `binary_data_output` (no outputs listed) or per output.
fn tritonclient_request(data: &[f32], shape: &[usize], outputs: Option<Value>) -> (Vec<u8>, usize) {
    let mut header = json!({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32",
        "parameters": {"binary_data_size": data.len() * 4}}]});
    match outputs {
        None => header["parameters"] = json!({"binary_data_output": true}),
        Some(o) => header["outputs"] = o,
    }
    let mut body = serde_json::to_vec(&header).unwrap();
    let len = body.len();
    body.extend(data.iter().flat_map(|x| x.to_le_bytes()));
    (body, len)
}

#[tokio::test]
async fn binary_requests_like_tritonclient() {
    let w = start(options(), Linear::default()).await;
    let http = reqwest::Client::new();
    let data = rows(5, 3);
    let (body, len) = tritonclient_request(&data, &[5, 4], None);
    let r = http
        .post(format!("{}/v2/models/linear/infer", w.url))
        .header(HEADER_LENGTH, len)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let header = r.headers()[HEADER_LENGTH]
        .to_str()
        .unwrap()
        .parse::<usize>()
        .unwrap();
    let raw = r.bytes().await.unwrap();
    // Read the response the way tritonclient's InferResult does.
    let json: Value = serde_json::from_slice(&raw[..header]).unwrap();
    let out = &json["outputs"][0];
    assert_eq!(out["shape"], json!([5, 3]));
    assert_eq!(
        out["parameters"]["binary_data_size"],
        json!(5 * OUTPUTS * 4)
    );
    assert!(out.get("data").is_none());
    let floats: Vec<f32> = raw[header..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert!(close(&floats, &expected_rows(&data)));

    // Binary in, JSON out when the output asks for it.
    let (body, len) = tritonclient_request(
        &data,
        &[5, 4],
        Some(json!([{"name": "logits", "parameters": {"binary_data": false}}])),
    );
    let r = http
        .post(format!("{}/v2/models/linear/versions/1/infer", w.url))
        .header(HEADER_LENGTH, len)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get(HEADER_LENGTH).is_none());
    let json: Value = r.json().await.unwrap();
    assert!(close(
        &as_f32(&json["outputs"][0]["data"]),
        &expected_rows(&data)
    ));
}

#[tokio::test]
async fn client_binary_and_json_agree() {
    let w = start(options(), Linear::default()).await;
    let c = Client::new(&w.url, Duration::from_secs(5)).unwrap();
    let data = rows(7, 4);
    for (encoding, binary_out) in [
        (Encoding::Binary, true),
        (Encoding::Json, false),
        (Encoding::Binary, false),
    ] {
        let request = InferRequest {
            id: Some("q".into()),
            inputs: vec![NamedTensor {
                name: "input".into(),
                shape: vec![7, 4],
                data: data.clone(),
            }],
            outputs: OutputSelection::all(binary_out),
            ..Default::default()
        };
        let response = c.infer("linear", None, &request, encoding).await.unwrap();
        assert_eq!(response.id.as_deref(), Some("q"));
        let out = response.output("logits").unwrap();
        assert_eq!(out.shape, vec![7, 3]);
        assert!(close(&out.data, &expected_rows(&data)));
    }
    // A 4xx from the server carries its message and is not retryable.
    let bad = InferRequest {
        inputs: vec![NamedTensor {
            name: "input".into(),
            shape: vec![5],
            data: vec![0.0; 5],
        }],
        ..Default::default()
    };
    let e = c
        .infer("linear", None, &bad, Encoding::Binary)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::Status { status, .. } if status == 400),
        "{e}"
    );
    assert!(e.to_string().contains("has shape [5]"), "{e}");
    assert!(!e.is_retryable());
    // Nothing listening: a transport error, retryable.
    let dead = Client::new("http://127.0.0.1:9", Duration::from_secs(2)).unwrap();
    let e = dead
        .infer("linear", None, &bad, Encoding::Binary)
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");
}

#[tokio::test]
async fn bad_requests_get_4xx_with_a_reason() {
    let mut opts = options();
    opts.http.max_body_bytes = 4096;
    let w = start(opts, Linear::default()).await;
    let http = reqwest::Client::new();
    let infer = format!("{}/v2/models/linear/infer", w.url);
    let good_input =
        json!({"name": "input", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]});

    // (url, extra headers, body, expected status, words in the error)
    type Case<'a> = (String, Vec<(&'a str, String)>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (infer.clone(), vec![], b"{not json".to_vec(), 400, "malformed JSON"),
        (infer.clone(), vec![], b"".to_vec(), 400, "malformed JSON"),
        (infer.clone(), vec![], br#"{"inputs": {}}"#.to_vec(), 400, "malformed JSON"),
        (infer.clone(), vec![], json!({"inputs": [{"name": "input", "shape": [5], "datatype": "FP32", "data": [1,2,3,4,5]}]}).to_string().into_bytes(), 400, "has shape [5]"),
        (infer.clone(), vec![], json!({"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [1,2,3,4]}]}).to_string().into_bytes(), 400, "8 elements) but 4"),
        (infer.clone(), vec![], json!({"inputs": [{"name": "input", "shape": [4], "datatype": "BYTES", "data": ["a","b","c","d"]}]}).to_string().into_bytes(), 400, "BYTES is not supported"),
        (infer.clone(), vec![], json!({"inputs": [{"name": "input", "shape": [4], "datatype": "BOOL", "data": [true,false,true,true]}]}).to_string().into_bytes(), 400, "BOOL is not supported"),
        (infer.clone(), vec![], json!({"inputs": [{"name": "input", "shape": [4], "datatype": "float", "data": [1,2,3,4]}]}).to_string().into_bytes(), 400, "unknown datatype"),
        (infer.clone(), vec![], json!({"inputs": [{"name": "image", "shape": [4], "datatype": "FP32", "data": [1,2,3,4]}]}).to_string().into_bytes(), 400, "unexpected input 'image'"),
        (infer.clone(), vec![], json!({"inputs": []}).to_string().into_bytes(), 400, "missing input"),
        (infer.clone(), vec![], json!({"inputs": [good_input], "outputs": [{"name": "probs"}]}).to_string().into_bytes(), 400, "unexpected output 'probs'"),
        (format!("{}/v2/models/resnet/infer", w.url), vec![], json!({"inputs": [good_input]}).to_string().into_bytes(), 404, "unknown model 'resnet'"),
        (format!("{}/v2/models/linear/versions/3/infer", w.url), vec![], json!({"inputs": [good_input]}).to_string().into_bytes(), 404, "version '3'"),
        (infer.clone(), vec![], vec![b' '; 5000], 413, "larger than the limit of 4096"),
        (infer.clone(), vec![(HEADER_LENGTH, "abc".into())], json!({"inputs": [good_input]}).to_string().into_bytes(), 400, "Inference-Header-Content-Length"),
        (infer.clone(), vec![(HEADER_LENGTH, "100000".into())], json!({"inputs": [good_input]}).to_string().into_bytes(), 400, "but the body has only"),
        (infer.clone(), vec![], json!({"inputs": [{"name": "input", "shape": [4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}).to_string().into_bytes(), 400, "header missing"),
        (infer.clone(), vec![("content-encoding", "br".into())], b"x".to_vec(), 415, "unsupported Content-Encoding"),
        (infer.clone(), vec![("content-encoding", "gzip".into())], b"not gzip".to_vec(), 400, "invalid gzip body"),
    ];
    for (url, headers, body, status, needle) in cases {
        let mut call = http.post(&url).body(body);
        for (k, v) in headers {
            call = call.header(k, v);
        }
        let r = call.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{needle}");
        let e: ErrorBody = r.json().await.unwrap();
        assert!(e.error.contains(needle), "{needle:?} not in {:?}", e.error);
    }

    // Binary data one byte short of what the header says.
    let (mut body, len) = tritonclient_request(&rows(1, 0), &[4], None);
    body.pop();
    let r = http
        .post(&infer)
        .header(HEADER_LENGTH, len)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.json::<ErrorBody>()
            .await
            .unwrap()
            .error
            .contains("binary data mismatch")
    );

    // A body within the limit compressed but over it decompressed.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &vec![b' '; 10_000]).unwrap();
    let r = http
        .post(&infer)
        .header("content-encoding", "gzip")
        .body(gz.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // The server is still fine, and counted the errors by reason.
    let (status, _) = post_json(
        &infer,
        json!({"inputs": [{"name": "input", "shape": [4], "datatype": "FP32", "data": [1,2,3,4]}]}),
    )
    .await;
    assert_eq!(status, 200);
    let metrics = http
        .get(format!("{}/metrics", w.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "coded_worker_request_errors_total{model=\"linear\",reason=\"malformed_json\"} 3",
        "coded_worker_request_errors_total{model=\"linear\",reason=\"too_large\"} 2",
        "coded_worker_request_errors_total{model=\"linear\",reason=\"unknown_model\"} 2",
        "coded_worker_requests_total{model=\"linear\"} 22",
        "coded_worker_request_duration_seconds_count{model=\"linear\"} 1",
    ] {
        assert!(metrics.contains(needle), "{needle} missing in\n{metrics}");
    }
}

#[tokio::test]
async fn gzip_and_deflate_requests_are_accepted() {
    let w = start(options(), Linear::default()).await;
    let http = reqwest::Client::new();
    let data = rows(2, 5);
    let (body, len) = tritonclient_request(&data, &[2, 4], None);
    for enc in ["gzip", "deflate"] {
        let compressed = if enc == "gzip" {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, &body).unwrap();
            e.finish().unwrap()
        } else {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, &body).unwrap();
            e.finish().unwrap()
        };
        let r = http
            .post(format!("{}/v2/models/linear/infer", w.url))
            .header(HEADER_LENGTH, len)
            .header("content-encoding", enc)
            .body(compressed)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{enc}");
        let header =
            binary::parse_header_length(r.headers().get(HEADER_LENGTH).map(|v| v.as_bytes()))
                .unwrap();
        let raw = r.bytes().await.unwrap();
        let response = binary::decode_response(&raw, header).unwrap();
        assert!(close(&response.outputs[0].data, &expected_rows(&data)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched_and_each_gets_its_own_answer() {
    // With a queue delay, and without one (batches form while the model is busy).
    for delay_us in [5_000, 0] {
        concurrent_requests(delay_us).await;
    }
}

async fn concurrent_requests(delay_us: u64) {
    let mut opts = options();
    opts.max_batch_size = 16;
    opts.max_queue_delay_us = delay_us;
    let model = Linear {
        call_time: Duration::from_millis(5),
        ..Default::default()
    };
    let w = start(opts, model).await;
    let c = Client::new(&w.url, Duration::from_secs(10)).unwrap();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let n = 1 + i % 3;
            let data = rows(n, i);
            let request = InferRequest {
                inputs: vec![NamedTensor {
                    name: "input".into(),
                    shape: vec![n, 4],
                    data: data.clone(),
                }],
                outputs: OutputSelection::all(i % 2 == 0),
                ..Default::default()
            };
            let encoding = if i % 4 < 2 {
                Encoding::Binary
            } else {
                Encoding::Json
            };
            let response = c.infer("linear", None, &request, encoding).await.unwrap();
            let out = &response.outputs[0];
            assert_eq!(out.shape, vec![n, 3]);
            assert!(close(&out.data, &expected_rows(&data)), "request {i}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let batches = w.model.batches.lock().unwrap().clone();
    let total: usize = (0..64).map(|i| 1 + i % 3).sum();
    assert_eq!(batches.iter().sum::<usize>(), total);
    assert!(batches.iter().all(|&b| b <= 16), "{batches:?}");
    assert!(batches.len() < 64, "requests were not batched: {batches:?}");
    assert!(batches.iter().any(|&b| b > 3), "{batches:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_in_flight_requests_then_stops() {
    let mut opts = options();
    opts.inject_delay_ms = 300;
    opts.http.drain_delay_ms = 100;
    let mut w = start(opts, Linear::default()).await;
    let c = Client::new(&w.url, Duration::from_secs(5)).unwrap();
    let data = rows(2, 9);
    let request = InferRequest {
        inputs: vec![NamedTensor {
            name: "input".into(),
            shape: vec![2, 4],
            data: data.clone(),
        }],
        ..Default::default()
    };
    let in_flight = {
        let c = c.clone();
        let request = request.clone();
        tokio::spawn(async move { c.infer("linear", None, &request, Encoding::Binary).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    w.stop();
    // During the drain delay the worker says it is not ready.
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(!c.server_ready().await.unwrap());
    assert!(c.server_live().await.unwrap());

    let response = in_flight
        .await
        .unwrap()
        .expect("in-flight request answered");
    assert!(close(&response.outputs[0].data, &expected_rows(&data)));
    tokio::time::timeout(Duration::from_secs(5), w.task)
        .await
        .expect("drained in time")
        .unwrap()
        .unwrap();
    let after = Client::new(&w.url, Duration::from_secs(1)).unwrap();
    assert!(
        after.server_live().await.is_err(),
        "still accepting after drain"
    );
}

#[tokio::test]
async fn admin_endpoint_sets_the_injected_delay() {
    let mut opts = options();
    opts.admin = true;
    let w = start(opts, Linear::default()).await;
    let http = reqwest::Client::new();
    let delay_url = format!("{}/admin/delay", w.url);
    let v: Value = http
        .get(&delay_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"delay_ms": 0}));
    let r = http
        .post(&delay_url)
        .body("{\"delay_ms\": 200}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http.post(&delay_url).body("200").send().await.unwrap();
    assert_eq!(r.status(), 400);

    let started = std::time::Instant::now();
    let (status, _) = post_json(
        &format!("{}/v2/models/linear/infer", w.url),
        json!({"inputs": [{"name": "input", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

/// On one I/O thread (the default), a batch that takes long runs off it:
/// health checks and `/metrics` are answered while it runs, for the first
/// batch (its cost unknown) and for later ones (its cost known) alike. The
/// test's own client shares that thread, as the server's other
/// connections would.
#[tokio::test]
async fn health_and_metrics_answer_while_a_long_batch_runs() {
    let model = Linear {
        call_time: Duration::from_millis(1500),
        ..Linear::default()
    };
    let w = start(options(), model).await;
    let http = reqwest::Client::new();
    let batches = || w.model.batches.lock().unwrap().len();
    for round in 0..2 {
        let before = batches();
        let url = format!("{}/v2/models/linear/infer", w.url);
        let data = rows(1, round);
        let infer = tokio::spawn(async move {
            post_json(
                &url,
                json!({"inputs": [{"name": "input", "shape": [1, INPUTS], "datatype": "FP32", "data": data}]}),
            )
            .await
        });
        while batches() == before {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let asked = std::time::Instant::now();
        for path in ["/v2/health/ready", "/v2/health/live", "/metrics"] {
            let r = http.get(format!("{}{path}", w.url)).send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
        }
        let took = asked.elapsed();
        assert!(
            !infer.is_finished(),
            "batch {round}: health and /metrics waited for the batch ({took:?})"
        );
        eprintln!(
            "batch {round}: health, liveness and /metrics answered in {took:?} during a 1.5 s batch"
        );
        let (status, _) = infer.await.unwrap();
        assert_eq!(status, 200);
    }
}

/// A request with more rows than the largest batch is cut into batch-sized
/// model calls, answered in order; one over the row limit gets a 400 that
/// names the limit, and the model sees none of it.
#[tokio::test]
async fn big_requests_run_in_batch_sized_parts_and_the_row_limit_refuses_bigger_ones() {
    let mut opts = options();
    opts.max_batch_size = 8;
    opts.http.max_rows_per_request = 20;
    let w = start(opts, Linear::default()).await;
    let client = Client::new(&w.url, Duration::from_secs(10)).unwrap();
    let request = |n: usize| InferRequest {
        id: None,
        parameters: Default::default(),
        inputs: vec![NamedTensor {
            name: "input".into(),
            shape: vec![n, INPUTS],
            data: rows(n, n),
        }],
        outputs: OutputSelection::default(),
    };
    let r = client
        .infer("linear", None, &request(20), Encoding::Binary)
        .await
        .unwrap();
    assert!(close(&r.outputs[0].data, &expected_rows(&rows(20, 20))));
    assert_eq!(*w.model.batches.lock().unwrap(), vec![8, 8, 4]);

    let refused = client
        .infer("linear", None, &request(21), Encoding::Binary)
        .await
        .unwrap_err();
    let text = refused.to_string();
    assert!(
        text.contains("400") && text.contains("21 rows") && text.contains("at most 20"),
        "{text}"
    );
    assert_eq!(w.model.batches.lock().unwrap().len(), 3, "no work started");
}

/// Requests whose callers left while they queued (the frontend gives up a
/// late call once its batch is done) are skipped, not run: a worker that
/// was slow or paused does not work through answers nobody waits for
/// before the next live request.
#[tokio::test]
async fn requests_whose_callers_left_while_queued_are_not_run() {
    let model = Linear {
        // Long, so that the callers who leave do so while it runs, however
        // loaded the machine.
        call_time: Duration::from_millis(2000),
        ..Linear::default()
    };
    let mut opts = options();
    // Each request a batch of its own: two rows and three exceed it.
    opts.max_batch_size = 4;
    let w = start(opts, model).await;
    let batches = || w.model.batches.lock().unwrap().clone();
    let request = |n: usize| InferRequest {
        id: None,
        parameters: Default::default(),
        inputs: vec![NamedTensor {
            name: "input".into(),
            shape: vec![n, INPUTS],
            data: rows(n, n),
        }],
        outputs: OutputSelection::default(),
    };
    let send = |n: usize, timeout: Duration| {
        let (url, request) = (w.url.clone(), request(n));
        tokio::spawn(async move {
            let client = Client::new(&url, timeout).unwrap();
            client
                .infer("linear", None, &request, Encoding::Binary)
                .await
        })
    };
    // One row occupies the model; two and three rows queue behind it and
    // their callers give up after 100 ms; four rows queue after them.
    let first = send(1, Duration::from_secs(10));
    while batches().is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let left: Vec<_> = [2, 3]
        .into_iter()
        .map(|n| send(n, Duration::from_millis(100)))
        .collect();
    for call in left {
        let gone = call.await.unwrap();
        assert!(gone.is_err(), "the caller gave up: {gone:?}");
    }
    let last = send(4, Duration::from_secs(10));
    let data = rows(4, 4);
    let answer = last.await.unwrap().expect("the live request is answered");
    assert!(close(&answer.outputs[0].data, &expected_rows(&data)));
    first.await.unwrap().expect("the first request is answered");
    assert_eq!(batches(), vec![1, 4], "the abandoned requests ran");
}
