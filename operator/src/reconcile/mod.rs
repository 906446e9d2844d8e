//! The controller: `reconcile` turns a `CodedInferenceService` into its
//! children and status, `error_policy` decides when to retry, [`run`] wires
//! them into a kube-runtime `Controller` that also watches the children.

pub mod apply;
pub mod backoff;
pub mod children;
pub mod prune;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Mutex;
use tracing::{debug, info, instrument, warn};

use self::backoff::Backoff;
use self::children::{Children, MANAGED_BY_LABEL, Owner, Settings, service_monitor};
use crate::crd::{CodedInferenceService, CodedInferenceServiceStatus};
use crate::latency::LatencyReader;
use crate::metrics::Metrics;
use crate::status::{self, Observed};
use crate::{Error, FIELD_MANAGER, Result, events};

/// Resync period of a resource once it is ready; changes of its children wake it sooner.
const RESYNC: Duration = Duration::from_secs(300);
/// Resync period of a resource with an SLO: its latency is read again.
const RESYNC_SLO: Duration = Duration::from_secs(30);
/// Resync period while instances are still starting.
const RESYNC_NOT_READY: Duration = Duration::from_secs(30);
/// How long the answer to "is the ServiceMonitor CRD served?" is trusted.
const DISCOVERY_TTL: Duration = Duration::from_secs(300);

/// What `reconcile` needs: a client, the event recorder, metrics and settings.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    pub latency: LatencyReader,
    backoff: Backoff,
    service_monitor_served: Mutex<Option<(Instant, bool)>>,
}

impl Context {
    pub fn new(
        client: Client,
        reporter: Reporter,
        metrics: Arc<Metrics>,
        settings: Settings,
        latency: LatencyReader,
    ) -> Self {
        Self {
            latency,
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            settings,
            backoff: Backoff::default(),
            service_monitor_served: Mutex::new(None),
        }
    }

    /// Whether `monitoring.coreos.com/v1` serves ServiceMonitors, cached for a while.
    async fn service_monitor_served(&self) -> Result<bool> {
        let mut cached = self.service_monitor_served.lock().await;
        if let Some((at, served)) = *cached
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(served);
        }
        let group_version = format!("{}/{}", service_monitor::GROUP, service_monitor::VERSION);
        let served = match self.client.list_api_group_resources(&group_version).await {
            Ok(list) => list
                .resources
                .iter()
                .any(|r| r.name == service_monitor::PLURAL),
            // An unserved group is a plain-text 404 with no Status reason, which
            // `is_not_found` does not recognise: go by the code.
            Err(kube::Error::Api(status)) if status.code == 404 => false,
            Err(e) => return Err(e.into()),
        };
        *cached = Some((Instant::now(), served));
        Ok(served)
    }
}

fn key(cis: &CodedInferenceService) -> String {
    format!("{}/{}", cis.namespace().unwrap_or_default(), cis.name_any())
}

/// Brings the children and status of one resource in line with its spec.
#[instrument(skip_all, fields(name = %cis.name_any(), namespace = cis.namespace().unwrap_or_default()))]
pub async fn reconcile(cis: Arc<CodedInferenceService>, ctx: Arc<Context>) -> Result<Action> {
    let timer = ctx.metrics.start_reconcile();
    let result = reconcile_inner(&cis, &ctx).await;
    timer.finish(result.is_ok());
    if result.is_ok() {
        ctx.backoff.reset(&key(&cis));
    }
    result
}

async fn reconcile_inner(cis: &CodedInferenceService, ctx: &Context) -> Result<Action> {
    let owner = Owner::new(cis)?;
    let ns = owner.namespace.as_str();
    let client = &ctx.client;

    if let Err(invalid) = cis.spec.check() {
        // The schema should have refused it; say so on the resource and wait for an edit.
        warn!(%invalid, "refusing invalid spec");
        let status = status::invalid(cis, &invalid.0, Timestamp::now());
        write_status(cis, ctx, &owner, status).await?;
        return Ok(Action::await_change());
    }

    let c = Children::build(&owner, &ctx.settings);
    let Applied {
        model,
        parities,
        frontend,
    } = apply_children(client, ns, &c).await?;
    // After the apply, so that with r lowered the frontends are already
    // rolling to the parities that stay (old ones see the others as down).
    prune::stale_parities(client, &owner).await?;
    if ctx.service_monitor_served().await? {
        apply::apply_dynamic(
            client,
            ns,
            &service_monitor::api_resource(),
            &c.service_monitor,
        )
        .await?;
    }

    let observed = Observed {
        model_ready: ready_replicas(&model),
        parity_ready: parities.iter().map(ready_replicas).sum(),
        frontend_ready: frontend
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
        // r = 1: a lost parity is already fewer than r parity instances.
        parities_down: if parities.len() > 1 {
            parities.iter().filter(|p| ready_replicas(p) == 0).count() as i32
        } else {
            0
        },
    };
    debug!(?observed, "children applied");
    let mut status = status::compute(cis, observed, owner.endpoint(), Timestamp::now());
    let url = ctx.settings.prometheus_url(cis);
    if let Some(slo) = &cis.spec.slo {
        let reading = match url {
            Some(url) => Some(ctx.latency.read(url, ns, &owner.name, slo.quantile).await),
            None => None,
        };
        debug!(?reading, "observed latency");
        status::set_slo(
            &mut status,
            cis,
            url,
            reading.as_ref(),
            &ctx.latency.window,
            Timestamp::now(),
        );
    }
    let ready = status::find(Some(&status), status::READY).is_some_and(|c| c.status == "True");
    write_status(cis, ctx, &owner, status).await?;
    Ok(Action::requeue(if !ready {
        RESYNC_NOT_READY
    } else if cis.spec.slo.is_some() && url.is_some() {
        RESYNC_SLO
    } else {
        RESYNC
    }))
}

/// The workloads as the API server stored them, status included.
pub struct Applied {
    pub model: StatefulSet,
    /// Parity l's StatefulSet at l.
    pub parities: Vec<StatefulSet>,
    pub frontend: Deployment,
}

/// Applies every child of one resource but the ServiceMonitor (which only
/// some clusters serve), in a reconcile's order; the scale benchmark calls
/// it too, to time the API server without the operator.
pub async fn apply_children(client: &Client, ns: &str, c: &Children) -> Result<Applied> {
    // Services first, so DNS names exist when the first pods ask for them.
    apply::apply(client, ns, &c.model_service).await?;
    let model = apply::apply(client, ns, &c.model).await?;
    let mut parities = Vec::with_capacity(c.parities.len());
    for p in &c.parities {
        apply::apply(client, ns, &p.service).await?;
        parities.push(apply::apply(client, ns, &p.stateful_set).await?);
    }
    apply::apply(client, ns, &c.frontend_service).await?;
    let frontend = apply::apply(client, ns, &c.frontend).await?;
    for pdb in &c.pdbs {
        apply::apply(client, ns, pdb).await?;
    }
    apply::apply(client, ns, &c.network_policy).await?;
    apply::apply(client, ns, &c.frontend_network_policy).await?;
    Ok(Applied {
        model,
        parities,
        frontend,
    })
}

fn ready_replicas(sts: &StatefulSet) -> i32 {
    sts.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

/// Applies the status, then records an Event for each transition.
async fn write_status(
    cis: &CodedInferenceService,
    ctx: &Context,
    owner: &Owner<'_>,
    status: CodedInferenceServiceStatus,
) -> Result<()> {
    let api: Api<CodedInferenceService> = Api::namespaced(ctx.client.clone(), &owner.namespace);
    let patch = json!({
        "apiVersion": CodedInferenceService::api_version(&()),
        "kind": CodedInferenceService::kind(&()),
        "status": status,
    });
    api.patch_status(&owner.name, &apply::params(), &Patch::Apply(&patch))
        .await?;
    let reference = cis.object_ref(&());
    for event in events::transitions(cis.status.as_ref(), &status) {
        // Events are for people; failing to record one must not fail the reconcile.
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            warn!(reason = %event.reason, error = %e, "could not record event");
        }
    }
    Ok(())
}

/// Retries a failed reconcile with per-resource exponential backoff.
pub fn error_policy(cis: Arc<CodedInferenceService>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.record_failure(error);
    let wait = ctx.backoff.fail(&key(&cis));
    warn!(name = %cis.name_any(), %error, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

/// How the controller schedules reconciles.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Reconciles running at once (0: unbounded). A bound keeps a burst of
    /// new resources from putting all their API calls in flight together,
    /// where the API server times them out (see docs/benchmarks.md,
    /// "Operator at scale").
    pub concurrency: u16,
    /// Triggers for one resource within this window make one reconcile:
    /// its children's status changes come in bursts as pods start.
    pub debounce: Duration,
}

/// Runs the controller until `shutdown` resolves; `namespace` limits it to one namespace.
pub async fn run<S>(
    client: Client,
    ctx: Arc<Context>,
    namespace: Option<String>,
    pace: Pace,
    shutdown: S,
) where
    S: std::future::Future<Output = ()> + Send + Sync + 'static,
{
    let namespace = namespace.as_deref();
    fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    // Only the children we made, not every Service in the cluster.
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}"));
    info!(
        namespace = namespace.unwrap_or("<all>"),
        "starting controller"
    );
    let controller = Controller::new(
        api::<CodedInferenceService>(&client, namespace),
        watcher::Config::default().any_semantic(),
    )
    .with_config(
        controller::Config::default()
            .concurrency(pace.concurrency)
            .debounce(pace.debounce),
    );
    ctx.metrics.watch_services(controller.store());
    controller
        .owns(api::<StatefulSet>(&client, namespace), owned.clone())
        .owns(api::<Deployment>(&client, namespace), owned.clone())
        .owns(api::<Service>(&client, namespace), owned.clone())
        .owns(
            api::<PodDisruptionBudget>(&client, namespace),
            owned.clone(),
        )
        .owns(api::<NetworkPolicy>(&client, namespace), owned)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => debug!(name = %obj.name, "reconciled"),
                Err(e) => debug!(error = %e, "reconcile not completed"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests;
