//! The HTTP routes of the statistics extension ([`super::stats`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};

use super::Engine;
use super::engine::InferError;
use super::server::{AppState, ModelPath};
use super::stats::StatisticsResponse;

/// `GET /v2/models/stats`: every model served (the one).
pub(super) async fn all<E: Engine>(State(s): State<Arc<AppState<E>>>) -> Response {
    let info = s.engine.info();
    let model_stats = info
        .versions
        .iter()
        .map(|v| s.metrics.stats.model(&info.name, v))
        .collect();
    Json(StatisticsResponse { model_stats }).into_response()
}

/// `GET /v2/models/{m}[/versions/{v}]/stats`.
pub(super) async fn one<E: Engine>(
    State(s): State<Arc<AppState<E>>>,
    Path(p): Path<ModelPath>,
) -> Response {
    let info = s.engine.info();
    match info.resolve(&p.name, p.version.as_deref()) {
        Ok(version) => Json(StatisticsResponse {
            model_stats: vec![s.metrics.stats.model(&info.name, &version)],
        })
        .into_response(),
        Err(e) => InferError::from(e).into_response(),
    }
}
