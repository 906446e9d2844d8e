//! The permissions the operator needs, in one place: the chart and the plain
//! manifests carry these rules, and a test checks both against this file.

use k8s_openapi::api::rbac::v1::PolicyRule;

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..PolicyRule::default()
    }
}

/// Cluster-wide rules: read the resources, apply their children, write
/// status and Events. No delete: children go with their owner through
/// garbage collection.
pub fn cluster_rules() -> Vec<PolicyRule> {
    let children = ["get", "list", "watch", "create", "patch"];
    vec![
        rule(
            "coded.dev",
            &["codedinferenceservices"],
            &["get", "list", "watch"],
        ),
        rule(
            "coded.dev",
            &["codedinferenceservices/status"],
            &["get", "patch", "update"],
        ),
        // Owner references with blockOwnerDeletion need this where the
        // OwnerReferencesPermissionEnforcement admission plugin is on.
        rule(
            "coded.dev",
            &["codedinferenceservices/finalizers"],
            &["update"],
        ),
        rule("apps", &["statefulsets", "deployments"], &children),
        rule("", &["services"], &children),
        rule("policy", &["poddisruptionbudgets"], &children),
        rule("monitoring.coreos.com", &["servicemonitors"], &children),
        rule("events.k8s.io", &["events"], &["create", "patch"]),
    ]
}

/// Rules in the operator's own namespace, for the leader-election Lease.
pub fn leader_election_rules() -> Vec<PolicyRule> {
    vec![rule(
        "coordination.k8s.io",
        &["leases"],
        &["get", "list", "watch", "create", "update", "patch"],
    )]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::cis;
    use crate::reconcile::children::{Children, Owner, Settings, service_monitor};
    use kube::Resource;

    fn allows(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> bool {
        rules.iter().any(|r| {
            r.api_groups
                .as_ref()
                .is_some_and(|g| g.iter().any(|g| g == group))
                && r.resources
                    .as_ref()
                    .is_some_and(|rs| rs.iter().any(|x| x == resource))
                && r.verbs.iter().any(|v| v == verb)
        })
    }

    fn group_plural<K: Resource<DynamicType = ()>>(_: &K) -> (String, String) {
        (K::group(&()).to_string(), K::plural(&()).to_string())
    }

    #[test]
    fn every_child_kind_can_be_applied_and_watched() {
        let cis = cis("demo");
        let owner = Owner::new(&cis).expect("owner");
        let c = Children::build(&owner, &Settings::default());
        let rules = cluster_rules();
        let sm = service_monitor::api_resource();
        let kinds = [
            group_plural(&c.model),
            group_plural(&c.model_service),
            group_plural(&c.frontend),
            group_plural(&c.pdbs[0]),
            (sm.group.clone(), sm.plural.clone()),
        ];
        for (group, plural) in kinds {
            for verb in ["patch", "create", "watch", "list"] {
                assert!(
                    allows(&rules, &group, &plural, verb),
                    "{verb} {group}/{plural}"
                );
            }
        }
        assert!(allows(
            &rules,
            "coded.dev",
            "codedinferenceservices/status",
            "patch"
        ));
        assert!(allows(&rules, "events.k8s.io", "events", "create"));
        assert!(allows(
            &leader_election_rules(),
            "coordination.k8s.io",
            "leases",
            "update"
        ));
    }

    #[test]
    fn nothing_is_deleted_by_hand() {
        let all = [cluster_rules(), leader_election_rules()].concat();
        assert!(
            all.iter()
                .all(|r| !r.verbs.iter().any(|v| v == "delete" || v == "*"))
        );
    }
}
