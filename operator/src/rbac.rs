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

/// Cluster-wide rules, each verb one the code uses (a test checks both
/// ways): list and watch the resources and their children (the
/// controller's watches), create and patch the children (server-side
/// apply creates what is missing), patch the status, create and patch
/// Events. No get or update; children go with their owner through garbage
/// collection, but for the pools of parities a lowered `coding.r` left
/// (`reconcile::prune`): delete on StatefulSets, Services and PDBs only.
pub fn cluster_rules() -> Vec<PolicyRule> {
    let children = ["list", "watch", "create", "patch"];
    let pools = ["list", "watch", "create", "patch", "delete"];
    vec![
        rule("coded.dev", &["codedinferenceservices"], &["list", "watch"]),
        rule("coded.dev", &["codedinferenceservices/status"], &["patch"]),
        // Owner references with blockOwnerDeletion need this where the
        // OwnerReferencesPermissionEnforcement admission plugin is on.
        rule(
            "coded.dev",
            &["codedinferenceservices/finalizers"],
            &["update"],
        ),
        rule("apps", &["statefulsets"], &pools),
        rule("apps", &["deployments"], &children),
        rule("", &["services"], &pools),
        rule("policy", &["poddisruptionbudgets"], &pools),
        rule("networking.k8s.io", &["networkpolicies"], &children),
        // Applied where the Prometheus operator's CRD is served; not watched.
        rule(
            "monitoring.coreos.com",
            &["servicemonitors"],
            &["create", "patch"],
        ),
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
    use std::collections::BTreeSet;

    fn group_plural<K: Resource<DynamicType = ()>>(_: &K) -> (String, String) {
        (K::group(&()).to_string(), K::plural(&()).to_string())
    }

    /// Every (group, resource, verb) the rules grant.
    fn granted(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
        let mut out = BTreeSet::new();
        for r in rules {
            for g in r.api_groups.iter().flatten() {
                for res in r.resources.iter().flatten() {
                    for v in &r.verbs {
                        out.insert((g.clone(), res.clone(), v.clone()));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn the_cluster_role_grants_what_the_code_uses_and_nothing_else() {
        let cis = cis("demo");
        let owner = Owner::new(&cis).expect("owner");
        let c = Children::build(&owner, &Settings::default());
        // The children the reconciler applies and the controller watches
        // (`reconcile::run` owns each kind), as Children::build makes them.
        let watched_children = [
            group_plural(&c.model),
            group_plural(&c.frontend),
            group_plural(&c.model_service),
            group_plural(&c.pdbs[0]),
            group_plural(&c.network_policy),
        ];
        let mut used = BTreeSet::new();
        let mut add = |group: &str, resource: &str, verbs: &[&str]| {
            for v in verbs {
                used.insert((group.to_string(), resource.to_string(), v.to_string()));
            }
        };
        for (group, plural) in &watched_children {
            add(group, plural, &["list", "watch", "create", "patch"]);
        }
        // A parity's pool, removed when r is lowered (reconcile::prune).
        let pool = &c.parities[0];
        for (group, plural) in [
            group_plural(&pool.stateful_set),
            group_plural(&pool.service),
            group_plural(&c.pdbs[1]),
        ] {
            add(&group, &plural, &["delete"]);
        }
        // Applied only: the ServiceMonitor.
        let sm = service_monitor::api_resource();
        add(&sm.group, &sm.plural, &["create", "patch"]);
        // The resources are watched, their status patched (write_status).
        let (group, plural) = group_plural(&cis);
        add(&group, &plural, &["list", "watch"]);
        add(&group, &format!("{plural}/status"), &["patch"]);
        add(&group, &format!("{plural}/finalizers"), &["update"]);
        // kube's Recorder creates Events and patches their series.
        add("events.k8s.io", "events", &["create", "patch"]);

        let cluster = granted(&cluster_rules());
        let extra: Vec<_> = cluster.difference(&used).collect();
        let missing: Vec<_> = used.difference(&cluster).collect();
        assert!(extra.is_empty(), "granted but unused: {extra:?}");
        assert!(missing.is_empty(), "used but not granted: {missing:?}");
        assert!(granted(&leader_election_rules()).contains(&(
            "coordination.k8s.io".into(),
            "leases".into(),
            "update".into()
        )));
    }

    #[test]
    fn only_parity_pools_are_deleted_by_hand() {
        let all = [cluster_rules(), leader_election_rules()].concat();
        assert!(all.iter().all(|r| !r.verbs.iter().any(|v| v == "*")));
        let deletable: BTreeSet<(String, String)> = granted(&all)
            .into_iter()
            .filter(|(_, _, verb)| verb == "delete")
            .map(|(group, resource, _)| (group, resource))
            .collect();
        let pool = |g: &str, r: &str| (g.to_string(), r.to_string());
        assert_eq!(
            deletable,
            BTreeSet::from([
                pool("apps", "statefulsets"),
                pool("", "services"),
                pool("policy", "poddisruptionbudgets"),
            ])
        );
    }
}
