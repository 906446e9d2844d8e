//! What the equal-resources cluster of a k serves at most: its k + 1 model
//! workers behind least-loaded dispatch, nothing straggling, and enough
//! closed-loop clients to keep every worker busy. `bench stragglers
//! --loads` are shares of it, so that every k, and every machine, runs at
//! the same utilisation of the resources the configurations share.

use std::time::Duration;

use super::load::closed_loop;
use super::request::{Caller, call, send};
use super::stragglers::{Plan, cluster_spec, configs};
use crate::local::{Cluster, ModelDirs};

/// Closed-loop clients per worker: enough to keep a queue at each.
const CLIENTS_PER_WORKER: usize = 8;
/// How long the clients run, after a warm-up.
const MEASURE_FOR: Duration = Duration::from_secs(3);

/// Requests per second the equal-resources cluster of `k` answers, on
/// fresh processes with the plan's workers (service time included).
pub async fn measure(
    dirs: &ModelDirs,
    (name, input, shape): (&str, &str, &[usize]),
    http: &reqwest::Client,
    k: usize,
    plan: &Plan,
) -> anyhow::Result<f64> {
    let config = configs(&[k], false)
        .into_iter()
        .find(|c| c.is_baseline())
        .ok_or_else(|| anyhow::anyhow!("no equal-resources configuration for k = {k}"))?;
    let seed = plan.seeds.first().copied().unwrap_or_default();
    let cluster = Cluster::start(dirs, name, &cluster_spec(&config, plan, seed)).await?;
    let request = call(&cluster.frontend_url, name, input, shape);
    let measured = async {
        for _ in 0..200 {
            send(http, &request).await?;
        }
        let clients = CLIENTS_PER_WORKER * config.workers();
        let caller = Caller::Http(std::sync::Arc::new(request));
        closed_loop(http, &caller, clients, MEASURE_FOR).await
    }
    .await;
    cluster.stop().await;
    let (rps, answered) = measured?;
    if answered == 0 {
        anyhow::bail!("the equal-resources cluster of k = {k} answered nothing in {MEASURE_FOR:?}");
    }
    eprintln!(
        "capacity of {} ({}): {rps:.0} req/s",
        config.name,
        plan.service_time.describe()
    );
    Ok(rps)
}
