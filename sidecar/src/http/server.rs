//! The v2 routes over axum, generic over the [`Engine`] that answers, and
//! beside them the gRPC service ([`crate::grpc`]) onto the same engine:
//! one server, two front doors, one drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::{CONNECTION, CONTENT_TYPE};
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

use super::auth::{self, BearerToken};
use super::engine::{self, Engine, InferError};
use super::metrics::{RequestMetrics, render};
use crate::grpc::{GrpcError, GrpcPort, GrpcServer, InferenceService};
use crate::protocol::binary::{self, EncodedBody, HEADER_LENGTH};
use crate::protocol::body::read_body;
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
}

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
}

struct AppState<E> {
    engine: Arc<E>,
    metrics: RequestMetrics,
    registry: Registry,
    draining: Arc<AtomicBool>,
    max_body_bytes: usize,
    max_rows: usize,
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

fn router<E: Engine>(state: Arc<AppState<E>>) -> Router {
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
struct ModelPath {
    name: String,
    version: Option<String>,
}

/// This server's name, version and protocol extensions (`GET /v2`, and
/// gRPC's `ServerMetadata`).
pub fn server_metadata() -> ServerMetadata {
    ServerMetadata {
        name: "coded-sidecar".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        extensions: vec!["binary_tensor_data".to_owned()],
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
    match s.metrics.observe(answer(&s, p, &headers, body)).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn answer<E: Engine>(
    s: &AppState<E>,
    p: ModelPath,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, InferError> {
    let version = s.engine.info().resolve(&p.name, p.version.as_deref())?;
    let raw = read_body(body, headers, s.max_body_bytes).await?;
    let header_length =
        binary::parse_header_length(headers.get(HEADER_LENGTH).map(|v| v.as_bytes()))?;
    let mut request = binary::decode_request(&raw, header_length)?;
    drop(raw);
    let response = engine::answer(s.engine.as_ref(), version, &mut request, s.max_rows).await?;
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
