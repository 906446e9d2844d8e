//! PodDisruptionBudgets: voluntary evictions (node drains, upgrades) take one
//! instance of a role at a time, a loss the code is built to absorb, rather
//! than several at once, which could exceed r losses in a coding group.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Owner, Role};

pub fn pod_disruption_budget(owner: &Owner<'_>, role: Role) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: owner.meta(role),
        spec: Some(PodDisruptionBudgetSpec {
            // maxUnavailable rather than minAvailable: a single-replica role can still be drained.
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(owner.selector_labels(role)),
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

    #[test]
    fn one_instance_of_a_role_at_a_time() {
        let cis = cis("demo");
        let owner = Owner::new(&cis).expect("owner");
        for role in [Role::Model, Role::Parity, Role::Frontend] {
            let pdb = pod_disruption_budget(&owner, role);
            let spec = pdb.spec.expect("spec");
            assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
            assert_eq!(spec.min_available, None);
            let selector = spec
                .selector
                .and_then(|s| s.match_labels)
                .expect("selector");
            assert_eq!(selector, owner.selector_labels(role));
            assert_eq!(pdb.metadata.name, Some(owner.child_name(role)));
        }
    }
}
