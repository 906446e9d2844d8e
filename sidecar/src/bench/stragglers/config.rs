//! The configurations `bench stragglers` compares, at equal resources:
//! per k, every one runs on k + 1 worker processes.

use serde::Serialize;

use crate::frontend::{DispatchMode, ReconstructPolicy};

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub name: String,
    /// Queries per coding group; the baselines of a k run k + 1 model
    /// instances, as many processes as coded's k models and one parity.
    pub k: usize,
    #[serde(skip)]
    pub dispatch: DispatchMode,
    #[serde(skip)]
    pub policy: ReconstructPolicy,
    pub models: usize,
    pub parities: usize,
    /// Whether the frontend's watcher reads worker latency from a
    /// Prometheus scraping the workers (else its own windows).
    pub prometheus: bool,
    /// The Berrut code's n (`--code berrut --n`): n base-model workers,
    /// no parity; None: ParM's code or a baseline.
    pub berrut_n: Option<usize>,
}

impl Config {
    /// Worker processes, the resources every configuration of a k shares.
    pub fn workers(&self) -> usize {
        self.models + self.parities
    }

    /// Whether `--only` chooses it: its name contains one of `only`, or
    /// `only` is empty.
    pub fn chosen(&self, only: &[String]) -> bool {
        only.is_empty() || only.iter().any(|o| self.name.contains(o.as_str()))
    }

    /// The paper's baseline, which tail gaps are compared with.
    pub fn is_baseline(&self) -> bool {
        self.dispatch == DispatchMode::LeastLoaded
    }
}

/// For each k: coded k (eager and deadline: k models and one parity), the
/// Berrut code with n = k + 1 base-model workers, and the baselines on
/// k + 1 model instances: all on k + 1 workers. With `prometheus`, also
/// coded eager with the Prometheus-driven watcher, for the first k.
pub fn configs(ks: &[usize], prometheus: bool) -> Vec<Config> {
    let mut all = Vec::new();
    for (i, &k) in ks.iter().enumerate() {
        let coded = |name: String, policy| Config {
            name,
            k,
            dispatch: DispatchMode::Coded,
            policy,
            models: k,
            parities: 1,
            prometheus: false,
            berrut_n: None,
        };
        let baseline = |what: &str, dispatch| Config {
            name: format!("{what}, {} workers", k + 1),
            k,
            dispatch,
            policy: ReconstructPolicy::Eager,
            models: k + 1,
            parities: 0,
            prometheus: false,
            berrut_n: None,
        };
        all.push(coded(
            format!("coded k={k} eager"),
            ReconstructPolicy::Eager,
        ));
        if prometheus && i == 0 {
            all.push(Config {
                prometheus: true,
                ..coded(
                    format!("coded k={k} eager, Prometheus watcher"),
                    ReconstructPolicy::Eager,
                )
            });
        }
        all.push(coded(
            format!("coded k={k} deadline"),
            ReconstructPolicy::Deadline,
        ));
        all.push(Config {
            name: format!("berrut k={k} n={}", k + 1),
            berrut_n: Some(k + 1),
            ..baseline("berrut", DispatchMode::Coded)
        });
        all.push(baseline("equal-resources", DispatchMode::LeastLoaded));
        all.push(baseline("hedged", DispatchMode::Hedged));
        all.push(baseline("replicated", DispatchMode::Replicated));
    }
    all
}
