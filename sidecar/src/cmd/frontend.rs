//! `coded-sidecar frontend`: codes queries across model and parity instances.

use anyhow::Context;

use crate::frontend::{self, FrontendOptions};
use crate::http::shutdown;

pub fn run(options: FrontendOptions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let server = frontend::bind(&options).await?;
        println!("frontend serving on http://{}", server.local_addr()?);
        server.run(shutdown::signal()).await?;
        anyhow::Ok(())
    })
}
