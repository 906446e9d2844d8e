//! `coded-sidecar bench overload`: the flags and the run.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::DataArgs;
use super::bench::{models, runtime, write_json};
use crate::bench::overload::{self, OverloadPlan, Setup};
use crate::coding::EncoderKind;
use crate::frontend::{DispatchMode, ReconstructPolicy};
use crate::http::Limit;
use crate::local::{Cluster, ClusterSpec};
use crate::worker::ServiceTimeArgs;

#[derive(Debug, Args)]
pub struct OverloadArgs {
    /// The overload, as a multiple of the measured capacity.
    #[arg(long, default_value_t = 4.0)]
    pub factor: f64,
    /// Seconds of overload.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Seed of the arrivals (the unloaded run's and the overload's).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The unloaded run's load, as a share of capacity.
    #[arg(long, default_value_t = 0.3)]
    pub unloaded_share: f64,
    /// Seconds of the unloaded run.
    #[arg(long, default_value_t = 15)]
    pub unloaded_seconds: u64,
    /// Seconds of the capacity measurement (closed-loop clients, 8 per
    /// worker).
    #[arg(long, default_value_t = 3)]
    pub capacity_seconds: u64,
    /// Queries per coding group (k model workers and one parity worker).
    #[arg(long, default_value_t = 2)]
    pub k: usize,
    /// Each worker an emulated accelerator serving one query per this many
    /// ms (median; `worker --service-time-ms`, batches of one), so that the
    /// workers, not this machine's cores, are what saturates. 0: the
    /// model's own compute (then the cores saturate, load generator
    /// included).
    #[arg(long, default_value_t = 5.0)]
    pub service_time_ms: f64,
    /// Spread of the service time (lognormal σ).
    #[arg(long, default_value_t = 0.1)]
    pub service_time_sigma: f64,
    /// The frontend's --shed-queue-delay-ms [default: the frontend's];
    /// `off` shows the overload with the fixed caps alone.
    #[arg(long, value_name = "MS|off")]
    pub shed_queue_delay_ms: Option<Limit>,
    /// The frontend's --max-inflight-requests [default: the frontend's].
    #[arg(long, value_name = "N|off")]
    pub max_inflight_requests: Option<Limit>,
    /// RSS counts as flat when it ends at most this many MiB above where
    /// it started (a bounded step: on 2 cores the frontend's RSS steps up
    /// ~30 MiB to a plateau within ~10 s of overload, even with 4 requests
    /// in flight at most: the connections and buffers of the refused
    /// traffic, not held requests)...
    #[arg(long, default_value_t = 64.0)]
    pub rss_slack_mib: f64,
    /// ...and its least-squares trend over the second half of the
    /// overload grows it by at most this many MiB.
    #[arg(long, default_value_t = 4.0)]
    pub rss_trend_mib: f64,
    /// Base model training epochs (when not cached).
    #[arg(long, default_value_t = 10)]
    pub base_epochs: usize,
    /// Parity model training epochs (when not cached).
    #[arg(long, default_value_t = 40)]
    pub parity_epochs: usize,
    /// Trained models are kept here [default: ~/.cache/coded-serving/models].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Where the JSON report goes.
    #[arg(long, default_value = "target/bench/overload.json")]
    pub out: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
}

pub fn run(args: OverloadArgs) -> anyhow::Result<()> {
    if !(args.factor.is_finite() && args.factor > 0.0) {
        anyhow::bail!("--factor must be a positive number, e.g. 4");
    }
    if !(args.unloaded_share.is_finite() && args.unloaded_share > 0.0 && args.unloaded_share < 1.0)
    {
        anyhow::bail!("--unloaded-share must be a share of capacity in (0, 1), e.g. 0.3");
    }
    if args.duration == 0 || args.unloaded_seconds == 0 || args.capacity_seconds == 0 {
        anyhow::bail!("--duration, --unloaded-seconds and --capacity-seconds must be at least 1");
    }
    if !(2..=8).contains(&args.k) {
        anyhow::bail!("--k must be from 2 to 8");
    }
    let service_time = ServiceTimeArgs {
        service_time_ms: args.service_time_ms,
        service_time_sigma: if args.service_time_ms > 0.0 {
            args.service_time_sigma
        } else {
            0.0
        },
        service_time_seed: args.seed,
        ..ServiceTimeArgs::default()
    };
    service_time.model()?;
    let (dirs, card) = models(
        args.cache_dir.clone(),
        &args.data,
        args.k,
        (args.base_epochs, args.parity_epochs),
    )?;
    let mut frontend_args = Vec::new();
    if let Some(l) = args.shed_queue_delay_ms {
        frontend_args.extend(["--shed-queue-delay-ms".to_owned(), l.to_string()]);
    }
    if let Some(l) = args.max_inflight_requests {
        frontend_args.extend(["--max-inflight-requests".to_owned(), l.to_string()]);
    }
    let spec = ClusterSpec {
        k: args.k,
        encoder: EncoderKind::Sum,
        policy: ReconstructPolicy::Eager,
        dispatch: DispatchMode::Coded,
        models: args.k,
        parities: 1,
        host: "127.0.0.1".into(),
        port: 0,
        straggle_ms: 0,
        log: "error".into(),
        prometheus: None,
        frontend_args: frontend_args.clone(),
        // One query per service time, as ParM's GPU instances serve.
        worker_args: if args.service_time_ms > 0.0 {
            vec!["--max-batch-size".into(), "1".into()]
        } else {
            Vec::new()
        },
        service_time,
        worker_netns: Vec::new(),
    };
    let topology = format!(
        "coded k={} eager: {} model + 1 parity workers ({}{})",
        args.k,
        args.k,
        service_time.describe(),
        if args.service_time_ms > 0.0 {
            ", one query at a time"
        } else {
            ""
        }
    );
    let plan = OverloadPlan {
        factor: args.factor,
        duration: Duration::from_secs(args.duration),
        seed: args.seed,
        unloaded_share: args.unloaded_share,
        unloaded_for: Duration::from_secs(args.unloaded_seconds),
        clients: 8 * (args.k + 1),
        capacity_for: Duration::from_secs(args.capacity_seconds),
        // The frontend's own deadline (10 s) and some.
        timeout: Duration::from_secs(15),
        settle: Duration::from_secs(2),
        rss_slack_mib: args.rss_slack_mib,
        rss_trend_mib: args.rss_trend_mib,
    };
    let report = runtime()?.block_on(async {
        let cluster = Cluster::start(&dirs, &card.name, &spec).await?;
        let setup = Setup {
            model: &card.name,
            input: &card.input.name,
            shape: &card.input.shape,
            topology,
            frontend_args,
        };
        let report = overload::run(&cluster, &setup, &plan).await;
        cluster.stop().await;
        report
    })?;
    print!("{}", overload::table(&report));
    write_json(&args.out, &report)
}
