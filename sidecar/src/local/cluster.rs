//! One coded-serving topology as processes on loopback: model workers,
//! parity workers and a frontend in front of them. `local` runs one; the
//! benchmarks start and stop many.

use anyhow::Context;

use super::models::ModelDirs;
use super::process::{Child, stop_all};
use super::prometheus::{LocalPrometheus, PrometheusSpec, ScrapeTarget};
use crate::coding::EncoderKind;
use crate::frontend::{DispatchMode, ReconstructPolicy};
use crate::worker::ServiceTimeArgs;

#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub k: usize,
    pub encoder: EncoderKind,
    pub policy: ReconstructPolicy,
    /// `Coded`, or a baseline (then `parities` should be 0).
    pub dispatch: DispatchMode,
    pub models: usize,
    pub parities: usize,
    /// Address the frontend listens on; workers take free loopback ports
    /// (for gRPC too). The frontend's gRPC port follows its `--grpc-port`
    /// rule (8001, or a free port when `port` is 0) unless
    /// `frontend_args` gives one.
    pub host: String,
    pub port: u16,
    /// Injected delay of model worker 1, in ms (0: none).
    pub straggle_ms: u64,
    /// `RUST_LOG` of the children unless the environment sets one.
    pub log: String,
    /// A Prometheus scraping every child, which the frontend's watcher reads.
    pub prometheus: Option<PrometheusSpec>,
    /// More `frontend` flags (e.g. `--prometheus-window 10s`).
    pub frontend_args: Vec<String>,
    /// More `worker` flags, for model and parity workers alike (e.g.
    /// `--device cuda`).
    pub worker_args: Vec<String>,
    /// Workers as emulated accelerators (`--service-time-ms`); worker i
    /// draws with seed `service_time_seed + i`, so no two draw alike.
    pub service_time: ServiceTimeArgs,
    /// Network namespace and address of each worker (models, then
    /// parities), for `bench stragglers --mode network`; empty: loopback.
    pub worker_netns: Vec<(String, String)>,
}

pub struct Cluster {
    pub frontend_url: String,
    /// `host:port` of the frontend's gRPC service, unless turned off.
    pub frontend_grpc: Option<String>,
    pub model_urls: Vec<String>,
    pub parity_urls: Vec<String>,
    /// Every child, frontend last.
    pub children: Vec<Child>,
    pub prometheus: Option<LocalPrometheus>,
    /// Each worker's name and `coded-sidecar` arguments (models, then
    /// parities, as in `children`), so that a killed one can be started again.
    workers: Vec<(String, Vec<String>)>,
    /// The children's `RUST_LOG`.
    log: String,
    /// Workers in network namespaces cannot be restarted here.
    netns: bool,
}

impl Cluster {
    /// Starts workers, then the frontend. On failure the children already
    /// running are stopped.
    pub async fn start(
        dirs: &ModelDirs,
        name: &str,
        spec: &ClusterSpec,
    ) -> anyhow::Result<Cluster> {
        let mut children = Vec::new();
        let mut prometheus = None;
        let mut workers = Vec::new();
        match Self::start_into(
            dirs,
            name,
            spec,
            &mut children,
            &mut prometheus,
            &mut workers,
        )
        .await
        {
            Ok((frontend_url, model_urls, parity_urls)) => Ok(Cluster {
                frontend_grpc: children.last().and_then(|c| c.grpc.clone()),
                frontend_url,
                model_urls,
                parity_urls,
                children,
                prometheus,
                workers,
                log: spec.log.clone(),
                netns: !spec.worker_netns.is_empty(),
            }),
            Err(e) => {
                stop_all(children).await;
                if let Some(p) = prometheus {
                    p.stop().await;
                }
                Err(e)
            }
        }
    }

    async fn start_into(
        dirs: &ModelDirs,
        name: &str,
        spec: &ClusterSpec,
        children: &mut Vec<Child>,
        prometheus: &mut Option<LocalPrometheus>,
        workers: &mut Vec<(String, Vec<String>)>,
    ) -> anyhow::Result<(String, Vec<String>, Vec<String>)> {
        let worker = |dir: &std::path::Path, served: &str, delay_ms: u64, index: usize| {
            let service_time = ServiceTimeArgs {
                service_time_seed: spec
                    .service_time
                    .service_time_seed
                    .wrapping_add(index as u64),
                ..spec.service_time
            };
            [
                "worker",
                "--model",
                &dir.display().to_string(),
                "--model-name",
                served,
                "--port",
                "0",
                // Explicit, so that a CODED_GRPC_PORT in our environment
                // does not send every worker to one port.
                "--grpc-port",
                "0",
                "--admin",
                "--inject-delay-ms",
                &delay_ms.to_string(),
            ]
            .into_iter()
            .map(String::from)
            .chain(spec.worker_args.iter().cloned())
            .chain(service_time.to_args())
            .collect::<Vec<_>>()
        };
        // Inside its network namespace when it has one.
        let spawn = |index: usize, name: String, mut args: Vec<String>| async move {
            match spec.worker_netns.get(index) {
                Some((ns, addr)) => {
                    let exe =
                        std::env::current_exe().context("finding the coded-sidecar binary")?;
                    args.extend(["--host".to_owned(), addr.clone()]);
                    let mut wrapped = vec![
                        "netns".to_owned(),
                        "exec".to_owned(),
                        ns.clone(),
                        exe.display().to_string(),
                    ];
                    wrapped.extend(args);
                    Child::spawn_exe("ip".as_ref(), &name, &wrapped, &spec.log).await
                }
                None => Child::spawn(&name, &args, &spec.log).await,
            }
        };
        let mut model_urls = Vec::new();
        for i in 0..spec.models {
            let delay = if i == 1.min(spec.models - 1) {
                spec.straggle_ms
            } else {
                0
            };
            let args = worker(&dirs.base, name, delay, i);
            workers.push((format!("model-{i}"), args.clone()));
            let child = spawn(i, format!("model-{i}"), args).await?;
            model_urls.push(child.url.clone());
            children.push(child);
        }
        // Parity worker i serves parity i mod r, under the name the
        // frontend calls that parity by (`frontend --parity-model`).
        let r = dirs.parity.len().max(1);
        let mut parity_urls = Vec::new();
        let mut parity_entries = Vec::new();
        for i in 0..spec.parities {
            let l = i % r;
            let Some(dir) = dirs.parity.get(l) else {
                anyhow::bail!("no parity model to serve");
            };
            let served = crate::frontend::parity_model_name(&format!("{name}-parity"), l);
            let args = worker(dir, &served, 0, spec.models + i);
            workers.push((format!("parity-{i}"), args.clone()));
            let child = spawn(spec.models + i, format!("parity-{i}"), args).await?;
            parity_urls.push(child.url.clone());
            parity_entries.push(if r > 1 {
                format!("{l}={}", child.url)
            } else {
                child.url.clone()
            });
            children.push(child);
        }
        let policy = match spec.policy {
            ReconstructPolicy::Eager => "eager",
            ReconstructPolicy::Deadline => "deadline",
        };
        let dispatch = match spec.dispatch {
            DispatchMode::Coded => "coded",
            DispatchMode::LeastLoaded => "least-loaded",
            DispatchMode::Hedged => "hedged",
            DispatchMode::Replicated => "replicated",
        };
        let mut args: Vec<String> = [
            "frontend",
            "--host",
            &spec.host,
            "--port",
            &spec.port.to_string(),
            "--model-name",
            name,
            "--model-card",
            &dirs.base.display().to_string(),
            "--model-endpoints",
            &model_urls.join(","),
            "--dispatch",
            dispatch,
            "--k",
            &spec.k.to_string(),
            "--r",
            &r.to_string(),
            "--encoder",
            &spec.encoder.to_string(),
            "--reconstruct-policy",
            policy,
        ]
        .map(String::from)
        .to_vec();
        if !parity_entries.is_empty() {
            args.extend(["--parity-endpoints".to_owned(), parity_entries.join(",")]);
            let cards: Vec<String> = dirs
                .parity
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            args.extend(["--parity-card".to_owned(), cards.join(",")]);
        }
        let mut targets = Vec::new();
        for (role, urls) in [("model", &model_urls), ("parity", &parity_urls)] {
            for (i, url) in urls.iter().enumerate() {
                targets.push(ScrapeTarget::new(url, name, role, Some(i))?);
            }
        }
        if let Some(p) = &spec.prometheus {
            // Started before the frontend, so its watcher finds it at once.
            let started = LocalPrometheus::start(p, &targets).await?;
            args.extend(["--prometheus-url".to_owned(), started.url.clone()]);
            *prometheus = Some(started);
        }
        args.extend(spec.frontend_args.iter().cloned());
        let child = Child::spawn("frontend", &args, &spec.log)
            .await
            .with_context(|| format!("starting the frontend on {}:{}", spec.host, spec.port))?;
        let url = child.url.clone();
        children.push(child);
        if let Some(p) = prometheus {
            targets.push(ScrapeTarget::new(&url, name, "frontend", None)?);
            p.set_targets(&targets)?;
        }
        Ok((url, model_urls, parity_urls))
    }

    /// The frontend (the last child).
    pub fn frontend(&self) -> Option<&Child> {
        self.children.last()
    }

    /// Starts worker `index` (models, then parities) again after it exited
    /// (e.g. SIGKILL), on the same port: the frontend's fixed list of
    /// endpoints names it by URL, so its probes find the new process.
    pub async fn restart_worker(&mut self, index: usize) -> anyhow::Result<()> {
        if self.netns {
            anyhow::bail!("workers in network namespaces are not restarted");
        }
        let (name, args) = self
            .workers
            .get(index)
            .cloned()
            .with_context(|| format!("no worker {index}"))?;
        let old = self
            .children
            .get_mut(index)
            .with_context(|| format!("no child {index}"))?;
        let port = reqwest::Url::parse(&old.url)
            .ok()
            .and_then(|u| u.port())
            .with_context(|| format!("{name}'s URL {} has no port", old.url))?;
        if old.exited().is_none() {
            old.signal(nix::sys::signal::Signal::SIGKILL)?;
        }
        old.wait()
            .await
            .with_context(|| format!("waiting for {name} to exit"))?;
        let args: Vec<String> = args
            .iter()
            .scan(false, |after_port, a| {
                let out = if *after_port {
                    port.to_string()
                } else {
                    a.clone()
                };
                *after_port = a == "--port";
                Some(out)
            })
            .collect();
        let new = Child::spawn(&name, &args, &self.log)
            .await
            .with_context(|| format!("restarting {name} on port {port}"))?;
        self.children[index] = new;
        Ok(())
    }

    pub async fn stop(self) {
        stop_all(self.children).await;
        if let Some(p) = self.prometheus {
            p.stop().await;
        }
    }
}
