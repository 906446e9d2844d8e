//! The coding frontend over real HTTP on 127.0.0.1, in front of workers
//! serving the linear fake model with a bias b: F(x) = Wx + b. The sum code
//! is exact for the parity model F_P(x) = Wx + k·b (F_P(X₁ + X₂) = F(X₁) +
//! F(X₂) for k = 2), so reconstructed answers must equal the real ones; and
//! since F, F_P and F(0) all differ, a role mix-up or a padded group
//! decoded with F(0) = 0 shows.

mod common;

use std::time::{Duration, Instant};

use coded_sidecar::frontend::{FrontendOptions, ReconstructPolicy};
use coded_sidecar::protocol::client::{Client, ClientError, Encoding};
use coded_sidecar::protocol::{InferRequest, InferResponse, NamedTensor, OutputSelection};
use common::linear::{INPUTS, OUTPUTS, expected_with_bias};
use common::{Linear, Running, options, start, start_frontend};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

struct Setup {
    models: Vec<Running>,
    parity: Running,
    url: String,
    _frontend: JoinHandle<()>,
}

/// The models' bias; the parity model's is k (2) times it.
const BIAS: f32 = 0.75;

async fn setup(models: usize, tweak: impl FnOnce(&mut FrontendOptions)) -> Setup {
    let mut admin = options();
    admin.admin = true;
    let mut workers = Vec::new();
    let biased = |bias| Linear {
        bias,
        ..Linear::default()
    };
    for _ in 0..models {
        workers.push(start(admin.clone(), biased(BIAS)).await);
    }
    let parity = start(admin, biased(2.0 * BIAS)).await;
    let (url, task) = start_frontend(&workers, &parity, tweak).await;
    Setup {
        models: workers,
        parity,
        url,
        _frontend: task,
    }
}

fn rows(n: usize, seed: usize) -> Vec<f32> {
    (0..n * INPUTS)
        .map(|i| ((i * 7 + seed * 13) % 17) as f32 / 4.0 - 2.0)
        .collect()
}

fn request(data: Vec<f32>) -> InferRequest {
    InferRequest {
        id: Some("q".into()),
        parameters: Default::default(),
        inputs: vec![NamedTensor {
            name: "input".into(),
            shape: vec![data.len() / INPUTS, INPUTS],
            data,
        }],
        outputs: OutputSelection::default(),
    }
}

async fn infer(c: &Client, data: Vec<f32>) -> Result<InferResponse, ClientError> {
    c.infer("linear", None, &request(data), Encoding::Binary)
        .await
}

fn assert_exact(data: &[f32], output: &[f32]) {
    let want: Vec<f32> = data
        .chunks(INPUTS)
        .flat_map(|row| expected_with_bias(row, BIAS))
        .collect();
    assert_eq!(want.len(), output.len());
    for (w, g) in want.iter().zip(output) {
        assert!((w - g).abs() < 1e-3, "want {want:?}\n got {output:?}");
    }
}

fn reconstructed(r: &InferResponse) -> bool {
    r.parameters.get("reconstructed") == Some(&Value::Bool(true))
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

async fn metric(url: &str, name: &str) -> f64 {
    common::metric(url, name, "").await
}

#[tokio::test]
async fn answers_match_the_workers_when_nothing_fails() {
    let s = setup(2, |_| {}).await;
    let front = Client::new(&s.url, Duration::from_secs(5)).unwrap();
    let direct = Client::new(&s.models[0].url, Duration::from_secs(5)).unwrap();
    let meta = front.model_metadata("linear", None).await.unwrap();
    assert_eq!(meta.inputs[0].shape, vec![-1, INPUTS as i64]);
    assert_eq!(meta.outputs[0].shape, vec![-1, OUTPUTS as i64]);
    for n in [1, 2, 3, 7] {
        let data = rows(n, n);
        for encoding in [Encoding::Binary, Encoding::Json] {
            let via = front
                .infer("linear", None, &request(data.clone()), encoding)
                .await
                .unwrap();
            let own = direct
                .infer("linear", None, &request(data.clone()), encoding)
                .await
                .unwrap();
            assert_eq!(via.outputs[0].shape, own.outputs[0].shape);
            assert_exact(&data, &via.outputs[0].data);
            assert_exact(&data, &own.outputs[0].data);
            assert_eq!(via.id.as_deref(), Some("q"));
        }
    }
    // Concurrent single-row requests share coding groups and still get
    // their own answers.
    let calls = (0..40).map(|i| {
        let front = front.clone();
        tokio::spawn(async move {
            let data = rows(1, i);
            let r = infer(&front, data.clone()).await.unwrap();
            assert_exact(&data, &r.outputs[0].data);
        })
    });
    for c in calls.collect::<Vec<_>>() {
        c.await.unwrap();
    }
    assert_eq!(
        metric(&s.url, "coded_frontend_queries_total").await,
        1.0 * (1 + 2 + 3 + 7) as f64 * 2.0 + 40.0
    );
    assert_eq!(metric(&s.url, "coded_frontend_timeouts_total").await, 0.0);
}

#[tokio::test]
async fn a_straggler_is_reconstructed_exactly_and_then_avoided() {
    let s = setup(2, |_| {}).await;
    set_delay(&s.models[1].url, 400).await;
    let front = Client::new(&s.url, Duration::from_secs(5)).unwrap();
    let mut rebuilt = 0;
    let started = Instant::now();
    for i in 0..30 {
        let data = rows(2, i);
        let r = infer(&front, data.clone()).await.unwrap();
        assert_exact(&data, &r.outputs[0].data);
        if reconstructed(&r) {
            rebuilt += 1;
            assert_eq!(
                r.parameters["reconstructed_rows"].as_array().unwrap().len(),
                1
            );
        }
    }
    // 30 requests in far less than one straggler delay each.
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert!(rebuilt >= 1, "the slow instance's queries are rebuilt");
    assert!(rebuilt < 30, "dispatch stops sending to the straggler");
    assert_eq!(
        metric(&s.url, "coded_frontend_reconstructions_total").await,
        rebuilt as f64
    );
}

#[tokio::test]
async fn deadline_policy_waits_for_the_real_answer_first() {
    let s = setup(2, |o| o.reconstruct_policy = ReconstructPolicy::Deadline).await;
    let front = Client::new(&s.url, Duration::from_secs(5)).unwrap();
    // Warm the latency windows with fast calls: none is rebuilt.
    for i in 0..20 {
        let data = rows(2, i);
        let r = infer(&front, data.clone()).await.unwrap();
        assert!(!reconstructed(&r));
        assert_exact(&data, &r.outputs[0].data);
    }
    // One instance turns slow: its row is rebuilt once the observed p99
    // has passed, long before its own answer would come.
    set_delay(&s.models[0].url, 1000).await;
    let started = Instant::now();
    let data = rows(2, 99);
    let r = infer(&front, data.clone()).await.unwrap();
    assert_exact(&data, &r.outputs[0].data);
    assert!(
        reconstructed(&r),
        "the slow instance's row is rebuilt after the deadline"
    );
    assert!(started.elapsed() < Duration::from_millis(1000));
}

#[tokio::test]
async fn a_dead_worker_loses_no_query() {
    let mut s = setup(2, |_| {}).await;
    s.models[1].stop();
    s.models[1].task.abort();
    let front = Client::new(&s.url, Duration::from_secs(5)).unwrap();
    for i in 0..30 {
        let data = rows(1 + i % 3, i);
        let r = infer(&front, data.clone()).await.unwrap();
        assert_exact(&data, &r.outputs[0].data);
    }
    assert_eq!(metric(&s.url, "coded_frontend_timeouts_total").await, 0.0);
}

#[tokio::test]
async fn two_losses_in_a_group_are_retried_elsewhere() {
    let s = setup(2, |o| o.timeout_ms = 3000).await;
    let front = Client::new(&s.url, Duration::from_secs(5)).unwrap();
    for i in 0..10 {
        infer(&front, rows(2, i)).await.unwrap();
    }
    // Parity and one model instance turn slow at once: the group's slot on
    // the slow instance cannot be decoded, so it is sent to the other one.
    set_delay(&s.parity.url, 2500).await;
    set_delay(&s.models[0].url, 2500).await;
    let started = Instant::now();
    let data = rows(2, 42);
    let r = infer(&front, data.clone()).await.unwrap();
    assert_exact(&data, &r.outputs[0].data);
    assert!(!reconstructed(&r));
    assert!(started.elapsed() < Duration::from_millis(2500));
    assert!(metric(&s.url, "coded_frontend_retries_total").await >= 1.0);
}

#[tokio::test]
async fn with_every_instance_gone_the_query_gets_a_clear_504() {
    let mut s = setup(2, |o| o.timeout_ms = 800).await;
    // The parity goes too: once the frontend knows F(0), a lone query in a
    // padded group is rebuilt from the parity alone, so with it up the
    // answer would depend on whether F(0) was learned before the stop.
    for m in s.models.iter_mut().chain(std::iter::once(&mut s.parity)) {
        m.stop();
        m.task.abort();
    }
    let front = Client::new(&s.url, Duration::from_secs(5)).unwrap();
    let started = Instant::now();
    let err = infer(&front, rows(2, 1)).await.unwrap_err();
    let waited = started.elapsed();
    match err {
        ClientError::Status {
            status, message, ..
        } => {
            assert_eq!(status.as_u16(), 504);
            assert!(message.contains("deadline"), "{message}");
        }
        other => panic!("expected a 504, got {other}"),
    }
    assert!(waited >= Duration::from_millis(700), "{waited:?}");
    assert!(waited < Duration::from_secs(4), "{waited:?}");
    assert!(metric(&s.url, "coded_frontend_timeouts_total").await >= 1.0);
}

#[tokio::test]
async fn bad_requests_get_4xx_errors_through_the_frontend() {
    let s = setup(2, |_| {}).await;
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| http.post(format!("{}{path}", s.url)).json(&body).send();
    let r = post(
        "/v2/models/linear/infer",
        json!({"inputs": [{"name": "input", "shape": [1, 5], "datatype": "FP32", "data": [1,2,3,4,5]}]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("shape"));
    let r = post("/v2/models/other/infer", json!({"inputs": []}))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .post(format!("{}/v2/models/linear/infer", s.url))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("error"));
}

#[tokio::test]
async fn baseline_dispatch_modes_answer_and_hedging_dodges_a_straggler() {
    use coded_sidecar::frontend::DispatchMode;
    for mode in [
        DispatchMode::LeastLoaded,
        DispatchMode::Hedged,
        DispatchMode::Replicated,
    ] {
        let s = setup(2, |o| o.dispatch = mode).await;
        let front = Client::new(&s.url, Duration::from_secs(5)).unwrap();
        for i in 0..5 {
            let data = rows(1 + i % 3, i);
            let r = infer(&front, data.clone()).await.unwrap();
            assert_exact(&data, &r.outputs[0].data);
            assert!(!reconstructed(&r), "{mode:?} never reconstructs");
        }
        if mode != DispatchMode::LeastLoaded {
            // One instance slow: the backup (hedged) or the twin
            // (replicated) answers long before it.
            set_delay(&s.models[0].url, 1000).await;
            let started = Instant::now();
            for i in 0..4 {
                let data = rows(1, i);
                let r = infer(&front, data.clone()).await.unwrap();
                assert_exact(&data, &r.outputs[0].data);
            }
            assert!(
                started.elapsed() < Duration::from_millis(1000),
                "{mode:?}: {:?}",
                started.elapsed()
            );
        }
    }
}

/// The row limit holds at the frontend too (the HTTP layer both share),
/// before any query is queued for coding.
#[tokio::test]
async fn the_frontend_refuses_requests_over_the_row_limit() {
    let s = setup(2, |o| o.http.max_rows_per_request = 3).await;
    let c = Client::new(&s.url, Duration::from_secs(5)).unwrap();
    let r = infer(&c, rows(3, 1)).await.unwrap();
    assert_exact(&rows(3, 1), &r.outputs[0].data);
    let err = infer(&c, rows(4, 1)).await.unwrap_err().to_string();
    assert!(err.contains("4 rows") && err.contains("at most 3"), "{err}");
    let queries = metric(&s.url, "coded_frontend_queries_total").await;
    assert_eq!(queries, 3.0, "the refused request's rows were never queued");
}

/// The request's `timeout` parameter (µs, Triton's schedule policy) is its
/// deadline at the frontend: with every worker held for seconds, the
/// request gets its 504 naming the timeout while the workers still hold
/// its calls, not at --timeout-ms. `priority` and the request id pass.
#[tokio::test]
async fn the_timeout_parameter_is_the_requests_deadline() {
    let s = setup(2, |o| o.timeout_ms = 60_000).await;
    let c = Client::new(&s.url, Duration::from_secs(30)).unwrap();
    let mut r = request(rows(1, 2));
    r.id = Some("t-1".into());
    r.parameters.insert("priority".into(), json!(1));
    r.parameters.insert("timeout".into(), json!(30_000_000));
    let answered = c.infer("linear", None, &r, Encoding::Json).await.unwrap();
    assert_eq!(answered.id.as_deref(), Some("t-1"));
    assert_exact(&rows(1, 2), &answered.outputs[0].data);

    let held_ms = 20_000;
    for w in s.models.iter().chain(std::iter::once(&s.parity)) {
        set_delay(&w.url, held_ms).await;
    }
    r.parameters.insert("timeout".into(), json!(200_000));
    let started = Instant::now();
    let err = c
        .infer("linear", None, &r, Encoding::Json)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("504") || err.contains("timeout of 200000 µs"),
        "{err}"
    );
    assert!(err.contains("timeout of 200000 µs"), "{err}");
    // The workers would have answered after held_ms: the error came first.
    assert!(
        started.elapsed() < Duration::from_millis(held_ms),
        "{:?}",
        started.elapsed()
    );
    let bad = {
        let mut b = request(rows(1, 2));
        b.parameters.insert("timeout".into(), json!("soon"));
        c.infer("linear", None, &b, Encoding::Json)
            .await
            .unwrap_err()
            .to_string()
    };
    assert!(bad.contains("invalid parameter 'timeout'"), "{bad}");
}

/// `priority` orders the coding queue: with one batch of one group at a
/// time, a level-1 request queued after two default-level ones is
/// dispatched, and so answered, before them.
#[tokio::test]
async fn a_more_urgent_request_is_dispatched_first_when_queued() {
    let s = setup(2, |o| {
        o.max_inflight_batches = 1;
        o.max_groups = 1;
    })
    .await;
    for w in s.models.iter().chain(std::iter::once(&s.parity)) {
        set_delay(&w.url, 200).await;
    }
    let c = Client::new(&s.url, Duration::from_secs(30)).unwrap();
    let done = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let send = |name: &'static str, priority: u64| {
        let (c, done) = (c.clone(), done.clone());
        // Two rows: one group of k = 2, the whole of a batch.
        let mut r = request(rows(2, priority as usize));
        r.parameters.insert("priority".into(), json!(priority));
        tokio::spawn(async move {
            let answer = c.infer("linear", None, &r, Encoding::Json).await;
            assert!(answer.is_ok(), "{name}: {answer:?}");
            done.lock().unwrap().push(name);
        })
    };
    // Queued once the frontend counted its rows.
    let url = s.url.clone();
    let queued = |n: f64| {
        let url = url.clone();
        async move {
            while metric(&url, "coded_frontend_queries_total").await < n {
                tokio::task::yield_now().await;
            }
        }
    };
    let first = send("first", 0);
    queued(2.0).await;
    let low_a = send("low-a", 0);
    queued(4.0).await;
    let low_b = send("low-b", 0);
    queued(6.0).await;
    let urgent = send("urgent", 1);
    for t in [first, low_a, low_b, urgent] {
        t.await.unwrap();
    }
    assert_eq!(*done.lock().unwrap(), ["first", "urgent", "low-a", "low-b"]);
}

/// r = 2 with k = 2: both model instances of every group are lost at once
/// under load (both stalled), and every answer still comes
/// back, rebuilt exactly from the two parities alone and marked so; none
/// is retried and none times out. Parity l serves
/// F_P,l(x) = Wx + (Σ_j c_lj)·b under the name `linear-<l>` (`linear`
/// for parity 0).
#[tokio::test]
async fn with_two_parities_two_losses_in_a_group_are_rebuilt_under_load() {
    use coded_sidecar::coding::LinearCode;
    let code = LinearCode::new(2, 2).unwrap();
    let mut admin = options();
    admin.admin = true;
    let linear = |bias: f32, name: Option<String>| Linear {
        bias,
        name,
        ..Linear::default()
    };
    let mut models = Vec::new();
    for _ in 0..2 {
        models.push(start(admin.clone(), linear(BIAS, None)).await);
    }
    let mut parities = Vec::new();
    for l in 0..2 {
        let bias = code.row(l).iter().sum::<f64>() as f32 * BIAS;
        let name = coded_sidecar::frontend::parity_model_name("linear", l);
        parities.push(start(admin.clone(), linear(bias, Some(name))).await);
    }
    let mut o = FrontendOptions::new(
        &models.iter().map(|w| w.url.clone()).collect::<Vec<_>>(),
        &parities
            .iter()
            .enumerate()
            .map(|(l, p)| format!("{l}={}", p.url))
            .collect::<Vec<_>>(),
    );
    o.http.port = 0;
    o.model_name = Some("linear".into());
    o.parity_model = Some("linear".into());
    o.r = 2;
    o.timeout_ms = 5000;
    let server = coded_sidecar::frontend::bind(&o)
        .await
        .expect("frontend starts");
    let url = format!("http://{}", server.local_addr().unwrap());
    let _frontend = tokio::spawn(async move {
        let _ = server.run(std::future::pending()).await;
    });
    let front = Client::new(&url, Duration::from_secs(10)).unwrap();
    for i in 0..10 {
        let data = rows(2, i);
        let r = infer(&front, data.clone()).await.unwrap();
        assert_exact(&data, &r.outputs[0].data);
        assert!(!reconstructed(&r), "nothing is lost yet");
    }

    // Both model instances lost at once.
    set_delay(&models[0].url, 4000).await;
    set_delay(&models[1].url, 4000).await;
    let started = Instant::now();
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let front = front.clone();
            tokio::spawn(async move {
                for i in 0..6 {
                    let data = rows(1 + (c + i) % 3, 100 + c * 10 + i);
                    let r = infer(&front, data.clone()).await.expect("answered");
                    assert_exact(&data, &r.outputs[0].data);
                    assert!(reconstructed(&r), "client {c} request {i} is rebuilt");
                    let rows = data.len() / INPUTS;
                    if rows > 1 {
                        assert_eq!(
                            r.parameters["reconstructed_rows"].as_array().unwrap().len(),
                            rows,
                            "every row is rebuilt"
                        );
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.await.expect("client");
    }
    // Far sooner than the stalled instance's answers.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(metric(&url, "coded_frontend_reconstructions_total").await >= 48.0);
    assert_eq!(metric(&url, "coded_frontend_retries_total").await, 0.0);
    assert_eq!(metric(&url, "coded_frontend_timeouts_total").await, 0.0);
}

/// A parity card trained for another code than the flags give is refused
/// at start with one line saying what differs.
#[tokio::test]
async fn a_parity_card_of_another_code_is_refused() {
    use coded_sidecar::coding::{EncoderKind, LinearCode};
    use coded_sidecar::model::{ModelCard, Role, TensorSpec, card};
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, r: usize, index: usize| {
        let code = LinearCode::new(2, r).unwrap();
        let c = ModelCard {
            format: card::CARD_FORMAT.into(),
            name: name.into(),
            arch: coded_sidecar::model::Arch::Mlp,
            role: Role::Parity {
                k: 2,
                encoder: EncoderKind::Sum,
                base_sha256: "00".into(),
                base_name: "base".into(),
                r,
                index,
                coefficients: code.row(index).to_vec(),
            },
            input: TensorSpec {
                name: "input".into(),
                datatype: "FP32".into(),
                // Cards describe images: 1×2×2 is the linear model's 4 inputs.
                shape: vec![1, 2, INPUTS / 2],
            },
            output: TensorSpec {
                name: "logits".into(),
                datatype: "FP32".into(),
                shape: vec![OUTPUTS],
            },
            classes: (0..OUTPUTS).map(|i| i.to_string()).collect(),
            weights: card::WeightsRef {
                uri: "model.safetensors".into(),
                sha256: "00".into(),
                parameters: 1,
            },
            training: None,
        };
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_string(&c).unwrap()).unwrap();
        path.display().to_string()
    };
    let (one, two_0, two_1) = (write("r1", 1, 0), write("r2-0", 2, 0), write("r2-1", 2, 1));
    let worker = start(options(), Linear::default()).await;
    let attempt = |r: usize, cards: Vec<String>| {
        let mut o = FrontendOptions::new(
            std::slice::from_ref(&worker.url),
            std::slice::from_ref(&worker.url),
        );
        o.http.port = 0;
        o.model_name = Some("linear".into());
        o.r = r;
        o.parity_endpoints = (0..r).map(|l| format!("{l}={}", worker.url)).collect();
        o.parity_card = cards;
        async move { coded_sidecar::frontend::bind(&o).await.map(|_| ()) }
    };
    let err = attempt(2, vec![one.clone(), two_1.clone()])
        .await
        .expect_err("an r = 1 card for r = 2")
        .to_string();
    assert!(
        err.contains(
            "is parity 0 of k = 2, r = 1, sum, but parity 0 of k = 2, r = 2, sum is needed"
        ),
        "{err}"
    );
    let err = attempt(2, vec![two_1.clone(), two_0.clone()])
        .await
        .expect_err("swapped cards")
        .to_string();
    assert!(err.contains("is parity 1 of"), "{err}");
    let err = attempt(2, vec![two_0.clone()])
        .await
        .expect_err("one card")
        .to_string();
    assert!(err.contains("one per parity"), "{err}");
    attempt(2, vec![two_0, two_1])
        .await
        .expect("the right cards");
    attempt(1, vec![one]).await.expect("r = 1 as before");
}
