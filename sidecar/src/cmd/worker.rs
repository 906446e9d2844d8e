//! `coded-sidecar worker`: serves one model card (base or parity) over KServe v2.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;

use crate::http::shutdown;
use crate::worker::candle::CandleBackend;
use crate::worker::{ServeOptions, Server};

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The model card to serve: a card.json, its directory, or a file:// URI.
    #[arg(long)]
    pub model: String,
    /// Name the model is served under [default: the card's name].
    #[arg(long)]
    pub model_name: Option<String>,
    #[command(flatten)]
    pub serve: ServeOptions,
}

/// A local path from a model URI; remote schemes are refused with a reason.
pub fn local_path(uri: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = uri.strip_prefix("file://") {
        return Ok(PathBuf::from(path));
    }
    if let Some((scheme, _)) = uri.split_once("://") {
        bail!("model URI scheme {scheme}:// is not supported yet; use a local path or file://");
    }
    Ok(PathBuf::from(uri))
}

pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let path = local_path(&args.model)?;
    let model =
        crate::model::load(&path).with_context(|| format!("loading the model {}", args.model))?;
    let name = args
        .model_name
        .clone()
        .unwrap_or_else(|| model.card.name.clone());
    let backend = CandleBackend::new(name.clone(), model);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let server = Server::bind(backend, &args.serve).await?;
        println!("serving {name} on http://{}", server.local_addr()?);
        server.run(shutdown::signal()).await?;
        anyhow::Ok(())
    })
}
