//! Two parities per group, as real processes on loopback: two model
//! workers, the two parity workers of a freshly trained k = 2, r = 2 code
//! (`train parity --r 2`) and a frontend (`--r 2`, each parity's instance
//! given as `l=URL`, the cards checked with `--parity-card`). Both model
//! workers of every group are SIGSTOPped at once under load: every query is
//! still answered, rebuilt from the two parity models alone and marked so,
//! none is retried and none times out.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use candle_core::{Device, Tensor};
use coded_sidecar::data::{DEFAULT_DATA_DIR, FashionMnist};
use coded_sidecar::local::Child;
use coded_sidecar::model::{self, argmax};
use coded_sidecar::protocol::client::{Client, Encoding};
use coded_sidecar::protocol::{InferRequest, NamedTensor, OutputSelection};
use nix::sys::signal::Signal;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_coded-sidecar");
const NAME: &str = "fashion-mlp";
const TEST_IMAGES: usize = 1000;

fn run(args: &[&str]) {
    let out = Command::new(BIN)
        .args(args)
        .env("CODED_THREADS", "1")
        .output()
        .expect("run coded-sidecar");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The base model and its two parity models, trained quickly.
fn train(dir: &Path) -> (PathBuf, [PathBuf; 2]) {
    let (base, parity) = (dir.join("base"), dir.join("parity"));
    let (b, p) = (base.to_str().unwrap(), parity.to_str().unwrap());
    run(&[
        "train", "base", "--epochs", "2", "--limit", "10000", "--quiet", "--out", b,
    ]);
    run(&[
        "train", "parity", "--base", b, "--k", "2", "--r", "2", "--epochs", "4", "--limit",
        "10000", "--quiet", "--out", p,
    ]);
    (base, [parity.join("0"), parity.join("1")])
}

fn worker(dir: &Path, name: &str) -> Vec<String> {
    [
        "worker",
        "--model",
        dir.to_str().unwrap(),
        "--model-name",
        name,
        "--port",
        "0",
        "--grpc-port",
        "off",
    ]
    .map(String::from)
    .to_vec()
}

fn request(images: &[Vec<f32>]) -> InferRequest {
    InferRequest {
        id: None,
        parameters: Default::default(),
        inputs: vec![NamedTensor {
            name: "input".into(),
            shape: vec![images.len(), 1, 28, 28],
            data: images.concat(),
        }],
        outputs: OutputSelection::default(),
    }
}

async fn metric(url: &str, name: &str) -> f64 {
    common::metric(url, name, "").await
}

/// Sends `images` two rows a request from 8 clients; returns, per image,
/// its class and whether it was rebuilt. Panics on any lost query.
async fn load(url: &str, images: Arc<Vec<Vec<f32>>>) -> Vec<(usize, u32, bool)> {
    let client = Client::new(url, Duration::from_secs(10)).unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (client, next, images) = (client.clone(), next.clone(), images.clone());
            tokio::spawn(async move {
                let mut answered = Vec::new();
                loop {
                    let start = next.fetch_add(2, Ordering::SeqCst);
                    if start >= images.len() {
                        return answered;
                    }
                    let end = (start + 2).min(images.len());
                    let r = client
                        .infer(NAME, None, &request(&images[start..end]), Encoding::Binary)
                        .await
                        .unwrap_or_else(|e| panic!("images {start}..{end} lost: {e}"));
                    let rebuilt: Vec<u64> = match r.parameters.get("reconstructed_rows") {
                        Some(Value::Array(rows)) => rows.iter().filter_map(Value::as_u64).collect(),
                        _ if r.parameters.get("reconstructed") == Some(&Value::Bool(true)) => {
                            vec![0]
                        }
                        _ => Vec::new(),
                    };
                    let out =
                        Tensor::from_slice(&r.outputs[0].data, (end - start, 10), &Device::Cpu)
                            .unwrap();
                    for (i, class) in argmax(&out).unwrap().into_iter().enumerate() {
                        answered.push((start + i, class, rebuilt.contains(&(i as u64))));
                    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_model_workers_of_a_group_paused_under_load_are_rebuilt_not_retried() {
    coded_sidecar::tls::init();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("faults-r2-models");
    let (base, parities) = train(&dir);
    let data = FashionMnist::load(DEFAULT_DATA_DIR.as_ref()).expect("Fashion-MNIST");
    let test = data.test.take(TEST_IMAGES).unwrap();
    let cpu = model::Placement::f32(Device::Cpu);
    let base_model = model::load(&base, &cpu).unwrap();
    let parity_models: Vec<_> = parities
        .iter()
        .map(|p| model::load(p, &cpu).unwrap())
        .collect();
    let base_class = argmax(&base_model.network.forward(&test.images).unwrap()).unwrap();
    let report = coded_sidecar::eval::report::evaluate(
        &base_model,
        &parity_models.iter().collect::<Vec<_>>(),
        &test,
        0,
    )
    .expect("eval");
    let two_lost = report.by_losses[1].degraded.reconstruction;
    let flat: Vec<f32> = test.images.flatten_all().unwrap().to_vec1().unwrap();
    let images: Vec<Vec<f32>> = flat.chunks(784).map(<[f32]>::to_vec).collect();

    let mut models = Vec::new();
    for i in 0..2 {
        let name = format!("model-{i}");
        models.push(
            Child::spawn_exe(BIN.as_ref(), &name, &worker(&base, NAME), "warn")
                .await
                .unwrap(),
        );
    }
    let mut parity_workers = Vec::new();
    for (l, dir) in parities.iter().enumerate() {
        let served = coded_sidecar::frontend::parity_model_name(&format!("{NAME}-parity"), l);
        let name = format!("parity-{l}");
        parity_workers.push(
            Child::spawn_exe(BIN.as_ref(), &name, &worker(dir, &served), "warn")
                .await
                .unwrap(),
        );
    }
    let cards = format!("{},{}", parities[0].display(), parities[1].display());
    let args: Vec<String> = [
        "frontend",
        "--port",
        "0",
        "--grpc-port",
        "off",
        "--model-card",
        base.to_str().unwrap(),
        "--model-endpoints",
        &format!("{},{}", models[0].url, models[1].url),
        "--parity-endpoints",
        &format!("0={},1={}", parity_workers[0].url, parity_workers[1].url),
        "--parity-card",
        &cards,
        "--k",
        "2",
        "--r",
        "2",
        "--timeout-ms",
        "5000",
    ]
    .map(String::from)
    .to_vec();
    let frontend = Child::spawn_exe(BIN.as_ref(), "frontend", &args, "warn")
        .await
        .unwrap();
    let url = frontend.url.clone();

    // Nothing lost: real answers, the base model's classes.
    let warm = load(&url, Arc::new(images[..200].to_vec())).await;
    assert_eq!(warm.len(), 200);
    for &(i, class, rebuilt) in &warm {
        if !rebuilt {
            assert_eq!(class, base_class[i], "image {i}'s real answer");
        }
    }
    let retries_before = metric(&url, "coded_frontend_retries_total").await;

    // Both model workers pause at once: every group loses both queries.
    for m in &models {
        m.signal(Signal::SIGSTOP).unwrap();
    }
    let answered = load(&url, Arc::new(images[200..].to_vec())).await;
    for m in &models {
        m.signal(Signal::SIGCONT).unwrap();
    }
    assert_eq!(answered.len(), TEST_IMAGES - 200);
    assert!(
        answered.iter().all(|a| a.2),
        "every answer is rebuilt and marked: {} of {} were not",
        answered.iter().filter(|a| !a.2).count(),
        answered.len()
    );
    let agree = answered
        .iter()
        .filter(|&&(i, class, _)| class == base_class[200 + i])
        .count() as f64
        / answered.len() as f64;
    eprintln!("two lost: {agree:.3} agree with the base model, eval says {two_lost:.3}");
    assert!(
        agree > two_lost - 0.1,
        "rebuilt answers agree with the base model {agree:.3} of the time; eval says {two_lost:.3}"
    );
    assert_eq!(
        metric(&url, "coded_frontend_retries_total").await,
        retries_before,
        "decodable queries are rebuilt, not retried"
    );
    assert_eq!(metric(&url, "coded_frontend_timeouts_total").await, 0.0);
    let mut all = models;
    all.extend(parity_workers);
    all.push(frontend);
    coded_sidecar::local::stop_all(all).await;
}
