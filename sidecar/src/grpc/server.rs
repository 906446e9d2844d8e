//! The gRPC listener: where it binds (`--grpc-port`), its message limit,
//! and serving until the shared shutdown signal, after which tonic sends
//! GOAWAY, answers the calls in flight and returns.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use axum::http::HeaderValue;
use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;

use super::admission::{Gate, admit};
use super::proto::grpc_inference_service_server::GrpcInferenceServiceServer;
use super::service::InferenceService;
use crate::http::auth::{self, BearerToken};
use crate::http::{Admission, Engine};
use crate::tls::{ServerTls, TlsListener};

/// Triton's gRPC port, the convention clients assume.
pub const DEFAULT_PORT: u16 = 8001;

/// `--grpc-port`: a port (0 picks a free one), or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcPort {
    Off,
    Port(u16),
}

impl GrpcPort {
    /// The port to bind, if any: an explicit choice, else 8001, or a free
    /// port when HTTP takes a free one too (tests and `local`'s workers
    /// start many servers on one host).
    pub fn resolve(choice: Option<GrpcPort>, http_port: u16) -> Option<u16> {
        match choice {
            Some(GrpcPort::Off) => None,
            Some(GrpcPort::Port(p)) => Some(p),
            None if http_port == 0 => Some(0),
            None => Some(DEFAULT_PORT),
        }
    }
}

impl FromStr for GrpcPort {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(GrpcPort::Off);
        }
        s.parse::<u16>()
            .map(GrpcPort::Port)
            .map_err(|_| format!("expected a port number (0-65535) or `off`, got {s:?}"))
    }
}

impl fmt::Display for GrpcPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrpcPort::Off => f.write_str("off"),
            GrpcPort::Port(p) => write!(f, "{p}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("cannot listen for gRPC on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
}

/// A bound gRPC listener with its service, not yet serving.
pub struct GrpcServer {
    listener: TcpListener,
    routes: Routes,
    tls: Option<ServerTls>,
}

impl GrpcServer {
    /// Binds `host:port`. A message over `max_message_bytes` (the HTTP
    /// body limit) is refused with RESOURCE_EXHAUSTED before it is decoded,
    /// and so is a `ModelInfer` call over the `admission` limits.
    /// With `tls`, every connection is TLS (ALPN `h2`); with `auth`, every
    /// call but ServerLive and ServerReady must show that token.
    pub async fn bind<E: Engine>(
        service: InferenceService<E>,
        host: &str,
        port: u16,
        max_message_bytes: usize,
        tls: Option<ServerTls>,
        auth: Option<BearerToken>,
        admission: Arc<Admission>,
    ) -> Result<GrpcServer, GrpcError> {
        let addr = format!("{host}:{port}");
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| GrpcError::Bind { addr, source })?;
        let server = GrpcInferenceServiceServer::new(service)
            .max_decoding_message_size(max_message_bytes)
            // tritonclient can compress requests (compression_algorithm).
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Deflate);
        let gate = Gate {
            admission,
            max_message_bytes,
        };
        let mut router = Routes::new(server)
            .into_axum_router()
            .layer(axum::middleware::from_fn_with_state(gate, admit));
        // Added last, so it runs first: a call without the token is
        // refused before it takes a share of the admission limits.
        if let Some(token) = auth {
            router = router.layer(axum::middleware::from_fn_with_state(
                token,
                auth::require_grpc,
            ));
        }
        Ok(GrpcServer {
            listener,
            routes: Routes::from(router),
            tls,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then stops accepting connections
    /// and returns once the calls in flight are answered.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), GrpcError> {
        let router = tonic::transport::Server::builder()
            .layer(axum::middleware::map_response(
                too_large_is_resource_exhausted,
            ))
            .add_routes(self.routes);
        match self.tls {
            // gRPC clients refuse a TLS server that does not offer h2.
            Some(tls) => {
                let incoming = TlsListener::new(self.listener, tls.acceptor(&[b"h2"]));
                router
                    .serve_with_incoming_shutdown(incoming.into_incoming(), shutdown)
                    .await
            }
            None => {
                let incoming = TcpIncoming::from(self.listener).with_nodelay(Some(true));
                router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
            }
        }
        .map_err(GrpcError::Serve)
    }
}

/// tonic refuses a message over the size limit with OUT_OF_RANGE; gRPC's
/// own implementations, and so clients, use RESOURCE_EXHAUSTED for it.
/// Nothing else here answers OUT_OF_RANGE, so the rewrite is exact.
async fn too_large_is_resource_exhausted(
    mut response: axum::http::Response<tonic::body::Body>,
) -> axum::http::Response<tonic::body::Body> {
    let out_of_range = HeaderValue::from(tonic::Code::OutOfRange as i32);
    let headers = response.headers_mut();
    if headers.get("grpc-status") == Some(&out_of_range) {
        headers.insert(
            "grpc-status",
            HeaderValue::from(tonic::Code::ResourceExhausted as i32),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_resolve_from_the_flag_and_the_http_port() {
        assert_eq!(GrpcPort::resolve(None, 8000), Some(8001));
        assert_eq!(GrpcPort::resolve(None, 0), Some(0));
        assert_eq!(GrpcPort::resolve(Some(GrpcPort::Port(9001)), 0), Some(9001));
        assert_eq!(GrpcPort::resolve(Some(GrpcPort::Off), 8000), None);
        assert_eq!("off".parse::<GrpcPort>(), Ok(GrpcPort::Off));
        assert_eq!("0".parse::<GrpcPort>(), Ok(GrpcPort::Port(0)));
        assert!("70000".parse::<GrpcPort>().is_err());
        assert_eq!(GrpcPort::Port(8001).to_string(), "8001");
    }
}
