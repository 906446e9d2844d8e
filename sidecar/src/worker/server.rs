//! The worker's v2 server: the shared HTTP surface ([`crate::http`]) with
//! the batcher in front of one model as its engine, plus an optional admin
//! route that injects delay (fault tests and `local --straggle`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::backend::Backend;
use super::batcher::{BatchConfig, BatchError, Batcher};
use super::metrics::{Metrics, MetricsError};
use super::service_time::{ServiceTimeArgs, ServiceTimeError};
use crate::http::server::error_response;
use crate::http::{Answer, Engine, EngineError, HttpError, HttpOptions, V2Server, shutdown};
use crate::protocol::{ModelInfo, ModelInput};

/// Flags of `coded-sidecar worker` that shape serving.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeOptions {
    #[command(flatten)]
    pub http: HttpOptions,
    /// Most rows per model call.
    #[arg(long, default_value_t = 64)]
    pub max_batch_size: usize,
    /// Longest a request waits for others to join its batch, in µs. Zero
    /// still batches under load (requests that queue while a batch runs
    /// form the next one) without adding latency at low load; tokio's timer
    /// rounds any non-zero wait up to ~1 ms.
    #[arg(long, default_value_t = 0)]
    pub max_queue_delay_us: u64,
    /// Model calls that may run at once (with more than one I/O thread).
    #[arg(long, default_value_t = 1)]
    pub batch_concurrency: usize,
    /// Threads that serve requests. With one (the default) batches expected
    /// to take under 2 ms run on that same thread between reads: no
    /// hand-off to a compute thread and back for each batch, and requests
    /// that arrive meanwhile wait in their sockets and form the next batch
    /// (`bench overhead`, 2 cores: see docs/benchmarks.md); longer batches
    /// run on a blocking thread, so that health checks are answered
    /// meanwhile. With more, the model always runs on a blocking thread.
    #[arg(long, env = "CODED_IO_THREADS", default_value_t = 1)]
    pub io_threads: usize,
    /// Added to every answer, in ms: makes this worker a straggler on purpose.
    #[arg(long, default_value_t = 0)]
    pub inject_delay_ms: u64,
    /// Serve `GET/POST /admin/delay` to read and change the injected delay.
    #[arg(long)]
    pub admin: bool,
    #[command(flatten)]
    pub service_time: ServiceTimeArgs,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            http: HttpOptions::default(),
            max_batch_size: 64,
            max_queue_delay_us: 0,
            batch_concurrency: 1,
            io_threads: 1,
            inject_delay_ms: 0,
            admin: false,
            service_time: ServiceTimeArgs::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    ServiceTime(#[from] ServiceTimeError),
}

/// The batcher in front of one model, plus the injected delay.
struct WorkerEngine {
    info: ModelInfo,
    batcher: Batcher,
    delay_ms: Arc<AtomicU64>,
}

impl Engine for WorkerEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    async fn infer(&self, input: ModelInput) -> Result<Answer, EngineError> {
        let output = self
            .batcher
            .infer(input.rows, input.data)
            .await
            .map_err(|e| match e {
                BatchError::Closed => EngineError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    e.to_string(),
                ),
                e => EngineError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "model_failed",
                    e.to_string(),
                ),
            })?;
        let delay = self.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        Ok(Answer::new(output))
    }
}

/// A bound worker; see [`V2Server`].
pub struct Server(V2Server);

/// Serves `backend` until SIGTERM or Ctrl-C, then drains.
pub async fn serve<B: Backend>(backend: B, options: &ServeOptions) -> Result<(), WorkerError> {
    Server::bind(backend, options)
        .await?
        .run(shutdown::signal())
        .await
}

impl Server {
    pub async fn bind<B: Backend>(
        backend: B,
        options: &ServeOptions,
    ) -> Result<Server, WorkerError> {
        let info = backend.metadata();
        let metrics = Arc::new(Metrics::new(&info.name)?);
        let config = BatchConfig {
            max_batch_size: options.max_batch_size,
            max_queue_delay: Duration::from_micros(options.max_queue_delay_us),
            concurrency: options.batch_concurrency,
            inline: options.io_threads == 1,
            service_time: options.service_time.model()?,
        };
        let (batcher, batcher_task) = Batcher::spawn(
            Arc::new(backend),
            info.input.shape.clone(),
            info.output.row_len(),
            config,
            metrics.clone(),
        );
        let delay_ms = Arc::new(AtomicU64::new(options.inject_delay_ms));
        let extra = if options.admin {
            Router::new()
                .route("/admin/delay", get(get_delay).post(set_delay))
                .with_state(delay_ms.clone())
        } else {
            Router::new()
        };
        let engine = Arc::new(WorkerEngine {
            info,
            batcher,
            delay_ms,
        });
        let server = V2Server::bind(
            engine,
            metrics.request.clone(),
            metrics.registry.clone(),
            &options.http,
            extra,
            None,
        )
        .await?
        .with_background(batcher_task);
        Ok(Server(server))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }

    /// Where gRPC is served; `None` with `--grpc-port off`.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.0.grpc_addr()
    }

    /// `https` when serving TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        self.0.scheme()
    }

    /// Serves until `shutdown` resolves, then drains: reports not ready,
    /// stops accepting connections, answers what it has, and returns once
    /// the batcher's queue is empty.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), WorkerError> {
        Ok(self.0.run(shutdown).await?)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Delay {
    delay_ms: u64,
}

async fn get_delay(State(delay): State<Arc<AtomicU64>>) -> Json<Delay> {
    Json(Delay {
        delay_ms: delay.load(Ordering::Relaxed),
    })
}

async fn set_delay(State(delay): State<Arc<AtomicU64>>, body: axum::body::Bytes) -> Response {
    match serde_json::from_slice::<Delay>(&body) {
        Ok(d) => {
            delay.store(d.delay_ms, Ordering::Relaxed);
            tracing::info!(delay_ms = d.delay_ms, "injected delay changed");
            Json(d).into_response()
        }
        Err(e) => error_response(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"delay_ms\": N}}: {e}"),
        ),
    }
}
