//! A ServiceMonitor for the Prometheus operator, scraping `/metrics` of every
//! model and parity pod on their serving port, and of every frontend pod on
//! its metrics port (the one its NetworkPolicy opens to the monitoring
//! namespace). The operator applies it only where the
//! `monitoring.coreos.com` CRD is served, so clusters without it need nothing.

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::{METRICS_PORT_NAME, Owner, PORT_NAME, ROLE_LABEL, Role, SERVICE_LABEL};

/// Prometheus' name for the pod label `coded.dev/role` (ROLE_LABEL).
const ROLE_POD_META: &str = "__meta_kubernetes_pod_label_coded_dev_role";

pub const GROUP: &str = "monitoring.coreos.com";
pub const VERSION: &str = "v1";
pub const KIND: &str = "ServiceMonitor";
pub const PLURAL: &str = "servicemonitors";

pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, KIND), PLURAL)
}

pub fn service_monitor(owner: &Owner<'_>) -> DynamicObject {
    let mut sm = DynamicObject::new(&owner.name, &api_resource()).data(json!({
        "spec": {
            // Matches the model, parity and frontend Services of this resource.
            "selector": { "matchLabels": { SERVICE_LABEL: owner.name } },
            "podTargetLabels": [ROLE_LABEL, SERVICE_LABEL],
            "endpoints": [
                // Workers; the frontend Service has this port too, but its
                // metrics are scraped once, on the port below.
                {
                    "port": PORT_NAME, "path": "/metrics", "interval": "15s",
                    "relabelings": [{
                        "sourceLabels": [ROLE_POD_META],
                        "regex": Role::Frontend.as_str(),
                        "action": "drop",
                    }],
                },
                { "port": METRICS_PORT_NAME, "path": "/metrics", "interval": "15s" },
            ],
        }
    }));
    if let Some(tls) = &owner.cis.spec.tls {
        // Workers serve TLS: verified with the Secret's CA against a name
        // the shared certificate carries.
        sm.data["spec"]["endpoints"][0]["scheme"] = json!("https");
        sm.data["spec"]["endpoints"][0]["tlsConfig"] = json!({
            "ca": { "secret": { "name": tls.secret_name, "key": "ca.crt" } },
            "serverName": format!("{}.{}.svc", owner.child_name(Role::Model), owner.namespace),
        });
    }
    sm.metadata = owner.meta_with(owner.name.clone(), owner.common_labels());
    sm
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::cis;

    #[test]
    fn scrapes_every_role_on_the_http_port() {
        let cis = cis("demo");
        let owner = Owner::new(&cis).expect("owner");
        let sm = service_monitor(&owner);
        let types = sm.types.as_ref().expect("types");
        assert_eq!(types.api_version, "monitoring.coreos.com/v1");
        assert_eq!(types.kind, "ServiceMonitor");
        assert_eq!(sm.metadata.name.as_deref(), Some("demo"));
        assert_eq!(
            sm.data["spec"]["selector"]["matchLabels"]["coded.dev/service"],
            "demo"
        );
        let endpoints = &sm.data["spec"]["endpoints"];
        assert_eq!(endpoints[0]["port"], "http");
        assert_eq!(endpoints[0]["path"], "/metrics");
        // The frontend is not scraped on its serving port ...
        let drop = &endpoints[0]["relabelings"][0];
        assert_eq!(drop["action"], "drop");
        assert_eq!(drop["regex"], "frontend");
        assert_eq!(
            drop["sourceLabels"][0],
            format!(
                "__meta_kubernetes_pod_label_{}",
                ROLE_LABEL.replace(['.', '/'], "_")
            )
        );
        // ... but on its metrics port, which only its Service has.
        assert_eq!(endpoints[1]["port"], "metrics");
        assert_eq!(endpoints[1]["path"], "/metrics");
        assert_eq!(endpoints.as_array().map(Vec::len), Some(2));
        // The label it selects on is on every Service the operator makes.
        let c = super::super::Children::build(&owner, &Default::default());
        for svc in [
            &c.model_service,
            &c.parities[0].service,
            &c.frontend_service,
        ] {
            assert_eq!(
                svc.metadata.labels.as_ref().expect("labels")[SERVICE_LABEL],
                "demo"
            );
        }
    }
}
