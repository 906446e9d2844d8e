//! Frontends that follow their instances by name (`--model-service`), with
//! workers as real `coded-sidecar worker` processes serving a freshly
//! trained MLP and its k = 2 parity model: workers are drained (SIGTERM),
//! killed and replaced under steady load, and no query may be lost. The
//! frontend itself drains on SIGTERM without losing a query either.
//!
//! One test runs the frontend in this process with a resolver the test
//! controls (addresses appear and disappear as pods' would); the other
//! runs it as a process resolving `localhost:PORT` names, as it resolves a
//! headless Service in a pod.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use coded_sidecar::frontend::discovery::{Lookup, Resolver};
use coded_sidecar::frontend::{self, FrontendOptions};
use coded_sidecar::local::Child;
use coded_sidecar::protocol::client::{Client, Encoding};
use coded_sidecar::protocol::{InferRequest, NamedTensor, OutputSelection};
use nix::sys::signal::Signal;

const BIN: &str = env!("CARGO_BIN_EXE_coded-sidecar");
const NAME: &str = "fashion-mlp";
const CONCURRENCY: usize = 6;

/// A base model and its k = 2 parity model, trained once per test binary.
fn models() -> &'static (PathBuf, PathBuf) {
    static MODELS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    MODELS.get_or_init(|| {
        coded_sidecar::tls::init();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("discovery-models");
        common::models::train_pair(
            BIN,
            &dir,
            &["--epochs", "1", "--limit", "2000"],
            &["--epochs", "1", "--limit", "2000"],
        )
    })
}

/// A model (or parity) worker process on 127.0.0.1:`port` (0: any).
async fn worker(name: &str, parity: bool, port: u16) -> Child {
    let (base, par) = models();
    let (dir, served) = if parity {
        (par, format!("{NAME}-parity"))
    } else {
        (base, NAME.to_owned())
    };
    let args: Vec<String> = [
        "worker",
        "--model",
        dir.to_str().unwrap(),
        "--model-name",
        &served,
        "--port",
        &port.to_string(),
        // Several workers on fixed HTTP ports: gRPC on free ones, not 8001.
        "--grpc-port",
        "0",
        "--drain-delay-ms",
        "300",
    ]
    .map(String::from)
    .to_vec();
    Child::spawn_exe(BIN.as_ref(), name, &args, "warn")
        .await
        .unwrap()
}

fn addr_of(child: &Child) -> SocketAddr {
    child
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("worker address")
}

fn request(rows: usize, seed: usize) -> InferRequest {
    InferRequest {
        id: None,
        parameters: Default::default(),
        inputs: vec![NamedTensor {
            name: "input".into(),
            shape: vec![rows, 1, 28, 28],
            data: (0..rows * 784)
                .map(|i| ((i * 7 + seed * 13) % 17) as f32 / 17.0)
                .collect(),
        }],
        outputs: OutputSelection::default(),
    }
}

/// Steady load on a frontend from CONCURRENCY tasks until `stop`; panics
/// on any failed query (none may be lost). Returns the queries answered.
struct Load {
    answered: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: &str) -> Load {
        let client = Client::new(url, Duration::from_secs(10)).unwrap();
        let answered = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..CONCURRENCY)
            .map(|t| {
                let (client, answered, stop) = (client.clone(), answered.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut i = 0;
                    while !stop.load(Ordering::SeqCst) {
                        i += 1;
                        let r = client
                            .infer(NAME, None, &request(2, t * 1_000_000 + i), Encoding::Binary)
                            .await
                            .unwrap_or_else(|e| panic!("a query was lost: {e}"));
                        assert_eq!(r.outputs[0].data.len(), 2 * 10);
                        answered.fetch_add(2, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        Load {
            answered,
            stop,
            tasks,
        }
    }

    fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    /// Waits for `n` more answers.
    async fn more(&self, n: usize) {
        let target = self.answered() + n;
        let started = Instant::now();
        while self.answered() < target {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "load stalled at {}",
                self.answered()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn finish(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("no query lost");
        }
        self.answered.load(Ordering::SeqCst)
    }
}

async fn status(url: &str, path: &str) -> Option<u16> {
    reqwest::get(format!("{url}{path}"))
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

async fn wait_for_status(url: &str, path: &str, want: u16) {
    let started = Instant::now();
    while status(url, path).await != Some(want) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{url}{path} never answered {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn metrics(url: &str) -> String {
    reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The addresses each name resolves to, as the test says.
type Table = Arc<Mutex<HashMap<String, Vec<SocketAddr>>>>;

fn resolver(table: Table) -> Resolver {
    Arc::new(move |name: String| -> Lookup {
        let answer = table.lock().unwrap().get(&name).cloned();
        Box::pin(async move {
            answer.ok_or_else(|| std::io::Error::other(format!("{name}: no such host")))
        })
    })
}

fn set(table: &Table, name: &str, children: &[&Child]) {
    table.lock().unwrap().insert(
        name.to_owned(),
        children.iter().map(|c| addr_of(c)).collect(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_that_come_and_go_behind_a_name_lose_no_query() {
    models();
    let table: Table = Arc::default();
    let mut options = FrontendOptions::parse([
        "--port",
        "0",
        "--model-service",
        "models.test:8080",
        "--parity-service",
        "parity.test:8080",
        "--resolve-interval-ms",
        "100",
        "--model-name",
        NAME,
        "--k",
        "2",
        "--timeout-ms",
        "5000",
    ])
    .unwrap();
    options.http.port = 0;

    // Nothing resolves yet (pods starting): the frontend waits for a model
    // instance to learn the model's metadata from, and does not give up.
    let starting = tokio::spawn({
        let (options, resolver) = (options.clone(), resolver(table.clone()));
        async move { frontend::bind_with(&options, resolver).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!starting.is_finished(), "the frontend gave up waiting");

    let a = worker("model-a", false, 0).await;
    let parity = worker("parity", true, 0).await;
    set(&table, "models.test:8080", &[&a]);
    set(&table, "parity.test:8080", &[&parity]);
    let server = tokio::time::timeout(Duration::from_secs(30), starting)
        .await
        .expect("the frontend starts once an instance answers")
        .unwrap()
        .expect("frontend starts");
    let url = format!("http://{}", server.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));

    // One model instance of k = 2: not ready yet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status(&url, "/v2/health/ready").await, Some(503));
    let b = worker("model-b", false, 0).await;
    set(&table, "models.test:8080", &[&a, &b]);
    wait_for_status(&url, "/v2/health/ready", 200).await;

    let load = Load::start(&url);
    load.more(200).await;

    // A rolling replacement: c comes up, then a drains (SIGTERM) and its
    // address goes once it has exited.
    let c = worker("model-c", false, 0).await;
    set(&table, "models.test:8080", &[&a, &b, &c]);
    load.more(100).await;
    let mut a = a;
    a.signal(Signal::SIGTERM).unwrap();
    load.more(200).await;
    let status_a = tokio::time::timeout(Duration::from_secs(10), a.wait())
        .await
        .expect("a drains")
        .unwrap();
    assert!(status_a.success(), "a drained cleanly: {status_a}");
    set(&table, "models.test:8080", &[&b, &c]);
    load.more(200).await;

    // A crash: b is killed, d replaces it in the same lookup.
    b.signal(Signal::SIGKILL).unwrap();
    let d = worker("model-d", false, 0).await;
    set(&table, "models.test:8080", &[&c, &d]);
    load.more(300).await;
    assert_eq!(status(&url, "/v2/health/ready").await, Some(200));

    let answered = load.finish().await;
    eprintln!("{answered} queries answered across a drain, a kill and two replacements");

    // Gone instances lose their series once the next lookup has dropped
    // them and their last call has ended; present ones keep theirs.
    let mut text = metrics(&url).await;
    for _ in 0..100 {
        if ![&a.url, &b.url]
            .iter()
            .any(|gone| text.contains(&format!("instance=\"{gone}\"")))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = metrics(&url).await;
    }
    for gone in [&a.url, &b.url] {
        assert!(
            !text.contains(&format!("instance=\"{gone}\"")),
            "{gone} still has series 5 s later: {:?}",
            text.lines()
                .filter(|l| l.contains(gone.as_str()))
                .collect::<Vec<_>>()
        );
    }
    for present in [&c.url, &d.url, &parity.url] {
        assert!(
            text.contains(&format!("instance=\"{present}\"")),
            "{present} has no series"
        );
    }
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
    coded_sidecar::local::stop_all(vec![a, b, c, d, parity]).await;
}

/// A port free on 127.0.0.1 now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frontend_process_follows_names_and_drains_without_losing_a_query() {
    models();
    let ports = [free_port(), free_port(), free_port()];
    let args: Vec<String> = [
        "frontend",
        "--port",
        "0",
        "--model-service",
        &format!("localhost:{},localhost:{}", ports[0], ports[1]),
        "--parity-service",
        &format!("localhost:{}", ports[2]),
        "--resolve-interval-ms",
        "200",
        "--model-name",
        NAME,
        "--k",
        "2",
        "--timeout-ms",
        "5000",
        "--drain-delay-ms",
        "1000",
    ]
    .map(String::from)
    .to_vec();
    // Started before any worker: it waits for one (the metadata), then
    // prints its URL.
    let frontend =
        tokio::spawn(
            async move { Child::spawn_exe(BIN.as_ref(), "frontend", &args, "warn").await },
        );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!frontend.is_finished(), "the frontend gave up waiting");
    let m0 = worker("model-0", false, ports[0]).await;
    let m1 = worker("model-1", false, ports[1]).await;
    let parity = worker("parity", true, ports[2]).await;
    let mut frontend = frontend.await.unwrap().expect("the frontend listens");
    let url = frontend.url.clone();
    wait_for_status(&url, "/v2/health/ready", 200).await;

    let load = Load::start(&url);
    load.more(200).await;
    // Model-0 is drained and replaced at the same address (a StatefulSet
    // pod restarted, or a pod replaced at a reused address).
    let mut m0 = m0;
    m0.signal(Signal::SIGTERM).unwrap();
    let exited = tokio::time::timeout(Duration::from_secs(10), m0.wait())
        .await
        .expect("model-0 drains")
        .unwrap();
    assert!(exited.success(), "model-0 drained cleanly: {exited}");
    load.more(200).await;
    let m0 = worker("model-0b", false, ports[0]).await;
    load.more(300).await;

    // The frontend drains: not ready at once, still serving for the drain
    // delay; a load balancer that sees it not ready stops sending, and
    // every query sent is answered.
    frontend.signal(Signal::SIGTERM).unwrap();
    let signalled = Instant::now();
    wait_for_status(&url, "/v2/health/ready", 503).await;
    assert!(signalled.elapsed() < Duration::from_millis(900));
    // Every answer while draining asks its client to close the connection,
    // so kept-alive connections move elsewhere instead of being cut.
    let live = reqwest::get(format!("{url}/v2/health/live"))
        .await
        .expect("live while draining");
    assert_eq!(
        live.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    let before = load.answered();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        load.answered() > before,
        "queries are still answered while draining"
    );
    let answered = load.finish().await;
    let exited = tokio::time::timeout(Duration::from_secs(10), frontend.wait())
        .await
        .expect("the frontend exits after draining")
        .unwrap();
    assert!(exited.success(), "the frontend drained cleanly: {exited}");
    assert!(
        signalled.elapsed() >= Duration::from_millis(1000),
        "the frontend kept serving for the drain delay"
    );
    eprintln!("{answered} queries answered across a worker drain and a frontend drain");
    coded_sidecar::local::stop_all(vec![m0, m1, parity]).await;
}

#[test]
fn the_drain_delay_can_come_from_the_environment() {
    for command in ["frontend", "worker"] {
        let out = std::process::Command::new(BIN)
            .args([command, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("CODED_DRAIN_DELAY_MS"), "{command}: {help}");
    }
}
