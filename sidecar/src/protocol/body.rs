//! Reading a request body within a size limit, undoing `Content-Encoding`.
//!
//! tritonclient can compress requests (`request_compression_algorithm`
//! gzip or deflate); the limit applies to the decompressed size too, so a
//! small compressed body cannot expand without bound.

use std::io::Read;

use bytes::Bytes;
use http::HeaderMap;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::error::ProtocolError;

/// Reads the whole body, at most `limit` bytes before and after decompression.
pub async fn read_body<B>(
    body: B,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, ProtocolError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let raw = read_raw_body(body, headers, limit).await?;
    decode_content_encoding(headers, raw, limit)
}

/// The `Content-Length` a request announces, if any.
pub fn announced_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// Reads the whole body as sent (still compressed, if it is), at most
/// `limit` bytes; an announced length over the limit is refused unread.
pub async fn read_raw_body<B>(
    body: B,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, ProtocolError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let too_large = || ProtocolError::BodyTooLarge { limit };
    // Refuse early when the client announces an oversized body.
    if announced_length(headers).is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let raw = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                too_large()
            } else {
                ProtocolError::BodyRead(e.to_string())
            }
        })?
        .to_bytes();
    Ok(raw)
}

/// Undoes `Content-Encoding: gzip | deflate`; identity passes through.
pub fn decode_content_encoding(
    headers: &HeaderMap,
    raw: Bytes,
    limit: usize,
) -> Result<Bytes, ProtocolError> {
    let Some(value) = headers.get(CONTENT_ENCODING) else {
        return Ok(raw);
    };
    let encoding = String::from_utf8_lossy(value.as_bytes())
        .trim()
        .to_ascii_lowercase();
    let mut out = Vec::new();
    // Read one byte past the limit to tell "exactly the limit" from "more".
    let cap = limit as u64 + 1;
    let read = match encoding.as_str() {
        "" | "identity" => return Ok(raw),
        "gzip" | "x-gzip" => flate2::read::GzDecoder::new(&raw[..])
            .take(cap)
            .read_to_end(&mut out),
        // HTTP's "deflate" is the zlib format (RFC 9110), what tritonclient sends.
        "deflate" => flate2::read::ZlibDecoder::new(&raw[..])
            .take(cap)
            .read_to_end(&mut out),
        _ => return Err(ProtocolError::UnsupportedEncoding(encoding)),
    };
    read.map_err(|e| ProtocolError::BodyRead(format!("invalid {encoding} body: {e}")))?;
    if out.len() > limit {
        return Err(ProtocolError::BodyTooLarge { limit });
    }
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::io::Write;

    fn compressed(encoding: &str, data: &[u8]) -> Bytes {
        let mut out = Vec::new();
        match encoding {
            "gzip" => {
                let mut e = flate2::write::GzEncoder::new(&mut out, flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap();
            }
            _ => {
                let mut e = flate2::write::ZlibEncoder::new(&mut out, flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap();
            }
        }
        out.into()
    }

    fn headers(encoding: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_ENCODING, HeaderValue::from_str(encoding).unwrap());
        h
    }

    #[test]
    fn decompresses_gzip_and_deflate_within_the_limit() {
        let data = vec![7u8; 1000];
        for enc in ["gzip", "deflate"] {
            let got = decode_content_encoding(&headers(enc), compressed(enc, &data), 1000).unwrap();
            assert_eq!(&got[..], &data[..]);
            let e =
                decode_content_encoding(&headers(enc), compressed(enc, &data), 999).unwrap_err();
            assert!(matches!(e, ProtocolError::BodyTooLarge { limit: 999 }));
        }
        let e = decode_content_encoding(&headers("br"), Bytes::from_static(b"x"), 10).unwrap_err();
        assert_eq!(e.status(), http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let e = decode_content_encoding(&headers("gzip"), Bytes::from_static(b"not gzip"), 10)
            .unwrap_err();
        assert!(e.to_string().contains("invalid gzip body"), "{e}");
    }

    #[tokio::test]
    async fn limits_the_raw_body() {
        let body = http_body_util::Full::new(Bytes::from(vec![0u8; 100]));
        let e = read_body(body, &HeaderMap::new(), 99).await.unwrap_err();
        assert_eq!(e.status(), http::StatusCode::PAYLOAD_TOO_LARGE);
        let body = http_body_util::Full::new(Bytes::from(vec![0u8; 100]));
        assert_eq!(
            read_body(body, &HeaderMap::new(), 100).await.unwrap().len(),
            100
        );
    }
}
