//! Models fetched by URI: over http:// from a static file server, and over
//! s3:// through object_store against a local server that answers
//! path-style S3 GETs (object_store signs the requests as for AWS).

use std::path::PathBuf;

use axum::Router;
use axum::extract::Path as UrlPath;
use axum::http::StatusCode;
use axum::routing::get;
use coded_sidecar::model::fetch::{self, FetchError};

/// A tiny trained model, once per test binary run.
fn model_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fetch-model");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_coded-sidecar"))
            .args([
                "train", "base", "--epochs", "1", "--limit", "1000", "--quiet", "--out",
            ])
            .arg(&dir)
            .output()
            .expect("run coded-sidecar");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
    .clone()
}

/// Serves files of `root` under `/{prefix}/...`; `tamper` flips a byte of
/// the weights.
async fn file_server(root: PathBuf, tamper: bool) -> String {
    let app = Router::new().route(
        "/{*path}",
        get(move |UrlPath(path): UrlPath<String>| {
            let root = root.clone();
            async move {
                // The first segment is the bucket (S3) or a prefix (http).
                let rest = path.split_once('/').map(|(_, r)| r).unwrap_or("");
                let file = rest.strip_prefix("fashion-mlp/").unwrap_or(rest);
                if file.contains('/') || file.is_empty() {
                    return Err(StatusCode::NOT_FOUND);
                }
                match std::fs::read(root.join(file)) {
                    Ok(mut bytes) => {
                        if tamper && rest.ends_with(".safetensors") {
                            let last = bytes.len() - 1;
                            bytes[last] ^= 1;
                        }
                        Ok(bytes)
                    }
                    Err(_) => Err(StatusCode::NOT_FOUND),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn http_models_load_and_are_checked() {
    coded_sidecar::tls::init();
    let dir = model_dir();
    let local = coded_sidecar::model::load(&dir).unwrap();
    let url = file_server(dir.clone(), false).await;
    for uri in [
        format!("{url}/models/fashion-mlp"),
        format!("{url}/models/card.json"),
    ] {
        let model = fetch::load(&uri).await.unwrap();
        assert_eq!(model.card, local.card, "{uri}");
        assert_eq!(fetch::card(&uri).await.unwrap(), local.card);
    }
    let Err(missing) = fetch::load(&format!("{url}/nothing/here")).await else {
        panic!("a missing model loaded");
    };
    assert!(matches!(missing, FetchError::Store { .. }), "{missing}");

    let bad = file_server(dir, true).await;
    let Err(err) = fetch::load(&format!("{bad}/models/fashion-mlp")).await else {
        panic!("tampered weights loaded");
    };
    let err = err.to_string();
    assert!(err.contains("sha256"), "{err}");
}

#[test]
fn s3_models_load_through_object_store_in_a_worker() {
    let dir = model_dir();
    coded_sidecar::tls::init();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let endpoint = runtime.block_on(file_server(dir, false));
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut worker = std::process::Command::new(env!("CARGO_BIN_EXE_coded-sidecar"))
        .args([
            "worker",
            "--model",
            "s3://models/fashion-mlp",
            "--port",
            &port.to_string(),
        ])
        .env("AWS_ENDPOINT", &endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ready = runtime.block_on(async {
        let url = format!("http://127.0.0.1:{port}/v2/models/fashion-mlp/ready");
        for _ in 0..300 {
            if let Ok(r) = reqwest::get(&url).await
                && r.status() == 200
            {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        false
    });
    let _ = worker.kill();
    let out = worker.wait_with_output().unwrap();
    assert!(
        ready,
        "worker never served the s3:// model: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unsupported_schemes_are_refused_clearly() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coded-sidecar"))
        .args(["worker", "--model", "ftp://host/model"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ftp:// is not supported"), "{err}");
}
