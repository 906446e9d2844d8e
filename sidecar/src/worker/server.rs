//! The worker's HTTP server: one model over the Open Inference Protocol v2.
//!
//! Routes: `GET /v2`, `/v2/health/{live,ready}`,
//! `GET /v2/models/{name}[/versions/{v}][/ready]`,
//! `POST /v2/models/{name}[/versions/{v}]/infer`, `GET /metrics`, and with
//! `--admin` `GET|POST /admin/delay` to slow the worker down for fault tests.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::backend::Backend;
use super::batcher::{BatchConfig, BatchError, Batcher};
use super::metrics::{Metrics, MetricsError};
use super::shutdown;
use crate::protocol::binary::{self, EncodedBody, HEADER_LENGTH};
use crate::protocol::body::read_body;
use crate::protocol::v2::{ErrorBody, Parameters, ServerMetadata};
use crate::protocol::{InferResponse, ModelInfo, NamedTensor, ProtocolError};

/// Flags of `coded-sidecar worker` that concern serving (the model URI is
/// the subcommand's own business). Flatten into the subcommand's args.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeOptions {
    /// Address to listen on (0.0.0.0 in a pod).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; 0 picks a free one.
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Most rows per model call when batching concurrent requests.
    #[arg(long, default_value_t = 64)]
    pub max_batch_size: usize,
    /// Longest a request waits for others to share its model call, in µs.
    /// 0 (the default) still batches under load: requests that arrive while
    /// the model is busy share the next call. Any wait above 0 rounds up to
    /// tokio's 1 ms timer tick, which measured 79 µs -> 2.2 ms p50 for a lone
    /// request on loopback.
    #[arg(long, default_value_t = 0)]
    pub max_queue_delay_us: u64,
    /// Model calls that may run at once.
    #[arg(long, default_value_t = 1)]
    pub batch_concurrency: usize,
    /// Largest request body accepted (after decompression), in bytes.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Delay added to every inference response, in ms (fault injection).
    #[arg(long, default_value_t = 0)]
    pub inject_delay_ms: u64,
    /// Serve `/admin/delay` to change the injected delay at run time.
    #[arg(long)]
    pub admin: bool,
    /// On SIGTERM, keep serving this long while reporting not ready, so
    /// that load balancers stop sending before connections close, in ms.
    #[arg(long, default_value_t = 0)]
    pub drain_delay_ms: u64,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            host: "127.0.0.1".to_owned(),
            port: 8000,
            max_batch_size: 64,
            max_queue_delay_us: 0,
            batch_concurrency: 1,
            max_body_bytes: 64 * 1024 * 1024,
            inject_delay_ms: 0,
            admin: false,
            drain_delay_ms: 0,
        }
    }
}

/// Why the worker could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

struct AppState {
    info: ModelInfo,
    batcher: Batcher,
    metrics: Arc<Metrics>,
    ready: AtomicBool,
    delay_ms: AtomicU64,
    max_body_bytes: usize,
}

/// A bound, not yet running worker; [`Server::local_addr`] tells the port
/// when it was 0.
pub struct Server {
    listener: TcpListener,
    app: Router,
    state: Arc<AppState>,
    batcher: JoinHandle<()>,
    drain_delay: Duration,
}

/// Serves `backend` until SIGTERM or Ctrl-C, then drains.
pub async fn serve<B: Backend>(backend: B, options: &ServeOptions) -> Result<(), WorkerError> {
    Server::bind(backend, options)
        .await?
        .run(shutdown::signal())
        .await
}

impl Server {
    /// Reads the model's metadata, starts the batcher and binds the port.
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
        };
        let (batcher, batcher_task) = Batcher::spawn(
            Arc::new(backend),
            info.input.shape.clone(),
            info.output.row_len(),
            config,
            metrics.clone(),
        );
        let state = Arc::new(AppState {
            info,
            batcher,
            metrics,
            ready: AtomicBool::new(true),
            delay_ms: AtomicU64::new(options.inject_delay_ms),
            max_body_bytes: options.max_body_bytes,
        });
        let app = router(state.clone(), options.admin);

        let addr = format!("{}:{}", options.host, options.port);
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| WorkerError::Bind { addr, source })?;
        Ok(Server {
            listener,
            app,
            state,
            batcher: batcher_task,
            drain_delay: Duration::from_millis(options.drain_delay_ms),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains: reports not ready,
    /// waits the drain delay, stops accepting, answers in-flight requests
    /// and returns once the model has finished its last batch.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), WorkerError> {
        let Server {
            listener,
            app,
            state,
            batcher,
            drain_delay,
        } = self;
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(model = %state.info.name, %addr, "worker serving v2");
        }
        let draining = state.clone();
        let signal = async move {
            shutdown.await;
            draining.ready.store(false, Ordering::SeqCst);
            tokio::time::sleep(drain_delay).await;
            tracing::info!("worker stops accepting connections");
        };
        // Only the router's clones of the state may keep the batcher alive.
        drop(state);
        // Responses are small and latency is the product: no Nagle delay.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!("cannot set TCP_NODELAY: {e}");
            }
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .await
            .map_err(WorkerError::Serve)?;
        // Every request handler is done; the batcher sees its queue close.
        let _ = batcher.await;
        tracing::info!("worker drained");
        Ok(())
    }
}

fn router(state: Arc<AppState>, admin: bool) -> Router {
    let mut app = Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready),
        )
        .route("/v2/models/{name}/infer", axum::routing::post(infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            axum::routing::post(infer),
        )
        .route("/metrics", get(metrics));
    if admin {
        app = app.route("/admin/delay", get(get_delay).post(set_delay));
    }
    app.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// A failed request: the caller's mistake (4xx) or ours (5xx).
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Batch(#[from] BatchError),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Protocol(e) => e.status(),
            ApiError::Batch(BatchError::Closed) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Batch(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            ApiError::Protocol(e) => e.reason(),
            ApiError::Batch(BatchError::Closed) => "unavailable",
            ApiError::Batch(_) => "model_failed",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(self.status(), self.to_string())
    }
}

fn error_response(status: StatusCode, error: String) -> Response {
    (status, Json(ErrorBody { error })).into_response()
}

#[derive(Debug, Deserialize)]
struct ModelPath {
    name: String,
    version: Option<String>,
}

async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "coded-sidecar".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        extensions: vec!["binary_tensor_data".to_owned()],
    })
}

async fn live() -> Response {
    (StatusCode::OK, Json(serde_json::json!({"live": true}))).into_response()
}

fn readiness(ready: bool) -> Response {
    // Any non-200 means "not ready" to v2 clients and to Kubernetes probes.
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(serde_json::json!({"ready": ready}))).into_response()
}

async fn ready(State(s): State<Arc<AppState>>) -> Response {
    readiness(s.ready.load(Ordering::SeqCst))
}

async fn model_ready(State(s): State<Arc<AppState>>, Path(p): Path<ModelPath>) -> Response {
    match s.info.resolve(&p.name, p.version.as_deref()) {
        Ok(_) => readiness(s.ready.load(Ordering::SeqCst)),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn model_metadata(State(s): State<Arc<AppState>>, Path(p): Path<ModelPath>) -> Response {
    match s.info.resolve(&p.name, p.version.as_deref()) {
        Ok(_) => Json(s.info.metadata()).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        s.metrics.render(),
    )
        .into_response()
}

/// Keeps the in-flight gauge right even when the client goes away and the
/// handler is dropped mid-request.
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn enter(metrics: &'a Metrics) -> Self {
        metrics.inflight.inc();
        InFlight(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.inflight.dec();
    }
}

async fn infer(
    State(s): State<Arc<AppState>>,
    Path(p): Path<ModelPath>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    s.metrics.requests.inc();
    let _inflight = InFlight::enter(&s.metrics);
    match answer(&s, p, &headers, body).await {
        Ok(response) => {
            s.metrics
                .request_duration
                .observe(started.elapsed().as_secs_f64());
            response
        }
        Err(e) => {
            s.metrics.errors.with_label_values(&[e.reason()]).inc();
            if e.status().is_server_error() {
                tracing::warn!("infer failed: {e}");
            } else {
                tracing::debug!("bad infer request: {e}");
            }
            e.into_response()
        }
    }
}

async fn answer(
    s: &AppState,
    p: ModelPath,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let version = s.info.resolve(&p.name, p.version.as_deref())?;
    let raw = read_body(body, headers, s.max_body_bytes).await?;
    let header_length =
        binary::parse_header_length(headers.get(HEADER_LENGTH).map(|v| v.as_bytes()))?;
    let mut request = binary::decode_request(&raw, header_length)?;
    drop(raw);
    let input = s.info.take_input(&mut request)?;

    let output = if input.rows == 0 {
        Vec::new()
    } else {
        s.batcher.infer(input.rows, input.data).await?
    };
    let delay = s.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }

    let response = InferResponse {
        model_name: s.info.name.clone(),
        model_version: Some(version),
        id: request.id,
        parameters: Parameters::new(),
        outputs: vec![NamedTensor {
            name: s.info.output.name.clone(),
            shape: s.info.output_shape(input.rows, input.batched),
            data: output,
        }],
    };
    Ok(body_response(binary::encode_response(
        &response,
        &request.outputs,
    )))
}

fn body_response(encoded: EncodedBody) -> Response {
    let mut response = Response::new(Body::from(encoded.body));
    let headers = response.headers_mut();
    match encoded.header_length {
        Some(n) => {
            headers.insert(HeaderName::from_static(HEADER_LENGTH), HeaderValue::from(n));
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
        }
        None => {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
    }
    response
}

#[derive(Debug, Serialize, Deserialize)]
struct Delay {
    delay_ms: u64,
}

async fn get_delay(State(s): State<Arc<AppState>>) -> Json<Delay> {
    Json(Delay {
        delay_ms: s.delay_ms.load(Ordering::Relaxed),
    })
}

async fn set_delay(State(s): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    match serde_json::from_slice::<Delay>(&body) {
        Ok(d) => {
            s.delay_ms.store(d.delay_ms, Ordering::Relaxed);
            tracing::info!(delay_ms = d.delay_ms, "injected delay changed");
            Json(d).into_response()
        }
        Err(e) => error_response(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"delay_ms\": N}}: {e}"),
        ),
    }
}

async fn not_found(method: Method, uri: Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {method} {uri}"),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on {uri}"),
    )
}
