//! PodDisruptionBudgets: voluntary evictions (node drains, upgrades) take one
//! instance of a pool at a time, a loss the code is built to absorb, rather
//! than several at once, which could exceed r losses in a coding group.

use std::collections::BTreeMap;

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Owner, Pool, Role};

/// The budget of a worker pool (model, or one parity's).
pub fn pod_disruption_budget(owner: &Owner<'_>, pool: Pool) -> PodDisruptionBudget {
    budget(owner.pool_meta(pool), owner.pool_selector_labels(pool))
}

/// The frontends' budget.
pub fn frontend_pod_disruption_budget(owner: &Owner<'_>) -> PodDisruptionBudget {
    budget(
        owner.meta(Role::Frontend),
        owner.selector_labels(Role::Frontend),
    )
}

fn budget(metadata: ObjectMeta, selector: BTreeMap<String, String>) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata,
        spec: Some(PodDisruptionBudgetSpec {
            // maxUnavailable rather than minAvailable: a single-replica pool can still be drained.
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::cis;
    use crate::reconcile::children::{Children, Settings};

    #[test]
    fn one_instance_of_a_pool_at_a_time() {
        let mut cis = cis("demo");
        for r in [1, 2] {
            cis.spec.coding.r = r;
            let owner = Owner::new(&cis).expect("owner");
            let pdbs = Children::build(&owner, &Settings::default()).pdbs;
            let names: Vec<_> = pdbs
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            let want: &[&str] = if r == 1 {
                &["demo-model", "demo-parity", "demo-frontend"]
            } else {
                &[
                    "demo-model",
                    "demo-parity",
                    "demo-parity-1",
                    "demo-frontend",
                ]
            };
            assert_eq!(names, want);
            for pdb in pdbs {
                let name = pdb.metadata.name.clone().expect("name");
                let spec = pdb.spec.expect("spec");
                assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
                assert_eq!(spec.min_available, None);
                let selector = spec
                    .selector
                    .and_then(|s| s.match_labels)
                    .expect("selector");
                let role = name.trim_start_matches("demo-");
                assert_eq!(selector["coded.dev/role"], role, "{name}");
                assert_eq!(selector.len(), 2, "{name}");
            }
        }
    }
}
