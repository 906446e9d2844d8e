//! Flags of `coded-sidecar frontend`.

use std::time::Duration;

use anyhow::bail;

use super::baseline::DispatchMode;
use super::batch_state::ReconstructPolicy;
use super::discovery::Source;
use crate::coding::{BerrutCode, CodeKind, Decoder, EncoderKind};
use crate::http::shedding::{DEFAULT_TARGET_MS, ShedConfig};
use crate::http::{HttpOptions, Limit};

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
    /// Base URLs of the model instances, comma-separated: a fixed list
    /// (or use --model-service).
    #[arg(
        long,
        value_delimiter = ',',
        required_unless_present = "model_service",
        conflicts_with = "model_service"
    )]
    pub model_endpoints: Vec<String>,
    /// Base URLs of the parity-model instances, comma-separated (needed by
    /// `--dispatch coded`, or use --parity-service); with --r ≥ 2 each as
    /// `l=URL`, l the parity it serves (`0=http://p0:8080,1=http://p1:8080`).
    #[arg(long, value_delimiter = ',', conflicts_with = "parity_service")]
    pub parity_endpoints: Vec<String>,
    /// The model instances as a name to resolve, HOST:PORT (a Kubernetes
    /// headless Service such as `fashion-mlp-model.default.svc:8080`;
    /// comma-separate several): every address it resolves to is an
    /// instance, looked up again every --resolve-interval-ms, so instances
    /// that come and go are followed without restarting the frontend and
    /// without Kubernetes API access. Until k model and r parity instances
    /// answer their health probe the frontend reports not ready.
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT")]
    pub model_service: Vec<String>,
    /// The parity-model instances as a name to resolve, like
    /// --model-service; with --r ≥ 2 one name per parity, each as
    /// `l=HOST:PORT`.
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT")]
    pub parity_service: Vec<String>,
    /// How often --model-service and --parity-service names are resolved
    /// again, in ms (the system resolver: /etc/hosts, then DNS with the
    /// search domains of resolv.conf). An instance whose address is gone
    /// gets no new calls; its calls in flight finish.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub resolve_interval_ms: u64,
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
    /// Parities per group: up to r lost queries of a group are rebuilt.
    /// Parity l is served by the instances given as `l=URL` in
    /// --parity-endpoints (or `l=HOST:PORT` in --parity-service; entries
    /// without `l=` are parity 0) under the name --parity-model for l = 0
    /// and `<parity-model>-<l>` for the others.
    #[arg(long, default_value_t = 1)]
    pub r: usize,
    /// `parity`: ParM's code, with parity models (--r, --encoder,
    /// --parity-endpoints). `berrut`: ApproxIFER's training-free code: each
    /// group of k queries is interpolated into --n coded queries that n
    /// distinct model instances serve (no parity model), and every answer
    /// is interpolated back from the first k coded answers to arrive (or,
    /// at the deadline, from however many did): every answer is then
    /// approximate and marked `reconstructed`, even with nothing lost.
    #[arg(long, env = "CODED_CODE", value_enum, default_value_t = CodeKind::Parity)]
    pub code: CodeKind,
    /// With --code berrut: coded queries per group, k < n ≤ 64; any n − k
    /// of a group's instances may be slow or lost [default: k + 1].
    #[arg(long, env = "CODED_N")]
    pub n: Option<usize>,
    /// The parity models' cards (paths or URIs, comma-separated, parity 0
    /// first): checked at start against --k, --r and --encoder, so that a
    /// parity model trained for another code is refused with one clear
    /// error rather than decoded into wrong answers.
    #[arg(long, value_delimiter = ',')]
    pub parity_card: Vec<String>,
    /// How a group is encoded; must match the parity model's training.
    #[arg(long, value_enum, default_value_t = EncoderKind::Sum)]
    pub encoder: EncoderKind,
    /// `mlp`: a learned code's decoder network (with --encoder mlp|conv
    /// and --code-card).
    #[arg(long, value_enum, default_value_t = Decoder::Subtract)]
    pub decoder: Decoder,
    /// A learned code's card (path or URI, from `train code`): with
    /// --encoder mlp|conv and --decoder mlp, the frontend encodes with its
    /// encoder network, the parity instances serve the base model itself
    /// (--parity-model defaults to the model's name), and lost outputs are
    /// rebuilt by its decoder network. Checked against --k, --r, --encoder
    /// and --decoder at start. Goes with the default --code parity (a
    /// learned code has parities too), not with --code berrut.
    #[arg(long, env = "CODED_CODE_CARD")]
    pub code_card: Option<String>,
    /// `eager` answers from the parity as soon as it can; `deadline` waits
    /// for the real answer until the observed latency quantile.
    #[arg(long, value_enum, default_value_t = ReconstructPolicy::Eager)]
    pub reconstruct_policy: ReconstructPolicy,
    /// Latency quantile that the `deadline` policy waits: of the calls to
    /// model instances not marked slow (the frontend's own windows), or of
    /// every model instance's calls (Prometheus).
    #[arg(long, default_value_t = 0.99)]
    pub deadline_quantile: f64,
    /// A query not answered after this many ms gets a 504 (a request's
    /// `timeout` parameter, in µs, may set a shorter deadline).
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// How long an incomplete group waits for more queries before it is
    /// padded with zero queries, in µs. Zero pads at once: protection never
    /// waits for traffic (tokio rounds other values up to ~1 ms).
    #[arg(long, env = "CODED_LINGER_US", default_value_t = 0)]
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
    /// Queries waiting for a batch before new requests get a 503 (as many
    /// again may wait in the backlog that orders them by `priority`).
    #[arg(long, default_value_t = 65_536)]
    pub max_queued: usize,
    /// Shed load by queueing delay (CoDel's signal): when every request
    /// answered for 100 ms took this many ms more than the fastest answers
    /// of the last 10 s (a standing queue, not a burst or a straggler), the
    /// cap on requests in flight is cut to what answers them within it
    /// (Little's law); it grows back by √cap per 100 ms while answers are
    /// fast. Requests over it get a 503 with Retry-After (gRPC:
    /// RESOURCE_EXHAUSTED) before their body is read, so the admitted are
    /// answered about as fast as when idle. Never above
    /// --max-inflight-requests. 0 or `off`: only the fixed caps.
    #[arg(long, env = "CODED_SHED_QUEUE_DELAY_MS", default_value_t = Limit::of(DEFAULT_TARGET_MS), value_name = "MS|off")]
    pub shed_queue_delay_ms: Limit,
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
    /// Append a trace of sampled coding batches to this file, one JSON line
    /// per batch: every call (slot or parity, instance, attempt), every
    /// result and every answer (real, rebuilt, failed), timed from the
    /// batch's start (see docs/operations.md, "Why a query was slow").
    #[arg(long, env = "CODED_TRACE_FILE")]
    pub trace_file: Option<std::path::PathBuf>,
    /// Share of coding batches traced (one in round(1/share)).
    #[arg(long, env = "CODED_TRACE_SAMPLE", default_value_t = 0.01)]
    pub trace_sample: f64,
    /// CA certificates (a PEM bundle, e.g. the ca.crt of the workers'
    /// kubernetes.io/tls Secret) that https instances' certificates may be
    /// signed by, besides the system roots.
    #[arg(long, env = "CODED_TLS_CA", value_name = "PATH")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Call the instances found behind --model-service and --parity-service
    /// over https (workers started with --tls-cert). Each pod is reached at
    /// its address, and its certificate must name the Service (the HOST of
    /// HOST:PORT), not the address. --model-endpoints URLs carry their own
    /// scheme.
    #[arg(long, env = "CODED_INSTANCES_TLS")]
    pub instances_tls: bool,
    /// Require `Authorization: Bearer <token>` (gRPC: `authorization`
    /// metadata) on every request but the health checks
    /// (/v2/health/live|ready, ServerLive, ServerReady, left open for
    /// kubelet probes): a 401 or UNAUTHENTICATED otherwise. The file holds
    /// the token (surrounding whitespace ignored), e.g. a mounted Secret.
    #[arg(long, env = "CODED_AUTH_TOKEN_FILE", value_name = "PATH")]
    pub auth_token_file: Option<std::path::PathBuf>,
}

impl FrontendOptions {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// What `--shed-queue-delay-ms` sheds at, unless off.
    pub fn shed(&self) -> Option<ShedConfig> {
        self.shed_queue_delay_ms
            .0
            .map(|ms| ShedConfig::with_target(Duration::from_millis(ms)))
    }

    pub fn resolve_interval(&self) -> Duration {
        Duration::from_millis(self.resolve_interval_ms)
    }

    /// Where the model instances, then each parity's instances (r of them,
    /// parity l's at l), come from: a fixed list or names to resolve, not
    /// both.
    pub fn sources(&self) -> anyhow::Result<(Source, Vec<Source>)> {
        let pick = |role: &str, urls: &[String], names: &[String]| {
            let names: Vec<String> = names
                .iter()
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect();
            if names.is_empty() {
                return Ok(Source::Fixed(urls.to_vec()));
            }
            if !urls.is_empty() {
                bail!("--{role}-endpoints and --{role}-service are alternatives: give one");
            }
            if let Some(bad) = names.iter().find(|n| !has_port(n)) {
                bail!(
                    "--{role}-service {bad:?} is not HOST:PORT (e.g. fashion-mlp-{role}.default.svc:8080)"
                );
            }
            Ok(Source::Service(names))
        };
        let models = pick("model", &self.model_endpoints, &self.model_service)?;
        let urls = by_parity(&self.parity_endpoints, self.r, "--parity-endpoints")?;
        let names = by_parity(&self.parity_service, self.r, "--parity-service")?;
        let parities = urls
            .iter()
            .zip(&names)
            .map(|(urls, names)| pick("parity", urls, names))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((models, parities))
    }
}

impl FrontendOptions {
    /// The Berrut code `--code berrut --n N` asks for, checked against the
    /// other flags; `None` with the parity code.
    pub fn berrut(&self) -> anyhow::Result<Option<BerrutCode>> {
        if self.code != CodeKind::Berrut {
            if let Some(n) = self.n {
                bail!("--n {n} is the Berrut code's number of coded queries: give --code berrut");
            }
            return Ok(None);
        }
        let n = self.n.unwrap_or(self.k + 1);
        let code = BerrutCode::new(self.k, n)?;
        if self.dispatch != DispatchMode::Coded {
            bail!("--code berrut is coded serving: it does not go with a --dispatch baseline");
        }
        if !(self.parity_endpoints.is_empty()
            && self.parity_service.is_empty()
            && self.parity_card.is_empty())
        {
            bail!(
                "--code berrut needs no parity model: drop --parity-endpoints, --parity-service and --parity-card"
            );
        }
        let listed = self.model_endpoints.len();
        if self.model_service.is_empty() && listed < n {
            bail!(
                "--code berrut --n {n} sends a group's n coded queries to n distinct model instances, but --model-endpoints lists {listed}: list at least {n}, or lower --n (k = {} < n)",
                self.k
            );
        }
        Ok(Some(code))
    }
}

/// Splits `l=VALUE` entries into r lists, parity l's at l; an entry without
/// `l=` is parity 0's (r = 1 needs no prefix).
pub fn by_parity(entries: &[String], r: usize, flag: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let mut lists = vec![Vec::new(); r.max(1)];
    for entry in entries {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let (l, value) = match entry.split_once('=') {
            Some((l, value)) if !l.contains(':') && !l.contains('/') => {
                let l: usize = l.trim().parse().map_err(|_| {
                    anyhow::anyhow!("{flag} {entry:?}: the parity before `=` must be a number")
                })?;
                (l, value.trim())
            }
            _ => (0, entry),
        };
        let Some(list) = lists.get_mut(l) else {
            bail!(
                "{flag} {entry:?} names parity {l}, but --r {r} has parities 0..{}",
                r.max(1) - 1
            );
        };
        list.push(value.to_owned());
    }
    Ok(lists)
}

impl FrontendOptions {
    /// The parity instances named on the command line, as (parity, URL).
    pub fn parity_urls(&self) -> anyhow::Result<Vec<(usize, String)>> {
        Ok(
            by_parity(&self.parity_endpoints, self.r, "--parity-endpoints")?
                .into_iter()
                .enumerate()
                .flat_map(|(l, urls)| urls.into_iter().map(move |u| (l, u)))
                .collect(),
        )
    }
}

/// Whether `name` ends in `:<port>` (`host:8080`, `[fd00::1]:8080`).
fn has_port(name: &str) -> bool {
    name.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains("://") && port.parse::<u16>().is_ok()
    })
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

    /// The options these flags give (tests): `args` without the leading
    /// `frontend`.
    pub fn parse<I: IntoIterator<Item = S>, S: Into<String>>(args: I) -> Result<Self, clap::Error> {
        use clap::Parser;
        let args = std::iter::once("frontend".to_owned()).chain(args.into_iter().map(Into::into));
        Standalone::try_parse_from(args).map(|s| s.options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_services_are_alternatives() {
        let o = FrontendOptions::parse([
            "--model-service",
            "m.ns.svc:8080",
            "--parity-service",
            "p:8080",
        ])
        .expect("services");
        let (models, parities) = o.sources().expect("sources");
        assert!(matches!(models, Source::Service(n) if n == ["m.ns.svc:8080"]));
        assert!(matches!(&parities[..], [Source::Service(n)] if n[..] == ["p:8080"]));
        assert_eq!(o.resolve_interval(), Duration::from_secs(1));
        // Mixed per role is fine.
        let o = FrontendOptions::parse([
            "--model-service",
            "m:8080",
            "--parity-endpoints",
            "http://p:1",
        ])
        .expect("mixed");
        assert!(matches!(
            o.sources().expect("sources").1[..],
            [Source::Fixed(_)]
        ));

        let err = FrontendOptions::parse([
            "--model-service",
            "m:8080",
            "--model-endpoints",
            "http://a:1",
        ])
        .expect_err("both refused")
        .to_string();
        assert!(err.contains("cannot be used with"), "{err}");
        let err = FrontendOptions::parse(["--parity-service", "p:8080"])
            .expect_err("no models refused")
            .to_string();
        assert!(err.contains("--model-endpoints"), "{err}");
        let o = FrontendOptions::parse(["--model-service", "no-port"]).expect("parses");
        let err = o.sources().expect_err("refused").to_string();
        assert!(err.contains("is not HOST:PORT"), "{err}");
        let o = FrontendOptions::parse(["--model-service", "http://m:8080"]).expect("parses");
        assert!(o.sources().is_err(), "a URL is not a name");
        let err = FrontendOptions::parse(["--model-service", "m:1", "--resolve-interval-ms", "10"])
            .expect_err("too often")
            .to_string();
        assert!(err.contains("10"), "{err}");
        // Programmatic options are checked too.
        let mut o = FrontendOptions::new(&["http://a:1".into()], &[]);
        o.model_service = vec!["m:8080".into()];
        let err = o.sources().expect_err("both refused").to_string();
        assert!(err.contains("alternatives"), "{err}");
    }

    #[test]
    fn berrut_needs_n_model_instances_and_no_parity() {
        let three = ["--model-endpoints", "http://a:1,http://b:1,http://c:1"];
        let o = FrontendOptions::parse(three).expect("parses");
        assert!(o.berrut().expect("parity code").is_none());
        let o =
            FrontendOptions::parse(three.into_iter().chain(["--code", "berrut"])).expect("parses");
        let code = o.berrut().expect("berrut").expect("a code");
        assert_eq!((code.k(), code.n()), (2, 3));
        let o = FrontendOptions::parse(three.into_iter().chain(["--code", "berrut", "--n", "4"]))
            .expect("parses");
        let err = o.berrut().expect_err("3 < n").to_string();
        assert!(err.contains("lists 3: list at least 4"), "{err}");
        let o = FrontendOptions::parse(three.into_iter().chain(["--code", "berrut", "--n", "2"]))
            .expect("parses");
        assert!(o.berrut().is_err(), "n must exceed k");
        let o = FrontendOptions::parse(["--model-service", "m:1", "--code", "berrut", "--n", "5"])
            .expect("parses");
        assert_eq!(o.berrut().expect("a service").map(|c| c.n()), Some(5));
        let o = FrontendOptions::parse(three.into_iter().chain([
            "--code",
            "berrut",
            "--parity-endpoints",
            "http://p:1",
        ]))
        .expect("parses");
        let err = o.berrut().expect_err("parity refused").to_string();
        assert!(err.contains("needs no parity model"), "{err}");
        let o = FrontendOptions::parse(three.into_iter().chain(["--n", "3"])).expect("parses");
        assert!(o.berrut().is_err(), "--n without --code berrut");
    }

    #[test]
    fn parity_instances_are_given_per_parity() {
        let o = FrontendOptions::parse([
            "--model-endpoints",
            "http://m:1",
            "--r",
            "2",
            "--parity-endpoints",
            "0=http://p0:1,1=http://p1:1,http://p0b:1",
        ])
        .expect("parses");
        let (_, parities) = o.sources().expect("sources");
        assert!(matches!(&parities[..], [Source::Fixed(a), Source::Fixed(b)]
            if a[..] == ["http://p0:1", "http://p0b:1"] && b[..] == ["http://p1:1"]));
        assert_eq!(
            o.parity_urls().expect("urls"),
            vec![
                (0, "http://p0:1".to_owned()),
                (0, "http://p0b:1".to_owned()),
                (1, "http://p1:1".to_owned())
            ]
        );
        let o = FrontendOptions::parse([
            "--model-endpoints",
            "http://m:1",
            "--r",
            "2",
            "--parity-service",
            "0=p0.ns.svc:8080,1=p1.ns.svc:8080",
        ])
        .expect("parses");
        let (_, parities) = o.sources().expect("sources");
        assert!(
            matches!(&parities[..], [Source::Service(a), Source::Service(b)]
            if a[..] == ["p0.ns.svc:8080"] && b[..] == ["p1.ns.svc:8080"])
        );
        // A parity beyond r, or not a number, is refused with a reason.
        let o = FrontendOptions::parse([
            "--model-endpoints",
            "http://m:1",
            "--parity-endpoints",
            "1=http://p:1",
        ])
        .expect("parses");
        let err = o.sources().expect_err("refused").to_string();
        assert!(
            err.contains("names parity 1, but --r 1 has parities 0..0"),
            "{err}"
        );
        let o = FrontendOptions::parse([
            "--model-endpoints",
            "http://m:1",
            "--parity-endpoints",
            "x=http://p:1",
        ])
        .expect("parses");
        let err = o.sources().expect_err("refused").to_string();
        assert!(err.contains("must be a number"), "{err}");
    }
}
