//! The NetworkPolicy that fences a resource's workers: their serving port
//! takes connections only from the resource's own frontend pods (queries,
//! health) and from the monitoring namespace (`/metrics`). The frontend
//! stays open: it is what clients call. Enforced only where the cluster's
//! network plugin implements NetworkPolicy (Calico, Cilium...); elsewhere
//! the object is inert.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Owner, PORT_NAME, ROLE_LABEL, Role, SERVICE_LABEL, Settings};

/// The namespace label every namespace carries with its own name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// `<name>-workers`: model and parity pods, reached only by the frontend
/// and the monitoring namespace.
pub fn network_policy(owner: &Owner<'_>, settings: &Settings) -> NetworkPolicy {
    let port = || {
        Some(vec![NetworkPolicyPort {
            port: Some(IntOrString::String(PORT_NAME.to_string())),
            protocol: Some("TCP".to_string()),
            ..NetworkPolicyPort::default()
        }])
    };
    let mut ingress = vec![NetworkPolicyIngressRule {
        from: Some(vec![NetworkPolicyPeer {
            pod_selector: Some(LabelSelector {
                match_labels: Some(owner.selector_labels(Role::Frontend)),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        }]),
        ports: port(),
    }];
    if let Some(ns) = &settings.monitoring_namespace {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        NAMESPACE_NAME_LABEL.to_string(),
                        ns.clone(),
                    )])),
                    ..LabelSelector::default()
                }),
                ..NetworkPolicyPeer::default()
            }]),
            ports: port(),
        });
    }
    NetworkPolicy {
        metadata: owner.meta_with(format!("{}-workers", owner.name), owner.common_labels()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    SERVICE_LABEL.to_string(),
                    owner.name.clone(),
                )])),
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: ROLE_LABEL.to_string(),
                    operator: "In".to_string(),
                    values: Some(vec![
                        Role::Model.as_str().to_string(),
                        Role::Parity.as_str().to_string(),
                    ]),
                }]),
            }),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(ingress),
            ..NetworkPolicySpec::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::cis;
    use crate::reconcile::children::Children;

    /// Whether `selector` matches a pod with `labels` (match labels and
    /// `In` expressions, all this module writes).
    fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
        selector
            .match_labels
            .iter()
            .flatten()
            .all(|(k, v)| labels.get(k) == Some(v))
            && selector.match_expressions.iter().flatten().all(|e| {
                assert_eq!(e.operator, "In");
                labels
                    .get(&e.key)
                    .is_some_and(|v| e.values.iter().flatten().any(|x| x == v))
            })
    }

    fn pod_labels(c: &Children, role: Role) -> BTreeMap<String, String> {
        let template = match role {
            Role::Model => &c.model.spec.as_ref().unwrap().template,
            Role::Parity => &c.parity.spec.as_ref().unwrap().template,
            Role::Frontend => &c.frontend.spec.as_ref().unwrap().template,
        };
        template.metadata.as_ref().unwrap().labels.clone().unwrap()
    }

    #[test]
    fn workers_take_only_their_frontend_and_the_monitoring_namespace() {
        let cis = cis("demo");
        let owner = Owner::new(&cis).expect("owner");
        let settings = Settings::default();
        let c = Children::build(&owner, &settings);
        let np = network_policy(&owner, &settings);
        let spec = np.spec.expect("spec");
        let fenced = spec.pod_selector.expect("pod selector");
        // The selector takes the workers' pods as the StatefulSets label
        // them, not the frontend's.
        assert!(matches(&fenced, &pod_labels(&c, Role::Model)));
        assert!(matches(&fenced, &pod_labels(&c, Role::Parity)));
        assert!(!matches(&fenced, &pod_labels(&c, Role::Frontend)));
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));

        let rules = spec.ingress.expect("ingress");
        assert_eq!(rules.len(), 2);
        let from_pods = rules[0].from.as_ref().unwrap()[0]
            .pod_selector
            .as_ref()
            .unwrap();
        assert!(matches(from_pods, &pod_labels(&c, Role::Frontend)));
        assert!(!matches(from_pods, &pod_labels(&c, Role::Model)));
        // Another resource's frontend in the namespace is not let in.
        let other = crate::fixtures::cis("other");
        let other_owner = Owner::new(&other).expect("owner");
        let other_c = Children::build(&other_owner, &settings);
        assert!(!matches(from_pods, &pod_labels(&other_c, Role::Frontend)));
        let monitoring = rules[1].from.as_ref().unwrap()[0]
            .namespace_selector
            .as_ref()
            .unwrap();
        assert_eq!(
            monitoring.match_labels.as_ref().unwrap()[NAMESPACE_NAME_LABEL],
            "monitoring"
        );
        // Both on the port the workers serve on, by its name.
        let served = c
            .model
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .ports
            .as_ref()
            .unwrap()[0]
            .name
            .clone();
        for rule in &rules {
            let ports = rule.ports.as_ref().unwrap();
            assert_eq!(ports.len(), 1);
            assert_eq!(ports[0].port, Some(IntOrString::String(PORT_NAME.into())));
            assert_eq!(served.as_deref(), Some(PORT_NAME));
        }
    }

    #[test]
    fn no_monitoring_namespace_no_metrics_rule() {
        let cis = cis("demo");
        let owner = Owner::new(&cis).expect("owner");
        let settings = Settings {
            monitoring_namespace: None,
            ..Settings::default()
        };
        let rules = network_policy(&owner, &settings)
            .spec
            .unwrap()
            .ingress
            .unwrap();
        assert_eq!(rules.len(), 1);
    }
}
