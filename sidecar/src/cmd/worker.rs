//! `coded-sidecar worker`: serves one model card (base or parity) over KServe v2.

use anyhow::Context;
use clap::Args;

use crate::device::{DeviceArgs, Placement, Precision};
use crate::http::shutdown;
use crate::worker::candle::CandleBackend;
use crate::worker::{ServeOptions, Server};

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The model to serve: a model directory or card.json as a path, file://,
    /// http(s)://, s3://, gs:// or az:// URI (object storage credentials from
    /// the usual AWS_*, GOOGLE_*, AZURE_* variables). Weights are checked
    /// against the card's sha256.
    #[arg(long)]
    pub model: String,
    /// Name the model is served under [default: the card's name].
    #[arg(long)]
    pub model_name: Option<String>,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Precision of inference: f32 (the default, what models are trained
    /// in), f16 or bf16 (weights cast at load; requests and answers stay
    /// FP32 on the wire). A precision the model cannot run in on the device
    /// fails at start.
    #[arg(long, env = "CODED_DTYPE", value_enum, default_value_t = Precision::F32)]
    pub dtype: Precision,
    #[command(flatten)]
    pub serve: ServeOptions,
}

pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    // Bad flags fail before the model is fetched.
    crate::tls::ServerTls::from_options(&args.serve.http.tls)?;
    if args.serve.service_time.model()?.is_some() {
        tracing::info!(
            service_time = %args.serve.service_time.describe(),
            "emulating an accelerator: each batch takes a drawn service time"
        );
    }
    let placement = Placement {
        device: args.device.open()?,
        dtype: args.dtype.dtype(),
    };
    let runtime =
        crate::runtime::io_runtime(args.serve.io_threads).context("starting the async runtime")?;
    let model = runtime
        .block_on(crate::model::fetch::load(&args.model, &placement))
        .with_context(|| format!("loading the model {}", args.model))?;
    tracing::info!(
        device = %args.device.device,
        dtype = %args.dtype,
        "model placed"
    );
    let name = args
        .model_name
        .clone()
        .unwrap_or_else(|| model.card.name.clone());
    let backend = CandleBackend::new(name.clone(), model);
    runtime.block_on(async {
        let server = Server::bind(backend, &args.serve).await?;
        // gRPC first: `local` reads lines up to the http:// one.
        if let Some(addr) = server.grpc_addr() {
            println!("serving {name} over gRPC on {addr}");
        }
        println!(
            "serving {name} on {}://{}",
            server.scheme(),
            server.local_addr()?
        );
        server.run(shutdown::signal()).await?;
        anyhow::Ok(())
    })
}
