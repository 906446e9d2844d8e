//! Faults injected into real processes on loopback: model workers, a parity
//! worker and the frontend as separate `coded-sidecar` processes serving a
//! freshly trained candle MLP and its k = 2 parity model. SIGSTOP and
//! SIGKILL hit workers under load; every query must be answered.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use candle_core::Tensor;
use coded_sidecar::data::{DEFAULT_DATA_DIR, FashionMnist};
use coded_sidecar::local::Child;
use coded_sidecar::local::prometheus::{LocalPrometheus, PrometheusSpec, ScrapeTarget};
use coded_sidecar::model::{self, argmax};
use coded_sidecar::protocol::client::{Client, Encoding};
use coded_sidecar::protocol::{InferRequest, NamedTensor, OutputSelection};
use common::metric;
use nix::sys::signal::Signal;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_coded-sidecar");
const NAME: &str = "fashion-mlp";
const ROWS_PER_REQUEST: usize = 2;
const CONCURRENCY: usize = 8;

/// What every scenario shares: trained models, test images, and what the
/// base model and `eval` say about them.
struct Fixture {
    base: PathBuf,
    parity: PathBuf,
    /// Test images, row-major, 784 values each.
    images: Vec<Vec<f32>>,
    /// The base model's class for each image.
    base_class: Vec<u32>,
    /// `eval`'s degraded-mode reconstruction accuracy on these images.
    reconstruction_rate: f64,
}

const TEST_IMAGES: usize = 2000;

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        coded_sidecar::tls::init();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("faults-models");
        let (base, parity) = common::models::train_pair(
            BIN,
            &dir,
            &["--epochs", "2", "--limit", "10000"],
            &["--epochs", "4", "--limit", "10000"],
        );
        let data = FashionMnist::load(DEFAULT_DATA_DIR.as_ref()).expect("Fashion-MNIST");
        let test = data.test.take(TEST_IMAGES).unwrap();
        let cpu = model::Placement::f32(candle_core::Device::Cpu);
        let base_model = model::load(&base, &cpu).unwrap();
        let parity_model = model::load(&parity, &cpu).unwrap();
        let logits = base_model.network.forward(&test.images).unwrap();
        let report = coded_sidecar::eval::report::evaluate(&base_model, &[&parity_model], &test, 0)
            .expect("eval");
        let flat: Vec<f32> = test.images.flatten_all().unwrap().to_vec1().unwrap();
        Fixture {
            base,
            parity,
            images: flat.chunks(784).map(<[f32]>::to_vec).collect(),
            base_class: argmax(&logits).unwrap(),
            reconstruction_rate: report.degraded.reconstruction,
        }
    })
}

/// Two model workers, one parity worker and a frontend, as processes.
struct Cluster {
    models: Vec<Child>,
    parity: Child,
    frontend: Child,
}

async fn cluster(extra_frontend: &[&str]) -> Cluster {
    let f = fixture();
    let worker = |dir: &PathBuf, name: &str| {
        vec![
            "worker".to_owned(),
            "--model".to_owned(),
            dir.display().to_string(),
            "--model-name".to_owned(),
            name.to_owned(),
            "--port".to_owned(),
            "0".to_owned(),
            // `/admin/delay`, to make a worker slow.
            "--admin".to_owned(),
        ]
    };
    let mut models = Vec::new();
    for i in 0..2 {
        let c = Child::spawn_exe(
            BIN.as_ref(),
            &format!("model-{i}"),
            &worker(&f.base, NAME),
            "warn",
        )
        .await
        .unwrap();
        models.push(c);
    }
    let parity = Child::spawn_exe(
        BIN.as_ref(),
        "parity",
        &worker(&f.parity, &format!("{NAME}-parity")),
        "warn",
    )
    .await
    .unwrap();
    let frontend = frontend(&models, &parity, extra_frontend).await;
    Cluster {
        models,
        parity,
        frontend,
    }
}

/// A frontend process in front of `models` and `parity`, with `extra` flags.
async fn frontend(models: &[Child], parity: &Child, extra: &[&str]) -> Child {
    let f = fixture();
    let mut args: Vec<String> = [
        "frontend",
        "--port",
        "0",
        "--model-card",
        f.base.to_str().unwrap(),
        "--model-endpoints",
        &format!("{},{}", models[0].url, models[1].url),
        "--parity-endpoints",
        &parity.url,
        "--k",
        "2",
        "--timeout-ms",
        "5000",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    Child::spawn_exe(BIN.as_ref(), "frontend", &args, "warn")
        .await
        .unwrap()
}

impl Cluster {
    /// Replaces the frontend with one started with `extra` flags (e.g. a
    /// Prometheus that needed the workers' addresses first).
    async fn restart_frontend(mut self, extra: &[&str]) -> Cluster {
        let new = frontend(&self.models, &self.parity, extra).await;
        let old = std::mem::replace(&mut self.frontend, new);
        coded_sidecar::local::stop_all(vec![old]).await;
        self
    }

    async fn stop(self) {
        let mut all = self.models;
        all.push(self.parity);
        all.push(self.frontend);
        coded_sidecar::local::stop_all(all).await;
    }
}

fn request(images: &[usize]) -> InferRequest {
    let f = fixture();
    let data: Vec<f32> = images
        .iter()
        .flat_map(|&i| f.images[i].iter().copied())
        .collect();
    InferRequest {
        id: None,
        parameters: Default::default(),
        inputs: vec![NamedTensor {
            name: "input".into(),
            shape: vec![images.len(), 1, 28, 28],
            data,
        }],
        outputs: OutputSelection::default(),
    }
}

/// One answered query: the image, the output row, whether it was rebuilt.
struct Answered {
    image: usize,
    output: Vec<f32>,
    reconstructed: bool,
}

/// Sends images `range` through `url` in requests of ROWS_PER_REQUEST rows
/// from CONCURRENCY tasks; `done` counts answered queries as they come.
/// Panics on any error: no query may be lost.
async fn load(url: &str, range: std::ops::Range<usize>, done: Arc<AtomicUsize>) -> Vec<Answered> {
    load_with(url, range, CONCURRENCY, ROWS_PER_REQUEST, done).await
}

/// One query at a time, as a sequential client sends them.
async fn sequential(url: &str, range: std::ops::Range<usize>) -> Vec<Answered> {
    load_with(url, range, 1, 1, Arc::default()).await
}

async fn load_with(
    url: &str,
    range: std::ops::Range<usize>,
    concurrency: usize,
    rows_per_request: usize,
    done: Arc<AtomicUsize>,
) -> Vec<Answered> {
    let client = Client::new(url, Duration::from_secs(10)).unwrap();
    let next = Arc::new(AtomicUsize::new(range.start));
    let end = range.end;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next, done) = (client.clone(), next.clone(), done.clone());
            tokio::spawn(async move {
                let mut answered = Vec::new();
                loop {
                    let start = next.fetch_add(rows_per_request, Ordering::SeqCst);
                    if start >= end {
                        return answered;
                    }
                    let images: Vec<usize> = (start..(start + rows_per_request).min(end)).collect();
                    let r = client
                        .infer(NAME, None, &request(&images), Encoding::Binary)
                        .await
                        .unwrap_or_else(|e| panic!("query for images {images:?} lost: {e}"));
                    let rebuilt: Vec<usize> = match r.parameters.get("reconstructed_rows") {
                        Some(Value::Array(rows)) => rows
                            .iter()
                            .filter_map(|v| v.as_u64())
                            .map(|v| v as usize)
                            .collect(),
                        _ if r.parameters.get("reconstructed") == Some(&Value::Bool(true)) => {
                            vec![0]
                        }
                        _ => Vec::new(),
                    };
                    let data = &r.outputs[0].data;
                    assert_eq!(data.len(), images.len() * 10);
                    for (i, &image) in images.iter().enumerate() {
                        answered.push(Answered {
                            image,
                            output: data[i * 10..(i + 1) * 10].to_vec(),
                            reconstructed: rebuilt.contains(&i),
                        });
                    }
                    done.fetch_add(images.len(), Ordering::SeqCst);
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

async fn wait_until(done: &AtomicUsize, n: usize) {
    let started = Instant::now();
    while done.load(Ordering::SeqCst) < n {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "load stalled at {}",
            done.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn class(output: &[f32]) -> u32 {
    let t = Tensor::from_slice(output, (1, output.len()), &candle_core::Device::Cpu).unwrap();
    argmax(&t).unwrap()[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_through_the_frontend_match_the_workers_direct_answers() {
    let c = cluster(&[]).await;
    let f = fixture();
    let via = load(&c.frontend.url, 0..400, Arc::default()).await;
    let direct = load(&c.models[0].url, 0..400, Arc::default()).await;
    let direct: std::collections::HashMap<usize, &Answered> =
        direct.iter().map(|a| (a.image, a)).collect();
    let mut rebuilt = 0;
    for a in &via {
        let d = direct[&a.image];
        if a.reconstructed {
            rebuilt += 1;
            continue;
        }
        for (x, y) in a.output.iter().zip(&d.output) {
            assert!(
                (x - y).abs() < 1e-4,
                "image {}: {:?} vs {:?}",
                a.image,
                a.output,
                d.output
            );
        }
        assert_eq!(class(&a.output), f.base_class[a.image]);
    }
    eprintln!("healthy run: {rebuilt} of {} queries rebuilt", via.len());
    assert!(
        rebuilt * 10 < via.len(),
        "{rebuilt} of {} rebuilt with nothing failing",
        via.len()
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_of_a_model_worker_loses_no_query_and_rebuilds_at_the_eval_rate() {
    let c = cluster(&[]).await;
    let f = fixture();
    let done = Arc::new(AtomicUsize::new(0));
    let run = tokio::spawn({
        let (url, done) = (c.frontend.url.clone(), done.clone());
        async move { load(&url, 0..TEST_IMAGES, done).await }
    });
    // Pause model-1 three times under load; each pause catches the
    // queries in flight on it, and dispatch learns to avoid it meanwhile.
    for cycle in 0..3 {
        wait_until(&done, 200 + cycle * 500).await;
        c.models[1].signal(Signal::SIGSTOP).unwrap();
        wait_until(&done, 400 + cycle * 500).await;
        c.models[1].signal(Signal::SIGCONT).unwrap();
    }
    let answered = run.await.unwrap();
    assert_eq!(answered.len(), TEST_IMAGES, "every query answered");
    let rebuilt: Vec<&Answered> = answered.iter().filter(|a| a.reconstructed).collect();
    let agree = rebuilt
        .iter()
        .filter(|a| class(&a.output) == f.base_class[a.image])
        .count();
    let n = rebuilt.len();
    assert!(
        n >= 10,
        "queries in flight on the paused worker are rebuilt (got {n})"
    );
    let rate = agree as f64 / n as f64;
    let p = f.reconstruction_rate;
    let slack = 3.0 * (p * (1.0 - p) / n as f64).sqrt() + 0.05;
    eprintln!(
        "SIGSTOP: {n} of {TEST_IMAGES} rebuilt; agreement with the base model {rate:.3}, eval says {p:.3} (± {slack:.3})"
    );
    assert!(
        rate >= p - slack,
        "rebuilt answers agree with the base model at {rate:.3}, eval's rate is {p:.3}"
    );
    for a in answered.iter().filter(|a| !a.reconstructed) {
        assert_eq!(
            class(&a.output),
            f.base_class[a.image],
            "real answers are the base model's"
        );
    }
    c.stop().await;
}

/// A batch ends with its last answer, not its last call: with a worker
/// paused, the calls it holds stay out until the frontend's 5 s timeout,
/// but the batches whose queries were rebuilt meanwhile are gone (they
/// used to wait for those calls, so batches piled up with rate × timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_do_not_wait_for_the_calls_of_a_paused_worker() {
    let c = cluster(&[]).await;
    let url = c.frontend.url.clone();
    sequential(&url, 0..20).await;
    c.models[1].signal(Signal::SIGSTOP).unwrap();
    let answered = load(&url, 0..200, Arc::default()).await;
    assert_eq!(answered.len(), 200, "every query answered");
    assert!(
        rebuilt(&answered) >= 1,
        "queries sent to the paused worker were rebuilt"
    );
    // The frontend answers from one I/O thread: a batch has ended by the
    // time its last answer is sent, so this is no race.
    let running = metric(&url, "coded_frontend_batches_running", "").await;
    assert_eq!(running, 0.0, "no batch waits for the paused worker's calls");
    c.models[1].signal(Signal::SIGCONT).unwrap();
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_model_worker_loses_no_query_and_the_dead_instance_is_avoided() {
    let mut c = cluster(&[]).await;
    let done = Arc::new(AtomicUsize::new(0));
    let run = tokio::spawn({
        let (url, done) = (c.frontend.url.clone(), done.clone());
        async move { load(&url, 0..600, done).await }
    });
    wait_until(&done, 200).await;
    c.models[1].signal(Signal::SIGKILL).unwrap();
    let first = run.await.unwrap();
    assert_eq!(first.len(), 600, "every query answered across the kill");
    c.models[1].wait().await.unwrap();

    // Once the frontend has noticed (its next health probe), the dead
    // instance gets (almost) nothing and the answers are real ones.
    let dead = c.models[1].url.clone();
    let noticed = Instant::now();
    while metric(&c.frontend.url, "coded_frontend_instance_straggler", &dead).await < 1.0 {
        assert!(
            noticed.elapsed() < Duration::from_secs(10),
            "the dead instance is never marked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let errors_before = metric(
        &c.frontend.url,
        "coded_frontend_instance_errors_total",
        &dead,
    )
    .await;
    let started = Instant::now();
    let second = load(&c.frontend.url, 600..1400, Arc::default()).await;
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(second.len(), 800);
    let errors = metric(
        &c.frontend.url,
        "coded_frontend_instance_errors_total",
        &dead,
    )
    .await
        - errors_before;
    let rebuilt = second.iter().filter(|a| a.reconstructed).count();
    eprintln!(
        "after SIGKILL: {errors} calls to the dead instance in {elapsed:.1} s, {rebuilt} of 800 rebuilt"
    );
    // Health probes (one a second) and back-off retries only.
    assert!(
        errors <= 2.0 * elapsed + 5.0,
        "{errors} calls to a dead instance in {elapsed:.1} s"
    );
    assert!(
        rebuilt * 10 < second.len(),
        "{rebuilt} of 800 rebuilt: the live instance serves both slots"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_losses_in_a_group_are_retried_and_answered() {
    let c = cluster(&[]).await;
    let f = fixture();
    let done = Arc::new(AtomicUsize::new(0));
    let run = tokio::spawn({
        let (url, done) = (c.frontend.url.clone(), done.clone());
        async move { load(&url, 0..400, done).await }
    });
    wait_until(&done, 100).await;
    // Model-1 and the parity worker pause together: a group with a query on
    // model-1 has two losses, so that query is sent to model-0.
    c.models[1].signal(Signal::SIGSTOP).unwrap();
    c.parity.signal(Signal::SIGSTOP).unwrap();
    wait_until(&done, 300).await;
    c.models[1].signal(Signal::SIGCONT).unwrap();
    c.parity.signal(Signal::SIGCONT).unwrap();
    let answered = run.await.unwrap();
    assert_eq!(answered.len(), 400);
    for a in answered.iter().filter(|a| !a.reconstructed) {
        assert_eq!(class(&a.output), f.base_class[a.image]);
    }
    let retries = metric(&c.frontend.url, "coded_frontend_retries_total", "").await;
    eprintln!("two losses: {retries} retries");
    assert!(retries >= 1.0);
    c.stop().await;
}

async fn set_delay(url: &str, ms: u64) {
    let r = reqwest::Client::new()
        .post(format!("{url}/admin/delay"))
        .body(format!("{{\"delay_ms\": {ms}}}"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "setting {url}'s delay");
}

/// Runs `send` again and again for at least `d`; every answer.
async fn for_a_while(d: Duration, mut send: impl AsyncFnMut() -> Vec<Answered>) -> Vec<Answered> {
    let started = Instant::now();
    let mut all = Vec::new();
    while started.elapsed() < d {
        all.extend(send().await);
    }
    all
}

fn rebuilt(answers: &[Answered]) -> usize {
    answers.iter().filter(|a| a.reconstructed).count()
}

/// A model worker slow for seconds (every answer 200 ms late), under
/// sequential then concurrent load: once marked it gets no real call,
/// only sampled copies, its straggler gauge reads 1 and queries are
/// rebuilt no more than when nothing is slow; once its delay is lifted the
/// mark clears and it gets calls again.
async fn a_slow_worker_is_marked_avoided_and_restored(prometheus: bool) {
    let f = fixture();
    let mut prom = None;
    let c = if prometheus {
        // Prometheus needs the workers' addresses before the frontend starts.
        let c = cluster(&[]).await;
        let mut targets: Vec<ScrapeTarget> = c
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| ScrapeTarget::new(&m.url, NAME, "model", Some(i)).unwrap())
            .collect();
        targets.push(ScrapeTarget::new(&c.parity.url, NAME, "parity", Some(0)).unwrap());
        let started = LocalPrometheus::start(
            &PrometheusSpec {
                port: 0,
                interval: Duration::from_millis(250),
            },
            &targets,
        )
        .await
        .expect("prometheus starts");
        started
            .wait_for_targets(targets.len(), Duration::from_secs(30))
            .await
            .unwrap();
        let c = c
            .restart_frontend(&[
                "--prometheus-url",
                &started.url,
                "--prometheus-interval-ms",
                "250",
                "--prometheus-window",
                "2s",
            ])
            .await;
        prom = Some(started);
        c
    } else {
        cluster(&[]).await
    };
    let url = c.frontend.url.clone();
    let slow = c.models[1].url.clone();
    let gauge = async || metric(&url, "coded_frontend_instance_straggler", &slow).await;
    let calls_to_slow = async || metric(&slow, "coded_worker_requests_total", "").await;
    let sampled = async || metric(&url, "coded_frontend_sampled_calls_total", "").await;

    let healthy = sequential(&url, 0..200).await;
    eprintln!(
        "healthy: {} of 200 sequential queries rebuilt",
        rebuilt(&healthy)
    );

    set_delay(&slow, 200).await;
    let started = Instant::now();
    let mut detection = Vec::new();
    // Sampled copies go only to a marked instance: the first one shows the
    // mark (the gauge also reads 1 while a slow call is merely out).
    while sampled().await < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the slow worker is never marked ({} queries sent)",
            detection.len()
        );
        detection.extend(sequential(&url, 200..220).await);
    }
    eprintln!(
        "marked after {:.2} s: {} of {} sequential queries rebuilt meanwhile",
        started.elapsed().as_secs_f64(),
        rebuilt(&detection),
        detection.len()
    );

    let (calls_before, sampled_before) = (calls_to_slow().await, sampled().await);
    let marked_at = Instant::now();
    let seq = for_a_while(Duration::from_secs(2), async || {
        sequential(&url, 300..500).await
    })
    .await;
    let conc = for_a_while(Duration::from_secs(1), async || {
        load(&url, 500..1300, Arc::default()).await
    })
    .await;
    let calls = calls_to_slow().await - calls_before;
    let copies = sampled().await - sampled_before;
    let held = marked_at.elapsed().as_secs_f64();
    eprintln!(
        "while marked ({held:.1} s): {} of {} sequential and {} of {} concurrent queries rebuilt; \
         the slow worker got {calls} calls, {copies} sampled copies were sent",
        rebuilt(&seq),
        seq.len(),
        rebuilt(&conc),
        conc.len()
    );
    assert_eq!(
        gauge().await,
        1.0,
        "the mark holds while the worker is slow"
    );
    // A call already out when the mark came may still arrive late.
    assert!(
        calls <= copies + 1.0,
        "a marked worker gets only sampled copies: {calls} calls, {copies} copies"
    );
    assert!(copies >= 2.0, "a marked worker is sampled ({held:.1} s)");
    let n = seq.len() + conc.len();
    let r = rebuilt(&seq) + rebuilt(&conc);
    assert!(
        r * 20 < n,
        "{r} of {n} queries rebuilt while a healthy instance could answer them"
    );
    for a in seq.iter().chain(&conc).filter(|a| !a.reconstructed) {
        assert_eq!(class(&a.output), f.base_class[a.image]);
    }

    set_delay(&slow, 0).await;
    let lifted = Instant::now();
    while gauge().await > 0.0 {
        assert!(
            lifted.elapsed() < Duration::from_secs(20),
            "the mark is never cleared"
        );
        sequential(&url, 1500..1520).await;
    }
    eprintln!(
        "restored {:.2} s after the delay was lifted",
        lifted.elapsed().as_secs_f64()
    );
    let before = calls_to_slow().await;
    sequential(&url, 1600..1800).await;
    let calls = calls_to_slow().await - before;
    assert!(
        calls >= 40.0,
        "the restored worker gets its share of calls again ({calls} of 200)"
    );
    c.stop().await;
    if let Some(p) = prom {
        p.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_worker_stops_getting_queries_until_it_recovers() {
    a_slow_worker_is_marked_avoided_and_restored(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_worker_stops_getting_queries_until_it_recovers_with_prometheus() {
    if coded_sidecar::local::prometheus::binary().is_none() {
        assert!(
            std::env::var_os("CODED_REQUIRE_PROMETHEUS").is_none(),
            "CODED_REQUIRE_PROMETHEUS is set but there is no `prometheus` binary"
        );
        eprintln!("skipped: no `prometheus` binary (apt-get install prometheus)");
        return;
    }
    a_slow_worker_is_marked_avoided_and_restored(true).await;
}
