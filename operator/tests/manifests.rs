//! The committed CRD, the Helm chart and the plain manifests in `deploy/`
//! are kept in step with the code: generated CRD, RBAC rules from
//! `rbac.rs`, settings the binary understands, metrics it exports.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use coded_operator::crd::{CRD_PATHS, CodedInferenceService, crd_yaml};
use coded_operator::metrics::Metrics;
use coded_operator::rbac;
use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_yaml::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn documents(path: &str) -> Vec<Value> {
    let text = read(path);
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML document"))
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// The rules between the `# BEGIN rules` and `# END rules` markers of a chart template.
fn chart_rules(template: &str) -> Vec<PolicyRule> {
    let text = read(&format!("charts/coded-serving/templates/{template}"));
    let block: String = text
        .lines()
        .skip_while(|l| !l.starts_with("# BEGIN rules"))
        .skip(1)
        .take_while(|l| !l.starts_with("# END rules"))
        .map(|l| format!("{l}\n"))
        .collect();
    serde_yaml::from_str(&block).expect("rules block")
}

#[test]
fn committed_crds_are_fresh() {
    let yaml = crd_yaml().expect("render");
    for path in CRD_PATHS {
        assert!(
            read(path) == yaml,
            "{path} is stale: run `cargo run -p coded-operator --bin crdgen -- --write`"
        );
    }
}

#[test]
fn chart_and_manifests_grant_exactly_the_rules_in_rbac_rs() {
    assert_eq!(chart_rules("clusterrole.yaml"), rbac::cluster_rules());
    assert_eq!(chart_rules("role.yaml"), rbac::leader_election_rules());
    let docs = documents("deploy/operator.yaml");
    let rules = |kind| -> Vec<PolicyRule> {
        serde_yaml::from_value(of_kind(&docs, kind)["rules"].clone()).expect("rules")
    };
    assert_eq!(rules("ClusterRole"), rbac::cluster_rules());
    assert_eq!(rules("Role"), rbac::leader_election_rules());
}

fn env_names(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"- name: ((?:CODED|POD)_[A-Z_]+)").expect("regex");
    re.captures_iter(text).map(|c| c[1].to_string()).collect()
}

#[test]
fn operator_settings_match_between_chart_manifests_and_binary() {
    let chart = env_names(&read("charts/coded-serving/templates/deployment.yaml"));
    let plain = env_names(&read("deploy/operator.yaml"));
    // The chart sets CODED_WATCH_NAMESPACE only when asked to.
    let optional = BTreeSet::from(["CODED_WATCH_NAMESPACE".to_string()]);
    assert_eq!(&chart - &optional, plain);
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_coded-operator"))
        .arg("--help")
        .output()
        .expect("run coded-operator --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for name in &chart {
        assert!(
            help.contains(&format!("[env: {name}")),
            "binary does not read {name}"
        );
    }
    // Same ports and probe paths on both.
    for text in [
        read("charts/coded-serving/templates/deployment.yaml"),
        read("deploy/operator.yaml"),
    ] {
        for needle in [
            "containerPort: 8080",
            "path: /healthz",
            "path: /readyz",
            "runAsNonRoot: true",
        ] {
            assert!(text.contains(needle), "{needle}");
        }
    }
}

#[test]
fn chart_references_only_values_that_exist() {
    let values: Value =
        serde_yaml::from_str(&read("charts/coded-serving/values.yaml")).expect("values");
    let re = regex::Regex::new(r"\.Values\.([A-Za-z0-9_.]+)").expect("regex");
    let dir = root().join("charts/coded-serving/templates");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("templates") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("template");
        for cap in re.captures_iter(&text) {
            let mut node = &values;
            for key in cap[1].split('.') {
                node = node.get(key).unwrap_or_else(|| {
                    panic!(
                        "{}: .Values.{} is not in values.yaml",
                        path.display(),
                        &cap[1]
                    )
                });
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "templates read values");
    let chart: Value =
        serde_yaml::from_str(&read("charts/coded-serving/Chart.yaml")).expect("Chart.yaml");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["name"], "coded-serving");
}

#[test]
fn monitoring_files_match_and_use_exported_metrics() {
    for file in ["prometheus-rules.yaml", "grafana-dashboard.json"] {
        assert_eq!(
            read(&format!("charts/coded-serving/files/{file}")),
            read(&format!("deploy/monitoring/{file}")),
            "{file}: chart and deploy/ copies differ"
        );
    }
    let dashboard = read("deploy/monitoring/grafana-dashboard.json");
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    let rules = read("deploy/monitoring/prometheus-rules.yaml");
    let parsed: Value = serde_yaml::from_str(&rules).expect("rules are YAML");
    assert!(
        parsed["groups"][0]["rules"]
            .as_sequence()
            .is_some_and(|r| !r.is_empty())
    );

    let metrics = Metrics::new();
    metrics.start_reconcile().finish(true);
    metrics.record_failure(&coded_operator::Error::MissingField("x"));
    // One resource with a status in the controller's cache, for the per-service gauges.
    let (store, mut writer) = kube::runtime::reflector::store::<CodedInferenceService>();
    let cis: CodedInferenceService = serde_json::from_value(serde_json::json!({
        "apiVersion": "coded.dev/v1alpha1", "kind": "CodedInferenceService",
        "metadata": {"name": "demo", "namespace": "ns1"},
        "spec": {"model": {"uri": "file:///m"}, "parityModel": {"uri": "file:///p"},
                 "slo": {"latencyTarget": "50ms"}},
        "status": {"modelReady": 2, "observedLatency": "42ms", "conditions": [{
            "type": "Ready", "status": "True", "reason": "AllInstancesReady",
            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"
        }]},
    }))
    .expect("resource");
    writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(cis));
    metrics.watch_services(store);
    let exported = metrics.render();
    let re = regex::Regex::new(r"coded_(operator|service)_[a-z_]+").expect("regex");
    for text in [&dashboard, &rules] {
        for m in re.find_iter(text) {
            assert!(
                exported.contains(m.as_str()),
                "{} is not exported",
                m.as_str()
            );
        }
    }
}
