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
    let local = coded_sidecar::model::load(&dir, &cpu()).unwrap();
    let url = file_server(dir.clone(), false).await;
    for uri in [
        format!("{url}/models/fashion-mlp"),
        format!("{url}/models/card.json"),
    ] {
        let model = fetch::load(&uri, &cpu()).await.unwrap();
        assert_eq!(model.card, local.card, "{uri}");
        assert_eq!(fetch::card(&uri).await.unwrap(), local.card);
    }
    let Err(missing) = fetch::load(&format!("{url}/nothing/here"), &cpu()).await else {
        panic!("a missing model loaded");
    };
    assert!(matches!(missing, FetchError::Store { .. }), "{missing}");

    let bad = file_server(dir, true).await;
    let Err(err) = fetch::load(&format!("{bad}/models/fashion-mlp"), &cpu()).await else {
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
            "--grpc-port",
            "0",
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

/// Runs `coded-sidecar fetch --uri URI --out DIR`.
fn fetch_cli(uri: &str, out: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_coded-sidecar"))
        .args(["fetch", "--uri", uri, "--out"])
        .arg(out)
        .output()
        .expect("run coded-sidecar fetch")
}

fn files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn fetch_writes_a_checked_model_once_and_refuses_tampered_weights() {
    let dir = model_dir();
    coded_sidecar::tls::init();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let url = runtime.block_on(file_server(dir.clone(), false));
    let bad = runtime.block_on(file_server(dir.clone(), true));
    let local = coded_sidecar::model::load(&dir, &cpu()).unwrap();
    let scratch = tempfile::tempdir().unwrap();

    // Over http://, into a directory that does not exist yet.
    let out = scratch.path().join("models/fashion");
    let run = fetch_cli(&format!("{url}/models/fashion-mlp"), &out);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("fetched"), "{stdout}");
    assert_eq!(files(&out), vec!["card.json", "model.safetensors"]);
    let fetched =
        coded_sidecar::model::load(&out, &cpu()).expect("a worker can load what was fetched");
    assert_eq!(fetched.card, local.card);

    // Again: nothing to do, nothing rewritten.
    let written = std::fs::metadata(out.join("model.safetensors"))
        .unwrap()
        .modified()
        .unwrap();
    let run = fetch_cli(&format!("{url}/models/fashion-mlp"), &out);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success());
    assert!(stdout.contains("nothing to do"), "{stdout}");
    assert_eq!(
        std::fs::metadata(out.join("model.safetensors"))
            .unwrap()
            .modified()
            .unwrap(),
        written
    );

    // Weights damaged on disk are fetched again.
    let weights = out.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&weights, bytes).unwrap();
    let run = fetch_cli(&format!("{url}/models/card.json"), &out);
    assert!(run.status.success());
    assert!(String::from_utf8_lossy(&run.stdout).contains("fetched"));
    coded_sidecar::model::load(&out, &cpu()).expect("repaired");

    // Tampered weights at the source: refused, nothing written.
    let clean = scratch.path().join("clean");
    let run = fetch_cli(&format!("{bad}/models/fashion-mlp"), &clean);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(stderr.contains("sha256"), "{stderr}");
    assert!(files(&clean).is_empty(), "{:?}", files(&clean));
    // A good copy already there is kept (its weights match the card), and
    // damaged ones are not replaced by the tampered ones.
    let run = fetch_cli(&format!("{bad}/models/fashion-mlp"), &out);
    assert!(String::from_utf8_lossy(&run.stdout).contains("nothing to do"));
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&weights, &bytes).unwrap();
    let run = fetch_cli(&format!("{bad}/models/fashion-mlp"), &out);
    assert!(!run.status.success());
    assert_eq!(files(&out), vec!["card.json", "model.safetensors"]);
    assert_eq!(std::fs::read(&weights).unwrap(), bytes, "left as it was");
    let run = fetch_cli(&format!("{url}/models/fashion-mlp"), &out);
    assert!(run.status.success());
    coded_sidecar::model::load(&out, &cpu()).expect("repaired from a good source");

    // Paths and file:// work the same; missing models and unknown schemes
    // fail clearly.
    for uri in [
        dir.display().to_string(),
        format!("file://{}", dir.join("card.json").display()),
    ] {
        let into = scratch.path().join("local");
        let run = fetch_cli(&uri, &into);
        assert!(
            run.status.success(),
            "{uri}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        coded_sidecar::model::load(&into, &cpu()).unwrap();
    }
    let run = fetch_cli(&format!("{url}/nothing/here"), &scratch.path().join("x"));
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("cannot fetch"));
    let run = fetch_cli("ftp://host/model", &scratch.path().join("x"));
    assert!(String::from_utf8_lossy(&run.stderr).contains("ftp:// is not supported"));
    assert!(!scratch.path().join("x").exists());
}

#[test]
fn fetch_explains_itself() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coded-sidecar"))
        .args(["fetch", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for words in [
        "init container",
        "sha256",
        "atomically",
        "--uri",
        "--out",
        "s3://",
    ] {
        assert!(help.contains(words), "{words}: {help}");
    }
}

#[test]
fn fetch_reads_object_storage_with_credentials_from_the_environment() {
    let dir = model_dir();
    coded_sidecar::tls::init();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let endpoint = runtime.block_on(file_server(dir.clone(), false));
    let out = tempfile::tempdir().unwrap();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_coded-sidecar"))
        .args(["fetch", "--uri", "s3://models/fashion-mlp", "--out"])
        .arg(out.path())
        .env("AWS_ENDPOINT", &endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let fetched = coded_sidecar::model::load(out.path(), &cpu()).unwrap();
    assert_eq!(
        fetched.card,
        coded_sidecar::model::load(&dir, &cpu()).unwrap().card
    );
}

fn cpu() -> coded_sidecar::model::Placement {
    coded_sidecar::model::Placement::f32(candle_core::Device::Cpu)
}
