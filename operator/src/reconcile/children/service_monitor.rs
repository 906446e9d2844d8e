//! A ServiceMonitor for the Prometheus operator, scraping `/metrics` of every
//! model, parity and frontend pod. The operator applies it only where the
//! `monitoring.coreos.com` CRD is served, so clusters without it need nothing.

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::{Owner, PORT_NAME, ROLE_LABEL, SERVICE_LABEL};

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
            "endpoints": [{ "port": PORT_NAME, "path": "/metrics", "interval": "15s" }],
        }
    }));
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
        assert_eq!(sm.data["spec"]["endpoints"][0]["port"], "http");
        assert_eq!(sm.data["spec"]["endpoints"][0]["path"], "/metrics");
        // The label it selects on is on every Service the operator makes.
        let c = super::super::Children::build(&owner, &Default::default());
        for svc in [&c.model_service, &c.parity_service, &c.frontend_service] {
            assert_eq!(
                svc.metadata.labels.as_ref().expect("labels")[SERVICE_LABEL],
                "demo"
            );
        }
    }
}
