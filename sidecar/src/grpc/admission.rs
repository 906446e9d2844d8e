//! Admission for gRPC `ModelInfer` calls, in front of tonic: the call is
//! admitted (or refused with RESOURCE_EXHAUSTED) before its message is
//! read, its bytes are held against `--max-inflight-bytes` as they
//! arrive, and a compressed message is inflated here, off the I/O thread
//! when large, so that tonic only decodes plain messages. The other RPCs
//! (health, metadata, statistics) pass untouched: probes are never refused.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_ENCODING;
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;
use tonic::{Code, Status};

use crate::http::admission::{Admission, Ticket};
use crate::http::decode::off_io_thread;
use crate::http::engine::EngineError;
use crate::protocol::body::decode_content_encoding;

/// The one RPC that admission guards.
pub const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// gRPC's length prefix: a compressed flag and a 4-byte big-endian length.
const PREFIX: usize = 5;

/// What the middleware needs: the server's admission and message limit.
#[derive(Clone)]
pub struct Gate {
    pub admission: Arc<Admission>,
    pub max_message_bytes: usize,
}

/// The middleware (`axum::middleware::from_fn_with_state`).
pub async fn admit(State(gate): State<Gate>, request: Request, next: Next) -> Response {
    if request.uri().path() != MODEL_INFER {
        return next.run(request).await;
    }
    let ticket = match gate.admission.admit(0) {
        Ok(ticket) => Arc::new(ticket),
        Err(e) => return refused(&e),
    };
    let (mut parts, body) = request.into_parts();
    let message = match read(body, &gate, &ticket, &parts.headers).await {
        Ok(message) => message,
        Err(status) => return status.into_http(),
    };
    // The message is plain now: tonic must not inflate it again.
    parts.headers.remove("grpc-encoding");
    let response = next
        .run(Request::from_parts(parts, Body::from(message)))
        .await;
    // An answer's status comes in the trailers; an error's in the headers.
    if response
        .headers()
        .get("grpc-status")
        .is_none_or(|s| s == "0")
    {
        ticket.answered();
    }
    drop(ticket);
    response
}

fn refused(e: &EngineError) -> Response {
    Status::new(Code::ResourceExhausted, e.message.clone()).into_http()
}

fn too_large(limit: usize) -> Status {
    Status::new(
        Code::ResourceExhausted,
        format!("the message is larger than the limit of {limit} bytes (--max-body-bytes)"),
    )
}

/// Reads the call's body, holding its bytes, and inflates a compressed
/// message; returns the body with the message uncompressed.
async fn read(
    mut body: Body,
    gate: &Gate,
    ticket: &Arc<Ticket>,
    headers: &HeaderMap,
) -> Result<Bytes, Status> {
    let limit = gate.max_message_bytes;
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Status::new(Code::Cancelled, e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit + PREFIX {
                return Err(too_large(limit));
            }
            ticket
                .hold(data.len())
                .map_err(|e| Status::new(Code::ResourceExhausted, e.message))?;
            buf.extend_from_slice(&data);
        }
    }
    if buf.first() != Some(&1) || buf.len() < PREFIX {
        return Ok(buf.into());
    }
    let Some(encoding) = headers.get("grpc-encoding").cloned() else {
        // tonic answers a compressed message without an encoding.
        return Ok(buf.into());
    };
    let mut as_http = HeaderMap::new();
    as_http.insert(CONTENT_ENCODING, encoding);
    let ticket = ticket.clone();
    let framed = Bytes::from(buf);
    off_io_thread(framed.len(), move || {
        inflate(framed, &as_http, limit, &ticket)
    })
    .await
    .map_err(|e| Status::new(Code::Internal, e.message))?
}

/// One length-prefixed compressed message to its plain form.
fn inflate(
    framed: Bytes,
    encoding: &HeaderMap,
    limit: usize,
    ticket: &Ticket,
) -> Result<Bytes, Status> {
    let compressed = framed.slice(PREFIX..);
    let plain = decode_content_encoding(encoding, compressed, limit).map_err(|e| match e {
        crate::protocol::ProtocolError::BodyTooLarge { limit } => too_large(limit),
        crate::protocol::ProtocolError::UnsupportedEncoding(enc) => Status::new(
            Code::Unimplemented,
            format!("grpc-encoding {enc} is not supported: use gzip or deflate"),
        ),
        other => Status::new(Code::InvalidArgument, other.to_string()),
    })?;
    ticket
        .hold(plain.len())
        .map_err(|e| Status::new(Code::ResourceExhausted, e.message))?;
    let length = u32::try_from(plain.len()).map_err(|_| too_large(limit))?;
    let mut out = Vec::with_capacity(PREFIX + plain.len());
    out.push(0);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&plain);
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Limit;
    use axum::http::HeaderValue;
    use std::io::Write;

    fn ticket() -> (Arc<Admission>, Ticket) {
        let refused =
            prometheus::IntCounterVec::new(prometheus::Opts::new("r", "r"), &["reason"]).unwrap();
        let limit = prometheus::IntGauge::new("l", "l").unwrap();
        let a = Admission::new(Limit::OFF, Limit::of(10_000), None, refused, limit);
        let t = a.admit(0).unwrap();
        (a, t)
    }

    fn gzip_framed(message: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(message).unwrap();
        let z = e.finish().unwrap();
        let mut out = vec![1];
        out.extend_from_slice(&(z.len() as u32).to_be_bytes());
        out.extend_from_slice(&z);
        out
    }

    fn gzip() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        h
    }

    #[test]
    fn a_compressed_message_is_inflated_into_a_plain_frame_and_held() {
        let (a, t) = ticket();
        let message = vec![9u8; 3000];
        let out = inflate(Bytes::from(gzip_framed(&message)), &gzip(), 5000, &t).unwrap();
        assert_eq!(out[0], 0, "no longer compressed");
        assert_eq!(&out[1..5], &3000u32.to_be_bytes());
        assert_eq!(&out[5..], &message[..]);
        assert_eq!(a.bytes(), 3000);
    }

    #[test]
    fn inflating_past_the_limits_is_resource_exhausted() {
        let (_a, t) = ticket();
        let e = inflate(Bytes::from(gzip_framed(&[0u8; 3000])), &gzip(), 2999, &t).unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(e.message().contains("2999 bytes"), "{}", e.message());
        // Within the message limit, over what is left of the bytes limit.
        let e = inflate(
            Bytes::from(gzip_framed(&[0u8; 20_000])),
            &gzip(),
            50_000,
            &t,
        )
        .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(
            e.message().contains("--max-inflight-bytes"),
            "{}",
            e.message()
        );
        let e = inflate(
            Bytes::from_static(&[1, 0, 0, 0, 3, 1, 2, 3]),
            &gzip(),
            100,
            &t,
        )
        .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }
}
