//! `kubectl get` tables read by column, and a RuntimeClass made for a test.

use std::collections::BTreeMap;

use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Api, PostParams};
use serde_json::json;

use super::cluster::Cluster;

/// A row of `kubectl get`'s table: (column header, cell), in column order.
pub type Row = Vec<(String, String)>;

/// `kubectl get`'s table as rows keyed by name. A column starts where its
/// header starts; cells may be blank.
pub fn parse_table(table: &str) -> BTreeMap<String, Row> {
    let mut lines = table.lines();
    let header = lines.next().expect("a header");
    let mut starts: Vec<(usize, &str)> = Vec::new();
    let mut at = 0;
    for name in header.split("  ").map(str::trim).filter(|h| !h.is_empty()) {
        let start = at + header[at..].find(name).expect("header cell");
        starts.push((start, name));
        at = start + name.len();
    }
    lines
        .map(|line| {
            let row: Row = starts
                .iter()
                .enumerate()
                .map(|(i, (start, name))| {
                    let end = starts
                        .get(i + 1)
                        .map_or(line.len(), |next| next.0.min(line.len()));
                    let cell = line.get(*start..end).unwrap_or_default().trim();
                    (name.to_string(), cell.to_string())
                })
                .collect();
            (cell(&row, "NAME").to_string(), row)
        })
        .collect()
}

pub fn cell<'r>(row: &'r Row, column: &str) -> &'r str {
    row.iter()
        .find(|(c, _)| c == column)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no column {column} in {row:?}"))
}

/// A cluster-scoped RuntimeClass made for a test, removed after it (if it made it).
pub struct RuntimeClassGuard(Option<String>);

impl RuntimeClassGuard {
    pub async fn ensure(cluster: &Cluster, name: &str) -> Self {
        let api: Api<RuntimeClass> = Api::all(cluster.client.clone());
        if api.get_opt(name).await.expect("get runtimeclass").is_some() {
            return RuntimeClassGuard(None);
        }
        let rc: RuntimeClass = serde_json::from_value(json!({
            "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
            "metadata": {"name": name}, "handler": name,
        }))
        .expect("RuntimeClass");
        api.create(&PostParams::default(), &rc)
            .await
            .expect("creating the RuntimeClass");
        RuntimeClassGuard(Some(name.to_string()))
    }
}

impl Drop for RuntimeClassGuard {
    fn drop(&mut self) {
        if let Some(name) = &self.0 {
            let _ = std::process::Command::new("kubectl")
                .args([
                    "delete",
                    "runtimeclass",
                    name,
                    "--ignore-not-found",
                    "--wait=false",
                ])
                .output();
        }
    }
}
