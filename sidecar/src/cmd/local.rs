//! `coded-sidecar local`: the embedded default, everything on loopback.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::DataArgs;
use crate::coding::{BerrutCode, CodeKind, EncoderKind};
use crate::device::{DeviceArgs, Precision};
use crate::frontend::ReconstructPolicy;
use crate::grpc::GrpcPort;
use crate::http::shutdown;
use crate::local::prometheus::PrometheusSpec;
use crate::local::{Child, Cluster, ClusterSpec, ModelPlan, default_cache_dir};
use crate::model::Arch;

#[derive(Debug, Args)]
pub struct LocalArgs {
    /// Base model architecture.
    #[arg(long, value_enum, default_value_t = Arch::Mlp)]
    pub arch: Arch,
    /// Queries per coding group.
    #[arg(long, default_value_t = 2)]
    pub k: usize,
    /// Parities per group: r parity models are trained (or loaded from the
    /// cache) and served, and up to r lost queries of a group are rebuilt.
    #[arg(long, default_value_t = 1)]
    pub r: usize,
    /// `parity`: ParM's code with trained parity models. `berrut`
    /// (ApproxIFER): no parity model is trained or served; n base-model
    /// workers serve each group's n coded queries, any n − k of them may be
    /// slow or lost, and every answer is interpolated (approximate, marked
    /// `reconstructed`). E.g. `local --code berrut --n 3 --k 2`.
    #[arg(long, value_enum, default_value_t = CodeKind::Parity)]
    pub code: CodeKind,
    /// With --code berrut: coded queries per group, k < n ≤ 64
    /// [default: k + 1].
    #[arg(long)]
    pub n: Option<usize>,
    #[arg(long, value_enum, default_value_t = EncoderKind::Sum)]
    pub encoder: EncoderKind,
    #[arg(long, value_enum, default_value_t = ReconstructPolicy::Eager)]
    pub reconstruct_policy: ReconstructPolicy,
    /// Model worker processes [default: k; with --code berrut, n].
    #[arg(long)]
    pub models: Option<usize>,
    /// Parity worker processes, at least r: worker i serves parity i mod r
    /// [default: r].
    #[arg(long)]
    pub parities: Option<usize>,
    /// Address the frontend listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port the frontend listens on (workers take free ports).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Port of the frontend's gRPC service (`tritonclient.grpc`): a port,
    /// 0 for a free one, or `off` [default: 8001; a free port when --port
    /// is 0]. Workers take free ports.
    #[arg(long, value_name = "PORT|off")]
    pub grpc_port: Option<GrpcPort>,
    /// Make model worker 1 a straggler (every answer delayed by
    /// --straggle-ms): its first queries are rebuilt from the parity
    /// (`parameters.reconstructed`), then the frontend marks it slow
    /// (`coded_frontend_instance_straggler` 1 on /metrics) and sends it
    /// only sampled copies until its answers are in time again (lift the
    /// delay with `POST <model-1>/admin/delay {"delay_ms": 0}`).
    #[arg(long)]
    pub straggle: bool,
    #[arg(long, default_value_t = 200)]
    pub straggle_ms: u64,
    /// Base model training epochs (when not cached).
    #[arg(long, default_value_t = 10)]
    pub base_epochs: usize,
    /// Parity model training epochs (when not cached).
    #[arg(long, default_value_t = 40)]
    pub parity_epochs: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where trained models are kept between runs
    /// [default: ~/.cache/coded-serving/models].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Also start a Prometheus (Debian package `prometheus`) on loopback,
    /// scraping every process with the project's rules loaded; the
    /// frontend's watcher then reads worker latency from it.
    #[arg(long)]
    pub prometheus: bool,
    /// Port of that Prometheus (0 picks a free one).
    #[arg(long, default_value_t = 9090)]
    pub prometheus_port: u16,
    /// Where the workers run and where missing models are trained (the
    /// frontend's coding stays on the CPU: a few vector sums per query).
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Precision of the workers' inference: f32, f16 or bf16 (see
    /// `worker --help`).
    #[arg(long, env = "CODED_DTYPE", value_enum, default_value_t = Precision::F32)]
    pub dtype: Precision,
    /// Log level of the child processes (RUST_LOG overrides it).
    #[arg(long, default_value = "warn")]
    pub child_log: String,
    /// Workers as emulated accelerators (see `worker --help`); worker i
    /// draws with seed `--service-time-seed` + i.
    #[command(flatten)]
    pub service_time: crate::worker::ServiceTimeArgs,
    #[command(flatten)]
    pub data: DataArgs,
}

pub fn run(args: LocalArgs) -> anyhow::Result<()> {
    args.service_time.model()?;
    if args.k < crate::coding::MIN_K {
        anyhow::bail!("--k {} is not a code: k must be at least 2", args.k);
    }
    let berrut = match args.code {
        CodeKind::Berrut => Some(BerrutCode::new(args.k, args.n.unwrap_or(args.k + 1))?),
        CodeKind::Parity => {
            if let Some(n) = args.n {
                anyhow::bail!("--n {n} is the Berrut code's: give --code berrut");
            }
            None
        }
    };
    if berrut.is_none() {
        crate::coding::LinearCode::new(args.k, args.r)?;
        if args.encoder == EncoderKind::Concat && args.r > 1 {
            return Err(crate::coding::CodingError::ConcatParities(args.r).into());
        }
    }
    let models = args
        .models
        .unwrap_or(berrut.as_ref().map_or(args.k, BerrutCode::n));
    if let Some(code) = &berrut
        && models < code.n()
    {
        anyhow::bail!(
            "--code berrut --n {} needs at least n model workers (one per coded query), not --models {models}",
            code.n()
        );
    }
    // The Berrut code serves the base model only.
    let (r, parities) = match berrut {
        Some(_) => (0, 0),
        None => (args.r, args.parities.unwrap_or(args.r)),
    };
    if models == 0 || parities < r {
        anyhow::bail!(
            "--models must be at least 1 and --parities at least r = {} (one worker per parity)",
            args.r
        );
    }
    if args.prometheus && crate::local::prometheus::binary().is_none() {
        anyhow::bail!(
            "--prometheus needs the `prometheus` binary on the PATH: install it (Debian: \
             `apt-get install prometheus`) or set PROMETHEUS to its path"
        );
    }
    // Opened here too, so a missing GPU fails before anything is trained
    // or started.
    let device = args.device.open()?;
    let plan = ModelPlan {
        device,
        arch: args.arch,
        k: args.k,
        r,
        encoder: args.encoder,
        base_epochs: args.base_epochs,
        parity_epochs: args.parity_epochs,
        seed: args.seed,
        cache: args.cache_dir.clone().unwrap_or_else(default_cache_dir),
    };
    let dirs = plan.ensure(&|| args.data.load())?;
    let card = crate::model::store::read_card(&dirs.base)
        .context("reading the base model card")?
        .0;
    let name = card.name.clone();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let spec = ClusterSpec {
        k: args.k,
        encoder: args.encoder,
        dispatch: crate::frontend::DispatchMode::Coded,
        policy: args.reconstruct_policy,
        models,
        parities,
        host: args.host.clone(),
        port: args.port,
        straggle_ms: if args.straggle { args.straggle_ms } else { 0 },
        log: args.child_log.clone(),
        prometheus: args.prometheus.then(|| PrometheusSpec {
            port: args.prometheus_port,
            interval: Duration::from_secs(1),
        }),
        // Scraped every second: a short window follows a demo's changes.
        worker_netns: Vec::new(),
        frontend_args: [
            "--prometheus-interval-ms",
            "1000",
            "--prometheus-window",
            "10s",
        ]
        .into_iter()
        .filter(|_| args.prometheus)
        .map(String::from)
        .chain(
            args.grpc_port
                .into_iter()
                .flat_map(|p| ["--grpc-port".to_owned(), p.to_string()]),
        )
        .chain(berrut.iter().flat_map(|c| {
            [
                "--code".to_owned(),
                "berrut".to_owned(),
                "--n".to_owned(),
                c.n().to_string(),
            ]
        }))
        .collect(),
        worker_args: vec![
            "--device".into(),
            args.device.device.to_string(),
            "--dtype".into(),
            args.dtype.to_string(),
        ],
        service_time: args.service_time,
    };
    runtime.block_on(async {
        let mut cluster = Cluster::start(&dirs, &name, &spec).await?;
        banner(&cluster, &name, &card.input.name, &card.input.shape, &args);
        let result = supervise(&mut cluster.children).await;
        eprintln!("stopping {} processes", cluster.children.len());
        cluster.stop().await;
        result
    })
}

fn banner(cluster: &Cluster, name: &str, input: &str, shape: &[usize], args: &LocalArgs) {
    let url = cluster.frontend_url.as_str();
    let grpc = cluster.frontend_grpc.as_deref();
    let prometheus = cluster.prometheus.as_ref().map(|p| p.url.as_str());
    let model_urls = &cluster.model_urls;
    let models = model_urls.len();
    let row_len: usize = shape.iter().product();
    let dims = shape
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let host_port = url.trim_start_matches("http://");
    println!();
    let code = match args.code {
        CodeKind::Berrut => format!(
            "Berrut code, n = {} (every answer interpolated, marked reconstructed)",
            args.n.unwrap_or(args.k + 1)
        ),
        CodeKind::Parity => format!(
            "r = {}, {} encoder, {:?} reconstruction",
            args.r, args.encoder, args.reconstruct_policy
        ),
    };
    println!(
        "coded serving of {name} at {url}: {models} model worker(s), {} parity worker(s), k = {}, {code}{}",
        cluster.parity_urls.len(),
        args.k,
        if args.straggle {
            format!("; model-1 straggles by {} ms", args.straggle_ms)
        } else {
            String::new()
        }
    );
    println!();
    println!(
        "  python3 -c 'import json; print(json.dumps({{\"inputs\": [{{\"name\": \"{input}\", \"shape\": [1, {dims}], \"datatype\": \"FP32\", \"data\": [0.5] * {row_len}}}]}}))' \\"
    );
    println!(
        "    | curl -s {url}/v2/models/{name}/infer -H 'Content-Type: application/json' -d @-"
    );
    println!();
    println!("  python3 -c '");
    println!("import numpy as np, tritonclient.http as http");
    println!("c = http.InferenceServerClient(\"{host_port}\")");
    println!(
        "x = http.InferInput(\"{input}\", [1, {dims}], \"FP32\"); x.set_data_from_numpy(np.full((1, {dims}), 0.5, np.float32))"
    );
    println!(
        "r = c.infer(\"{name}\", [x]); print(r.as_numpy(r.get_response()[\"outputs\"][0][\"name\"]), r.get_response().get(\"parameters\"))'"
    );
    println!();
    if let Some(grpc) = grpc {
        println!("  gRPC: {grpc} (KServe v2 / Triton GRPCInferenceService), e.g.");
        println!("  python3 -c '");
        println!("import numpy as np, tritonclient.grpc as grpc");
        println!("c = grpc.InferenceServerClient(\"{grpc}\")");
        println!(
            "x = grpc.InferInput(\"{input}\", [1, {dims}], \"FP32\"); x.set_data_from_numpy(np.full((1, {dims}), 0.5, np.float32))"
        );
        println!(
            "r = c.infer(\"{name}\", [x]); print(r.as_numpy(r.get_response().outputs[0].name), r.get_response().parameters)'"
        );
        println!();
    }
    println!("  metrics: {url}/metrics (coded_frontend_reconstructions_total, ...)");
    if let (true, Some(slow)) = (args.straggle, model_urls.get(1)) {
        println!(
            "  the straggler's mark (1 once its late answers are seen, until it is fast again):"
        );
        println!("    curl -s {url}/metrics | grep 'coded_frontend_instance_straggler{{'");
        println!(
            "    curl -s {slow}/admin/delay -d '{{\"delay_ms\": 0}}'   # makes model-1 fast again"
        );
    }
    if let Some(p) = prometheus {
        println!();
        println!("  Prometheus: {p} (the dashboard's queries work there, e.g.)");
        println!(
            "    curl -s {p}/api/v1/query --data-urlencode 'query=histogram_quantile(0.99, sum by (le, pod) (rate(coded_worker_request_duration_seconds_bucket[1m])))'"
        );
        println!(
            "    curl -s {p}/api/v1/query --data-urlencode 'query=sum(rate(coded_frontend_reconstructions_total[1m])) / sum(rate(coded_frontend_queries_total[1m]))'"
        );
    }
    println!("  Ctrl-C stops everything.");
}

/// Waits for Ctrl-C/SIGTERM; reports workers that exit (the frontend
/// carries on without them) and stops if the frontend exits.
async fn supervise(children: &mut [Child]) -> anyhow::Result<()> {
    let stop = shutdown::signal();
    tokio::pin!(stop);
    let mut reported = vec![false; children.len()];
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tokio::select! {
            () = &mut stop => return Ok(()),
            _ = tick.tick() => {}
        }
        for (i, child) in children.iter_mut().enumerate() {
            if reported[i] {
                continue;
            }
            if let Some(status) = child.exited() {
                reported[i] = true;
                if child.name == "frontend" {
                    anyhow::bail!("the frontend exited ({status})");
                }
                eprintln!(
                    "{} exited ({status}); the frontend rebuilds or reroutes its queries",
                    child.name
                );
            }
        }
    }
}
