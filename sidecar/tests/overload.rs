//! The coding frontend under overload, over real HTTP on 127.0.0.1, in
//! front of workers serving the linear fake model with an added delay:
//! what is over its limits is refused at once (503 + Retry-After, counted,
//! no query started for it) and every admitted request is answered right.
//! Behaviour, not timings: `bench overload` measures those.

mod common;

use std::time::Duration;

use coded_sidecar::http::Limit;
use common::linear::{INPUTS, expected};
use common::{Linear, Running, metric, options, start, start_frontend};
use serde_json::{Value, json};

struct Setup {
    _workers: Vec<Running>,
    url: String,
}

/// Two model workers and a parity worker (the linear model, no bias, so
/// the sum code is exact), each delaying its answers by `delay_ms`.
async fn setup(
    delay_ms: u64,
    tweak: impl FnOnce(&mut coded_sidecar::frontend::FrontendOptions),
) -> Setup {
    let mut admin = options();
    admin.admin = true;
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(start(admin.clone(), Linear::default()).await);
    }
    for w in &workers {
        set_delay(&w.url, delay_ms).await;
    }
    let (url, _task) = start_frontend(&workers[..2], &workers[2], tweak).await;
    Setup {
        _workers: workers,
        url,
    }
}

async fn set_delay(url: &str, ms: u64) {
    let r = reqwest::Client::new()
        .post(format!("{url}/admin/delay"))
        .json(&json!({ "delay_ms": ms }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn row(seed: usize) -> Vec<f32> {
    (0..INPUTS)
        .map(|i| ((i * 7 + seed * 13) % 17) as f32 / 4.0 - 2.0)
        .collect()
}

enum Outcome {
    Answered,
    Refused { flag: &'static str },
}

/// Sends one row as JSON and checks the answer: the model's exact output,
/// or a 503 with Retry-After whose message names the limit's flag.
async fn send(http: &reqwest::Client, url: &str, seed: usize) -> Outcome {
    let data = row(seed);
    let r = http
        .post(format!("{url}/v2/models/linear/infer"))
        .json(&json!({"inputs": [{"name": "input", "shape": [1, INPUTS], "datatype": "FP32", "data": data}]}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry_after = r.headers().get("retry-after").cloned();
    let body: Value = r.json().await.unwrap();
    match status {
        200 => {
            let got: Vec<f32> = body["outputs"][0]["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let want = expected(&data);
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-3, "want {want:?}, got {got:?}");
            }
            Outcome::Answered
        }
        503 => {
            assert_eq!(retry_after.as_ref().map(|v| v.as_bytes()), Some(&b"1"[..]));
            let message = body["error"].as_str().unwrap();
            let flag = ["--max-inflight-requests", "--shed-queue-delay-ms"]
                .into_iter()
                .find(|f| message.contains(f))
                .unwrap_or_else(|| panic!("a refusal naming no limit: {message}"));
            Outcome::Refused { flag }
        }
        s => panic!("{s}: {body}"),
    }
}

/// Sends `n` at once; returns (answered, refused by flag).
async fn burst(url: &str, n: usize) -> (usize, Vec<&'static str>) {
    let http = reqwest::Client::new();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (http, url) = (http.clone(), url.to_owned());
            tokio::spawn(async move { send(&http, &url, i).await })
        })
        .collect();
    let (mut answered, mut refused) = (0, Vec::new());
    for t in tasks {
        match t.await.unwrap() {
            Outcome::Answered => answered += 1,
            Outcome::Refused { flag } => refused.push(flag),
        }
    }
    (answered, refused)
}

#[tokio::test]
async fn a_burst_over_a_tiny_limit_is_refused_and_the_admitted_are_answered() {
    // Answers take 300 ms: the burst arrives while the first four wait.
    let s = setup(300, |o| {
        o.http.max_inflight_requests = Limit::of(4);
    })
    .await;
    let (answered, refused) = burst(&s.url, 40).await;
    assert!(answered >= 1 && !refused.is_empty(), "{answered} answered");
    assert_eq!(answered + refused.len(), 40);
    assert!(refused.iter().all(|f| *f == "--max-inflight-requests"));
    // Counted, and no query started for a refused request.
    let counted = metric(&s.url, "coded_frontend_requests_refused_total", "").await;
    assert_eq!(counted as usize, refused.len());
    let queries = metric(&s.url, "coded_frontend_queries_total", "").await;
    assert_eq!(queries as usize, answered);
    // Its places are free again.
    let (answered, refused) = burst(&s.url, 4).await;
    assert_eq!((answered, refused.len()), (4, 0));
}

#[tokio::test]
async fn a_standing_queue_at_the_frontend_is_shed_and_the_admitted_answered() {
    let s = setup(0, |_| {}).await;
    let http = reqwest::Client::new();
    // Unloaded, for over the shedder's 100 ms window: its base latency.
    for i in 0..12 {
        assert!(matches!(send(&http, &s.url, i).await, Outcome::Answered));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Every answer now takes 300 ms: bursts of 30 all wait, a standing
    // queue. Once the shedder has judged a window of their answers, the cap
    // is cut and the next burst is mostly refused.
    for w in &s._workers {
        set_delay(&w.url, 300).await;
    }
    let mut admitted = 0;
    let mut shed = Vec::new();
    for _ in 0..5 {
        let (answered, refused) = burst(&s.url, 30).await;
        admitted += answered;
        assert!(answered >= 1, "some pass even a cut cap");
        if !refused.is_empty() {
            shed = refused;
            break;
        }
    }
    assert!(
        !shed.is_empty() && shed.iter().all(|f| *f == "--shed-queue-delay-ms"),
        "{shed:?}"
    );
    let counted = metric(
        &s.url,
        "coded_frontend_requests_refused_total",
        "queue_delay",
    )
    .await;
    assert_eq!(counted as usize, shed.len());
    let queries = metric(&s.url, "coded_frontend_queries_total", "").await;
    assert_eq!(
        queries as usize,
        12 + admitted,
        "none started for the refused"
    );
}
