//! `coded-sidecar frontend`: codes queries across model and parity instances.

use anyhow::Context;

use crate::frontend::{self, FrontendOptions};
use crate::http::shutdown;

pub fn run(options: FrontendOptions) -> anyhow::Result<()> {
    let mut builder = match options.io_threads {
        0 => anyhow::bail!("--io-threads must be at least 1"),
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    let runtime = builder
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
