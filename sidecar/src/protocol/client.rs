//! A small async v2 client: how the frontend talks to model instances
//! (ours, Triton or MLServer alike).

use std::time::Duration;

use http::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderValue};

use super::binary::{self, HEADER_LENGTH, InferRequest, InferResponse};
use super::error::ProtocolError;
use super::v2::{ErrorBody, ModelMetadata, ServerMetadata};
use crate::tls::ClientTrust;

/// What went wrong calling a v2 server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server URL '{0}'")]
    BadUrl(String),
    #[error("request to {url} timed out")]
    Timeout { url: String },
    #[error("cannot reach {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error status and (usually) `{"error": ...}`.
    #[error("{url} answered {status}: {message}")]
    Status {
        url: String,
        status: StatusCode,
        message: String,
    },
    #[error("{url} sent a response that does not follow the protocol: {source}")]
    BadResponse {
        url: String,
        #[source]
        source: ProtocolError,
    },
}

impl ClientError {
    /// True when the server may well answer a retry (timeouts, connection
    /// failures, 5xx); false for the caller's own mistakes (4xx).
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Timeout { .. } | ClientError::Transport { .. } => true,
            ClientError::Status { status, .. } => status.is_server_error(),
            ClientError::BadUrl(_) | ClientError::BadResponse { .. } => false,
        }
    }
}

/// How input tensors travel in an infer call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// Triton's binary extension: raw little-endian bytes after the JSON.
    #[default]
    Binary,
    /// Plain JSON `data` arrays.
    Json,
}

/// A model's infer endpoint, from [`Client::infer_target`].
#[derive(Debug, Clone)]
pub struct InferTarget {
    url: reqwest::Url,
}

/// Client of one v2 server. Cheap to clone; clones share the connection pool.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    timeout: Duration,
}

impl Client {
    /// A client for `base_url` (e.g. `http://127.0.0.1:8001`); `timeout`
    /// bounds every call unless a call gives its own. https trusts the
    /// system roots.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, ClientError> {
        Client::with_trust(base_url, timeout, &ClientTrust::default(), None)
    }

    /// [`Client::new`] trusting `trust`'s roots too. With `verify_as`, an
    /// https server reached by address (`https://10.1.2.3:8080`, a pod
    /// found behind a Service) is connected to at that address but must
    /// show a certificate for that name (the Service's), since pods'
    /// certificates do not name their ever-changing addresses.
    pub fn with_trust(
        base_url: &str,
        timeout: Duration,
        trust: &ClientTrust,
        verify_as: Option<&str>,
    ) -> Result<Self, ClientError> {
        let mut base = base_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::BadUrl(base_url.to_owned()));
        }
        let mut builder = trust
            .apply(reqwest::Client::builder())
            .tcp_nodelay(true)
            // A frontend keeps many requests in flight to each instance.
            .pool_max_idle_per_host(64)
            // Instances are reached directly (pods, loopback); matching
            // every call against HTTP_PROXY/NO_PROXY showed in the
            // frontend's per-call profile.
            .no_proxy();
        if let Some(name) = verify_as.filter(|_| base.starts_with("https://")) {
            let addr: std::net::SocketAddr = base["https://".len()..]
                .parse()
                .map_err(|_| ClientError::BadUrl(base_url.to_owned()))?;
            builder = builder.resolve(name, addr);
            base = format!("https://{name}:{}", addr.port());
        }
        let http = builder.build().map_err(|source| ClientError::Transport {
            url: base.clone(),
            source,
        })?;
        Ok(Client {
            http,
            base,
            timeout,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /v2/health/live`: true on 200.
    pub async fn server_live(&self) -> Result<bool, ClientError> {
        self.probe("/v2/health/live").await
    }

    /// `GET /v2/health/ready`: true on 200, false when the server is up but
    /// not ready (e.g. draining).
    pub async fn server_ready(&self) -> Result<bool, ClientError> {
        self.probe("/v2/health/ready").await
    }

    /// `GET /v2/models/{model}[/versions/{v}]/ready`.
    pub async fn model_ready(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<bool, ClientError> {
        self.probe(&format!("{}/ready", model_path(model, version)))
            .await
    }

    /// `GET /v2`.
    pub async fn server_metadata(&self) -> Result<ServerMetadata, ClientError> {
        self.get_json("/v2").await
    }

    /// `GET /v2/models/{model}[/versions/{v}]`.
    pub async fn model_metadata(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<ModelMetadata, ClientError> {
        self.get_json(&model_path(model, version)).await
    }

    /// `POST /v2/models/{model}[/versions/{v}]/infer`, bounded by the
    /// client's timeout.
    pub async fn infer(
        &self,
        model: &str,
        version: Option<&str>,
        request: &InferRequest,
        encoding: Encoding,
    ) -> Result<InferResponse, ClientError> {
        self.infer_with_timeout(model, version, request, encoding, self.timeout)
            .await
    }

    /// Like [`Client::infer`] with its own timeout (e.g. the time left
    /// until a query's deadline).
    pub async fn infer_with_timeout(
        &self,
        model: &str,
        version: Option<&str>,
        request: &InferRequest,
        encoding: Encoding,
        timeout: Duration,
    ) -> Result<InferResponse, ClientError> {
        let target = self.infer_target(model, version)?;
        self.infer_at(&target, request, encoding, timeout).await
    }

    /// The infer endpoint of `model` at this server, parsed once for calls
    /// made many times (the frontend's: building and parsing the URL showed
    /// in its per-call profile).
    pub fn infer_target(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<InferTarget, ClientError> {
        let url = format!("{}{}/infer", self.base, model_path(model, version));
        match reqwest::Url::parse(&url) {
            Ok(parsed) => Ok(InferTarget { url: parsed }),
            Err(_) => Err(ClientError::BadUrl(url)),
        }
    }

    /// `POST` to an infer endpoint of this server, bounded by `timeout`.
    pub async fn infer_at(
        &self,
        target: &InferTarget,
        request: &InferRequest,
        encoding: Encoding,
        timeout: Duration,
    ) -> Result<InferResponse, ClientError> {
        let url = target.url.as_str();
        let encoded = binary::encode_request(request, encoding == Encoding::Binary);
        let mut call = self.http.post(target.url.clone()).timeout(timeout);
        call = match encoded.header_length {
            Some(n) => call.header(HEADER_LENGTH, n).header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            None => call.header(CONTENT_TYPE, HeaderValue::from_static("application/json")),
        };
        let response = call
            .body(encoded.body)
            .send()
            .await
            .map_err(|e| transport(url, e))?;
        let status = response.status();
        let header_length = response
            .headers()
            .get(HEADER_LENGTH)
            .map(|v| v.as_bytes().to_vec());
        let body = response.bytes().await.map_err(|e| transport(url, e))?;
        if !status.is_success() {
            return Err(status_error(url, status, &body));
        }
        let bad = |source| ClientError::BadResponse {
            url: url.to_owned(),
            source,
        };
        let header_length = binary::parse_header_length(header_length.as_deref()).map_err(bad)?;
        binary::decode_response(&body, header_length).map_err(bad)
    }

    async fn probe(&self, path: &str) -> Result<bool, ClientError> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .get(&url)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| transport(&url, e))?;
        Ok(response.status() == StatusCode::OK)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .get(&url)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| transport(&url, e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| transport(&url, e))?;
        if !status.is_success() {
            return Err(status_error(&url, status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::BadResponse {
            url,
            source: ProtocolError::MalformedJson(e.to_string()),
        })
    }
}

fn model_path(model: &str, version: Option<&str>) -> String {
    let model = encode_segment(model);
    match version {
        Some(v) => format!("/v2/models/{model}/versions/{}", encode_segment(v)),
        None => format!("/v2/models/{model}"),
    }
}

/// Percent-encodes a URL path segment (model names are usually plain, but
/// a `/` or space must not change the route).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn transport(url: &str, e: reqwest::Error) -> ClientError {
    if e.is_timeout() {
        ClientError::Timeout {
            url: url.to_owned(),
        }
    } else {
        ClientError::Transport {
            url: url.to_owned(),
            source: e,
        }
    }
}

fn status_error(url: &str, status: StatusCode, body: &[u8]) -> ClientError {
    let message = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => e.error,
        Err(_) => String::from_utf8_lossy(body).chars().take(200).collect(),
    };
    ClientError::Status {
        url: url.to_owned(),
        status,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_paths_and_checks_urls() {
        assert_eq!(model_path("mlp", None), "/v2/models/mlp");
        assert_eq!(
            model_path("a b/c", Some("1")),
            "/v2/models/a%20b%2Fc/versions/1"
        );
        assert!(Client::new("127.0.0.1:80", Duration::from_secs(1)).is_err());
        let c = Client::new("http://127.0.0.1:80/", Duration::from_secs(1)).unwrap();
        assert_eq!(c.base_url(), "http://127.0.0.1:80");
    }

    #[test]
    fn error_bodies_become_messages() {
        let e = status_error("u", StatusCode::BAD_REQUEST, br#"{"error":"bad shape"}"#);
        assert!(e.to_string().contains("bad shape"));
        assert!(!e.is_retryable());
        let e = status_error("u", StatusCode::SERVICE_UNAVAILABLE, b"plain text");
        assert!(e.to_string().contains("plain text"));
        assert!(e.is_retryable());
    }
}
