//! `coded-sidecar frontend`: codes queries across model and parity instances.

use anyhow::Context;

use crate::frontend::{self, FrontendOptions};
use crate::http::shutdown;

pub fn run(options: FrontendOptions) -> anyhow::Result<()> {
    let runtime =
        crate::runtime::io_runtime(options.io_threads).context("starting the async runtime")?;
    runtime.block_on(async {
        let server = frontend::bind(&options).await?;
        // gRPC first: `local` reads lines up to the http:// one.
        if let Some(addr) = server.grpc_addr() {
            println!("frontend serving over gRPC on {addr}");
        }
        println!(
            "frontend serving on {}://{}",
            server.scheme(),
            server.local_addr()?
        );
        server.run(shutdown::signal()).await?;
        anyhow::Ok(())
    })
}
