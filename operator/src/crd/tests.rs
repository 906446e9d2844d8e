//! Tests of the CRD: its generated schema, the CEL rules and `check`.

use super::*;
use k8s_openapi::api::core::v1::{Volume, VolumeMount};
use kube::CustomResourceExt;
use serde_json::Value;

fn schema() -> Value {
    let crd = CodedInferenceService::crd();
    let version = &crd.spec.versions[0];
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema");
    serde_json::to_value(schema).expect("json")
}

fn rules_at(v: &Value) -> Vec<String> {
    v["x-kubernetes-validations"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| r["rule"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn crd_names_match_the_contract() {
    let crd = CodedInferenceService::crd();
    assert_eq!(crd.spec.group, "coded.dev");
    assert_eq!(crd.spec.names.kind, "CodedInferenceService");
    assert_eq!(crd.spec.names.plural, "codedinferenceservices");
    assert_eq!(crd.spec.names.short_names, Some(vec!["cis".to_string()]));
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.versions.len(), 1);
    assert_eq!(crd.spec.versions[0].name, "v1alpha1");
    let conditions = &schema()["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(
        conditions["x-kubernetes-list-map-keys"],
        serde_json::json!(["type"])
    );
    let sub = crd.spec.versions[0]
        .subresources
        .as_ref()
        .expect("subresources");
    assert!(sub.status.is_some(), "status is a subresource");
}

#[test]
fn printer_columns_are_the_documented_ones() {
    let crd = CodedInferenceService::crd();
    let cols = crd.spec.versions[0]
        .additional_printer_columns
        .as_ref()
        .expect("columns");
    let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "Ready",
            "K",
            "R",
            "Model ready",
            "Parity ready",
            "Endpoint",
            "p99",
            "Age"
        ]
    );
    let ready = &cols[0].json_path;
    assert!(ready.contains(r#"@.type=="Ready""#), "{ready}");
}

#[test]
fn cel_rules_are_in_the_generated_schema() {
    let s = schema();
    let spec = &s["properties"]["spec"];
    let coding = &spec["properties"]["coding"];
    let slo = &spec["properties"]["slo"];
    assert!(rules_at(coding).contains(&"self.k >= 2 && self.k <= 16".to_string()));
    assert!(rules_at(coding).contains(&"self.r >= 1 && self.r <= self.k".to_string()));
    let spec_rules = rules_at(spec);
    assert!(
        spec_rules
            .iter()
            .any(|r| r.contains("self.model.replicas >= self.coding.k"))
    );
    assert!(
        spec_rules
            .iter()
            .any(|r| r.contains("self.parityModel.replicas >= self.coding.r"))
    );
    assert!(rules_at(slo).iter().any(|r| r.contains("self.quantile")));
    let frontend = &spec["properties"]["frontend"];
    assert!(rules_at(frontend).contains(&"self.port != self.grpcPort".to_string()));
    assert!(
        rules_at(&s)
            .iter()
            .any(|r| r.contains("self.metadata.name"))
    );
    // Every rule carries a message a user can act on.
    for at in [coding, spec, slo, frontend, &s] {
        for rule in at["x-kubernetes-validations"].as_array().expect("rules") {
            let message = rule["message"].as_str().unwrap_or_default();
            assert!(message.len() > 20, "rule {rule} needs a message");
        }
    }
}

#[test]
fn enums_defaults_and_ranges_are_in_the_schema() {
    let s = schema();
    let spec = &s["properties"]["spec"]["properties"];
    let coding = &spec["coding"];
    assert_eq!(
        coding["properties"]["encoder"]["enum"],
        serde_json::json!(["sum", "concat"])
    );
    assert_eq!(
        coding["properties"]["decoder"]["enum"],
        serde_json::json!(["subtract"])
    );
    assert_eq!(
        coding["properties"]["reconstructPolicy"]["enum"],
        serde_json::json!(["eager", "deadline"])
    );
    assert_eq!(coding["properties"]["k"]["default"], 2);
    assert_eq!(coding["properties"]["r"]["default"], 1);
    // The whole block defaults, so CEL rules can read self.coding.k when it is omitted.
    assert_eq!(coding["default"]["k"], 2);
    assert_eq!(
        spec["frontend"]["properties"]["port"]["maximum"].as_f64(),
        Some(65535.0)
    );
    assert_eq!(
        spec["model"]["properties"]["replicas"]["minimum"].as_f64(),
        Some(1.0)
    );
    assert!(spec["model"]["properties"]["uri"]["pattern"].is_string());
    assert!(spec["slo"]["properties"]["latencyTarget"]["pattern"].is_string());
    let required = s["properties"]["spec"]["required"]
        .as_array()
        .expect("required");
    assert!(required.contains(&"model".into()) && required.contains(&"parityModel".into()));
}

fn minimal() -> CodedInferenceServiceSpec {
    serde_json::from_value(serde_json::json!({
        "model": {"uri": "file:///models/mlp"},
        "parityModel": {"uri": "file:///models/mlp-parity-k2"},
    }))
    .expect("minimal spec")
}

#[test]
fn omitted_fields_take_their_defaults() {
    let spec = minimal();
    assert_eq!(spec.coding, CodingSpec::default());
    assert_eq!((spec.coding.k, spec.coding.r), (2, 1));
    assert_eq!(spec.model_replicas(), 2, "model replicas default to k");
    assert_eq!(spec.parity_replicas(), 1, "parity replicas default to r");
    assert_eq!(spec.frontend.port, 8080);
    assert_eq!(spec.frontend.grpc_port, 8001);
    assert!(spec.check().is_ok());
}

#[test]
fn check_repeats_the_cel_rules() {
    let mut spec = minimal();
    spec.coding.k = 1;
    assert!(spec.check().unwrap_err().0.starts_with("coding.k"));
    let mut spec = minimal();
    spec.coding.r = 3;
    assert!(spec.check().unwrap_err().0.starts_with("coding.r"));
    let mut spec = minimal();
    spec.coding.k = 4;
    spec.model.replicas = Some(3);
    assert!(spec.check().unwrap_err().0.starts_with("model.replicas"));
    let mut spec = minimal();
    spec.coding.r = 2;
    spec.parity_model.replicas = Some(1);
    assert!(
        spec.check()
            .unwrap_err()
            .0
            .starts_with("parityModel.replicas")
    );
    let mut spec = minimal();
    spec.slo = Some(SloSpec {
        latency_target: "50ms".into(),
        quantile: 1.0,
    });
    assert!(spec.check().unwrap_err().0.starts_with("slo.quantile"));
    let mut spec = minimal();
    spec.frontend.port = 8001;
    assert!(
        spec.check()
            .unwrap_err()
            .0
            .starts_with("frontend.port and frontend.grpcPort")
    );
}

/// The API server's structural-schema rules that a Kubernetes type
/// could break: every node has a type (or is int-or-string or keeps
/// unknown fields), nothing is a `$ref`, and logical junctors carry no
/// types, defaults or descriptions.
fn structural_problems(v: &Value, path: &str, in_junctor: bool, out: &mut Vec<String>) {
    let Some(o) = v.as_object() else {
        return;
    };
    if o.contains_key("$ref") || o.contains_key("definitions") || o.contains_key("$defs") {
        out.push(format!("{path}: reference"));
    }
    let special = o.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        || o.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if in_junctor {
        for key in [
            "type",
            "default",
            "description",
            "additionalProperties",
            "nullable",
        ] {
            if o.contains_key(key) {
                out.push(format!("{path}: {key} inside a junctor"));
            }
        }
    } else if !o.contains_key("type") && !special {
        out.push(format!("{path}: no type"));
    }
    if o.contains_key("properties") && !in_junctor && o["type"] != "object" {
        out.push(format!("{path}: properties on a non-object"));
    }
    for (name, sub) in o
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        structural_problems(sub, &format!("{path}.{name}"), in_junctor, out);
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub) = o.get(key).filter(|s| s.is_object()) {
            structural_problems(sub, &format!("{path}.{key}"), in_junctor, out);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        for (i, sub) in o
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            structural_problems(sub, &format!("{path}.{key}[{i}]"), true, out);
        }
    }
}

#[test]
fn the_schema_is_structural_with_the_pod_types_inside() {
    let s = schema();
    let mut problems = Vec::new();
    structural_problems(&s, "", false, &mut problems);
    assert_eq!(problems, Vec::<String>::new());
    // Kubernetes' own types, as the API server knows them: Quantity is
    // int-or-string, a volume's sources are objects.
    let spec = &s["properties"]["spec"]["properties"];
    let volume = &spec["model"]["properties"]["volumes"]["items"];
    assert_eq!(volume["properties"]["configMap"]["type"], "object");
    assert_eq!(
        volume["properties"]["emptyDir"]["properties"]["sizeLimit"]["x-kubernetes-int-or-string"],
        true
    );
    assert!(
        volume["required"]
            .as_array()
            .expect("required")
            .contains(&"name".into())
    );
}

#[test]
fn the_crd_fits_in_kubectl_applys_annotation() {
    // Client-side `kubectl apply` keeps the whole object in an annotation
    // of at most 256 KiB.
    let json = serde_json::to_string(&CodedInferenceService::crd()).expect("json");
    assert!(json.len() < 200 * 1024, "{} bytes", json.len());
}

#[test]
fn pod_settings_are_in_every_pool_with_descriptions() {
    let s = schema();
    let spec = &s["properties"]["spec"]["properties"];
    for pool in ["model", "parityModel", "frontend"] {
        let props = &spec[pool]["properties"];
        for field in [
            "env",
            "envFrom",
            "volumes",
            "volumeMounts",
            "serviceAccountName",
            "imagePullSecrets",
            "imagePullPolicy",
            "terminationGracePeriodSeconds",
            "drainSeconds",
        ] {
            let description = props[field]["description"].as_str().unwrap_or_default();
            assert!(description.len() > 20, "{pool}.{field} needs a description");
        }
        assert_eq!(
            props["imagePullPolicy"]["enum"],
            serde_json::json!(["Always", "IfNotPresent", "Never"])
        );
        assert_eq!(props["drainSeconds"]["minimum"].as_f64(), Some(0.0));
        assert_eq!(props["volumes"]["maxItems"], 64);
        assert_eq!(props["volumes"]["type"], "array");
        // Descriptions inside Kubernetes' types are left to `kubectl explain pod`.
        assert!(props["volumes"]["items"].get("description").is_none());
        assert!(
            rules_at(&spec[pool])
                .iter()
                .any(|r| r.contains("self.terminationGracePeriodSeconds")),
            "{pool}: the grace rule"
        );
    }
    let scheduling = &spec["scheduling"]["properties"];
    assert_eq!(scheduling["affinity"]["type"], "object");
    assert_eq!(scheduling["topologySpreadConstraints"]["type"], "array");
    assert!(scheduling["affinity"]["description"].is_string());
}

#[test]
fn uri_pattern_admits_each_scheme() {
    let re = regex::Regex::new(URI_PATTERN).expect("pattern");
    for ok in [
        "/models/fashion-mlp",
        "file:///models/fashion-mlp",
        "pvc://models",
        "pvc://models/",
        "pvc://my-claim.v1/fashion/mlp",
        "http://models.example/fashion-mlp",
        "https://models.example/fashion-mlp",
        "s3://bucket/fashion-mlp",
        "gs://bucket/fashion-mlp",
        "az://container/fashion-mlp",
    ] {
        assert!(re.is_match(ok), "{ok}");
        assert!(ModelSource::parse(ok).is_some(), "{ok}");
    }
    for bad in [
        "models/fashion-mlp",
        "file://models/fashion-mlp",
        "pvc://",
        "pvc://Upper/x",
        "pvc://-claim/x",
        "ftp://host/x",
        "/models/with space",
        "s3://",
    ] {
        assert!(!re.is_match(bad), "{bad}");
    }
}

#[test]
fn model_sources_and_their_paths_in_the_pod() {
    let path = |uri| ModelSource::parse(uri).map(|s| s.model_path());
    assert_eq!(path("/models/a"), Some("/models/a".into()));
    assert_eq!(path("file:///models/a"), Some("/models/a".into()));
    assert_eq!(path("pvc://claim/a/b"), Some("/mnt/models/a/b".into()));
    assert_eq!(path("pvc://claim"), Some("/mnt/models".into()));
    assert_eq!(path("https://host/a"), Some("/mnt/models".into()));
    assert_eq!(
        ModelSource::parse("pvc://claim/a/b/"),
        Some(ModelSource::Pvc {
            claim: "claim",
            path: "a/b"
        })
    );
    assert_eq!(
        ModelSource::parse("gs://b/m"),
        Some(ModelSource::Remote("gs://b/m"))
    );
    assert_eq!(ModelSource::parse("models/a"), None);
    assert_eq!(ModelSource::parse("file://host/a"), None);
    assert_eq!(ModelSource::parse("pvc:///a"), None);
}

/// The CEL rules' messages for a whole resource, as the API server would
/// report them (kube's client-side evaluator of the same rules).
fn cel_errors(name: &str, spec: &CodedInferenceServiceSpec) -> Vec<String> {
    let object = serde_json::json!({
        "apiVersion": "coded.dev/v1alpha1",
        "kind": "CodedInferenceService",
        "metadata": {"name": name},
        "spec": spec,
    });
    match kube::core::cel::Validator::new().validate(&schema(), &object, None) {
        Ok(()) => vec![],
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

fn with_code(k: i32, r: i32) -> CodedInferenceServiceSpec {
    let mut spec = minimal();
    spec.coding.k = k;
    spec.coding.r = r;
    spec
}

#[test]
fn r_from_one_to_four_and_at_most_k_is_served() {
    for (k, r) in [(2, 1), (2, 2), (4, 2), (4, 4), (16, 4)] {
        let spec = with_code(k, r);
        assert_eq!(spec.check(), Ok(()), "k {k} r {r}");
        assert_eq!(
            cel_errors("demo", &spec),
            Vec::<String>::new(),
            "k {k} r {r}"
        );
    }
    // Above k: the schema and check give the same message.
    let spec = with_code(2, 3);
    let refused = spec.check().unwrap_err().0;
    assert!(refused.starts_with("coding.r must be between 1 and coding.k"));
    assert!(
        cel_errors("demo", &spec)
            .iter()
            .any(|e| e.contains(&refused))
    );
    // Above 4, even with k larger.
    let spec = with_code(8, 5);
    let refused = spec.check().unwrap_err().0;
    assert!(
        refused.starts_with("coding.r must be at most 4"),
        "{refused}"
    );
    let errors = cel_errors("demo", &spec);
    assert!(errors.iter().any(|e| e.contains(&refused)), "{errors:?}");
    assert!(
        !errors.iter().any(|e| e.contains("between 1 and coding.k")),
        "{errors:?}"
    );
}

#[test]
fn concat_has_one_parity_only() {
    let mut spec = with_code(4, 2);
    spec.coding.encoder = Encoder::Concat;
    let refused = spec.check().unwrap_err().0;
    assert!(refused.starts_with("coding.encoder concat has one parity"));
    assert!(
        cel_errors("demo", &spec)
            .iter()
            .any(|e| e.contains(&refused))
    );
    spec.coding.r = 1;
    assert_eq!(spec.check(), Ok(()));
    assert_eq!(cel_errors("demo", &spec), Vec::<String>::new());
}

#[test]
fn names_are_two_characters_shorter_with_r_two_or_more() {
    let long = "a".repeat(MAX_NAME_LEN);
    let shorter = "a".repeat(MAX_NAME_LEN_R);
    // r = 1 keeps the old limit: no existing resource becomes invalid.
    assert_eq!(cel_errors(&long, &with_code(4, 1)), Vec::<String>::new());
    let errors = cel_errors(&long, &with_code(4, 2));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("metadata.name must be at most 43 characters when coding.r")),
        "{errors:?}"
    );
    assert_eq!(cel_errors(&shorter, &with_code(4, 4)), Vec::<String>::new());
    // `<name>-parity-<l>` then leaves the revision hash label its 63.
    assert_eq!(format!("{shorter}-parity-3").len(), 52);
}

#[test]
fn parity_instances_are_shared_out_among_the_parities() {
    let mut spec = with_code(4, 2);
    assert_eq!(spec.parity_replicas(), 2, "defaults to r");
    assert_eq!(
        (spec.parity_replicas_of(0), spec.parity_replicas_of(1)),
        (1, 1)
    );
    spec.parity_model.replicas = Some(5);
    assert_eq!(
        (spec.parity_replicas_of(0), spec.parity_replicas_of(1)),
        (3, 2)
    );
    let spec = with_code(4, 3);
    let each: Vec<i32> = (0..3).map(|l| spec.parity_replicas_of(l)).collect();
    assert_eq!(each, [1, 1, 1]);
    // r = 1: the one parity pool has them all, as before.
    let mut spec = minimal();
    spec.parity_model.replicas = Some(3);
    assert_eq!(spec.parity_replicas_of(0), 3);
}

#[test]
fn check_refuses_short_grace_and_clashes_with_the_operators_volumes() {
    let mut spec = minimal();
    spec.frontend.pod.drain_seconds = Some(10);
    spec.frontend.pod.termination_grace_period_seconds = Some(20);
    assert!(
        spec.check()
            .unwrap_err()
            .0
            .starts_with("terminationGracePeriodSeconds must be more than twice")
    );
    spec.frontend.pod.termination_grace_period_seconds = Some(21);
    assert_eq!(spec.check(), Ok(()));
    // Default drain (5 s).
    spec.model.pod.termination_grace_period_seconds = Some(10);
    assert!(spec.check().is_err());

    let mut spec = minimal();
    spec.parity_model.pod.volumes = vec![Volume {
        name: "model-cache".into(),
        ..Volume::default()
    }];
    assert!(
        spec.check()
            .unwrap_err()
            .0
            .starts_with("parityModel.volumes must not be named model-cache")
    );

    let mut spec = minimal();
    spec.model.pod.volume_mounts = vec![VolumeMount {
        name: "mine".into(),
        mount_path: "/mnt/models/".into(),
        ..VolumeMount::default()
    }];
    // A path URI leaves /mnt/models to the user...
    assert_eq!(spec.check(), Ok(()));
    // ...a pvc:// or remote one does not.
    spec.model.uri = "pvc://models/mlp".into();
    assert!(
        spec.check()
            .unwrap_err()
            .0
            .starts_with("model.volumeMounts must not mount mine at /mnt/models")
    );
    spec.model.uri = "https://host/mlp".into();
    assert!(spec.check().is_err());

    let mut spec = minimal();
    spec.model.uri = "file://relative".into();
    assert!(spec.check().unwrap_err().0.starts_with("model.uri must be"));
}
