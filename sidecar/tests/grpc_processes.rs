//! The gRPC front door of real processes: a `worker` serving a trained
//! candle MLP and the frontend that `coded-sidecar local` starts, each
//! answering over gRPC as over HTTP.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use coded_sidecar::grpc::proto::ModelMetadataRequest;
use coded_sidecar::local::Child;
use common::grpc::*;
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_coded-sidecar");

/// A base MLP and its k = 2 parity model, trained in seconds, laid out as
/// `local`'s model cache for `--base-epochs 1 --parity-epochs 1`.
fn models() -> PathBuf {
    static CACHE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CACHE
        .get_or_init(|| {
            let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("grpc-models");
            let _ = std::fs::remove_dir_all(&cache);
            let (base, parity) = common::models::train_pair(
                BIN,
                &cache.join("trained"),
                &["--epochs", "1", "--limit", "2000"],
                &["--epochs", "1", "--limit", "2000"],
            );
            std::fs::rename(base, cache.join("mlp-e1-s0")).unwrap();
            std::fs::rename(parity, cache.join("mlp-e1-s0-parity-k2-sum-e1")).unwrap();
            cache
        })
        .clone()
}

/// The same 784-value rows over gRPC (raw) and HTTP to one server; both
/// answers must agree. Through a frontend, rebuilt answers are asked again.
async fn compare_with_http(grpc: &str, url: &str, name: &str) {
    let mut c = connect(grpc).await;
    let meta = c
        .model_metadata(ModelMetadataRequest {
            name: name.into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.inputs[0].shape, vec![-1, 1, 28, 28]);
    assert_eq!(meta.outputs[0].shape, vec![-1, 10]);
    let data = rows(3, 784, 8);
    let mut last = None;
    for _ in 0..5 {
        let g = c
            .model_infer(infer_request(name, "input", &[3, 1, 28, 28], &data, true))
            .await
            .unwrap()
            .into_inner();
        let h = http_infer(url, name, &http_request("input", &[3, 1, 28, 28], &data)).await;
        let h_rebuilt = h.parameters.get("reconstructed") == Some(&serde_json::Value::Bool(true));
        if !reconstructed(&g) && !h_rebuilt {
            assert_close(&output(&g), &h.outputs[0].data);
            return;
        }
        last = Some(g);
    }
    panic!("every answer was rebuilt: {last:?}");
}

#[tokio::test]
async fn a_worker_process_serves_grpc_like_http() {
    let cache = models();
    let worker = Child::spawn_exe(
        BIN.as_ref(),
        "worker",
        &[
            "worker".to_owned(),
            "--model".to_owned(),
            cache.join("mlp-e1-s0").display().to_string(),
            "--port".to_owned(),
            "0".to_owned(),
        ],
        "warn",
    )
    .await
    .expect("worker starts");
    let grpc = worker.grpc.clone().expect("a free gRPC port with --port 0");
    compare_with_http(&grpc, &worker.url, "fashion-mlp").await;
    worker.stop().await;
}

#[tokio::test]
async fn the_frontend_of_local_serves_grpc_like_http() {
    let cache = models();
    let mut command = tokio::process::Command::new(BIN);
    command
        .args([
            "local",
            "--base-epochs",
            "1",
            "--parity-epochs",
            "1",
            "--port",
            "0",
        ])
        .arg("--cache-dir")
        .arg(&cache)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    coded_sidecar::local::process::die_with_parent(&mut command);
    let mut child = command.spawn().expect("local starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let (mut url, mut grpc) = (None, None);
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(at) = line.find(" at http://") {
                let rest = &line[at + 4..];
                url = rest
                    .split_whitespace()
                    .next()
                    .map(|u| u.trim_end_matches(':').to_owned());
            }
            if let Some(rest) = line.trim_start().strip_prefix("gRPC: ") {
                grpc = rest.split_whitespace().next().map(str::to_owned);
                break;
            }
        }
    })
    .await
    .expect("local prints its banner");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let (url, grpc) = (url.expect("frontend URL"), grpc.expect("gRPC address"));
    let addr: SocketAddr = grpc.parse().expect("host:port");
    assert_ne!(addr.port(), 8001, "--port 0 gives gRPC a free port too");
    compare_with_http(&grpc, &url, "fashion-mlp").await;

    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("local stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}
