//! `coded-sidecar`: the data plane of coded-serving in one binary.

use clap::{Parser, Subcommand};
use coded_sidecar::cmd;

#[derive(Debug, Parser)]
#[command(name = "coded-sidecar", version, about, long_about = None)]
/// Erasure-coded ML inference: train and evaluate parity models, serve them.
struct Cli {
    /// Compute threads per process (candle matmuls and the rayon pool). One
    /// is the default: for these small models thread hand-offs cost more than
    /// they gain (MLP training measured 19,400 images/s with 1 thread, 6,300
    /// with 2, on 2 cores).
    #[arg(long, global = true, env = "CODED_THREADS", default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a base model or a parity model on Fashion-MNIST.
    #[command(subcommand)]
    Train(cmd::train::TrainCommand),
    /// Measure available and degraded-mode accuracy of a base + parity pair.
    Eval(cmd::eval::EvalArgs),
    /// Serve a model card (base or parity) over the KServe v2 protocol.
    Worker(cmd::worker::WorkerArgs),
    /// Download a model (card + weights, sha256-checked) into a directory:
    /// the init container of a model pod.
    #[command(long_about = cmd::fetch::LONG_ABOUT)]
    Fetch(cmd::fetch::FetchArgs),
    /// Serve a model with coded resilience: groups queries, sends them to
    /// model and parity instances, rebuilds answers of slow or failed ones.
    Frontend(Box<coded_sidecar::frontend::FrontendOptions>),
    /// Coded serving on this machine: trains or loads the models, starts
    /// workers, parity workers and a frontend on loopback (the default way
    /// to try it).
    Local(cmd::local::LocalArgs),
    /// Measure: the frontend's overhead (tail latency under stragglers next).
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Draw figures from saved reports.
    #[command(subcommand)]
    Plot(cmd::plot::PlotCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    coded_sidecar::runtime::init_compute(Some(cli.threads));
    coded_sidecar::tls::init();
    let result = match cli.command {
        Command::Train(c) => cmd::train::run(c),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Plot(c) => cmd::plot::run(c),
        Command::Worker(a) => cmd::worker::run(a),
        Command::Fetch(a) => cmd::fetch::run(a),
        Command::Frontend(o) => cmd::frontend::run(*o),
        Command::Local(a) => cmd::local::run(a),
        Command::Bench(c) => cmd::bench::run(c),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
