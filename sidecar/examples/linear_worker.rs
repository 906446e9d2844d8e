//! A worker serving the linear fake model (`tests/common/linear.rs`): a
//! v2 server to point stock clients at without a trained model.
//!
//!     cargo run -p coded-sidecar --example linear_worker -- --port 8123 --grpc-port 8124
//!     CODED_TEST_URL=127.0.0.1:8123 CODED_TEST_GRPC_URL=127.0.0.1:8124 pytest sidecar/tests/python

#[path = "../tests/common/linear.rs"]
#[allow(dead_code)]
mod linear;

use clap::Parser;
use coded_sidecar::http::shutdown;
use coded_sidecar::worker::{ServeOptions, Server};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeOptions,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let server = Server::bind(linear::Linear::default(), &cli.serve).await?;
    if let Some(addr) = server.grpc_addr() {
        println!("linear worker serving gRPC on {addr}");
    }
    println!("linear worker listening on http://{}", server.local_addr()?);
    server.run(shutdown::signal()).await?;
    Ok(())
}
