//! Children as a whole: ownership, names, shared helpers.

use super::*;
use crate::fixtures::cis;

#[test]
fn every_child_is_owned_by_the_resource_as_controller() {
    let cis = cis("demo");
    let owner = Owner::new(&cis).expect("owner");
    let c = Children::build(&owner, &Settings::default());
    let metas = [
        &c.model.metadata,
        &c.model_service.metadata,
        &c.parities[0].stateful_set.metadata,
        &c.parities[0].service.metadata,
        &c.frontend.metadata,
        &c.frontend_service.metadata,
        &c.pdbs[0].metadata,
        &c.pdbs[1].metadata,
        &c.pdbs[2].metadata,
        &c.network_policy.metadata,
        &c.frontend_network_policy.metadata,
        &c.service_monitor.metadata,
    ];
    for meta in metas {
        let refs = meta.owner_references.as_ref().expect("owner refs");
        assert_eq!(refs.len(), 1);
        let r = &refs[0];
        assert_eq!(r.kind, "CodedInferenceService");
        assert_eq!(r.api_version, "coded.dev/v1alpha1");
        assert_eq!(r.name, "demo");
        assert_eq!(r.uid, "uid-demo");
        assert_eq!(r.controller, Some(true));
        assert_eq!(meta.namespace.as_deref(), Some("ns1"));
        let labels = meta.labels.as_ref().expect("labels");
        assert_eq!(labels[SERVICE_LABEL], "demo");
        assert_eq!(labels[MANAGED_BY_LABEL], "coded-operator");
    }
}

#[test]
fn longest_allowed_name_gives_valid_child_names() {
    let name = "a".repeat(crate::crd::MAX_NAME_LEN);
    let cis = cis(&name);
    let owner = Owner::new(&cis).expect("owner");
    // StatefulSet pods carry `controller-revision-hash: <sts>-<10 chars>`, a 63-character label value.
    for role in [Role::Model, Role::Parity] {
        assert!(owner.child_name(role).len() <= 52, "{role:?}");
    }
    // Service names are DNS labels.
    for role in [Role::Model, Role::Parity, Role::Frontend] {
        assert!(owner.child_name(role).len() <= 63, "{role:?}");
    }
    // The frontend needs resolvable per-instance names too.
    let host = worker::endpoints(&owner, Pool::Parity(0), 10)[9].clone();
    let first_label = host
        .trim_start_matches("http://")
        .split('.')
        .next()
        .unwrap_or_default();
    assert!(first_label.len() <= 63);
}

#[test]
fn longest_name_allowed_with_r_four_gives_valid_child_names() {
    let mut cis = cis(&"a".repeat(crate::crd::MAX_NAME_LEN_R));
    cis.spec.coding.k = 4;
    cis.spec.coding.r = crate::crd::MAX_R;
    let owner = Owner::new(&cis).expect("owner");
    let c = Children::build(&owner, &Settings::default());
    assert_eq!(c.parities.len(), 4);
    for p in &c.parities {
        let name = p.stateful_set.metadata.name.clone().expect("name");
        assert!(name.len() <= 52, "{name}");
        // Pod names are DNS labels too.
        assert!(format!("{name}-999").len() <= 63, "{name}");
    }
    // Tight: one character more would not fit.
    assert_eq!(owner.pool_name(Pool::Parity(3)).len(), 52);
}

#[test]
fn owner_needs_a_namespace() {
    let mut cis = cis("demo");
    cis.metadata.namespace = None;
    assert!(matches!(
        Owner::new(&cis),
        Err(Error::MissingField("namespace"))
    ));
}

#[test]
fn endpoint_names_the_frontend_service_and_port() {
    let mut cis = cis("demo");
    assert_eq!(
        Owner::new(&cis).expect("owner").endpoint(),
        "http://demo-frontend.ns1.svc:8080"
    );
    cis.spec.frontend.port = 80;
    assert_eq!(
        Owner::new(&cis).expect("owner").endpoint(),
        "http://demo-frontend.ns1.svc:80"
    );
}

#[test]
fn user_env_replaces_the_operators_of_the_same_name() {
    let var = |name: &str, value: &str| EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        ..EnvVar::default()
    };
    let merged = merge_env(
        vec![var("CODED_THREADS", "op"), var("KEEP", "op")],
        &[var("A", "user"), var("CODED_THREADS", "user")],
    );
    assert_eq!(
        merged,
        [
            var("KEEP", "op"),
            var("A", "user"),
            var("CODED_THREADS", "user")
        ]
    );
    assert_eq!(merge_env(vec![var("X", "op")], &[]), [var("X", "op")]);
}

#[test]
fn sidecar_probes_use_the_v2_health_endpoints() {
    let c = sidecar_container("img", vec![], None, &PodOverrides::default());
    let path = |p: &Option<Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(
        path(&c.readiness_probe).as_deref(),
        Some("/v2/health/ready")
    );
    assert_eq!(path(&c.liveness_probe).as_deref(), Some("/v2/health/live"));
    let ports = c.ports.as_ref().expect("ports");
    assert_eq!(ports[0].container_port, 8080);
    assert_eq!(ports[0].name.as_deref(), Some("http"));
    // The probes stay on HTTP; gRPC has a port of its own.
    assert_eq!(ports[1].container_port, 8001);
    assert_eq!(ports[1].name.as_deref(), Some("grpc"));
    assert_eq!(c.command, Some(vec!["coded-sidecar".to_string()]));
    let sc = c.security_context.expect("hardened");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
}
