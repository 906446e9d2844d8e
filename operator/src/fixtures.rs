//! Test helpers: sample resources and a scripted fake API server
//! (tower-test) that checks each call the reconciler makes and answers it as
//! the API server would.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::events::Reporter;
use kube::{Client, Resource};
use serde_json::{Value, json};

use crate::crd::{CodedInferenceService, CodedInferenceServiceSpec, CodedInferenceServiceStatus};
use crate::metrics::Metrics;
use crate::reconcile::Context;
use crate::reconcile::children::Settings;
use crate::status::Observed;

/// A k=2, r=1 service named `name` in namespace `ns1`, as read from the API.
pub fn cis(name: &str) -> CodedInferenceService {
    let spec: CodedInferenceServiceSpec = serde_json::from_value(json!({
        "model": {"uri": "file:///models/mlp"},
        "parityModel": {"uri": "file:///models/mlp-parity-k2"},
    }))
    .expect("valid spec");
    let mut cis = CodedInferenceService::new(name, spec);
    let meta = cis.meta_mut();
    meta.namespace = Some("ns1".into());
    meta.uid = Some(format!("uid-{name}"));
    meta.generation = Some(1);
    cis
}

/// A check run on the status the reconciler writes.
pub type StatusCheck = Box<dyn FnOnce(&CodedInferenceServiceStatus) + Send>;

/// One API call the reconciler is expected to make next.
pub enum Call {
    /// A server-side apply at `path` (after `/api(s)/`); answered with the
    /// applied object, `status.readyReplicas` set to `ready` when given.
    Apply { path: String, ready: Option<i32> },
    /// A server-side apply at `path` that the server refuses with `code`.
    ApplyFails { path: String, code: u16 },
    /// Discovery of `monitoring.coreos.com/v1`.
    Discovery { served: bool },
    /// A metadata-only list at `path` (after `/apis/`) with this label
    /// selector; answered with `items`' metadata.
    ListMetadata {
        path: String,
        selector: String,
        items: Vec<Value>,
    },
    /// A delete at `path` (after `/api(s)/`), in the background.
    Delete { path: String },
    /// The status patch, checked by the closure.
    Status(StatusCheck),
    /// An Event with this reason.
    Event(&'static str),
}

/// The calls of one successful pass over the children of `ns1/demo` with r = 1.
pub fn apply_children(observed: Observed, service_monitor: bool) -> Vec<Call> {
    let pools = Pools {
        model: observed.model_ready,
        parities: vec![observed.parity_ready],
        frontend: observed.frontend_ready,
        listed: vec![],
    };
    apply_pools(pools, service_monitor)
}

/// What the fake API server reports of the pools of `ns1/demo`.
pub struct Pools {
    /// Ready instances of the model's pool, of parity l's (r of them), of the frontend.
    pub model: i32,
    pub parities: Vec<i32>,
    pub frontend: i32,
    /// The parity StatefulSets the pruning list finds, as `(name, index)`.
    pub listed: Vec<(String, i32)>,
}

/// The parity pool names of `demo`: `demo-parity`, `demo-parity-<l>`.
fn parity_name(l: usize) -> String {
    match l {
        0 => "demo-parity".to_string(),
        l => format!("demo-parity-{l}"),
    }
}

/// The calls of one successful pass over the children of `ns1/demo`, as
/// many parity pools as `pools.parities` has, then the pruning list; the
/// deletes it leads to are the caller's to add.
pub fn apply_pools(pools: Pools, service_monitor: bool) -> Vec<Call> {
    let apply = |path: &str, ready: Option<i32>| Call::Apply {
        path: path.to_string(),
        ready,
    };
    let mut calls = vec![
        apply("v1/namespaces/ns1/services/demo-model", None),
        apply(
            "apps/v1/namespaces/ns1/statefulsets/demo-model",
            Some(pools.model),
        ),
    ];
    for (l, ready) in pools.parities.iter().enumerate() {
        let name = parity_name(l);
        calls.push(apply(&format!("v1/namespaces/ns1/services/{name}"), None));
        calls.push(apply(
            &format!("apps/v1/namespaces/ns1/statefulsets/{name}"),
            Some(*ready),
        ));
    }
    calls.extend([
        apply("v1/namespaces/ns1/services/demo-frontend", None),
        apply(
            "apps/v1/namespaces/ns1/deployments/demo-frontend",
            Some(pools.frontend),
        ),
        apply(
            "policy/v1/namespaces/ns1/poddisruptionbudgets/demo-model",
            None,
        ),
    ]);
    for l in 0..pools.parities.len() {
        calls.push(apply(
            &format!(
                "policy/v1/namespaces/ns1/poddisruptionbudgets/{}",
                parity_name(l)
            ),
            None,
        ));
    }
    calls.extend([
        apply(
            "policy/v1/namespaces/ns1/poddisruptionbudgets/demo-frontend",
            None,
        ),
        apply(
            "networking.k8s.io/v1/namespaces/ns1/networkpolicies/demo-workers",
            None,
        ),
        apply(
            "networking.k8s.io/v1/namespaces/ns1/networkpolicies/demo-frontend",
            None,
        ),
        Call::ListMetadata {
            path: "apps/v1/namespaces/ns1/statefulsets".into(),
            selector: "coded.dev/service=demo,coded.dev/parity-index".into(),
            items: pools
                .listed
                .iter()
                .map(|(name, l)| parity_set_metadata(name, *l, "uid-demo"))
                .collect(),
        },
        Call::Discovery {
            served: service_monitor,
        },
    ]);
    if service_monitor {
        calls.push(apply(
            "monitoring.coreos.com/v1/namespaces/ns1/servicemonitors/demo",
            None,
        ));
    }
    calls
}

/// A parity StatefulSet's metadata as a list returns it, owned by `owner_uid`.
pub fn parity_set_metadata(name: &str, index: i32, owner_uid: &str) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": {
            "name": name,
            "namespace": "ns1",
            "labels": {
                "coded.dev/service": "demo",
                "coded.dev/parity-index": index.to_string(),
            },
            "ownerReferences": [{
                "apiVersion": "coded.dev/v1alpha1",
                "kind": "CodedInferenceService",
                "name": "demo",
                "uid": owner_uid,
                "controller": true,
            }],
        },
    })
}

/// The deletes of parity pool `name`'s children, in the order the pruning makes them.
pub fn delete_pool(name: &str) -> Vec<Call> {
    [
        "policy/v1/namespaces/ns1/poddisruptionbudgets",
        "v1/namespaces/ns1/services",
        "apps/v1/namespaces/ns1/statefulsets",
    ]
    .into_iter()
    .map(|kind| Call::Delete {
        path: format!("{kind}/{name}"),
    })
    .collect()
}

type ApiServerHandle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The fake API server's side of the mocked client.
pub struct ApiServerVerifier(ApiServerHandle);

/// Fails the test if the fake server's script did not finish in time.
pub async fn timeout_after_1s(handle: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(1), handle)
        .await
        .expect("fake API server timed out: an expected call was not made")
        .expect("fake API server script failed");
}

impl ApiServerVerifier {
    /// Answers `calls` in order, then fails on any further call.
    pub fn run(mut self, calls: Vec<Call>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            for call in calls {
                self.answer(call).await;
            }
            if let Ok(Some((req, _))) =
                tokio::time::timeout(Duration::from_millis(100), self.0.next_request()).await
            {
                panic!("unexpected call: {} {}", req.method(), req.uri());
            }
        })
    }

    async fn answer(&mut self, call: Call) {
        let (req, send) = self.0.next_request().await.expect("service not called");
        let (method, uri) = (req.method().clone(), req.uri().clone());
        let body = req.into_body().collect_bytes().await.expect("request body");
        let json = || -> Value { serde_json::from_slice(&body).expect("JSON body") };
        let to_json = |value: Value| serde_json::to_vec(&value).expect("response");
        let (code, response) = match call {
            Call::Apply { path, ready } => {
                assert_apply(&method, &uri, &path);
                let mut obj = json();
                let name = path.rsplit('/').next().unwrap_or_default();
                assert_eq!(obj["metadata"]["name"], name, "name of {path}");
                assert_eq!(obj["metadata"]["ownerReferences"][0]["uid"], "uid-demo");
                assert!(obj["kind"].is_string() && obj["apiVersion"].is_string());
                if let Some(ready) = ready {
                    obj["status"] = json!({ "readyReplicas": ready });
                }
                (StatusCode::OK, to_json(obj))
            }
            Call::ApplyFails { path, code } => {
                assert_apply(&method, &uri, &path);
                (
                    StatusCode::from_u16(code).expect("status code"),
                    to_json(json!({
                        "kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "message": "injected failure",
                        "reason": "InternalError", "code": code,
                    })),
                )
            }
            Call::Discovery { served } => {
                assert_eq!(method, Method::GET);
                assert_eq!(uri.path(), "/apis/monitoring.coreos.com/v1");
                if served {
                    (
                        StatusCode::OK,
                        to_json(json!({
                            "kind": "APIResourceList", "apiVersion": "v1",
                            "groupVersion": "monitoring.coreos.com/v1",
                            "resources": [{
                                "name": "servicemonitors", "singularName": "servicemonitor",
                                "namespaced": true, "kind": "ServiceMonitor",
                                "verbs": ["get", "list", "watch", "create", "patch"],
                            }],
                        })),
                    )
                } else {
                    // What kube-apiserver answers for a group it does not serve.
                    (StatusCode::NOT_FOUND, b"404 page not found\n".to_vec())
                }
            }
            Call::ListMetadata {
                path,
                selector,
                items,
            } => {
                assert_eq!(method, Method::GET);
                assert_eq!(uri.path(), format!("/apis/{path}"));
                let query = percent_decode(uri.query().unwrap_or_default());
                assert!(
                    query.contains(&format!("labelSelector={selector}")),
                    "{query}"
                );
                (
                    StatusCode::OK,
                    to_json(json!({
                        "apiVersion": "meta.k8s.io/v1",
                        "kind": "PartialObjectMetadataList",
                        "metadata": {"resourceVersion": "1"},
                        "items": items,
                    })),
                )
            }
            Call::Delete { path } => {
                assert_eq!(method, Method::DELETE, "delete of {path}");
                let prefix = if path.starts_with("v1/") {
                    "/api/"
                } else {
                    "/apis/"
                };
                assert_eq!(uri.path(), format!("{prefix}{path}"));
                let body = json();
                assert_eq!(body["propagationPolicy"], "Background", "{path}");
                (
                    StatusCode::OK,
                    to_json(json!({
                        "kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Success",
                    })),
                )
            }
            Call::Status(check) => {
                assert_eq!(method, Method::PATCH);
                assert_eq!(
                    uri.path(),
                    "/apis/coded.dev/v1alpha1/namespaces/ns1/codedinferenceservices/demo/status"
                );
                assert_field_manager(&uri);
                let patch = json();
                assert_eq!(patch["kind"], "CodedInferenceService");
                let status: CodedInferenceServiceStatus =
                    serde_json::from_value(patch["status"].clone()).expect("valid status");
                check(&status);
                let mut obj = cis("demo");
                obj.status = Some(status);
                (StatusCode::OK, serde_json::to_vec(&obj).expect("json"))
            }
            Call::Event(reason) => {
                assert_eq!(method, Method::POST);
                assert_eq!(uri.path(), "/apis/events.k8s.io/v1/namespaces/ns1/events");
                let event = json();
                assert_eq!(event["reason"], reason);
                assert_eq!(event["regarding"]["name"], "demo");
                (StatusCode::CREATED, to_json(event))
            }
        };
        send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(response))
                .expect("response"),
        );
    }
}

/// A query string with its `%XX` escapes decoded.
fn percent_decode(query: &str) -> String {
    let bytes = query.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("UTF-8 query")
}

fn assert_apply(method: &Method, uri: &http::Uri, path: &str) {
    assert_eq!(method, Method::PATCH, "server-side apply of {path}");
    let prefix = if path.starts_with("v1/") {
        "/api/"
    } else {
        "/apis/"
    };
    assert_eq!(uri.path(), format!("{prefix}{path}"));
    assert_field_manager(uri);
}

fn assert_field_manager(uri: &http::Uri) {
    let query = uri.query().unwrap_or_default();
    assert!(query.contains("fieldManager=coded-operator"), "{query}");
    assert!(query.contains("force=true"), "{query}");
}

impl Context {
    /// A context whose client talks to a fake API server.
    pub fn test() -> (Arc<Context>, ApiServerVerifier) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let reporter = Reporter {
            controller: crate::FIELD_MANAGER.into(),
            instance: Some("test".into()),
        };
        let ctx = Context::new(
            client,
            reporter,
            Arc::new(Metrics::new()),
            Settings::default(),
            crate::latency::LatencyReader::new("5m", std::time::Duration::from_secs(1))
                .expect("http client"),
        );
        (Arc::new(ctx), ApiServerVerifier(handle))
    }
}
