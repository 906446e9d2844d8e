//! `coded-sidecar bench`: experiments that measure, not tests.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::DataArgs;
use crate::bench::slowdown::SlowPlan;
use crate::bench::stragglers::SlowMode;
use crate::bench::{echo, overhead, plot, stragglers};
use crate::coding::EncoderKind;
use crate::frontend::ReconstructPolicy;
use crate::local::{Child, Cluster, ClusterSpec, ModelPlan, default_cache_dir};
use crate::model::Arch;

/// Largest group size `bench stragglers` runs: k + 1 worker processes on
/// a machine of a few cores.
pub(super) const MAX_K: usize = 8;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The frontend's cost with nothing straggling: p50/p99 of a direct
    /// worker call, the same through the frontend (k = 2), through a
    /// frontend that only forwards, through the frontend on 2 I/O threads,
    /// and an echo server's round trip (one loopback HTTP hop),
    /// interleaved; then the throughput of each with concurrent clients.
    Overhead(OverheadArgs),
    /// Tail latency under stragglers at equal resources: for each k, coded
    /// (k models + 1 parity; eager and deadline) against least-loaded,
    /// hedged and replicated serving on k + 1 model instances, each on
    /// fresh worker processes, the same seeded Poisson load (latency from
    /// the intended send time) and the same seeded stragglers (added
    /// delay, SIGSTOP pauses or network interference). Prints a table per
    /// load, writes JSON and PNG figures per k (tail per configuration;
    /// p99.9 against load with several --rates).
    Stragglers(Box<StragglerArgs>),
    /// The echo server `bench overhead` measures one loopback HTTP hop
    /// with: answers every POST with its body, on one thread. Prints its
    /// URL and serves until stopped.
    Echo(EchoArgs),
    /// A bounded chaos run against the `local` topology: seeded open-loop
    /// load of test images, and a seeded schedule of faults on the workers
    /// (SIGKILL and a restart on the same port, SIGSTOP and SIGCONT, one
    /// worker or two at once). Checks every query (answered once: the base
    /// model's output, marked rebuilt, or a clear error no sooner than the
    /// deadline; none lost or hung) and the frontend (its batches drain,
    /// its memory does not grow). Prints a table, writes JSON, and exits
    /// non-zero naming each invariant that failed.
    Chaos(super::chaos::ChaosArgs),
    /// Does the frontend survive an overload? On the `local` topology
    /// (k model + 1 parity workers as emulated accelerators, so that they,
    /// not this machine's cores, saturate), measures the frontend's
    /// capacity (closed-loop clients), its unloaded latency (Poisson load
    /// at --unloaded-share of capacity), then offers open-loop Poisson load
    /// at --factor × capacity for --duration seconds. Reports offered,
    /// answered, refused (503 + Retry-After, by the limit that refused)
    /// and failed requests, the admitted requests' p50/p99/p99.9 against
    /// the unloaded p99, and the frontend's RSS every second; then a
    /// verdict per target: admitted p99 ≤ 2 × unloaded p99, RSS flat
    /// (--rss-slack-mib, --rss-trend-mib), every admitted request
    /// answered. Prints tables and writes JSON (--out).
    Overload(Box<super::overload::OverloadArgs>),
}

#[derive(Debug, Args)]
pub struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
}

#[derive(Debug, Args)]
pub struct StragglerArgs {
    /// A JSON file of flags, e.g. `{"rates": [100, 300], "seconds": 30,
    /// "mode": "sigstop", "prometheus": true}`; flags given on the command
    /// line win.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Mean requests per second (open loop, Poisson arrivals); several
    /// (comma-separated) run every configuration at each load and plot
    /// p99.9 against load.
    #[arg(long, alias = "rate", value_delimiter = ',', default_value = "300")]
    pub rates: Vec<f64>,
    /// Offered loads as shares of each k's equal-resources capacity
    /// (comma-separated, e.g. 0.2,0.4,0.6,0.8), instead of --rates: the
    /// capacity is measured first (k + 1 workers, least-loaded, nothing
    /// straggling, closed-loop clients for 3 s), so that every k and every
    /// machine runs at the same utilisation. Pair it with
    /// --service-time-ms, or the machine's cores, not the workers, are
    /// what saturates.
    #[arg(long, value_delimiter = ',', conflicts_with = "rates")]
    pub loads: Vec<f64>,
    /// Queries per coding group (comma-separated): each k runs coded k and
    /// its baselines on k + 1 workers; a parity model per k is trained
    /// once (about 30 s each) and cached.
    #[arg(long, value_delimiter = ',', default_value = "2,3,4")]
    pub k: Vec<usize>,
    /// Seconds of load per configuration and load.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// How stragglers are made: an added delay per answer or a SIGSTOP
    /// pause of the worker in seeded slow windows, or real network
    /// interference (root: namespaces, veth, tbf).
    #[arg(long, value_enum, default_value_t = SlowMode::Delay)]
    pub mode: SlowMode,
    /// Chance that a worker is slow during a window.
    #[arg(long, default_value_t = 0.05)]
    pub slow_probability: f64,
    /// Delay added to a slow worker's answers, in ms (`--mode delay`).
    #[arg(long, default_value_t = 50)]
    pub slow_ms: u64,
    /// Length of a slow window, in ms.
    #[arg(long, default_value_t = 500)]
    pub window_ms: u64,
    /// `--mode network`: tbf rate of each direction of each worker's link,
    /// in Mbit/s.
    #[arg(long, default_value_t = 100)]
    pub net_rate_mbit: u32,
    /// `--mode network`: background transfers per second between random
    /// pairs of instances (Poisson).
    #[arg(long, default_value_t = 1.0)]
    pub transfers_per_second: f64,
    /// `--mode network`: transfer sizes, uniform in [min, max] MB (ParM's
    /// 128-256 MB shuffles, scaled down by 100 for these links).
    #[arg(long, default_value_t = 1.28)]
    pub transfer_min_mb: f64,
    #[arg(long, default_value_t = 2.56)]
    pub transfer_max_mb: f64,
    /// Test images sent in turn (0: one fixed input); rebuilt answers are
    /// checked against the base model's class for each.
    #[arg(long, default_value_t = 1000)]
    pub images: usize,
    /// Seeds (comma-separated) of the arrivals, slow windows, background
    /// transfers and service times: every configuration runs once per
    /// seed, and with 3 or more the report gives each figure's median over
    /// seeds with its range, and calls a configuration's tail a win or a
    /// loss against equal-resources only where the ranges do not overlap.
    #[arg(long, alias = "seed", value_delimiter = ',', default_value = "0")]
    pub seeds: Vec<u64>,
    /// Add coded eager (first k) with the watcher reading worker latency
    /// from a Prometheus (scraping every 500 ms) instead of the frontend's
    /// own windows; needs the `prometheus` binary.
    #[arg(long)]
    pub prometheus: bool,
    /// Run only the configurations whose names contain one of these
    /// (comma-separated), e.g. `eager,equal`.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// A short run (3 s per configuration) to check that everything works.
    #[arg(long)]
    pub quick: bool,
    /// Where the JSON report goes.
    #[arg(long, default_value = "target/bench/stragglers.json")]
    pub out: PathBuf,
    /// Where the figures go: `stragglers-tail-k<k>.png` per k (at the
    /// first rate), and with several rates `stragglers-load-k<k>.png`.
    #[arg(long, default_value = "target/bench")]
    pub plots: PathBuf,
    /// Base model training epochs (when not cached).
    #[arg(long, default_value_t = 10)]
    pub base_epochs: usize,
    /// Parity model training epochs (when not cached).
    #[arg(long, default_value_t = 40)]
    pub parity_epochs: usize,
    /// Trained models are kept here [default: ~/.cache/coded-serving/models].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Workers as emulated accelerators (see `worker --help`): each batch
    /// takes a drawn service time, so that the workers, not this machine's
    /// cores, are the resource under load. The report says which ran.
    #[command(flatten)]
    pub service_time: crate::worker::ServiceTimeArgs,
    /// The workers' `--max-batch-size`: 1 serves one query per model call,
    /// as ParM's instances do, so that an emulated accelerator's capacity
    /// is one query per service time.
    #[arg(long, default_value_t = 64)]
    pub worker_max_batch_size: usize,
    #[command(flatten)]
    pub data: DataArgs,
}

#[derive(Debug, Args)]
pub struct OverheadArgs {
    /// Measured requests per target (after the warm-up).
    #[arg(long, default_value_t = 5000)]
    pub requests: usize,
    #[arg(long, default_value_t = 500)]
    pub warmup: usize,
    /// Closed-loop clients for the throughput runs.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Seconds of each throughput run.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Where the JSON report goes.
    #[arg(long, default_value = "target/bench/overhead.json")]
    pub out: PathBuf,
    /// Base model training epochs (when not cached).
    #[arg(long, default_value_t = 10)]
    pub base_epochs: usize,
    /// Parity model training epochs (when not cached).
    #[arg(long, default_value_t = 40)]
    pub parity_epochs: usize,
    /// Trained models are kept here [default: ~/.cache/coded-serving/models].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Overhead(args) => run_overhead(args),
        BenchCommand::Stragglers(args) => run_stragglers(*args),
        BenchCommand::Echo(args) => crate::runtime::io_runtime(1)?
            .block_on(echo::serve((args.host, args.port).into()))
            .context("echo server"),
        BenchCommand::Chaos(args) => super::chaos::run(args),
        BenchCommand::Overload(args) => super::overload::run(*args),
    }
}

/// The models `local` serves for group size `k` (trained once, cached).
pub(super) fn models(
    cache: Option<PathBuf>,
    data: &DataArgs,
    k: usize,
    (base_epochs, parity_epochs): (usize, usize),
) -> anyhow::Result<(crate::local::ModelDirs, crate::model::ModelCard)> {
    let plan = ModelPlan {
        arch: Arch::Mlp,
        k,
        r: 1,
        encoder: EncoderKind::Sum,
        base_epochs,
        parity_epochs,
        seed: 0,
        cache: cache.unwrap_or_else(default_cache_dir),
        // The benchmarks measure the frontend and emulated workers; their
        // small models are trained on the CPU by design.
        device: candle_core::Device::Cpu,
    };
    let dirs = plan.ensure(&|| data.load())?;
    let card = crate::model::store::read_card(&dirs.base)?.0;
    Ok((dirs, card))
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

pub(super) fn write_json(
    out: &std::path::Path,
    report: &impl serde::Serialize,
) -> anyhow::Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("report: {}", out.display());
    Ok(())
}

fn run_stragglers(args: StragglerArgs) -> anyhow::Result<()> {
    let args = match &args.config {
        Some(file) => with_config_file(file)?,
        None => args,
    };
    if args.prometheus && crate::local::prometheus::binary().is_none() {
        anyhow::bail!(
            "--prometheus needs the `prometheus` binary on the PATH (Debian: `apt-get install prometheus`)"
        );
    }
    if args.rates.is_empty() || args.rates.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
        anyhow::bail!("--rates must be positive numbers, e.g. 100,300");
    }
    if args
        .loads
        .iter()
        .any(|l| !(l.is_finite() && *l > 0.0 && *l <= 2.0))
    {
        anyhow::bail!("--loads must be shares of capacity in (0, 2], e.g. 0.2,0.4,0.6,0.8");
    }
    if args.k.is_empty() || args.k.iter().any(|&k| !(2..=MAX_K).contains(&k)) {
        anyhow::bail!("--k must be group sizes from 2 to {MAX_K}, e.g. 2,3,4");
    }
    args.service_time.model()?;
    if args.seeds.is_empty() {
        anyhow::bail!("--seeds needs at least one seed, e.g. 0,1,2");
    }
    let configs = stragglers::configs(&args.k, args.prometheus);
    if !configs.iter().any(|c| c.chosen(&args.only)) {
        let names: Vec<&str> = configs.iter().map(|c| c.name.as_str()).collect();
        anyhow::bail!(
            "--only {:?} matches no configuration; they are: {}",
            args.only,
            names.join(", ")
        );
    }
    // Only the ks that some chosen configuration needs.
    let mut dirs = stragglers::Models::new();
    let mut card = None;
    for c in configs.iter().filter(|c| c.chosen(&args.only)) {
        if dirs.contains_key(&c.k) {
            continue;
        }
        let (d, cd) = models(
            args.cache_dir.clone(),
            &args.data,
            c.k,
            (args.base_epochs, args.parity_epochs),
        )?;
        dirs.insert(c.k, d);
        card = Some(cd);
    }
    let card = card.context("no configuration chosen")?;
    let base_dir = dirs
        .values()
        .next()
        .map(|d| d.base.clone())
        .context("no model chosen")?;
    let seconds = if args.quick { 3 } else { args.seconds };
    let plan = stragglers::Plan {
        rates: args.rates.clone(),
        loads: args.loads.clone(),
        duration: Duration::from_secs(seconds),
        seeds: args.seeds.clone(),
        slow: SlowPlan {
            window: Duration::from_millis(args.window_ms.max(1)),
            probability: args.slow_probability,
            delay_ms: args.slow_ms,
            // Each run takes its own seed (stragglers::run).
            seed: 0,
        },
        mode: args.mode,
        net: crate::bench::netns::NetPlan {
            rate_mbit: args.net_rate_mbit.max(1),
            transfers_per_second: args.transfers_per_second,
            min_bytes: (args.transfer_min_mb * 1e6) as u64,
            max_bytes: (args.transfer_max_mb * 1e6) as u64,
            seed: 0,
        },
        ks: args.k.clone(),
        prometheus: args.prometheus,
        only: args.only.clone(),
        service_time: args.service_time,
        worker_max_batch_size: args.worker_max_batch_size.max(1),
    };
    let images = test_images(&base_dir, &args.data, args.images)?;
    let report = runtime()?.block_on(stragglers::run(
        &dirs,
        &card.name,
        &card.input.name,
        &card.input.shape,
        &images,
        &plan,
    ))?;
    println!("{}", stragglers::markdown(&report));
    std::fs::create_dir_all(&args.plots)
        .with_context(|| format!("creating {}", args.plots.display()))?;
    for &k in dirs.keys() {
        let tail = args.plots.join(format!("stragglers-tail-k{k}.png"));
        plot::tail(&report, report.levels()[0], k, &tail).context("plotting the tail")?;
        eprintln!("figure: {}", tail.display());
        if report.levels().len() > 1 {
            let load = args.plots.join(format!("stragglers-load-k{k}.png"));
            plot::load(&report, k, &load).context("plotting p99.9 against load")?;
            eprintln!("figure: {}", load.display());
        }
    }
    write_json(&args.out, &report)
}

/// The first `n` Fashion-MNIST test images and the base model's class for
/// each, so that rebuilt answers can be checked against the base model.
fn test_images(
    base: &std::path::Path,
    data: &DataArgs,
    n: usize,
) -> anyhow::Result<stragglers::Images> {
    if n == 0 {
        return Ok(stragglers::Images::default());
    }
    let test = data.load()?.test.take(n).context("taking test images")?;
    // The reference answers are computed on the CPU, like the data.
    let placement = crate::model::Placement::f32(candle_core::Device::Cpu);
    let base = crate::model::load(base, &placement).context("loading the base model")?;
    let logits = base
        .network
        .forward(&test.images)
        .context("the base model's answers")?;
    let classes = crate::model::argmax(&logits)?
        .into_iter()
        .map(|c| c as usize)
        .collect();
    let flat: Vec<f32> = test.images.flatten_all()?.to_vec1()?;
    let per_image = flat.len() / test.len().max(1);
    Ok(stragglers::Images {
        rows: flat.chunks(per_image.max(1)).map(<[f32]>::to_vec).collect(),
        classes,
    })
}

/// Re-reads the `stragglers` flags with those of a JSON file first, so that
/// the command line's own flags win.
fn with_config_file(file: &std::path::Path) -> anyhow::Result<StragglerArgs> {
    #[derive(clap::Parser)]
    #[command(name = "stragglers", args_override_self = true)]
    struct Cli {
        #[command(flatten)]
        args: StragglerArgs,
    }
    use clap::Parser;
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading --config {}", file.display()))?;
    let flags: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
        .with_context(|| format!("--config {} is not a JSON object of flags", file.display()))?;
    let mut argv = vec!["stragglers".to_owned()];
    for (key, value) in flags {
        let flag = format!("--{}", key.replace('_', "-"));
        match value {
            serde_json::Value::Bool(true) => argv.push(flag),
            serde_json::Value::Bool(false) | serde_json::Value::Null => {}
            serde_json::Value::Array(items) => {
                let items: Vec<String> = items.iter().map(scalar).collect();
                argv.extend([flag, items.join(",")]);
            }
            other => argv.extend([flag, scalar(&other)]),
        }
    }
    // The command line's own flags (after the subcommand's name), but
    // --config itself.
    let mut skip_next = false;
    for a in std::env::args().skip_while(|a| a != "stragglers").skip(1) {
        if skip_next {
            skip_next = false;
            continue;
        }
        if a == "--config" {
            skip_next = true;
            continue;
        }
        if a.starts_with("--config=") {
            continue;
        }
        argv.push(a);
    }
    Cli::try_parse_from(&argv)
        .map(|c| c.args)
        .map_err(|e| anyhow::anyhow!("--config {}: {e}", file.display()))
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Where a child listens, and its process.
fn endpoint(c: Option<&Child>) -> overhead::Endpoint<'_> {
    overhead::Endpoint {
        url: c.map_or("", |c| c.url.as_str()),
        grpc: c.and_then(|c| c.grpc.as_deref()),
        pid: c.and_then(Child::pid),
    }
}

fn run_overhead(args: OverheadArgs) -> anyhow::Result<()> {
    let (dirs, card) = models(
        args.cache_dir.clone(),
        &args.data,
        2,
        (args.base_epochs, args.parity_epochs),
    )?;
    let spec = ClusterSpec {
        k: 2,
        encoder: EncoderKind::Sum,
        dispatch: crate::frontend::DispatchMode::Coded,
        policy: ReconstructPolicy::Eager,
        models: 2,
        parities: 1,
        host: "127.0.0.1".into(),
        port: 0,
        straggle_ms: 0,
        log: "warn".into(),
        prometheus: None,
        worker_netns: Vec::new(),
        frontend_args: Vec::new(),
        worker_args: Vec::new(),
        service_time: Default::default(),
    };
    let forwarding = ClusterSpec {
        dispatch: crate::frontend::DispatchMode::LeastLoaded,
        models: 1,
        parities: 0,
        ..spec.clone()
    };
    let two_threads = ClusterSpec {
        frontend_args: ["--io-threads", "2"].map(String::from).to_vec(),
        ..spec.clone()
    };
    let report = runtime()?.block_on(async {
        let echo = Child::spawn("echo", &["bench".into(), "echo".into()], "warn").await?;
        // The coding frontend, the forwarding one, the coding one on 2 I/O
        // threads; those started are stopped if one fails to start.
        let mut clusters = Vec::new();
        for spec in [&spec, &forwarding, &two_threads] {
            match Cluster::start(&dirs, &card.name, spec).await {
                Ok(c) => clusters.push(c),
                Err(e) => {
                    for c in clusters {
                        c.stop().await;
                    }
                    echo.stop().await;
                    return Err(e);
                }
            }
        }
        // A cluster's children: model workers first, its frontend last.
        fn frontend(c: &Cluster) -> overhead::Endpoint<'_> {
            endpoint(c.children.last())
        }
        let result = overhead::run(
            overhead::Endpoints {
                worker: endpoint(clusters[0].children.first()),
                frontend: frontend(&clusters[0]),
                forwarding: frontend(&clusters[1]),
                two_threads: frontend(&clusters[2]),
                echo: endpoint(Some(&echo)),
                model: &card.name,
                input: &card.input.name,
                shape: &card.input.shape,
            },
            &overhead::OverheadPlan {
                requests: args.requests,
                warmup: args.warmup,
                concurrency: args.concurrency,
                throughput_for: Duration::from_secs(args.seconds),
            },
        )
        .await;
        for c in clusters {
            c.stop().await;
        }
        echo.stop().await;
        result
    })?;
    println!("{}", overhead::markdown(&report));
    write_json(&args.out, &report)
}
