//! Triton's model repository extension, read-only: `POST
//! /v2/repository/index` (and gRPC's `RepositoryIndex`) lists the one
//! model a server serves, each version with its state. Loading and
//! unloading are not served: a server's model is fixed at start.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::Engine;
use super::server::{AppState, error_response};
use crate::protocol::ModelInfo;

/// One entry of the index, Triton's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIndex {
    pub name: String,
    pub version: String,
    /// `READY`, or `UNAVAILABLE` while the server is not ready.
    pub state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// The request body; every field optional, an empty body allowed.
#[derive(Debug, Default, Deserialize)]
struct IndexRequest {
    #[serde(default)]
    ready: bool,
}

/// Every served version of `info`'s model, or none when `only_ready` and
/// the server is not ready.
pub fn index(info: &ModelInfo, ready: bool, only_ready: bool) -> Vec<ModelIndex> {
    if only_ready && !ready {
        return Vec::new();
    }
    info.versions
        .iter()
        .map(|version| ModelIndex {
            name: info.name.clone(),
            version: version.clone(),
            state: if ready { "READY" } else { "UNAVAILABLE" }.to_owned(),
            reason: if ready {
                String::new()
            } else {
                "the server is not ready (starting or draining)".to_owned()
            },
        })
        .collect()
}

pub(super) async fn repository_index<E: Engine>(
    State(s): State<Arc<AppState<E>>>,
    body: Bytes,
) -> Response {
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        match serde_json::from_slice::<IndexRequest>(&body) {
            Ok(r) => r,
            Err(e) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    format!("malformed repository index request: {e}"),
                );
            }
        }
    };
    let ready = !s.draining.load(Ordering::SeqCst) && s.engine.ready();
    Json(index(s.engine.info(), ready, request.ready)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TensorSpec;

    #[test]
    fn lists_each_version_with_its_state() {
        let info = ModelInfo {
            name: "m".into(),
            versions: vec!["1".into(), "2".into()],
            platform: String::new(),
            input: TensorSpec::fp32("x", vec![1]),
            output: TensorSpec::fp32("y", vec![1]),
        };
        let all = index(&info, true, false);
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[1].version.as_str(), all[1].state.as_str()),
            ("2", "READY")
        );
        assert_eq!(
            serde_json::to_value(&all[0]).unwrap(),
            serde_json::json!({"name": "m", "version": "1", "state": "READY"})
        );
        assert_eq!(index(&info, false, false)[0].state, "UNAVAILABLE");
        assert!(index(&info, false, true).is_empty());
    }
}
