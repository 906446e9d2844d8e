//! The optional bearer token of the frontend (`--auth-token-file`): every
//! request but the health checks must carry `Authorization: Bearer <token>`
//! (gRPC: the `authorization` metadata). Health stays open because the
//! kubelet's probes carry no credentials; it tells nothing but up or not.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::server::error_response;

/// HTTP paths answered without a token: the kubelet's probes.
const OPEN_HTTP: [&str; 2] = ["/v2/health/live", "/v2/health/ready"];
/// gRPC methods answered without a token: the same probes.
const OPEN_GRPC: [&str; 2] = [
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
];

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the auth token file {}: {error}", path.display())]
    Read {
        path: PathBuf,
        /// In the message, not a `source`: `{:#}` would print it twice.
        error: std::io::Error,
    },
    #[error("the auth token file {} holds no token (empty or not one line of visible ASCII)", path.display())]
    Invalid { path: PathBuf },
}

/// The token requests must show. Cheap to clone.
#[derive(Clone)]
pub struct BearerToken(Arc<[u8]>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself, not even in a debug log.
        f.write_str("BearerToken(..)")
    }
}

impl BearerToken {
    /// The token in `path`; surrounding whitespace (a Secret's trailing
    /// newline) is not part of it.
    pub fn from_file(path: &Path) -> Result<BearerToken, AuthError> {
        let raw = std::fs::read(path).map_err(|error| AuthError::Read {
            path: path.to_owned(),
            error,
        })?;
        let token = raw.trim_ascii();
        // What a header value can carry after "Bearer ".
        if token.is_empty() || !token.iter().all(|b| b.is_ascii_graphic()) {
            return Err(AuthError::Invalid {
                path: path.to_owned(),
            });
        }
        Ok(BearerToken(token.into()))
    }

    /// Whether `headers` carry `Authorization: Bearer <this token>` (the
    /// scheme's case does not matter). The comparison takes the same time
    /// wherever the first difference is, so a client cannot learn the
    /// token byte by byte from response times; only its length can show.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(AUTHORIZATION) else {
            return false;
        };
        let value = value.as_bytes();
        let Some((scheme, given)) = value.split_at_checked(7) else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"bearer ") && bool::from(given.ct_eq(&self.0))
    }
}

/// axum middleware: 401 with `{"error": ...}` and `WWW-Authenticate:
/// Bearer` unless the request is a health check or shows the token.
pub async fn require_http(
    State(token): State<BearerToken>,
    request: Request,
    next: Next,
) -> Response {
    if OPEN_HTTP.contains(&request.uri().path()) || token.admits(request.headers()) {
        return next.run(request).await;
    }
    let mut response = error_response(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token: send Authorization: Bearer <token>".to_owned(),
    );
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The same for the gRPC routes: UNAUTHENTICATED unless the call is
/// ServerLive, ServerReady or shows the token in its `authorization`
/// metadata (an HTTP/2 header).
pub async fn require_grpc(
    State(token): State<BearerToken>,
    request: Request,
    next: Next,
) -> Response {
    if OPEN_GRPC.contains(&request.uri().path()) || token.admits(request.headers()) {
        return next.run(request).await;
    }
    tonic::Status::unauthenticated("missing or wrong bearer token in the authorization metadata")
        .into_http()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_file(contents: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, contents).unwrap();
        (dir, path)
    }

    fn headers(authorization: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(authorization).unwrap());
        h
    }

    #[test]
    fn the_token_is_the_file_less_its_newline() {
        let (_d, path) = token_file(b"s3cret-token\n");
        let token = BearerToken::from_file(&path).unwrap();
        assert!(token.admits(&headers("Bearer s3cret-token")));
        assert!(token.admits(&headers("bearer s3cret-token")));
        assert!(!token.admits(&headers("Bearer s3cret-token\t")));
        assert!(!token.admits(&headers("Bearer s3cret-tokeN")));
        assert!(!token.admits(&headers("Bearer s3cret-toke")));
        assert!(!token.admits(&headers("Bearer s3cret-token2")));
        assert!(!token.admits(&headers("Basic s3cret-token")));
        assert!(!token.admits(&headers("s3cret-token")));
        assert!(!token.admits(&headers("Bearer")));
        assert!(!token.admits(&HeaderMap::new()));
        assert_eq!(format!("{token:?}"), "BearerToken(..)");
    }

    #[test]
    fn an_unusable_token_file_is_one_clear_line() {
        for contents in [&b""[..], b" \n", b"two words", b"line\nline"] {
            let (_d, path) = token_file(contents);
            let e = BearerToken::from_file(&path).unwrap_err().to_string();
            assert!(e.contains("holds no token"), "{contents:?}: {e}");
        }
        let e = BearerToken::from_file(Path::new("/nonexistent/token"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot read the auth token file /nonexistent/token"),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }
}
