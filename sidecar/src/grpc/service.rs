//! The `GRPCInferenceService` over an [`Engine`]: each method decodes its
//! message, goes the way an HTTP request goes ([`crate::http::engine`]),
//! and turns errors into gRPC statuses.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::StatusCode;
use tonic::{Code, Request, Response, Status};

use super::convert;
use super::proto;
use super::proto::grpc_inference_service_server::GrpcInferenceService;
use super::proto::model_metadata_response::TensorMetadata;
use super::proto::repository_index_response::ModelIndex;
use super::proto::{
    ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse,
    ModelReadyRequest, ModelReadyResponse, ModelStatisticsRequest, ModelStatisticsResponse,
    RepositoryIndexRequest, RepositoryIndexResponse, ServerLiveRequest, ServerLiveResponse,
    ServerMetadataRequest, ServerMetadataResponse, ServerReadyRequest, ServerReadyResponse,
};
use crate::http::admission::is_refusal;
use crate::http::decode::off_io_thread;
use crate::http::engine::{self, InferError, TOO_MANY_ROWS};
use crate::http::server::server_metadata;
use crate::http::{Engine, RequestMetrics};
use crate::protocol::ProtocolError;

/// What the service shares with the HTTP routes of the same server: the
/// engine, the request metrics, the drain flag and the row limit.
pub struct InferenceService<E> {
    engine: Arc<E>,
    metrics: RequestMetrics,
    draining: Arc<AtomicBool>,
    max_rows: usize,
}

impl<E: Engine> InferenceService<E> {
    pub fn new(
        engine: Arc<E>,
        metrics: RequestMetrics,
        draining: Arc<AtomicBool>,
        max_rows: usize,
    ) -> Self {
        InferenceService {
            engine,
            metrics,
            draining,
            max_rows,
        }
    }

    fn ready(&self) -> bool {
        !self.draining.load(Ordering::SeqCst) && self.engine.ready()
    }

    async fn infer(&self, message: ModelInferRequest) -> Result<ModelInferResponse, InferError> {
        let info = self.engine.info();
        let version = info.resolve(&message.model_name, version(&message.model_version))?;
        // Converting a large message's tensors leaves the I/O thread.
        let size = prost::Message::encoded_len(&message);
        let convert::Decoded { mut request, raw } =
            off_io_thread(size, move || convert::decode_request(message)).await??;
        let response = engine::answer(
            self.engine.as_ref(),
            version,
            &mut request,
            self.max_rows,
            &self.metrics.stats,
        )
        .await?;
        Ok(convert::encode_response(response, &request.outputs, raw))
    }
}

/// The protocol's empty version: the one that answers unversioned calls.
fn version(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

/// The gRPC status for an error, with its message: the caller's mistakes
/// are INVALID_ARGUMENT (NOT_FOUND for a model not served), a request over
/// the row limit RESOURCE_EXHAUSTED, and our failures UNAVAILABLE,
/// DEADLINE_EXCEEDED or INTERNAL as their HTTP status says.
pub fn status(error: &InferError) -> Status {
    let code = if error.reason() == TOO_MANY_ROWS || is_refusal(error.reason()) {
        Code::ResourceExhausted
    } else {
        code_for(error.status())
    };
    Status::new(code, error.to_string())
}

fn code_for(status: StatusCode) -> Code {
    match status {
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::TOO_MANY_REQUESTS => Code::ResourceExhausted,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        StatusCode::GATEWAY_TIMEOUT | StatusCode::REQUEST_TIMEOUT => Code::DeadlineExceeded,
        s if s.is_client_error() => Code::InvalidArgument,
        _ => Code::Internal,
    }
}

/// Triton's statistics as the gRPC message.
fn statistics(m: crate::http::stats::ModelStatistics) -> proto::ModelStatistics {
    let d = |d: crate::http::stats::StatisticDuration| {
        Some(proto::StatisticDuration {
            count: d.count,
            ns: d.ns,
        })
    };
    let i = m.inference_stats;
    proto::ModelStatistics {
        name: m.name,
        version: m.version,
        last_inference: m.last_inference,
        inference_count: m.inference_count,
        execution_count: m.execution_count,
        inference_stats: Some(proto::InferStatistics {
            success: d(i.success),
            fail: d(i.fail),
            queue: d(i.queue),
            compute_input: d(i.compute_input),
            compute_infer: d(i.compute_infer),
            compute_output: d(i.compute_output),
            cache_hit: d(i.cache_hit),
            cache_miss: d(i.cache_miss),
        }),
        batch_stats: Vec::new(),
    }
}

fn unknown_model(e: ProtocolError) -> Status {
    status(&InferError::Protocol(e))
}

#[tonic::async_trait]
impl<E: Engine> GrpcInferenceService for InferenceService<E> {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.ready(),
        }))
    }

    /// A model this server does not serve is not ready (what tritonclient's
    /// `is_model_ready` reports over HTTP too), rather than an error.
    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let known = self
            .engine
            .info()
            .resolve(&r.name, version(&r.version))
            .is_ok();
        Ok(Response::new(ModelReadyResponse {
            ready: known && self.ready(),
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        let m = server_metadata();
        Ok(Response::new(ServerMetadataResponse {
            name: m.name,
            version: m.version,
            extensions: m.extensions,
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let info = self.engine.info();
        info.resolve(&r.name, version(&r.version))
            .map_err(unknown_model)?;
        let m = info.metadata();
        let tensors = |ts: Vec<crate::protocol::v2::TensorMetadata>| {
            ts.into_iter()
                .map(|t| TensorMetadata {
                    name: t.name,
                    datatype: t.datatype,
                    shape: t.shape,
                })
                .collect()
        };
        Ok(Response::new(ModelMetadataResponse {
            name: m.name,
            versions: m.versions,
            platform: m.platform,
            inputs: tensors(m.inputs),
            outputs: tensors(m.outputs),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        let r = request.into_inner();
        let info = self.engine.info();
        let versions = if r.name.is_empty() {
            info.versions.clone()
        } else {
            vec![
                info.resolve(&r.name, version(&r.version))
                    .map_err(unknown_model)?,
            ]
        };
        let model_stats = versions
            .iter()
            .map(|v| statistics(self.metrics.stats.model(&info.name, v)))
            .collect();
        Ok(Response::new(ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let models = crate::http::repository::index(
            self.engine.info(),
            self.ready(),
            request.into_inner().ready,
        )
        .into_iter()
        .map(|m| ModelIndex {
            name: m.name,
            version: m.version,
            state: m.state,
            reason: m.reason,
        })
        .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        self.metrics
            .observe(self.infer(request.into_inner()))
            .await
            .map(Response::new)
            .map_err(|e| status(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::EngineError;

    #[test]
    fn errors_get_the_codes_clients_expect() {
        let engine = |status, reason| InferError::Engine(EngineError::new(status, reason, "m"));
        let cases = [
            (
                InferError::Protocol(ProtocolError::MissingInput("x".into())),
                Code::InvalidArgument,
            ),
            (
                InferError::Protocol(ProtocolError::UnknownModel {
                    name: "m".into(),
                    version: None,
                }),
                Code::NotFound,
            ),
            (
                engine(StatusCode::BAD_REQUEST, TOO_MANY_ROWS),
                Code::ResourceExhausted,
            ),
            (
                engine(StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
                Code::Unavailable,
            ),
            (
                engine(StatusCode::GATEWAY_TIMEOUT, "deadline"),
                Code::DeadlineExceeded,
            ),
            (
                engine(StatusCode::INTERNAL_SERVER_ERROR, "model_failed"),
                Code::Internal,
            ),
        ];
        for (error, code) in cases {
            let s = status(&error);
            assert_eq!(s.code(), code, "{error}");
            assert_eq!(s.message(), error.to_string());
        }
    }
}
