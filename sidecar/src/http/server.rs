//! The v2 routes over axum, generic over the [`Engine`] that answers, and
//! beside them the gRPC service ([`crate::grpc`]) onto the same engine:
//! one server, two front doors, one drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header::{CONNECTION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use prometheus::Registry;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::admission::{Admission, Limit, RETRY_AFTER_SECS, Ticket};
use super::auth::{self, BearerToken};
use super::decode::off_io_thread;
use super::engine::{self, Engine, InferError};
use super::metrics::{RequestMetrics, render};
use super::shedding::ShedConfig;
use crate::grpc::{GrpcError, GrpcPort, GrpcServer, InferenceService};
use crate::protocol::InferRequest;
use crate::protocol::binary::{self, EncodedBody, HEADER_LENGTH};
use crate::protocol::body::{announced_length, decode_content_encoding, read_raw_body};
use crate::protocol::v2::{ErrorBody, ServerMetadata};
use crate::tls::{ServerTls, TlsError, TlsListener, TlsOptions};

/// Where and how a v2 server listens.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpOptions {
    /// Address to listen on (0.0.0.0 in a pod), for HTTP and gRPC.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on for HTTP (0 picks a free one).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Port of the gRPC front door (KServe v2 / Triton
    /// `inference.GRPCInferenceService`, what `tritonclient.grpc` speaks):
    /// a port, 0 for a free one, or `off` [default: 8001, Triton's; a free
    /// port when --port is 0]
    #[arg(long, env = "CODED_GRPC_PORT", value_name = "PORT|off")]
    pub grpc_port: Option<GrpcPort>,
    /// Largest request body (HTTP) or message (gRPC) accepted, in bytes;
    /// bigger ones get a 413 or RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// After SIGTERM, report not ready but keep serving for this long
    /// before closing the listener, so that load balancers (Service
    /// endpoints, frontends' health probes) stop sending first; requests
    /// already in are then answered before the process exits.
    #[arg(long, env = "CODED_DRAIN_DELAY_MS", default_value_t = 0)]
    pub drain_delay_ms: u64,
    /// Most rows (queries) one infer request may carry; a request with
    /// more gets a 400 (gRPC: RESOURCE_EXHAUSTED) naming the limit, before
    /// any of it is computed.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_rows_per_request: u64,
    /// Also serve `GET /metrics`, and nothing else, on this port: plain
    /// HTTP, no TLS, no token, so that a NetworkPolicy can open it to the
    /// monitoring namespace alone while the serving ports stay open to
    /// clients. `/metrics` stays on --port as well (local, scripts and
    /// existing scrape configs read it there).
    #[arg(long, env = "CODED_METRICS_PORT", value_name = "PORT")]
    pub metrics_port: Option<u16>,
    #[command(flatten)]
    pub tls: TlsOptions,
    /// Most infer requests (HTTP and gRPC together) being answered at
    /// once; one more gets a 503 with Retry-After (gRPC:
    /// RESOURCE_EXHAUSTED) before its body is read. Health, metadata and
    /// metrics are never refused. 0 or `off`: no limit.
    #[arg(long, env = "CODED_MAX_INFLIGHT_REQUESTS", default_value_t = Limit::of(DEFAULT_MAX_INFLIGHT_REQUESTS), value_name = "N|off")]
    pub max_inflight_requests: Limit,
    /// Most request bytes (bodies as received, plus their inflated size
    /// when compressed) held by the infer requests being answered; a
    /// request that would go over gets a 503 with Retry-After (gRPC:
    /// RESOURCE_EXHAUSTED) before its body is decoded. At least
    /// --max-body-bytes. 0 or `off`: no limit.
    #[arg(long, env = "CODED_MAX_INFLIGHT_BYTES", default_value_t = Limit::of(DEFAULT_MAX_INFLIGHT_BYTES), value_name = "BYTES|off")]
    pub max_inflight_bytes: Limit,
    /// Shed by queueing delay: a cap on requests learnt below
    /// --max-inflight-requests (the frontend's --shed-queue-delay-ms; the
    /// worker's own queue is the frontend's to keep short).
    #[arg(skip)]
    pub shed: Option<ShedConfig>,
}

/// `--max-inflight-requests`' default: far above what the 2-core figures in
/// docs/benchmarks.md keep in flight, so only an overload meets it.
pub const DEFAULT_MAX_INFLIGHT_REQUESTS: u64 = 1024;
/// `--max-inflight-bytes`' default: eight bodies of the default 64 MiB limit.
pub const DEFAULT_MAX_INFLIGHT_BYTES: u64 = 512 * 1024 * 1024;

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            host: "127.0.0.1".to_owned(),
            port: 8000,
            grpc_port: None,
            max_body_bytes: 64 * 1024 * 1024,
            drain_delay_ms: 0,
            max_rows_per_request: 4096,
            metrics_port: None,
            tls: TlsOptions::default(),
            max_inflight_requests: Limit::of(DEFAULT_MAX_INFLIGHT_REQUESTS),
            max_inflight_bytes: Limit::of(DEFAULT_MAX_INFLIGHT_BYTES),
            shed: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    Grpc(#[from] GrpcError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(
        "--max-inflight-bytes {inflight} is below --max-body-bytes {body}: a request of the largest size could never be admitted"
    )]
    InflightBelowBody { inflight: u64, body: usize },
}

pub(super) struct AppState<E> {
    pub(super) engine: Arc<E>,
    pub(super) metrics: RequestMetrics,
    pub(super) registry: Registry,
    pub(super) draining: Arc<AtomicBool>,
    pub(super) max_body_bytes: usize,
    pub(super) max_rows: usize,
    pub(super) admission: Arc<Admission>,
    /// Called with the body's size on the thread that decodes it, before
    /// decoding (tests hold a decode there to see what else is served).
    pub(super) decode_hook: Option<Arc<dyn Fn(usize) + Send + Sync>>,
}

/// A bound v2 server; `run` serves until the shutdown future resolves, then
/// drains and waits for its background tasks.
pub struct V2Server {
    listener: TcpListener,
    tls: Option<ServerTls>,
    /// The `--metrics-port` listener and its one route.
    metrics: Option<(TcpListener, Router)>,
    app: Router,
    grpc: Option<GrpcServer>,
    draining: Arc<AtomicBool>,
    background: Vec<JoinHandle<()>>,
    drain_delay: Duration,
    name: String,
}

impl V2Server {
    /// Binds the HTTP listener and, unless `--grpc-port off`, the gRPC one
    /// (same engine, metrics, limits and drain). `extra` routes (e.g. the
    /// worker's admin API) are merged in; `registry` is what `GET /metrics`
    /// shows and must hold `metrics`. With `auth`, every request but the
    /// health checks must show that token, on both listeners.
    pub async fn bind<E: Engine>(
        engine: Arc<E>,
        metrics: RequestMetrics,
        registry: Registry,
        options: &HttpOptions,
        extra: Router,
        auth: Option<BearerToken>,
    ) -> Result<V2Server, HttpError> {
        let name = engine.info().name.clone();
        // A bad certificate or key stops the server before it listens.
        let tls = ServerTls::from_options(&options.tls)?;
        let draining = Arc::new(AtomicBool::new(false));
        let max_rows = usize::try_from(options.max_rows_per_request).unwrap_or(usize::MAX);
        if let Some(inflight) = options.max_inflight_bytes.0 {
            if inflight < options.max_body_bytes as u64 {
                return Err(HttpError::InflightBelowBody {
                    inflight,
                    body: options.max_body_bytes,
                });
            }
        }
        let admission = Admission::new(
            options.max_inflight_requests,
            options.max_inflight_bytes,
            options.shed,
            metrics.refused.clone(),
            metrics.inflight_limit.clone(),
        );
        let grpc = match GrpcPort::resolve(options.grpc_port, options.port) {
            Some(port) => {
                let service = InferenceService::new(
                    engine.clone(),
                    metrics.clone(),
                    draining.clone(),
                    max_rows,
                );
                Some(
                    GrpcServer::bind(
                        service,
                        &options.host,
                        port,
                        options.max_body_bytes,
                        tls.clone(),
                        auth.clone(),
                        admission.clone(),
                    )
                    .await?,
                )
            }
            None => None,
        };
        let metrics_only = match options.metrics_port {
            Some(port) => {
                let addr = format!("{}:{port}", options.host);
                let listener = TcpListener::bind(&addr)
                    .await
                    .map_err(|source| HttpError::Bind { addr, source })?;
                let router = Router::new()
                    .route("/metrics", get(registry_metrics))
                    .fallback(not_found)
                    .with_state(registry.clone());
                Some((listener, router))
            }
            None => None,
        };
        let state = Arc::new(AppState {
            engine,
            metrics,
            registry,
            draining: draining.clone(),
            max_body_bytes: options.max_body_bytes,
            max_rows,
            admission,
            decode_hook: None,
        });
        let mut app = router(state).merge(extra);
        if let Some(token) = auth {
            app = app.layer(axum::middleware::from_fn_with_state(
                token,
                auth::require_http,
            ));
        }
        let app = app.layer(axum::middleware::map_response_with_state(
            draining.clone(),
            close_when_draining,
        ));
        let addr = format!("{}:{}", options.host, options.port);
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| HttpError::Bind { addr, source })?;
        Ok(V2Server {
            listener,
            tls,
            metrics: metrics_only,
            app,
            grpc,
            draining,
            background: Vec::new(),
            drain_delay: Duration::from_millis(options.drain_delay_ms),
            name,
        })
    }

    /// A task to wait for after the last connection closed (e.g. a batcher
    /// that finishes its queue).
    pub fn with_background(mut self, task: JoinHandle<()>) -> Self {
        self.background.push(task);
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// `https` when serving TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Where `--metrics-port` serves `/metrics`, if it is given.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Where gRPC is served; `None` with `--grpc-port off`.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().and_then(|g| g.local_addr().ok())
    }

    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), HttpError> {
        let V2Server {
            listener,
            tls,
            metrics,
            app,
            grpc,
            draining,
            background,
            drain_delay,
            name,
        } = self;
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(model = %name, %addr, "serving v2");
        }
        // HTTP's graceful shutdown drives the signal; gRPC stops with it.
        let (stop, stopped) = watch::channel(false);
        let signal = async move {
            shutdown.await;
            draining.store(true, Ordering::SeqCst);
            tokio::time::sleep(drain_delay).await;
            tracing::info!("stops accepting connections");
            stop.send_replace(true);
        };
        let http = async {
            match tls {
                // axum speaks HTTP/1.1 only (its http2 feature is off).
                Some(tls) => {
                    let listener = TlsListener::new(listener, tls.acceptor(&[b"http/1.1"]));
                    axum::serve(listener, app)
                        .with_graceful_shutdown(signal)
                        .await
                }
                None => {
                    let listener = listener.tap_io(|tcp| {
                        if let Err(e) = tcp.set_nodelay(true) {
                            tracing::debug!("cannot set TCP_NODELAY: {e}");
                        }
                    });
                    axum::serve(listener, app)
                        .with_graceful_shutdown(signal)
                        .await
                }
            }
            .map_err(HttpError::Serve)
        };
        let mut metrics_stopped = stopped.clone();
        let metrics = async {
            match metrics {
                Some((listener, router)) => {
                    if let Ok(addr) = listener.local_addr() {
                        tracing::info!(%addr, "serving /metrics");
                    }
                    let signal = async move {
                        let _ = metrics_stopped.wait_for(|stop| *stop).await;
                    };
                    axum::serve(listener, router)
                        .with_graceful_shutdown(signal)
                        .await
                        .map_err(HttpError::Serve)
                }
                None => Ok(()),
            }
        };
        let grpc = async {
            match grpc {
                Some(server) => {
                    let mut stopped = stopped;
                    let signal = async move {
                        // An error means the sender is gone: stop as well.
                        let _ = stopped.wait_for(|stop| *stop).await;
                    };
                    server.run(signal).await.map_err(HttpError::Grpc)
                }
                None => Ok(()),
            }
        };
        tokio::try_join!(http, grpc, metrics)?;
        for task in background {
            let _ = task.await;
        }
        tracing::info!("drained");
        Ok(())
    }
}

/// While draining, every response asks the client to close its connection,
/// so that a kept-alive connection (pinned to this pod by the Service's NAT)
/// moves to another instance after its next answer instead of being cut
/// when the server stops: no request is sent into a closing connection.
async fn close_when_draining(
    State(draining): State<Arc<AtomicBool>>,
    mut response: Response,
) -> Response {
    if draining.load(Ordering::SeqCst) {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

pub(super) fn router<E: Engine>(state: Arc<AppState<E>>) -> Router {
    Router::new()
        .route("/v2", get(get_server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready::<E>))
        .route("/v2/models/{name}", get(model_metadata::<E>))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(model_metadata::<E>),
        )
        .route("/v2/models/{name}/ready", get(model_ready::<E>))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready::<E>),
        )
        .route("/v2/models/{name}/infer", post(infer::<E>))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(infer::<E>),
        )
        .route("/v2/models/stats", get(super::stats_route::all::<E>))
        .route("/v2/models/{name}/stats", get(super::stats_route::one::<E>))
        .route(
            "/v2/models/{name}/versions/{version}/stats",
            get(super::stats_route::one::<E>),
        )
        .route(
            "/v2/repository/index",
            post(super::repository::repository_index::<E>),
        )
        .route("/metrics", get(metrics::<E>))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

impl IntoResponse for InferError {
    fn into_response(self) -> Response {
        error_response(self.status(), self.to_string())
    }
}

/// `{"error": ...}` with a status, the protocol's error shape.
pub fn error_response(status: StatusCode, error: String) -> Response {
    (status, Json(ErrorBody { error })).into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct ModelPath {
    pub(super) name: String,
    pub(super) version: Option<String>,
}

/// The protocol extensions served (Triton's names): binary tensors, the
/// read-only repository index, statistics, and the schedule policy's `timeout` and
/// `priority` request parameters (honoured by the frontend's queue).
pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "model_repository",
    "schedule_policy",
    "statistics",
];

/// This server's name, version and protocol extensions (`GET /v2`, and
/// gRPC's `ServerMetadata`).
pub fn server_metadata() -> ServerMetadata {
    ServerMetadata {
        name: "coded-sidecar".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        extensions: EXTENSIONS.iter().map(|&e| e.to_owned()).collect(),
    }
}

async fn get_server_metadata() -> Json<ServerMetadata> {
    Json(server_metadata())
}

async fn live() -> Response {
    (StatusCode::OK, Json(serde_json::json!({"live": true}))).into_response()
}

fn readiness<E: Engine>(s: &AppState<E>) -> Response {
    let ready = !s.draining.load(Ordering::SeqCst) && s.engine.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(serde_json::json!({"ready": ready}))).into_response()
}

async fn ready<E: Engine>(State(s): State<Arc<AppState<E>>>) -> Response {
    readiness(&s)
}

async fn model_ready<E: Engine>(
    State(s): State<Arc<AppState<E>>>,
    Path(p): Path<ModelPath>,
) -> Response {
    match s.engine.info().resolve(&p.name, p.version.as_deref()) {
        Ok(_) => readiness(&s),
        Err(e) => InferError::from(e).into_response(),
    }
}

async fn model_metadata<E: Engine>(
    State(s): State<Arc<AppState<E>>>,
    Path(p): Path<ModelPath>,
) -> Response {
    let info = s.engine.info();
    match info.resolve(&p.name, p.version.as_deref()) {
        Ok(_) => Json(info.metadata()).into_response(),
        Err(e) => InferError::from(e).into_response(),
    }
}

async fn metrics<E: Engine>(State(s): State<Arc<AppState<E>>>) -> Response {
    metrics_response(&s.registry)
}

/// `/metrics` of the `--metrics-port` listener.
async fn registry_metrics(State(registry): State<Registry>) -> Response {
    metrics_response(&registry)
}

fn metrics_response(registry: &Registry) -> Response {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        render(registry),
    )
        .into_response()
}

async fn infer<E: Engine>(
    State(s): State<Arc<AppState<E>>>,
    Path(p): Path<ModelPath>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Admitted before a byte of the body is read, holding its announced
    // size (an oversized one is left to read_raw_body's 413).
    let announced = announced_length(&headers)
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n <= s.max_body_bytes);
    let ticket = match s.admission.admit(announced.unwrap_or(0)) {
        Ok(ticket) => Arc::new(ticket),
        Err(e) => return refused(e.to_string()),
    };
    match s
        .metrics
        .observe(answer(&s, p, &headers, body, announced.is_none(), ticket))
        .await
    {
        Ok(response) => response,
        Err(e) if super::admission::is_refusal(e.reason()) => refused(e.to_string()),
        Err(e) => e.into_response(),
    }
}

/// A request refused by admission: 503 with Retry-After (see
/// [`super::admission`] for why not 429).
fn refused(message: String) -> Response {
    let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, message);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    response
}

async fn answer<E: Engine>(
    s: &AppState<E>,
    p: ModelPath,
    headers: &HeaderMap,
    body: Body,
    unannounced: bool,
    ticket: Arc<Ticket>,
) -> Result<Response, InferError> {
    let version = s.engine.info().resolve(&p.name, p.version.as_deref())?;
    let raw = read_raw_body(body, headers, s.max_body_bytes).await?;
    if unannounced {
        ticket.hold(raw.len())?;
    }
    let mut request = decode(s, headers, raw, ticket.clone()).await?;
    let response = engine::answer(
        s.engine.as_ref(),
        version,
        &mut request,
        s.max_rows,
        &s.metrics.stats,
    )
    .await?;
    ticket.answered();
    drop(ticket);
    Ok(body_response(binary::encode_response(
        &response,
        &request.outputs,
    )))
}

/// Inflates and parses a body, off the I/O thread when it is large; the
/// inflated bytes are held against `--max-inflight-bytes` before parsing.
async fn decode<E: Engine>(
    s: &AppState<E>,
    headers: &HeaderMap,
    raw: Bytes,
    ticket: Arc<Ticket>,
) -> Result<InferRequest, InferError> {
    let header_length =
        binary::parse_header_length(headers.get(HEADER_LENGTH).map(|v| v.as_bytes()))?;
    let mut encoding = HeaderMap::new();
    if let Some(value) = headers.get(CONTENT_ENCODING) {
        encoding.insert(CONTENT_ENCODING, value.clone());
    }
    let (hook, limit) = (s.decode_hook.clone(), s.max_body_bytes);
    off_io_thread(raw.len(), move || {
        if let Some(hook) = hook {
            hook(raw.len());
        }
        let wire = raw.as_ptr();
        let body = decode_content_encoding(&encoding, raw, limit)?;
        if body.as_ptr() != wire {
            ticket.hold(body.len())?;
        }
        Ok(binary::decode_request(&body, header_length)?)
    })
    .await?
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
