//! Helpers for the integration tests: a worker with the linear fake model
//! on 127.0.0.1 and a way to stop it.

#![allow(dead_code)]

pub mod linear;

use std::net::SocketAddr;
use std::sync::Arc;

use coded_sidecar::worker::{ServeOptions, Server, WorkerError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use linear::Linear;

pub struct Running {
    pub addr: SocketAddr,
    pub url: String,
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
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    Running {
        addr,
        url: format!("http://{addr}"),
        model,
        stop: Some(tx),
        task,
    }
}
