//! The Berrut code (`--code berrut`) over real HTTP on 127.0.0.1, in front
//! of workers serving the linear fake model with a bias, F(x) = Wx + b, a
//! model no parity model was ever trained for. Every answer is decoded
//! from the coded queries' answers and marked reconstructed; for this
//! affine F it must equal the code's own decode of F at the coded queries
//! for some set of at least k answers, and be near F(x). Two of a group's
//! n = k + 2 instances made slow at once under load lose nothing, with no
//! retry and no timeout.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use coded_sidecar::coding::{BerrutCode, CodeKind};
use coded_sidecar::frontend::FrontendOptions;
use coded_sidecar::protocol::client::{Client, Encoding};
use coded_sidecar::protocol::{InferRequest, InferResponse, NamedTensor, OutputSelection};
use common::linear::{INPUTS, OUTPUTS, expected_with_bias};
use common::{Linear, Running, options, start};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const BIAS: f32 = 0.75;

/// `n` workers with the biased linear model (admin API on) and a Berrut
/// frontend with k and n in front of them.
async fn setup(k: usize, n: usize) -> (Vec<Running>, String, JoinHandle<()>) {
    let mut admin = options();
    admin.admin = true;
    let mut workers = Vec::new();
    for _ in 0..n {
        let model = Linear {
            bias: BIAS,
            ..Linear::default()
        };
        workers.push(start(admin.clone(), model).await);
    }
    let urls: Vec<String> = workers.iter().map(|w| w.url.clone()).collect();
    let mut o = FrontendOptions::new(&urls, &[]);
    o.http.port = 0;
    o.model_name = Some("linear".into());
    o.code = CodeKind::Berrut;
    o.k = k;
    o.n = Some(n);
    o.timeout_ms = 10_000;
    let server = coded_sidecar::frontend::bind(&o)
        .await
        .expect("a Berrut frontend starts without parity instances");
    let url = format!("http://{}", server.local_addr().expect("local addr"));
    let task = tokio::spawn(async move {
        let _ = server.run(std::future::pending()).await;
    });
    (workers, url, task)
}

fn request(data: &[f32]) -> InferRequest {
    InferRequest {
        id: None,
        parameters: Default::default(),
        inputs: vec![NamedTensor {
            name: "input".into(),
            shape: vec![data.len() / INPUTS, INPUTS],
            data: data.to_vec(),
        }],
        outputs: OutputSelection::default(),
    }
}

fn reconstructed(r: &InferResponse) -> bool {
    r.parameters.get("reconstructed") == Some(&Value::Bool(true))
}

async fn metric(url: &str, name: &str) -> f64 {
    common::metric(url, name, "").await
}

/// What the frontend may answer for one group `rows` (k queries): the
/// decode of F at the coded queries from each set of at least one answer.
fn candidates(code: &BerrutCode, rows: &[f32]) -> Vec<Vec<f32>> {
    let n = code.n();
    let coded = code.encode_flat(rows, 1, INPUTS).unwrap();
    let answers: Vec<f32> = coded
        .chunks(INPUTS)
        .flat_map(|x| expected_with_bias(x, BIAS))
        .collect();
    (1u32..1 << n)
        .map(|mask| (0..n).filter(|i| mask & (1 << i) != 0).collect::<Vec<_>>())
        .filter(|s| s.len() >= code.k())
        .map(|s| {
            let outputs: Vec<f32> = s
                .iter()
                .flat_map(|&i| answers[i * OUTPUTS..(i + 1) * OUTPUTS].to_vec())
                .collect();
            code.decode_flat(&s, &outputs, 1, OUTPUTS).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn every_answer_is_decoded_marked_and_near_the_model_it_never_trained_for() {
    let (k, n) = (2, 3);
    let (_workers, url, _task) = setup(k, n).await;
    let code = BerrutCode::new(k, n).unwrap();
    let client = Client::new(&url, Duration::from_secs(10)).unwrap();
    for seed in 0..20usize {
        // One request of k rows is one group.
        let rows: Vec<f32> = (0..k * INPUTS)
            .map(|i| ((i * 7 + seed * 13) % 17) as f32 / 4.0 - 2.0)
            .collect();
        let r = client
            .infer("linear", None, &request(&rows), Encoding::Binary)
            .await
            .expect("answered");
        assert!(reconstructed(&r), "every Berrut answer is marked");
        let got = &r.outputs[0].data;
        let options = candidates(&code, &rows);
        assert!(
            options
                .iter()
                .any(|want| want.iter().zip(got).all(|(w, g)| (w - g).abs() < 1e-3)),
            "{got:?} is no decode of the coded answers: {options:?}"
        );
        // Approximate, yet near F(x): within the spread of the group.
        let truth: Vec<f32> = rows
            .chunks(INPUTS)
            .flat_map(|x| expected_with_bias(x, BIAS))
            .collect();
        let spread = (0..OUTPUTS)
            .map(|o| (truth[o] - truth[OUTPUTS + o]).abs())
            .fold(0f32, f32::max);
        for (t, g) in truth.iter().zip(got) {
            assert!(
                (t - g).abs() <= 0.5 * spread + 1e-3,
                "{got:?} is far from {truth:?}"
            );
        }
    }
    // A request of one row is padded with a zero query: no F(0) needed.
    let row = [1.0, -0.5, 0.25, 2.0];
    let r = client
        .infer("linear", None, &request(&row), Encoding::Binary)
        .await
        .expect("a lone query is answered");
    assert!(reconstructed(&r));
    assert_eq!(r.outputs[0].data.len(), OUTPUTS);
    assert!(
        metric(&url, "coded_frontend_reconstructions_total").await >= (20 * k + 1) as f64,
        "every answer counts as a reconstruction"
    );
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

/// 400 queries, two rows a request, from 8 clients; panics on any lost.
async fn load(url: &str, seed: usize) -> usize {
    let client = Client::new(url, Duration::from_secs(20)).unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (client, next) = (client.clone(), next.clone());
            tokio::spawn(async move {
                let mut answered = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= 200 {
                        return answered;
                    }
                    let rows: Vec<f32> = (0..2 * INPUTS)
                        .map(|v| ((v * 5 + i * 3 + seed) % 11) as f32 / 3.0 - 1.5)
                        .collect();
                    let r = client
                        .infer("linear", None, &request(&rows), Encoding::Binary)
                        .await
                        .unwrap_or_else(|e| panic!("request {i} lost: {e}"));
                    assert!(reconstructed(&r), "request {i} not marked");
                    assert_eq!(r.outputs[0].data.len(), 2 * OUTPUTS);
                    assert!(r.outputs[0].data.iter().all(|v| v.is_finite()));
                    answered += 2;
                }
            })
        })
        .collect();
    let mut all = 0;
    for t in tasks {
        all += t.await.unwrap();
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_n_instances_lost_at_once_under_load_lose_nothing_and_retry_nothing() {
    let (k, n) = (2, 4);
    let (workers, url, _task) = setup(k, n).await;
    assert_eq!(load(&url, 0).await, 400);
    let retries = metric(&url, "coded_frontend_retries_total").await;
    // Two instances of every group's four stop answering in time, at
    // once (slower than the 10 s deadline): each group decodes from the
    // other two.
    set_delay(&workers[0].url, 30_000).await;
    set_delay(&workers[2].url, 30_000).await;
    let started = std::time::Instant::now();
    assert_eq!(load(&url, 1).await, 400);
    // Had any batch waited for a lost instance, its requests would have
    // waited for the deadline (10 s); the load takes well under 1 s.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the load took {:?}: batches waited for the lost instances",
        started.elapsed()
    );
    assert_eq!(
        metric(&url, "coded_frontend_retries_total").await,
        retries,
        "k answers in: decoded, not retried"
    );
    assert_eq!(metric(&url, "coded_frontend_timeouts_total").await, 0.0);
    assert!(metric(&url, "coded_frontend_reconstructions_total").await >= 800.0);
}
