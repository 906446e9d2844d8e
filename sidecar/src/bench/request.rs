//! One infer call, encoded once and sent many times, over HTTP or gRPC.

use std::sync::Arc;

use tonic::transport::Channel;

use crate::grpc::convert;
use crate::grpc::proto::ModelInferRequest;
use crate::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::protocol::binary;
use crate::protocol::{InferRequest, NamedTensor, OutputSelection};

/// An infer call's URL and binary body.
pub struct Call {
    pub url: String,
    pub body: bytes::Bytes,
    pub header_length: Option<usize>,
}

/// A one-row request of `shape` (all values 0.5) for `model` at `base`.
pub fn call(base: &str, model: &str, input: &str, shape: &[usize]) -> Call {
    let row: usize = shape.iter().product();
    call_with(base, model, input, shape, vec![0.5; row])
}

/// One row of `shape` with these values, batched (`[1, ...shape]`).
fn one_row(input: &str, shape: &[usize], data: Vec<f32>) -> InferRequest {
    InferRequest {
        id: None,
        parameters: Default::default(),
        inputs: vec![NamedTensor {
            name: input.to_owned(),
            shape: std::iter::once(1).chain(shape.iter().copied()).collect(),
            data,
        }],
        outputs: OutputSelection::all(true),
    }
}

/// A one-row request of `shape` with these values (an image).
pub fn call_with(base: &str, model: &str, input: &str, shape: &[usize], data: Vec<f32>) -> Call {
    let request = one_row(input, shape, data);
    let encoded = binary::encode_request(&request, true);
    Call {
        url: format!("{base}/v2/models/{model}/infer"),
        body: encoded.body.into(),
        header_length: encoded.header_length,
    }
}

/// An infer call over gRPC: a client on one HTTP/2 connection, which
/// concurrent calls share (as gRPC clients do), and the message.
#[derive(Clone)]
pub struct GrpcCall {
    client: GrpcInferenceServiceClient<Channel>,
    request: ModelInferRequest,
}

impl GrpcCall {
    /// A one-row request of `shape` (all values 0.5, raw contents) for
    /// `model` at `addr` (`host:port`); connects at once.
    pub async fn connect(
        addr: &str,
        model: &str,
        input: &str,
        shape: &[usize],
    ) -> anyhow::Result<GrpcCall> {
        let row: usize = shape.iter().product();
        let client = GrpcInferenceServiceClient::connect(format!("http://{addr}")).await?;
        Ok(GrpcCall {
            client,
            request: convert::raw_request(model, &one_row(input, shape, vec![0.5; row])),
        })
    }

    /// Sends the call; any answer but an error status will do.
    pub async fn send(&self) -> anyhow::Result<()> {
        // Cloning shares the connection; the tensor bytes are shared too.
        let mut client = self.client.clone();
        client.model_infer(self.request.clone()).await?;
        Ok(())
    }
}

/// A non-2xx answer: what the load generators count it as.
#[derive(Debug, thiserror::Error)]
#[error("{url} answered {status}: {message}")]
pub struct Refusal {
    pub url: String,
    pub status: u16,
    /// It came with `Retry-After`: load shed, not a failure.
    pub retry_after: bool,
    /// The `error` of the JSON body (or the body).
    pub message: String,
}

/// Whether an error is load shed (a 503 with Retry-After, gRPC
/// RESOURCE_EXHAUSTED), and by which limit (named by its flag in the
/// message: `shed_queue_delay`, `max_inflight_requests`,
/// `max_inflight_bytes`, `queue_full`, or `other`).
pub fn refusal_kind(e: &anyhow::Error) -> Option<&'static str> {
    let message = if let Some(r) = e.downcast_ref::<Refusal>() {
        let shed = r.retry_after || r.message.contains("retry later");
        if r.status != 503 || !shed {
            return None;
        }
        r.message.as_str()
    } else if let Some(s) = e.downcast_ref::<tonic::Status>() {
        if s.code() != tonic::Code::ResourceExhausted {
            return None;
        }
        s.message()
    } else {
        return None;
    };
    Some(
        [
            ("--shed-queue-delay-ms", "shed_queue_delay"),
            ("--max-inflight-requests", "max_inflight_requests"),
            ("--max-inflight-bytes", "max_inflight_bytes"),
            ("too many queries", "queue_full"),
        ]
        .into_iter()
        .find(|(flag, _)| message.contains(flag))
        .map_or("other", |(_, kind)| kind),
    )
}

/// Sends `c` and checks the status; returns the body and its JSON length.
async fn post(http: &reqwest::Client, c: &Call) -> anyhow::Result<(bytes::Bytes, Option<Vec<u8>>)> {
    let mut r = http.post(&c.url).body(c.body.clone());
    if let Some(n) = c.header_length {
        r = r.header(binary::HEADER_LENGTH, n);
    }
    let response = r.send().await?;
    let status = response.status();
    let header_length = response
        .headers()
        .get(binary::HEADER_LENGTH)
        .map(|v| v.as_bytes().to_vec());
    let retry_after = response
        .headers()
        .contains_key(reqwest::header::RETRY_AFTER);
    let body = response.bytes().await?;
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Err(Refusal {
            url: c.url.clone(),
            status: status.as_u16(),
            retry_after,
            message,
        }
        .into());
    }
    Ok((body, header_length))
}

/// Sends `c`; any 2xx answer will do (the echo server's too).
pub async fn send(http: &reqwest::Client, c: &Call) -> anyhow::Result<()> {
    post(http, c).await.map(|_| ())
}

/// What a v2 answer said.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    /// The frontend rebuilt it from parity (`parameters.reconstructed`).
    pub rebuilt: bool,
    /// The argmax of the first output (the predicted class).
    pub class: Option<usize>,
}

/// Sends `c` to a v2 server and reads its answer.
pub async fn send_infer(http: &reqwest::Client, c: &Call) -> anyhow::Result<Answer> {
    let (body, header_length) = post(http, c).await?;
    let header_length = binary::parse_header_length(header_length.as_deref())?;
    let decoded = binary::decode_response(&body, header_length)?;
    let class = decoded.outputs.first().and_then(|o| {
        o.data
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
    });
    Ok(Answer {
        rebuilt: decoded.parameters.get("reconstructed") == Some(&serde_json::Value::Bool(true)),
        class,
    })
}

/// One target's call, over either front door.
#[derive(Clone)]
pub enum Caller {
    Http(Arc<Call>),
    Grpc(Arc<GrpcCall>),
}

impl Caller {
    pub async fn send(&self, http: &reqwest::Client) -> anyhow::Result<()> {
        match self {
            Caller::Http(c) => send(http, c).await,
            Caller::Grpc(c) => c.send().await,
        }
    }
}
