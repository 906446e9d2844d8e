//! Flags of `coded-sidecar frontend`.

use std::time::Duration;

use super::baseline::DispatchMode;
use super::batch::ReconstructPolicy;
use crate::coding::{Decoder, EncoderKind};
use crate::http::HttpOptions;

#[derive(Debug, Clone, clap::Args)]
pub struct FrontendOptions {
    #[command(flatten)]
    pub http: HttpOptions,
    /// Name clients call the model by [default: the model card's name, or
    /// the model instances' model].
    #[arg(long)]
    pub model_name: Option<String>,
    /// The base model's card (as for `worker --model`: path or URI), for
    /// the served metadata. Without it the metadata is read from a model
    /// instance, so any v2 server (Triton, MLServer) can be fronted.
    #[arg(long)]
    pub model_card: Option<String>,
    /// Base URLs of the model instances, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub model_endpoints: Vec<String>,
    /// Base URLs of the parity-model instances, comma-separated (needed by
    /// `--dispatch coded`).
    #[arg(long, value_delimiter = ',')]
    pub parity_endpoints: Vec<String>,
    /// `coded` is coded serving; the others are the baselines a benchmark
    /// compares it with at equal resources (no parity models used).
    #[arg(long, value_enum, default_value_t = DispatchMode::Coded)]
    pub dispatch: DispatchMode,
    /// The model's name at the model instances [default: --model-name].
    #[arg(long)]
    pub instance_model: Option<String>,
    /// The parity model's name at the parity instances [default: the model
    /// name + "-parity"].
    #[arg(long)]
    pub parity_model: Option<String>,
    /// Queries per coding group.
    #[arg(long, default_value_t = 2)]
    pub k: usize,
    /// Parity models per group; r = 1 (one loss per group rebuilt) is what
    /// the parity models are trained for today.
    #[arg(long, default_value_t = 1)]
    pub r: usize,
    /// How a group is encoded; must match the parity model's training.
    #[arg(long, value_enum, default_value_t = EncoderKind::Sum)]
    pub encoder: EncoderKind,
    #[arg(long, value_enum, default_value_t = Decoder::Subtract)]
    pub decoder: Decoder,
    /// `eager` answers from the parity as soon as it can; `deadline` waits
    /// for the real answer until the observed latency quantile.
    #[arg(long, value_enum, default_value_t = ReconstructPolicy::Eager)]
    pub reconstruct_policy: ReconstructPolicy,
    /// Latency quantile that the `deadline` policy waits: of the calls to
    /// model instances not marked slow (the frontend's own windows), or of
    /// every model instance's calls (Prometheus).
    #[arg(long, default_value_t = 0.99)]
    pub deadline_quantile: f64,
    /// A query not answered after this many ms gets a 504.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// How long an incomplete group waits for more queries before it is
    /// padded with zero queries, in µs. Zero pads at once: protection never
    /// waits for traffic (tokio rounds other values up to ~1 ms).
    #[arg(long, default_value_t = 0)]
    pub linger_us: u64,
    /// Threads that serve requests and make calls. One (the default) runs
    /// everything on one thread: on a few cores shared with the workers,
    /// hand-offs between threads cost more than they gain (`bench
    /// overhead`, 2 cores: with 2 threads the frontend added 2.2 loopback
    /// hops at p50 and served 7,500-9,500 req/s; with 1, 1.6-1.8 hops and
    /// 15,000-17,800 req/s).
    #[arg(long, env = "CODED_IO_THREADS", default_value_t = 1)]
    pub io_threads: usize,
    /// Most coding groups in one batch of calls.
    #[arg(long, default_value_t = 32)]
    pub max_groups: usize,
    /// Coding batches in flight at once; more queries wait and batch up.
    #[arg(long, default_value_t = 16)]
    pub max_inflight_batches: usize,
    /// Queries waiting for a batch before new requests get a 503.
    #[arg(long, default_value_t = 65_536)]
    pub max_queued: usize,
    /// Prometheus whose query API tells the watcher each worker's latency
    /// across every frontend (`histogram_quantile` over
    /// `coded_worker_request_duration_seconds`); that view then marks
    /// stragglers and sets the `deadline` policy's wait. Without it, or
    /// while it is unreachable, the frontend's own latency windows do.
    #[arg(long, env = "CODED_PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,
    /// PromQL label matchers (no braces) narrowing the workers' series to
    /// this service, e.g. `namespace="prod",coded_dev_service="fashion"`.
    #[arg(long, default_value = "")]
    pub prometheus_selector: String,
    /// How often Prometheus is asked, in ms.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub prometheus_interval_ms: u64,
    /// The `rate()` window of the queries (a Prometheus duration): at least
    /// a few scrape intervals, and how long an avoided straggler stays
    /// known as one.
    #[arg(long, default_value = "30s")]
    pub prometheus_window: String,
}

impl FrontendOptions {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

#[derive(clap::Parser)]
struct Standalone {
    #[command(flatten)]
    options: FrontendOptions,
}

impl FrontendOptions {
    /// The defaults of every flag, for these endpoints (tests, `local`).
    pub fn new(model_endpoints: &[String], parity_endpoints: &[String]) -> Self {
        use clap::Parser;
        let mut args = vec![
            "frontend".to_owned(),
            "--model-endpoints".to_owned(),
            model_endpoints.join(","),
        ];
        if !parity_endpoints.is_empty() {
            args.extend(["--parity-endpoints".to_owned(), parity_endpoints.join(",")]);
        }
        match Standalone::try_parse_from(args) {
            Ok(s) => s.options,
            // Only an empty endpoint list can fail, and callers pass some.
            Err(e) => panic!("frontend defaults: {e}"),
        }
    }
}
