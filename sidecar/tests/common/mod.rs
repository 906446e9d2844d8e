//! Helpers for the integration tests: a worker with the linear fake model
//! on 127.0.0.1 and a way to stop it.

#![allow(dead_code)]

pub mod certs;
pub mod grpc;
pub mod linear;
pub mod models;

use std::net::SocketAddr;
use std::sync::Arc;

use coded_sidecar::worker::{ServeOptions, Server, WorkerError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use linear::Linear;

pub struct Running {
    pub addr: SocketAddr,
    pub url: String,
    /// Where gRPC is served, unless turned off.
    pub grpc: Option<SocketAddr>,
    pub model: Arc<Linear>,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), WorkerError>>,
}

impl Running {
    /// Starts the drain, as SIGTERM would.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub fn options() -> ServeOptions {
    let mut options = ServeOptions::default();
    options.http.port = 0;
    options
}

pub async fn start(options: ServeOptions, model: Linear) -> Running {
    // The tests' own reqwest clients need the TLS provider the binary installs.
    coded_sidecar::tls::init();
    let model = Arc::new(model);
    let server = Server::bind(model.clone(), &options).await.expect("bind");
    let addr = server.local_addr().expect("local addr");
    let grpc = server.grpc_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    Running {
        addr,
        url: format!("http://{addr}"),
        grpc,
        model,
        stop: Some(tx),
        task,
    }
}

/// Starts a coding frontend in this process in front of `models` and
/// `parity` (all serving the linear model as `linear`), with `tweak`ed
/// options; returns its URL and its task.
pub async fn start_frontend(
    models: &[Running],
    parity: &Running,
    tweak: impl FnOnce(&mut coded_sidecar::frontend::FrontendOptions),
) -> (String, JoinHandle<()>) {
    let (url, _, task) = start_frontend_grpc(models, parity, tweak).await;
    (url, task)
}

/// [`start_frontend`], also returning where it serves gRPC.
pub async fn start_frontend_grpc(
    models: &[Running],
    parity: &Running,
    tweak: impl FnOnce(&mut coded_sidecar::frontend::FrontendOptions),
) -> (String, Option<SocketAddr>, JoinHandle<()>) {
    let mut o = coded_sidecar::frontend::FrontendOptions::new(
        &models.iter().map(|w| w.url.clone()).collect::<Vec<_>>(),
        std::slice::from_ref(&parity.url),
    );
    o.http.port = 0;
    o.model_name = Some("linear".into());
    o.parity_model = Some("linear".into());
    tweak(&mut o);
    let server = coded_sidecar::frontend::bind(&o)
        .await
        .expect("frontend starts");
    let url = format!("http://{}", server.local_addr().expect("local addr"));
    let grpc = server.grpc_addr();
    let task = tokio::spawn(async move {
        let _ = server.run(std::future::pending()).await;
    });
    (url, grpc, task)
}

/// A server's metric from its `/metrics`, summed over the series whose
/// line contains `label` ("" for all of them).
pub async fn metric(url: &str, name: &str, label: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
