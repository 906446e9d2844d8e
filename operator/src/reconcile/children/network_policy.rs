//! The NetworkPolicies of a resource. The workers' serving port takes
//! connections only from the resource's own frontend pods (queries,
//! health) and from the monitoring namespace (`/metrics`). The frontend's
//! serving ports stay open, it is what clients call, but its metrics port
//! takes only the monitoring namespace. Enforced only where the cluster's
//! network plugin implements NetworkPolicy (Calico, Cilium...); elsewhere
//! the objects are inert.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    GRPC_PORT_NAME, METRICS_PORT_NAME, Owner, PORT_NAME, Pool, ROLE_LABEL, Role, SERVICE_LABEL,
    Settings,
};

/// The namespace label every namespace carries with its own name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// `<name>-workers`: model and parity pods (every parity's), reached only
/// by the frontend and the monitoring namespace.
pub fn network_policy(owner: &Owner<'_>, settings: &Settings) -> NetworkPolicy {
    let mut ingress = vec![NetworkPolicyIngressRule {
        from: Some(vec![NetworkPolicyPeer {
            pod_selector: Some(LabelSelector {
                match_labels: Some(owner.selector_labels(Role::Frontend)),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        }]),
        ports: ports(&[PORT_NAME]),
    }];
    if let Some(ns) = &settings.monitoring_namespace {
        ingress.push(from_monitoring(ns, PORT_NAME));
    }
    NetworkPolicy {
        metadata: owner.meta_with(format!("{}-workers", owner.name), owner.common_labels()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    SERVICE_LABEL.to_string(),
                    owner.name.clone(),
                )])),
                // Every worker pool's role: model, parity, parity-<l>.
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: ROLE_LABEL.to_string(),
                    operator: "In".to_string(),
                    values: Some(
                        Pool::all(owner.cis.spec.coding.r)
                            .map(Pool::role_value)
                            .collect(),
                    ),
                }]),
            }),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(ingress),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// `<name>-frontend`: the frontend pods take queries (HTTP and gRPC) from
/// anywhere, and their metrics port only from the monitoring namespace.
/// (`/metrics` on the HTTP port stays reachable to clients; a token, when
/// set, guards it.)
pub fn frontend_network_policy(owner: &Owner<'_>, settings: &Settings) -> NetworkPolicy {
    let mut ingress = vec![NetworkPolicyIngressRule {
        // No `from`: every source.
        from: None,
        ports: ports(&[PORT_NAME, GRPC_PORT_NAME]),
    }];
    if let Some(ns) = &settings.monitoring_namespace {
        ingress.push(from_monitoring(ns, METRICS_PORT_NAME));
    }
    NetworkPolicy {
        metadata: owner.meta_with(owner.child_name(Role::Frontend), owner.common_labels()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(owner.selector_labels(Role::Frontend)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(ingress),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// The named container ports, TCP.
fn ports(names: &[&str]) -> Option<Vec<NetworkPolicyPort>> {
    Some(
        names
            .iter()
            .map(|name| NetworkPolicyPort {
                port: Some(IntOrString::String(name.to_string())),
                protocol: Some("TCP".to_string()),
                ..NetworkPolicyPort::default()
            })
            .collect(),
    )
}

/// Any pod of namespace `ns`, on the port named `port`.
fn from_monitoring(ns: &str, port: &str) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule {
        from: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    NAMESPACE_NAME_LABEL.to_string(),
                    ns.to_string(),
                )])),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        }]),
        ports: ports(&[port]),
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
            Role::Parity => &c.parities[0].stateful_set.spec.as_ref().unwrap().template,
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
    fn with_r_two_every_parity_is_fenced_and_reached_by_the_frontend() {
        let mut cis = cis("demo");
        cis.spec.coding.k = 4;
        cis.spec.coding.r = 2;
        let owner = Owner::new(&cis).expect("owner");
        let settings = Settings::default();
        let c = Children::build(&owner, &settings);
        let spec = network_policy(&owner, &settings).spec.expect("spec");
        let fenced = spec.pod_selector.expect("pod selector");
        assert!(matches(&fenced, &pod_labels(&c, Role::Model)));
        for p in &c.parities {
            let labels = p
                .stateful_set
                .spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref();
            let labels = labels.unwrap().labels.clone().unwrap();
            assert!(matches(&fenced, &labels), "{labels:?}");
        }
        assert!(!matches(&fenced, &pod_labels(&c, Role::Frontend)));
        // The frontend's own policy does not take parity 1's pods.
        let front = frontend_network_policy(&owner, &settings)
            .spec
            .expect("spec");
        let labels = c.parities[1]
            .stateful_set
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref();
        let labels = labels.unwrap().labels.clone().unwrap();
        assert!(!matches(&front.pod_selector.expect("selector"), &labels));
    }

    #[test]
    fn frontends_take_queries_from_anyone_and_scrapes_from_monitoring_only() {
        let cis = cis("demo");
        let owner = Owner::new(&cis).expect("owner");
        let settings = Settings::default();
        let c = Children::build(&owner, &settings);
        let np = frontend_network_policy(&owner, &settings);
        assert_eq!(np.metadata.name.as_deref(), Some("demo-frontend"));
        let spec = np.spec.expect("spec");
        let fenced = spec.pod_selector.expect("pod selector");
        assert!(matches(&fenced, &pod_labels(&c, Role::Frontend)));
        assert!(!matches(&fenced, &pod_labels(&c, Role::Model)));
        assert!(!matches(&fenced, &pod_labels(&c, Role::Parity)));
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));

        let rules = spec.ingress.expect("ingress");
        assert_eq!(rules.len(), 2);
        let names = |rule: &NetworkPolicyIngressRule| -> Vec<String> {
            rule.ports
                .iter()
                .flatten()
                .map(|p| match &p.port {
                    Some(IntOrString::String(s)) => s.clone(),
                    other => panic!("port by name, got {other:?}"),
                })
                .collect()
        };
        // Serving ports: from every source, and not the metrics port.
        assert_eq!(rules[0].from, None);
        assert_eq!(names(&rules[0]), ["http", "grpc"]);
        // The metrics port: the monitoring namespace only.
        assert_eq!(names(&rules[1]), ["metrics"]);
        let monitoring = rules[1].from.as_ref().unwrap();
        assert_eq!(monitoring.len(), 1);
        assert_eq!(monitoring[0].pod_selector, None);
        assert_eq!(
            monitoring[0]
                .namespace_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()[NAMESPACE_NAME_LABEL],
            "monitoring"
        );
        // Every port named is one the frontend container declares.
        let declared: Vec<String> = c
            .frontend
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.name.clone())
            .collect();
        for rule in &rules {
            for name in names(rule) {
                assert!(declared.contains(&name), "{name} not in {declared:?}");
            }
        }

        // Without a monitoring namespace, nobody reaches the metrics port.
        let none = Settings {
            monitoring_namespace: None,
            ..Settings::default()
        };
        let rules = frontend_network_policy(&owner, &none)
            .spec
            .unwrap()
            .ingress
            .unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(names(&rules[0]), ["http", "grpc"]);
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
