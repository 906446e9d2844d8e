//! Which model and parity instances exist. Either a fixed list of URLs
//! (`--model-endpoints`), or names (`--model-service`, e.g. a Kubernetes
//! headless Service `fashion-mlp-model.default.svc:8080`) whose addresses
//! are looked up again every `--resolve-interval-ms` with the system
//! resolver (so `resolv.conf` search domains apply): each address is an
//! instance. The frontend needs no access to the Kubernetes API, and a
//! change of replicas does not restart it.
//!
//! An address that appears becomes an instance that gets calls once its
//! first health probe succeeds (a pod's address is published before its
//! worker has loaded the model). An address that disappears leaves the
//! pool: no new calls go to it, the calls it has in flight finish (they
//! hold their instance), and its metric series are dropped. A lookup that
//! fails (the name does not exist yet, DNS hiccups) adds nothing and
//! removes nothing: instances that are really gone are marked down by
//! their failed probes meanwhile.
//!
//! What a lookup changes is computed by [`plan`], with no I/O, so that the
//! add/remove rules are unit-tested without a resolver.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::dispatch::Pool;
use super::instance::{Instance, InstanceSpec, Role};
use super::metrics::Metrics;
use crate::tls::ClientTrust;

/// One lookup's answer, to come.
pub type Lookup = Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>;

/// Looks a `host:port` name up; the system resolver in production, a fake
/// in tests.
pub type Resolver = Arc<dyn Fn(String) -> Lookup + Send + Sync>;

/// `getaddrinfo` through tokio: `/etc/hosts`, DNS with the search domains
/// of `resolv.conf`.
pub fn system_resolver() -> Resolver {
    Arc::new(|name: String| -> Lookup {
        Box::pin(async move { Ok(tokio::net::lookup_host(name).await?.collect()) })
    })
}

/// Where one role's instances come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Base URLs, as given.
    Fixed(Vec<String>),
    /// `host:port` names, each address of which is an instance.
    Service(Vec<String>),
}

/// The URLs one lookup found, and whether every name answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    pub urls: BTreeSet<String>,
    /// False when a name failed to resolve: then nothing is removed.
    pub complete: bool,
    /// The last lookup error, for logs.
    pub error: Option<String>,
    /// For https instances found behind a name: the name (its host part)
    /// that their certificate must show, by URL.
    pub verify_as: BTreeMap<String, String>,
}

impl Source {
    pub fn is_service(&self) -> bool {
        matches!(self, Source::Service(_))
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Source::Fixed(v) | Source::Service(v) => v.is_empty(),
        }
    }

    /// The instances' URLs now (http); each name's lookup is bounded by
    /// `timeout`.
    pub async fn find(&self, resolver: &Resolver, timeout: Duration) -> Found {
        self.find_as(resolver, timeout, false).await
    }

    /// [`Source::find`], with the addresses behind names as `https` URLs
    /// when `https`, each to be verified as the name it was found by.
    pub async fn find_as(&self, resolver: &Resolver, timeout: Duration, https: bool) -> Found {
        let names = match self {
            Source::Fixed(urls) => {
                return Found {
                    urls: urls.iter().cloned().collect(),
                    complete: true,
                    ..Found::default()
                };
            }
            Source::Service(names) => names,
        };
        let mut found = Found {
            complete: true,
            ..Found::default()
        };
        for name in names {
            match tokio::time::timeout(timeout, resolver(name.clone())).await {
                Ok(Ok(addrs)) => {
                    let host = name.rsplit_once(':').map_or(name.as_str(), |(h, _)| h);
                    for addr in addrs {
                        if https {
                            let url = format!("https://{addr}");
                            found.verify_as.insert(url.clone(), host.to_owned());
                            found.urls.insert(url);
                        } else {
                            found.urls.insert(url_of(addr));
                        }
                    }
                }
                Ok(Err(e)) => {
                    found.complete = false;
                    found.error = Some(format!("{name}: {e}"));
                }
                Err(_) => {
                    found.complete = false;
                    found.error = Some(format!("{name}: no answer within {timeout:?}"));
                }
            }
        }
        found
    }
}

/// The base URL of an instance at `addr` (`http://10.1.2.3:8080`,
/// `http://[fd00::3]:8080`): what Prometheus' `instance` label of a pod
/// scraped by address also says.
pub fn url_of(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// The name parity `index` is served under, given parity 0's: `<name>`
/// for parity 0 (so r = 1 is unchanged), `<name>-<index>` for the others,
/// so that a call of one parity sent to another's instance is refused
/// (404) rather than decoded wrongly.
pub fn parity_model_name(parity_model: &str, index: usize) -> String {
    match index {
        0 => parity_model.to_owned(),
        l => format!("{parity_model}-{l}"),
    }
}

/// Makes instances: a v2 client each, an id never reused, and their
/// metric series.
pub struct Factory {
    pub epoch: Instant,
    pub timeout: Duration,
    pub metrics: Arc<Metrics>,
    pub input_name: String,
    pub output_name: String,
    /// The model's name at model instances, and at parity instances.
    pub model: String,
    pub parity_model: String,
    /// Roots that https instances' certificates are checked against.
    pub trust: ClientTrust,
    /// Whether instances found behind names are called over https.
    pub https: bool,
    next_id: AtomicUsize,
}

impl Factory {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        epoch: Instant,
        timeout: Duration,
        metrics: Arc<Metrics>,
        input_name: String,
        output_name: String,
        model: String,
        parity_model: String,
    ) -> Self {
        Factory {
            epoch,
            timeout,
            metrics,
            input_name,
            output_name,
            model,
            parity_model,
            trust: ClientTrust::default(),
            https: false,
            next_id: AtomicUsize::new(0),
        }
    }

    /// Instances trust `trust`'s roots; discovered ones are called over
    /// https when `https`.
    pub fn with_tls(mut self, trust: ClientTrust, https: bool) -> Self {
        self.trust = trust;
        self.https = https;
        self
    }

    /// An instance of `role` at `url`; `parity` is the parity index a
    /// parity instance serves (0 for models). With `verify_as`, its
    /// certificate must name that host (see
    /// [`crate::protocol::client::Client::with_trust`]).
    pub fn make(
        &self,
        role: Role,
        parity: usize,
        url: &str,
        ready_until_probed: bool,
        verify_as: Option<&str>,
    ) -> anyhow::Result<Arc<Instance>> {
        let labels = [role.as_str(), url];
        let spec = InstanceSpec {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            role,
            parity,
            url: url.to_owned(),
            model: match role {
                Role::Model => self.model.clone(),
                Role::Parity => parity_model_name(&self.parity_model, parity),
            },
            input_name: self.input_name.clone(),
            output_name: self.output_name.clone(),
            duration: self.metrics.instance_duration.with_label_values(&labels),
            errors: self.metrics.instance_errors.with_label_values(&labels),
            ready_until_probed,
            trust: self.trust.clone(),
            verify_as: verify_as.map(str::to_owned),
        };
        Instance::new(spec, self.epoch, self.timeout)
            .map(Arc::new)
            .with_context(|| format!("instance {url}"))
    }
}

/// What a lookup changes: the instances that stay (in their order), the
/// URLs to add (sorted), the instances that leave.
#[derive(Default)]
pub struct Plan {
    pub kept: Vec<Arc<Instance>>,
    pub added: Vec<String>,
    pub removed: Vec<Arc<Instance>>,
}

/// Compares the current instances with what a lookup found. An incomplete
/// lookup only adds.
pub fn plan(current: &[Arc<Instance>], found: &Found) -> Plan {
    let mut plan = Plan::default();
    for inst in current {
        if found.urls.contains(&inst.url) || !found.complete {
            plan.kept.push(inst.clone());
        } else {
            plan.removed.push(inst.clone());
        }
    }
    plan.added = found
        .urls
        .iter()
        .filter(|u| !current.iter().any(|i| &i.url == *u))
        .cloned()
        .collect();
    plan
}

/// Applies a lookup to the pool's instances of `role` (of parity index
/// `parity` for parity instances) and returns the instances added and
/// removed. Removed ones lose their metric series.
pub fn apply(
    pool: &Pool,
    (role, parity): (Role, usize),
    found: &Found,
    factory: &Factory,
) -> (Vec<Arc<Instance>>, Vec<Arc<Instance>>) {
    let Plan {
        mut kept,
        added,
        removed,
    } = plan(&pool.instances_of(role, parity), found);
    if added.is_empty() && removed.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let mut new = Vec::with_capacity(added.len());
    for url in &added {
        let verify_as = found.verify_as.get(url).map(String::as_str);
        match factory.make(role, parity, url, false, verify_as) {
            Ok(inst) => new.push(inst),
            Err(e) => tracing::warn!(role = role.as_str(), "cannot add {url}: {e:#}"),
        }
    }
    kept.extend(new.iter().cloned());
    pool.set_instances_of(role, parity, kept);
    for inst in &new {
        tracing::info!(role = role.as_str(), instance = %inst.url, "instance appeared");
    }
    for inst in &removed {
        factory.metrics.forget_instance(role, &inst.url);
        tracing::info!(
            role = role.as_str(),
            instance = %inst.url,
            inflight = inst.inflight(),
            "instance left: no new calls, those in flight finish"
        );
    }
    (new, removed)
}

/// Looks `source` up once and applies what it finds; new instances are
/// probed at once, so that they get calls as soon as they are ready rather
/// than at the next probe round. Returns what the lookup found.
pub async fn refresh(
    pool: &Pool,
    role: (Role, usize),
    source: &Source,
    resolver: &Resolver,
    factory: &Factory,
    every: Duration,
) -> Found {
    let found = source
        .find_as(resolver, every.max(Duration::from_secs(1)), factory.https)
        .await;
    let (added, _) = apply(pool, role, &found, factory);
    for inst in added {
        tokio::spawn(async move {
            if tokio::time::timeout(Duration::from_secs(1), inst.probe())
                .await
                .is_err()
            {
                inst.probe_timed_out();
            }
        });
    }
    found
}

/// Looks `source` up every `every` until the pool is dropped.
pub async fn run(
    pool: std::sync::Weak<Pool>,
    role: (Role, usize),
    source: Source,
    every: Duration,
    resolver: Resolver,
    factory: Arc<Factory>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The caller did the first lookup.
    tick.tick().await;
    let mut failing = false;
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let found = refresh(&pool, role, &source, &resolver, &factory, every).await;
        drop(pool);
        match (&found.error, failing) {
            (Some(e), false) => tracing::warn!(
                role = role.0.as_str(),
                "cannot resolve instances (keeping those known, retrying every {every:?}): {e}"
            ),
            (None, true) => tracing::info!(role = role.0.as_str(), "instances resolve again"),
            _ => {}
        }
        failing = found.error.is_some();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use crate::frontend::instance::test_instance_at;

    fn found(urls: &[&str], complete: bool) -> Found {
        Found {
            urls: urls.iter().map(|u| u.to_string()).collect(),
            complete,
            ..Found::default()
        }
    }

    fn urls(v: &[Arc<Instance>]) -> Vec<&str> {
        v.iter().map(|i| i.url.as_str()).collect()
    }

    fn factory() -> Factory {
        Factory::new(
            Instant::now(),
            Duration::from_secs(1),
            Arc::new(Metrics::new("m", 2).expect("metrics")),
            "input".into(),
            "logits".into(),
            "m".into(),
            "m-parity".into(),
        )
    }

    /// A resolver answering from a table that the test changes.
    fn fake(table: Arc<Mutex<HashMap<String, Vec<SocketAddr>>>>) -> Resolver {
        Arc::new(move |name: String| -> Lookup {
            let answer = table.lock().expect("table").get(&name).cloned();
            Box::pin(async move {
                answer.ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no such name")
                })
            })
        })
    }

    #[test]
    fn a_lookup_keeps_adds_and_removes() {
        let a = test_instance_at(0, Role::Model, "http://10.0.0.1:8080".into());
        let b = test_instance_at(1, Role::Model, "http://10.0.0.2:8080".into());
        let p = plan(
            &[a.clone(), b.clone()],
            &found(&["http://10.0.0.3:8080", "http://10.0.0.1:8080"], true),
        );
        assert_eq!(urls(&p.kept), vec!["http://10.0.0.1:8080"]);
        assert_eq!(p.added, vec!["http://10.0.0.3:8080"]);
        assert_eq!(urls(&p.removed), vec!["http://10.0.0.2:8080"]);
        // Nothing changed: nothing to do.
        let p = plan(
            &[a.clone(), b.clone()],
            &found(&["http://10.0.0.2:8080", "http://10.0.0.1:8080"], true),
        );
        assert_eq!(p.kept.len(), 2);
        assert!(p.added.is_empty() && p.removed.is_empty());
    }

    #[test]
    fn a_failed_lookup_removes_nothing() {
        let a = test_instance_at(0, Role::Model, "http://10.0.0.1:8080".into());
        let p = plan(&[a], &found(&["http://10.0.0.3:8080"], false));
        assert_eq!(urls(&p.kept), vec!["http://10.0.0.1:8080"]);
        assert_eq!(p.added, vec!["http://10.0.0.3:8080"]);
        assert!(p.removed.is_empty());
    }

    #[tokio::test]
    async fn names_resolve_to_instances_that_come_and_go() {
        let table = Arc::new(Mutex::new(HashMap::new()));
        let resolver = fake(table.clone());
        let source = Source::Service(vec!["svc:8080".into()]);
        let f = factory();
        let pool = Pool::new(Vec::new(), Vec::new());
        let every = Duration::from_secs(1);

        // Not resolvable yet (pods starting): no instances, not fatal.
        let nothing = source.find(&resolver, every).await;
        assert!(!nothing.complete && nothing.error.is_some());
        apply(&pool, (Role::Model, 0), &nothing, &f);
        assert_eq!(pool.models().len(), 0);

        let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
        table.lock().unwrap().insert(
            "svc:8080".into(),
            vec![addr("10.0.0.1:8080"), addr("[fd00::2]:8080")],
        );
        let (added, removed) = apply(
            &pool,
            (Role::Model, 0),
            &source.find(&resolver, every).await,
            &f,
        );
        assert_eq!(added.len(), 2);
        assert!(removed.is_empty());
        assert_eq!(
            urls(&pool.models()),
            vec!["http://10.0.0.1:8080", "http://[fd00::2]:8080"]
        );
        // Discovered instances get calls once a probe says they are ready.
        assert!(pool.models().iter().all(|i| !i.probe_ok()));
        assert_eq!(pool.up(Role::Model), 0);
        let first_ids: Vec<usize> = pool.models().iter().map(|i| i.id).collect();

        // A call in flight on the instance that is about to leave.
        let leaving = pool.models()[0].clone();
        let call = leaving.hold_call(std::time::Instant::now());
        table.lock().unwrap().insert(
            "svc:8080".into(),
            vec![addr("[fd00::2]:8080"), addr("10.0.0.3:8080")],
        );
        let (added, removed) = apply(
            &pool,
            (Role::Model, 0),
            &source.find(&resolver, every).await,
            &f,
        );
        assert_eq!(urls(&added), vec!["http://10.0.0.3:8080"]);
        assert_eq!(urls(&removed), vec!["http://10.0.0.1:8080"]);
        assert_eq!(
            urls(&pool.models()),
            vec!["http://[fd00::2]:8080", "http://10.0.0.3:8080"]
        );
        // No new calls go to it; the one in flight is still counted there.
        assert!(
            pool.pick(Role::Model, 4, &[])
                .iter()
                .all(|i| i.url != "http://10.0.0.1:8080")
        );
        assert_eq!(leaving.inflight(), 1);
        drop(call);
        assert_eq!(leaving.inflight(), 0);
        // Ids are never reused.
        let new_id = pool.models()[1].id;
        assert!(!first_ids.contains(&new_id), "{first_ids:?} {new_id}");

        // The name stops resolving: the known instances stay.
        table.lock().unwrap().clear();
        apply(
            &pool,
            (Role::Model, 0),
            &source.find(&resolver, every).await,
            &f,
        );
        assert_eq!(pool.models().len(), 2);
    }

    #[test]
    fn removed_instances_lose_their_metric_series() {
        let f = factory();
        let pool = Pool::new(Vec::new(), Vec::new());
        let series = |f: &Factory| {
            crate::http::render(&f.metrics.registry)
                .lines()
                .filter(|l| l.starts_with("coded_frontend_instance_errors_total{"))
                .count()
        };
        for round in 0..50u16 {
            let url = format!("http://10.0.{}.{}:8080", round / 200, round % 200 + 1);
            let inst = apply(&pool, (Role::Model, 0), &found(&[url.as_str()], true), &f).0;
            assert_eq!(inst.len(), 1);
        }
        assert_eq!(pool.models().len(), 1);
        assert_eq!(series(&f), 1, "only the present instance has series");
    }

    #[test]
    fn fixed_lists_are_taken_as_given() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let source = Source::Fixed(vec!["http://a:1".into(), "http://b:2".into()]);
        let f = rt.block_on(source.find(&system_resolver(), Duration::from_secs(1)));
        assert!(f.complete);
        assert_eq!(f.urls.len(), 2);
    }
}
