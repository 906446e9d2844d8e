//! The `coded-operator` process: the controller, its HTTP endpoint and,
//! when replicated, leader election.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use coded_operator::crd::CodedInferenceService;
use coded_operator::latency::LatencyReader;
use coded_operator::leader::{self, LeaderConfig};
use coded_operator::metrics::Metrics;
use coded_operator::reconcile::children::Settings;
use coded_operator::reconcile::{self, Context, Pace};
use coded_operator::server::{self, State};
use coded_operator::telemetry::{self, LogFormat};
use coded_operator::{DEFAULT_MONITORING_NAMESPACE, DEFAULT_SIDECAR_IMAGE, FIELD_MANAGER};
use futures::FutureExt;
use kube::api::{Api, ListParams};
use kube::runtime::events::Reporter;
use tracing::{error, info};

/// A reading of a resource's latency never holds a reconcile up longer.
const LATENCY_QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Parser, Debug)]
#[command(version, about = "Kubernetes operator for CodedInferenceServices")]
struct Args {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "CODED_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// coded-sidecar image for pods whose resource names none.
    #[arg(long, env = "CODED_SIDECAR_IMAGE", default_value = DEFAULT_SIDECAR_IMAGE)]
    sidecar_image: String,
    /// Prometheus whose query API gives each resource's observed tail
    /// latency (status.observedLatency, the SLOMet condition), for
    /// resources whose spec.prometheus names none; their frontends' watchers
    /// read worker latency from it too.
    #[arg(long, env = "CODED_PROMETHEUS_URL")]
    prometheus_url: Option<String>,
    /// Namespace whose pods (Prometheus) may reach the workers' port for
    /// `/metrics`, beside the resource's own frontend: the workers'
    /// NetworkPolicy admits nothing else. Empty: only the frontend.
    #[arg(long, env = "CODED_MONITORING_NAMESPACE", default_value = DEFAULT_MONITORING_NAMESPACE)]
    monitoring_namespace: String,
    /// The window of those latency readings (a Prometheus duration).
    #[arg(long, env = "CODED_SLO_WINDOW", default_value = "5m")]
    slo_window: String,
    /// Watch only this namespace (default: all).
    #[arg(long, env = "CODED_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Elect a leader through a Lease; needed when running more than one replica.
    #[arg(long, env = "CODED_LEADER_ELECTION")]
    leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "CODED_LEASE_NAME", default_value = "coded-operator")]
    lease_name: String,
    /// Namespace of the Lease, normally the operator's own.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity in the Lease (default: the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a lease is valid without renewal.
    #[arg(long, env = "CODED_LEASE_DURATION", default_value_t = 15)]
    lease_duration: u64,
    /// Reconciles running at once (0: unbounded). Bounding them keeps a
    /// burst of new resources from overloading the API server.
    #[arg(long, env = "CODED_MAX_CONCURRENT_RECONCILES", default_value_t = 16)]
    max_concurrent_reconciles: u16,
    /// Changes to one resource or its children within this many ms are
    /// reconciled once (0: every change wakes a reconcile).
    #[arg(long, env = "CODED_RECONCILE_DEBOUNCE_MS", default_value_t = 500)]
    reconcile_debounce_ms: u64,
    /// Log format.
    #[arg(long, env = "CODED_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log filter, used when RUST_LOG is unset.
    #[arg(long, env = "CODED_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(args.log_format, &args.log_level)?;

    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let all: Api<CodedInferenceService> = Api::all(client.clone());
    all.list(&ListParams::default().limit(1)).await.context(
        "listing CodedInferenceServices: is the CRD installed? (crdgen | kubectl apply -f -)",
    )?;

    let metrics = Arc::new(Metrics::new());
    let state = State::new(metrics.clone());
    let listener = server::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    let server = tokio::spawn(server::serve(listener, state.clone()));
    state.set_ready(true);
    info!(addr = %args.metrics_addr, "serving /metrics, /healthz and /readyz");

    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| FIELD_MANAGER.to_string());
    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: Some(identity.clone()),
    };
    let settings = Settings {
        sidecar_image: args.sidecar_image.clone(),
        prometheus_url: args.prometheus_url.clone().filter(|u| !u.is_empty()),
        monitoring_namespace: Some(args.monitoring_namespace.clone()).filter(|n| !n.is_empty()),
    };
    let latency = LatencyReader::new(&args.slo_window, LATENCY_QUERY_TIMEOUT)
        .context("building the Prometheus client")?;
    let ctx = Arc::new(Context::new(
        client.clone(),
        reporter,
        metrics.clone(),
        settings,
        latency,
    ));
    let shutdown = shutdown_signal().shared();
    let controller = reconcile::run(
        client.clone(),
        ctx,
        args.watch_namespace.clone(),
        Pace {
            concurrency: args.max_concurrent_reconciles,
            debounce: Duration::from_millis(args.reconcile_debounce_ms),
        },
        shutdown.clone(),
    );

    let outcome = if args.leader_election {
        let config = LeaderConfig {
            lease_name: args.lease_name.clone(),
            namespace: args.lease_namespace.clone(),
            identity,
            duration: Duration::from_secs(args.lease_duration),
            grace: Duration::from_secs((args.lease_duration / 3).max(1)),
        };
        leader::run_as_leader(client, &config, &metrics, shutdown, controller)
            .await
            .map_err(anyhow::Error::from)
    } else {
        metrics.leader.set(1);
        controller.await;
        Ok(())
    };
    server.abort();
    if let Err(e) = &outcome {
        error!(error = %e, "stopping");
    }
    outcome
}

/// Resolves on SIGTERM (what the kubelet sends) or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    info!("shutdown signal received");
}
