//! The example resources in `deploy/examples/` against the generated schema:
//! good ones pass every rule, `bad/` ones break a CEL rule and `illegal/`
//! ones break the structural schema (types, enums, patterns, ranges), each
//! with the message its `# expect:` line names.
//!
//! CEL rules run client-side through kube's `cel` feature (the same rules the
//! API server evaluates); the structural checks are a small walker below.
//! The e2e tests apply the same files to a real API server.

use std::path::{Path, PathBuf};

use coded_operator::crd::CodedInferenceService;
use kube::CustomResourceExt;
use serde_json::Value;

fn examples(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no examples in {}", dir.display());
    files
}

fn load(path: &Path) -> (Value, Option<String>) {
    let text = std::fs::read_to_string(path).expect("readable example");
    let expect = text
        .lines()
        .find_map(|l| l.strip_prefix("# expect: "))
        .map(str::to_string);
    let value: Value = serde_yaml::from_str(&text).expect("YAML");
    (value, expect)
}

fn schema() -> Value {
    let crd = CodedInferenceService::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema");
    serde_json::to_value(schema).expect("json")
}

fn cel_errors(object: &Value) -> Vec<String> {
    match kube::core::cel::Validator::new().validate(&schema(), object, None) {
        Ok(()) => vec![],
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

/// Checks `value` against the structural parts of an OpenAPI v3 schema.
fn structural_errors(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() && schema["nullable"] == true {
        return;
    }
    if let Some(t) = schema["type"].as_str() {
        let ok = match t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            _ => true,
        };
        if !ok {
            errors.push(format!("{path}: {value} is not of type {t}"));
            return;
        }
    }
    if let Some(options) = schema["enum"].as_array()
        && !options.contains(value)
    {
        errors.push(format!(
            "{path}: {value} is not one of {}",
            Value::Array(options.clone())
        ));
    }
    if let (Some(pattern), Some(s)) = (schema["pattern"].as_str(), value.as_str())
        && !regex::Regex::new(pattern)
            .expect("valid pattern")
            .is_match(s)
    {
        errors.push(format!("{path}: {value} does not match {pattern}"));
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if schema["maxLength"].as_u64().is_some_and(|max| len > max) {
            errors.push(format!("{path}: longer than {}", schema["maxLength"]));
        }
        if schema["minLength"].as_u64().is_some_and(|min| len < min) {
            errors.push(format!("{path}: shorter than {}", schema["minLength"]));
        }
    }
    if let Some(n) = value.as_f64() {
        if schema["maximum"].as_f64().is_some_and(|max| n > max) {
            errors.push(format!(
                "{path}: {value} is greater than the maximum {}",
                schema["maximum"]
            ));
        }
        if schema["minimum"].as_f64().is_some_and(|min| n < min) {
            errors.push(format!(
                "{path}: {value} is less than the minimum {}",
                schema["minimum"]
            ));
        }
    }
    if let Some(object) = value.as_object() {
        for field in schema["required"].as_array().into_iter().flatten() {
            let field = field.as_str().unwrap_or_default();
            if !object.contains_key(field) {
                errors.push(format!("{path}.{field}: required"));
            }
        }
        let properties = schema["properties"].as_object();
        for (key, child) in object {
            let child_path = format!("{path}.{key}");
            if let Some(sub) = properties.and_then(|p| p.get(key)) {
                structural_errors(sub, child, &child_path, errors);
            } else if schema["additionalProperties"].is_object() {
                structural_errors(&schema["additionalProperties"], child, &child_path, errors);
            } else if properties.is_some() && schema["x-kubernetes-preserve-unknown-fields"] != true
            {
                // The API server prunes unknown fields silently; in an example they are a typo.
                errors.push(format!("{child_path}: unknown field"));
            }
        }
    }
    if let Some(items) = value.as_array() {
        for (i, item) in items.iter().enumerate() {
            structural_errors(&schema["items"], item, &format!("{path}[{i}]"), errors);
        }
    }
}

fn structural(value: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    // Paths start at the object's root, as the API server reports them.
    let schema = schema();
    for (key, child) in value.as_object().expect("object") {
        if let Some(sub) = schema["properties"].get(key) {
            structural_errors(sub, child, key, &mut errors);
        }
    }
    errors
}

#[test]
fn good_examples_pass_every_rule_and_parse() {
    for path in examples("") {
        let (value, _) = load(&path);
        let name = path.display();
        assert_eq!(structural(&value), Vec::<String>::new(), "{name}");
        assert_eq!(cel_errors(&value), Vec::<String>::new(), "{name}");
        let cis: CodedInferenceService = serde_json::from_value(value).expect("typed");
        assert_eq!(cis.spec.check(), Ok(()), "{name}");
    }
}

#[test]
fn bad_examples_break_a_cel_rule_with_its_message() {
    for path in examples("bad") {
        let (value, expect) = load(&path);
        let name = path.display();
        let expect = expect.unwrap_or_else(|| panic!("{name} has no # expect: line"));
        assert_eq!(
            structural(&value),
            Vec::<String>::new(),
            "{name} is structurally fine"
        );
        let errors = cel_errors(&value);
        assert!(
            errors.iter().any(|e| e.contains(&expect)),
            "{name}: expected {expect:?}, got {errors:?}"
        );
        // The reconciler's own check agrees on every rule about the spec.
        if !expect.starts_with("metadata.") {
            let cis: CodedInferenceService = serde_json::from_value(value).expect("typed");
            let refused = cis.spec.check().expect_err("check refuses it too");
            assert!(refused.0.starts_with(&expect), "{name}: {refused}");
        }
    }
}

#[test]
fn illegal_examples_break_the_structural_schema() {
    for path in examples("illegal") {
        let (value, expect) = load(&path);
        let name = path.display();
        let expect = expect.unwrap_or_else(|| panic!("{name} has no # expect: line"));
        let errors = structural(&value);
        assert!(
            errors.iter().any(|e| e.contains(&expect)),
            "{name}: expected {expect:?}, got {errors:?}"
        );
    }
}
