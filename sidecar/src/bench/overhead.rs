//! What the frontend costs with nothing straggling: latency of one query
//! sent directly to a worker, through the frontend (k model calls and a
//! parity call behind it), through a frontend that only forwards
//! (`--dispatch least-loaded`: the cost of the extra hop alone), and to an
//! echo server in a process of its own (the cost of one loopback HTTP
//! hop), through the coding frontend on two I/O threads instead of one,
//! and to the worker and the coding frontend over gRPC (the same servers'
//! other front door), interleaved so all see the same machine; then the most each sustains
//! with concurrent clients, and the CPU time each server process spent per
//! request meanwhile (all share two cores with the load generator, so CPU
//! per request is what tells a server's own cost apart from its
//! neighbours').

use std::time::{Duration, Instant};

use nix::unistd::Pid;
use serde::Serialize;

use super::latency::{Recorder, Summary};
use std::sync::Arc;

use super::load::closed_loop;
use super::request::{Caller, GrpcCall, call};

#[derive(Debug, Clone)]
pub struct OverheadPlan {
    pub requests: usize,
    pub warmup: usize,
    pub concurrency: usize,
    pub throughput_for: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub latency: Summary,
    pub throughput_rps: f64,
    /// CPU time (user + system) of the server process per request during
    /// the throughput run, in µs; for the frontends, their own process
    /// only, not the workers behind them.
    pub cpu_us_per_request: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OverheadReport {
    pub targets: Vec<Target>,
    /// (frontend p50 − worker p50) / (echo p50): the frontend's added
    /// latency in loopback hops.
    pub added_p50_in_hops: f64,
    /// The same for the forwarding frontend: what the hop alone costs.
    pub forwarding_added_p50_in_hops: f64,
    /// The same for the frontend on two I/O threads.
    pub two_threads_added_p50_in_hops: f64,
    /// Frontend throughput over the echo server's.
    pub throughput_vs_echo: f64,
    /// p50 over gRPC over p50 over HTTP, called directly on the worker.
    pub grpc_vs_http_p50_worker: f64,
    /// The same through the coding frontend.
    pub grpc_vs_http_p50_frontend: f64,
    /// Coding frontend throughput over gRPC over its throughput over HTTP.
    pub grpc_vs_http_throughput_frontend: f64,
    /// What the coding frontend adds at p50 over HTTP (through it minus
    /// the worker called directly), in µs.
    pub frontend_added_p50_us_http: f64,
    /// The same over gRPC (issue 18's target: no more than over HTTP).
    pub frontend_added_p50_us_grpc: f64,
    /// Frontend throughput over the worker's, called directly.
    pub throughput_vs_worker: f64,
    /// The echo server's CPU per request over the frontend's: the
    /// frontend's throughput per core of its own, against the echo's.
    pub cpu_throughput_vs_echo: Option<f64>,
}

/// Where one target listens, and its process (for its CPU time).
pub struct Endpoint<'a> {
    pub url: &'a str,
    /// `host:port` of its gRPC service (the worker and the coding
    /// frontend are also measured over it).
    pub grpc: Option<&'a str>,
    pub pid: Option<Pid>,
}

pub struct Endpoints<'a> {
    pub worker: Endpoint<'a>,
    pub frontend: Endpoint<'a>,
    /// A frontend with `--dispatch least-loaded` over the same workers.
    pub forwarding: Endpoint<'a>,
    /// The coding frontend with `--io-threads 2`.
    pub two_threads: Endpoint<'a>,
    pub echo: Endpoint<'a>,
    pub model: &'a str,
    pub input: &'a str,
    pub shape: &'a [usize],
}

pub async fn run(e: Endpoints<'_>, plan: &OverheadPlan) -> anyhow::Result<OverheadReport> {
    crate::tls::init();
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let mut calls: Vec<(&str, Caller, Option<Pid>)> = [
        ("worker (direct)", &e.worker),
        ("frontend (k = 2)", &e.frontend),
        ("echo (one hop)", &e.echo),
        ("frontend, forwarding only", &e.forwarding),
        ("frontend (k = 2), 2 I/O threads", &e.two_threads),
    ]
    .map(|(name, at)| {
        let c = call(at.url, e.model, e.input, e.shape);
        (name, Caller::Http(Arc::new(c)), at.pid)
    })
    .into_iter()
    .collect();
    for (name, at) in [
        ("worker (direct), gRPC", &e.worker),
        ("frontend (k = 2), gRPC", &e.frontend),
    ] {
        let addr = at
            .grpc
            .ok_or_else(|| anyhow::anyhow!("{name}: the server reported no gRPC address"))?;
        let c = GrpcCall::connect(addr, e.model, e.input, e.shape).await?;
        calls.push((name, Caller::Grpc(Arc::new(c)), at.pid));
    }
    let mut recorders: Vec<Recorder> = calls.iter().map(|_| Recorder::default()).collect();
    let bar = indicatif::ProgressBar::new((plan.warmup + plan.requests) as u64)
        .with_message("latency, one request at a time");
    for i in 0..plan.warmup + plan.requests {
        for (j, (_, c, _)) in calls.iter().enumerate() {
            let started = Instant::now();
            c.send(&http).await?;
            if i >= plan.warmup {
                recorders[j].record(started.elapsed());
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();

    let mut targets = Vec::new();
    for ((name, c, pid), rec) in calls.iter().zip(&recorders) {
        eprintln!(
            "throughput of {name}: {} clients for {:?}",
            plan.concurrency, plan.throughput_for
        );
        let cpu_before = pid.and_then(cpu_time);
        let (rps, requests) = closed_loop(&http, c, plan.concurrency, plan.throughput_for).await?;
        let cpu = cpu_before
            .zip(pid.and_then(cpu_time))
            .map(|(a, b)| b.saturating_sub(a));
        targets.push(Target {
            name: (*name).to_owned(),
            latency: rec.summary(),
            throughput_rps: rps,
            cpu_us_per_request: cpu.map(|c| c.as_secs_f64() * 1e6 / requests.max(1) as f64),
        });
    }
    let p50 = |i: usize| targets[i].latency.p50_us as f64;
    Ok(OverheadReport {
        grpc_vs_http_p50_worker: p50(5) / p50(0).max(1.0),
        grpc_vs_http_p50_frontend: p50(6) / p50(1).max(1.0),
        grpc_vs_http_throughput_frontend: targets[6].throughput_rps
            / targets[1].throughput_rps.max(1e-9),
        frontend_added_p50_us_http: p50(1) - p50(0),
        frontend_added_p50_us_grpc: p50(6) - p50(5),
        added_p50_in_hops: (p50(1) - p50(0)) / p50(2).max(1.0),
        forwarding_added_p50_in_hops: (p50(3) - p50(0)) / p50(2).max(1.0),
        two_threads_added_p50_in_hops: (p50(4) - p50(0)) / p50(2).max(1.0),
        throughput_vs_echo: targets[1].throughput_rps / targets[2].throughput_rps.max(1e-9),
        throughput_vs_worker: targets[1].throughput_rps / targets[0].throughput_rps.max(1e-9),
        cpu_throughput_vs_echo: targets[2]
            .cpu_us_per_request
            .zip(targets[1].cpu_us_per_request)
            .map(|(echo, frontend)| echo / frontend.max(1e-9)),
        targets,
    })
}

/// CPU time (user + system) that process `pid` has used so far.
fn cpu_time(pid: Pid) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 from here.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&hz| hz > 0)? as u64;
    Some(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// The report as a markdown table.
pub fn markdown(r: &OverheadReport) -> String {
    let mut s = String::from(
        "| target | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | throughput req/s | server CPU µs/req |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for t in &r.targets {
        let l = &t.latency;
        let cpu = t
            .cpu_us_per_request
            .map_or_else(|| "-".to_owned(), |c| format!("{c:.1}"));
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.0} | {cpu} |\n",
            t.name, l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, t.throughput_rps
        ));
    }
    s.push_str(&format!(
        "\nThe frontend adds {:.2} loopback hops at p50 (through-frontend minus direct, over the echo round trip; forwarding only: {:.2}; on 2 I/O threads: {:.2}); its throughput is {:.0}% of the echo server's and {:.0}% of the worker's called directly.\n",
        r.added_p50_in_hops,
        r.forwarding_added_p50_in_hops,
        r.two_threads_added_p50_in_hops,
        r.throughput_vs_echo * 100.0,
        r.throughput_vs_worker * 100.0
    ));
    s.push_str(&format!(
        "Over gRPC (one HTTP/2 connection per client process, shared by its concurrent calls) the p50 is {:.2}× HTTP's on the worker and {:.2}× through the frontend, whose throughput is {:.0}% of its HTTP throughput.\n",
        r.grpc_vs_http_p50_worker,
        r.grpc_vs_http_p50_frontend,
        r.grpc_vs_http_throughput_frontend * 100.0
    ));
    s.push_str(&format!(
        "The coding frontend adds {:.0} µs at p50 over gRPC and {:.0} µs over HTTP (through it minus the worker called directly, same protocol).\n",
        r.frontend_added_p50_us_grpc, r.frontend_added_p50_us_http
    ));
    if let Some(ratio) = r.cpu_throughput_vs_echo {
        s.push_str(&format!(
            "Per core of its own (its process's CPU time per request), the frontend serves {:.0}% of what the echo server does.\n",
            ratio * 100.0
        ));
    }
    s
}
