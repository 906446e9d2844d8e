//! Reconcile passes against a scripted fake API server (see `fixtures`).

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;

use super::{Context, error_policy, reconcile};
use crate::Error;
use crate::crd::CodedInferenceServiceStatus;
use crate::fixtures::{
    Call, Pools, apply_children, apply_pools, cis, delete_pool, parity_set_metadata,
    timeout_after_1s,
};
use crate::status::{self, Observed};

fn observed(m: i32, p: i32, f: i32) -> Observed {
    Observed {
        model_ready: m,
        parity_ready: p,
        frontend_ready: f,
        parities_down: 0,
    }
}

fn condition(s: &CodedInferenceServiceStatus, t: &str) -> (String, String) {
    let c = status::find(Some(s), t).expect("condition");
    (c.status.clone(), c.reason.clone())
}

fn with(mut calls: Vec<Call>, more: impl IntoIterator<Item = Call>) -> Vec<Call> {
    calls.extend(more);
    calls
}

#[tokio::test]
async fn new_resource_gets_every_child_and_a_not_ready_status() {
    let (ctx, server) = Context::test();
    let script = with(
        apply_children(observed(0, 0, 0), false),
        [Call::Status(Box::new(|s| {
            assert_eq!(s.observed_generation, Some(1));
            assert_eq!(
                s.endpoint.as_deref(),
                Some("http://demo-frontend.ns1.svc:8080")
            );
            assert_eq!(
                condition(s, "Ready"),
                ("False".into(), "FrontendUnavailable".into())
            );
            assert_eq!(condition(s, "SLOMet").0, "Unknown");
        }))],
    );
    let server = server.run(script);
    let action = reconcile(Arc::new(cis("demo")), ctx.clone())
        .await
        .expect("reconcile");
    timeout_after_1s(server).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    let text = ctx.metrics.render();
    assert!(text.contains(r#"coded_operator_reconciliations_total{result="success"} 1"#));
}

#[tokio::test]
async fn becoming_ready_records_an_event() {
    let (ctx, server) = Context::test();
    let mut demo = cis("demo");
    demo.status = Some(status::compute(
        &demo,
        observed(0, 0, 0),
        "http://demo-frontend.ns1.svc:8080".into(),
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    let script = with(
        apply_children(observed(2, 1, 1), false),
        [
            Call::Status(Box::new(|s| {
                assert_eq!(
                    condition(s, "Ready"),
                    ("True".into(), "AllInstancesReady".into())
                );
                assert_eq!(condition(s, "Degraded").0, "False");
                assert_eq!((s.model_ready, s.parity_ready, s.frontend_ready), (2, 1, 1));
            })),
            Call::Event("Ready"),
        ],
    );
    let server = server.run(script);
    let action = reconcile(Arc::new(demo), ctx).await.expect("reconcile");
    timeout_after_1s(server).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
}

#[tokio::test]
async fn losing_an_instance_is_degraded_and_reported() {
    let (ctx, server) = Context::test();
    let mut demo = cis("demo");
    demo.status = Some(status::compute(
        &demo,
        observed(2, 1, 1),
        "e".into(),
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    let script = with(
        apply_children(observed(1, 1, 1), false),
        [
            Call::Status(Box::new(|s| {
                assert_eq!(condition(s, "Ready").0, "True");
                assert_eq!(
                    condition(s, "Degraded"),
                    ("True".into(), "ReducedRedundancy".into())
                );
            })),
            Call::Event("Degraded"),
        ],
    );
    let server = server.run(script);
    reconcile(Arc::new(demo), ctx).await.expect("reconcile");
    timeout_after_1s(server).await;
}

#[tokio::test]
async fn service_monitor_is_applied_where_its_crd_is_served() {
    let (ctx, server) = Context::test();
    let script = with(
        apply_children(observed(0, 0, 0), true),
        [Call::Status(Box::new(|_| {}))],
    );
    let server = server.run(script);
    reconcile(Arc::new(cis("demo")), ctx)
        .await
        .expect("reconcile");
    timeout_after_1s(server).await;
}

#[tokio::test]
async fn steady_state_reapplies_the_same_children_quietly() {
    let (ctx, server) = Context::test();
    let mut demo = cis("demo");
    demo.status = Some(status::compute(
        &demo,
        observed(2, 1, 1),
        "e".into(),
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    // Second pass: discovery is cached, nothing changed, so no Event.
    let second: Vec<Call> = apply_children(observed(2, 1, 1), false)
        .into_iter()
        .filter(|c| !matches!(c, Call::Discovery { .. }))
        .collect();
    let script = with(
        with(
            apply_children(observed(2, 1, 1), false),
            [Call::Status(Box::new(|_| {}))],
        ),
        with(second, [Call::Status(Box::new(|_| {}))]),
    );
    let server = server.run(script);
    let demo = Arc::new(demo);
    reconcile(demo.clone(), ctx.clone())
        .await
        .expect("first pass");
    reconcile(demo, ctx).await.expect("second pass");
    timeout_after_1s(server).await;
}

#[tokio::test]
async fn invalid_spec_is_refused_with_a_condition_and_no_children() {
    let (ctx, server) = Context::test();
    let mut demo = cis("demo");
    demo.spec.coding.r = 3; // r > k: the schema would have refused it
    let script = vec![
        Call::Status(Box::new(|s| {
            assert_eq!(
                condition(s, "Ready"),
                ("False".into(), "InvalidSpec".into())
            );
            let ready = status::find(Some(s), "Ready").expect("ready");
            assert!(
                ready
                    .message
                    .starts_with("coding.r must be between 1 and coding.k")
            );
        })),
        Call::Event("InvalidSpec"),
    ];
    let server = server.run(script);
    let action = reconcile(Arc::new(demo), ctx)
        .await
        .expect("handled, not an error");
    timeout_after_1s(server).await;
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn api_failures_back_off_and_are_counted() {
    let (ctx, server) = Context::test();
    let demo = Arc::new(cis("demo"));
    let fail = || Call::ApplyFails {
        path: "v1/namespaces/ns1/services/demo-model".into(),
        code: 500,
    };
    let server = server.run(vec![fail(), fail()]);
    let mut waits = Vec::new();
    for _ in 0..2 {
        let err = reconcile(demo.clone(), ctx.clone())
            .await
            .expect_err("apply failed");
        assert!(matches!(err, Error::Kube(_)), "{err}");
        waits.push(error_policy(demo.clone(), &err, ctx.clone()));
    }
    timeout_after_1s(server).await;
    assert_eq!(
        waits,
        [
            Action::requeue(Duration::from_secs(5)),
            Action::requeue(Duration::from_secs(10))
        ]
    );
    let text = ctx.metrics.render();
    assert!(
        text.contains(r#"coded_operator_reconcile_errors_total{error="kube"} 2"#),
        "{text}"
    );
    assert!(text.contains(r#"coded_operator_reconciliations_total{result="error"} 2"#));
}

#[tokio::test]
async fn resource_without_namespace_fails_without_calls() {
    let (ctx, server) = Context::test();
    let mut demo = cis("demo");
    demo.metadata.namespace = None;
    let server = server.run(vec![]);
    let err = reconcile(Arc::new(demo), ctx)
        .await
        .expect_err("no namespace");
    timeout_after_1s(server).await;
    assert!(matches!(err, Error::MissingField("namespace")));
}

fn demo_r(r: i32) -> crate::crd::CodedInferenceService {
    let mut demo = cis("demo");
    demo.spec.coding.k = 4;
    demo.spec.coding.r = r;
    demo
}

#[tokio::test]
async fn r_two_applies_a_pool_per_parity_and_counts_them_all() {
    let (ctx, server) = Context::test();
    let pools = Pools {
        model: 4,
        parities: vec![1, 1],
        frontend: 1,
        // Both parities' sets are found, neither is beyond r.
        listed: vec![("demo-parity".into(), 0), ("demo-parity-1".into(), 1)],
    };
    let script = with(
        apply_pools(pools, false),
        [
            Call::Status(Box::new(|s| {
                assert_eq!(
                    condition(s, "Ready"),
                    ("True".into(), "AllInstancesReady".into())
                );
                assert_eq!(condition(s, "Degraded").0, "False");
                assert_eq!((s.model_ready, s.parity_ready, s.frontend_ready), (4, 2, 1));
            })),
            Call::Event("Ready"),
        ],
    );
    let server = server.run(script);
    reconcile(Arc::new(demo_r(2)), ctx)
        .await
        .expect("reconcile");
    timeout_after_1s(server).await;
}

#[tokio::test]
async fn a_parity_pool_with_no_ready_instance_is_reduced_redundancy() {
    let (ctx, server) = Context::test();
    let mut demo = demo_r(2);
    demo.spec.parity_model.replicas = Some(4);
    let pools = Pools {
        model: 4,
        parities: vec![2, 0],
        frontend: 1,
        listed: vec![],
    };
    let script = with(
        apply_pools(pools, false),
        [
            Call::Status(Box::new(|s| {
                assert_eq!(condition(s, "Ready").0, "True");
                assert_eq!(
                    condition(s, "Degraded"),
                    ("True".into(), "ReducedRedundancy".into())
                );
                assert_eq!(s.parity_ready, 2);
            })),
            Call::Event("Ready"),
            Call::Event("Degraded"),
        ],
    );
    let server = server.run(script);
    reconcile(Arc::new(demo), ctx).await.expect("reconcile");
    timeout_after_1s(server).await;
}

#[tokio::test]
async fn lowering_r_deletes_the_pools_of_the_parities_beyond_it() {
    let (ctx, server) = Context::test();
    // Was r = 3, now r = 1: parity 0's pool is applied as for r = 1, then
    // the list finds the three sets, and parities 1 and 2 go: PDB, Service,
    // StatefulSet each.
    let pools = Pools {
        model: 4,
        parities: vec![1],
        frontend: 1,
        listed: vec![
            ("demo-parity".into(), 0),
            ("demo-parity-1".into(), 1),
            ("demo-parity-2".into(), 2),
        ],
    };
    let mut script = apply_pools(pools, false);
    let discovery = script.pop().expect("discovery last");
    script.extend(delete_pool("demo-parity-1"));
    script.extend(delete_pool("demo-parity-2"));
    script.push(discovery);
    script.push(Call::Status(Box::new(|s| {
        assert_eq!(condition(s, "Ready").0, "True");
        assert_eq!(s.parity_ready, 1);
    })));
    script.push(Call::Event("Ready"));
    let server = server.run(script);
    reconcile(Arc::new(demo_r(1)), ctx)
        .await
        .expect("reconcile");
    timeout_after_1s(server).await;
}

#[tokio::test]
async fn pruning_leaves_sets_another_resource_controls() {
    let (ctx, server) = Context::test();
    let mut script = apply_children(observed(2, 1, 1), false);
    // A set with our labels but another owner (say, a resource of the same
    // name deleted and made again) is left alone.
    let Some(Call::ListMetadata { items, .. }) = script.get_mut(11) else {
        panic!("the list comes after the 11 applies");
    };
    items.push(parity_set_metadata("demo-parity-1", 1, "uid-someone-else"));
    script.extend([Call::Status(Box::new(|_| {})), Call::Event("Ready")]);
    let server = server.run(script);
    reconcile(Arc::new(cis("demo")), ctx)
        .await
        .expect("reconcile");
    timeout_after_1s(server).await;
}
