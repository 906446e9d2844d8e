//! The frontend as a v2 engine: rows of a request become queries, queries
//! become coding groups, and the answers (real or rebuilt) go back in row
//! order, with `parameters.reconstructed` set when any row was rebuilt.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::http::StatusCode;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::baseline::{self, DispatchMode};
use super::batch::BatchContext;
use super::cards;
use super::discovery::{self, Factory, Found, Resolver, Source};
use super::dispatch::Pool;
use super::group::{self, GroupConfig, Query, QueryError};
use super::instance::Role;
use super::metrics::Metrics;
use super::options::FrontendOptions;
use super::prometheus::{PromConfig, PromSource};
use super::trace::Tracer;
use super::watcher::{self, WatchConfig};
use crate::coding::{Encoder, LearnedParity, LinearCode, parity_encoder};
use crate::http::{Answer, Engine, EngineError};
use crate::protocol::client::Client;
use crate::protocol::v2::{Datatype, TensorMetadata};
use crate::protocol::{ModelInfo, ModelInput, TensorSpec};
use crate::tls::ClientTrust;

pub struct Frontend {
    info: ModelInfo,
    dispatch: DispatchMode,
    queue: mpsc::Sender<Query>,
    ctx: Arc<BatchContext>,
    /// Instances up before the frontend first reports ready: k model and
    /// r parity instances for coded serving (fewer when a fixed list names
    /// fewer).
    need_models: usize,
    need_parities: usize,
    /// Set once those were up; from then on one model instance up is
    /// enough to stay ready and serve degraded, rather than take every
    /// frontend out of its Service when a pod goes away.
    was_ready: AtomicBool,
}

/// A started frontend: the engine, its metrics, and the assembler task
/// that finishes once the engine is dropped and the queue is empty.
pub struct Started {
    pub engine: Arc<Frontend>,
    pub metrics: Arc<Metrics>,
    pub assembler: JoinHandle<()>,
}

impl Frontend {
    /// Reads the model's metadata, sets up the instances and starts the
    /// watcher, the zero-output task and the assembler; instances named by
    /// a service are looked up with the system resolver.
    pub async fn start(options: &FrontendOptions) -> anyhow::Result<Started> {
        Self::start_with(options, discovery::system_resolver()).await
    }

    /// [`Frontend::start`] with the resolver that service names go through.
    pub async fn start_with(
        options: &FrontendOptions,
        resolver: Resolver,
    ) -> anyhow::Result<Started> {
        let code = LinearCode::new(options.k, options.r)?;
        let berrut = options.berrut()?;
        let (models, parities) = options.sources()?;
        if models.is_empty() {
            bail!(
                "give the model instances: --model-endpoints URL,... or --model-service HOST:PORT"
            );
        }
        // Coded with parity models; Berrut's coded serving needs none.
        let coded = options.dispatch == DispatchMode::Coded && berrut.is_none();
        if coded && parities.iter().all(Source::is_empty) {
            bail!(
                "give the parity instances: --parity-endpoints URL,... or --parity-service HOST:PORT (or choose a --dispatch baseline)"
            );
        }
        if let Some(l) = parities.iter().position(Source::is_empty).filter(|_| coded) {
            bail!(
                "--r {} needs instances of every parity, and none serve parity {l}: give them as {l}=URL in --parity-endpoints or {l}=HOST:PORT in --parity-service",
                options.r
            );
        }
        let timeout = options.timeout();
        let every = options.resolve_interval();
        let trust = ClientTrust::from_ca_file(options.tls_ca.as_deref())?;
        let (mut info, card_name) =
            model_info(options, &models, &resolver, timeout, &trust).await?;
        let name = options
            .model_name
            .clone()
            .or(card_name)
            .unwrap_or_else(|| info.name.clone());
        info.name = name.clone();
        info.platform = "coded-sidecar-frontend".to_owned();
        let instance_model = options.instance_model.clone().unwrap_or(name.clone());
        let learned = cards::load_learned(options).await?;
        // A learned code's parities are queries to the base model itself.
        let parity_model = options
            .parity_model
            .clone()
            .unwrap_or_else(|| match learned {
                Some(_) => instance_model.clone(),
                None => format!("{name}-parity"),
            });
        let parity_count = if berrut.is_some() { 0 } else { options.r };
        let encoders = match &learned {
            Some(c) => (0..parity_count)
                .map(|l| Ok(Box::new(LearnedParity::new(c.clone(), l)?) as Box<dyn Encoder>))
                .collect::<Result<Vec<_>, crate::coding::CodingError>>(),
            None => (0..parity_count)
                .map(|l| parity_encoder(options.encoder, &code, l, &info.input.shape))
                .collect::<Result<Vec<_>, _>>(),
        }
        .context("setting up the encoders")?;
        if let Some(c) = &learned
            && c.spec().item != info.input.shape
        {
            bail!(
                "--code-card {} codes queries of shape {:?}, but the model takes {:?}",
                options.code_card.as_deref().unwrap_or_default(),
                c.spec().item,
                info.input.shape
            );
        }
        cards::check_parity_cards(options).await?;
        if coded && !models.is_service() && options.model_endpoints.len() < options.k {
            tracing::warn!(
                models = options.model_endpoints.len(),
                k = options.k,
                "fewer model instances than k: slots share instances, and one slow instance can cost two answers of a group"
            );
        }

        let metrics = Arc::new(Metrics::new(&name, options.k).context("setting up metrics")?);
        let epoch = std::time::Instant::now();
        let factory = Arc::new(
            Factory::new(
                epoch,
                timeout,
                metrics.clone(),
                info.input.name.clone(),
                info.output.name.clone(),
                instance_model,
                parity_model,
            )
            .with_tls(trust, options.instances_tls),
        );
        // Listed instances get calls at once, as before; discovered ones
        // after their first probe (discovery::run probes them as they come).
        let fixed = |role: Role, urls: &[(usize, String)]| {
            urls.iter()
                .map(|(l, url)| factory.make(role, *l, url, true, None))
                .collect::<anyhow::Result<Vec<_>>>()
        };
        let model_urls: Vec<(usize, String)> = options
            .model_endpoints
            .iter()
            .map(|u| (0, u.clone()))
            .collect();
        let pool = Arc::new(Pool::new(
            fixed(Role::Model, &model_urls)?,
            fixed(Role::Parity, &options.parity_urls()?)?,
        ));
        let sources = std::iter::once(((Role::Model, 0), &models)).chain(
            parities
                .iter()
                .enumerate()
                .map(|(l, s)| ((Role::Parity, l), s)),
        );
        for (role, source) in sources {
            if source.is_service() {
                // The first lookup before serving; not fatal if it finds
                // nothing (pods starting): readiness waits for instances.
                discovery::refresh(&pool, role, source, &resolver, &factory, every).await;
                tokio::spawn(discovery::run(
                    Arc::downgrade(&pool),
                    role,
                    source.clone(),
                    every,
                    resolver.clone(),
                    factory.clone(),
                ));
            }
        }
        let tracer = match &options.trace_file {
            Some(path) => Some(Arc::new(Tracer::create(path, options.trace_sample)?)),
            None => None,
        };
        let ctx = Arc::new(BatchContext {
            k: options.k,
            item_shape: info.input.shape.clone(),
            in_len: info.input.row_len(),
            out_len: info.output.row_len(),
            code,
            encoders,
            berrut: berrut.clone(),
            learned,
            policy: options.reconstruct_policy,
            timeout,
            pool: pool.clone(),
            metrics: metrics.clone(),
            zero: OnceLock::new(),
            tracer,
        });

        let watch = WatchConfig {
            quantile: options.deadline_quantile,
            prometheus_every: Duration::from_millis(options.prometheus_interval_ms),
            ..WatchConfig::default()
        };
        let prometheus = match &options.prometheus_url {
            Some(url) => Some(
                PromSource::new(PromConfig {
                    url: url.clone(),
                    selector: options.prometheus_selector.clone(),
                    window: options.prometheus_window.clone(),
                    quantile: options.deadline_quantile,
                    timeout: watch.prometheus_every.min(Duration::from_secs(2)),
                })
                .context("--prometheus-url")?,
            ),
            None => None,
        };
        tokio::spawn(watcher::run(
            Arc::downgrade(&pool),
            metrics.clone(),
            watch,
            prometheus,
        ));
        tokio::spawn(learn_zero_output(Arc::downgrade(&ctx)));
        let (queue, inbox) = mpsc::channel(options.max_queued.max(1));
        let assembler = tokio::spawn(group::assemble(
            ctx.clone(),
            inbox,
            GroupConfig {
                linger: Duration::from_micros(options.linger_us),
                max_groups: options.max_groups,
                max_inflight: options.max_inflight_batches,
                max_backlog: options.max_queued,
            },
        ));
        tracing::info!(
            model = %name,
            k = options.k,
            code = %options.code,
            encoder = %options.encoder,
            policy = ?options.reconstruct_policy,
            models = ?models,
            parities = ?parities,
            "frontend ready to code"
        );
        let clamp = |need: usize, source: &Source| match source {
            Source::Fixed(urls) => need.min(urls.len()),
            Source::Service(_) => need,
        };
        let (need_models, need_parities) = match &berrut {
            Some(b) => (clamp(b.n(), &models), 0),
            None if coded => (
                clamp(options.k, &models),
                parities.iter().filter(|s| clamp(1, s) > 0).count(),
            ),
            None => (1, 0),
        };
        Ok(Started {
            engine: Arc::new(Frontend {
                info,
                dispatch: options.dispatch,
                queue,
                ctx,
                need_models,
                need_parities,
                was_ready: AtomicBool::new(false),
            }),
            metrics,
            assembler,
        })
    }
}

impl Engine for Frontend {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Ready once k model and r parity instances are up (probed ready,
    /// not failing calls); then while any model instance is.
    fn ready(&self) -> bool {
        let pool = &self.ctx.pool;
        let was = self.was_ready.load(Ordering::Relaxed);
        let ready = readiness(
            was,
            (pool.up(Role::Model), self.need_models),
            (pool.parities_up(self.need_parities), self.need_parities),
        );
        if ready && !was {
            self.was_ready.store(true, Ordering::Relaxed);
        }
        ready
    }

    /// The request's `timeout` parameter, when shorter than `--timeout-ms`,
    /// is its deadline: at it the request gets its 504, and its queries
    /// still waiting for a batch are dropped unsent.
    async fn infer(&self, input: ModelInput) -> Result<Answer, EngineError> {
        let ctx = &self.ctx;
        ctx.metrics.queries.inc_by(input.rows as u64);
        let now = Instant::now();
        let deadline = now + ctx.timeout;
        let own = input.timeout.filter(|&t| t < ctx.timeout);
        let Some(timeout) = own else {
            return self.answer(input, deadline).await;
        };
        let rows = input.rows as u64;
        match tokio::time::timeout_at(now + timeout, self.answer(input, deadline)).await {
            Ok(answer) => answer,
            Err(_) => {
                ctx.metrics.timeouts.inc_by(rows);
                Err(EngineError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "deadline",
                    format!(
                        "no answer within the request's timeout of {} µs",
                        timeout.as_micros()
                    ),
                ))
            }
        }
    }
}

impl Frontend {
    async fn answer(&self, input: ModelInput, deadline: Instant) -> Result<Answer, EngineError> {
        let ctx = &self.ctx;
        if self.dispatch != DispatchMode::Coded {
            let output = baseline::infer(
                &ctx.pool,
                self.dispatch,
                baseline::Call {
                    rows: input.rows,
                    item_shape: &ctx.item_shape,
                    data: &input.data,
                    out_len: ctx.out_len,
                    deadline,
                },
                &ctx.metrics.sampled_calls,
            )
            .await
            .inspect_err(|_| ctx.metrics.timeouts.inc_by(input.rows as u64))?;
            return Ok(Answer::new(output));
        }
        let mut answers = Vec::with_capacity(input.rows);
        for row in input.data.chunks(ctx.in_len) {
            let (reply, answer) = oneshot::channel();
            let query = Query {
                row: row.to_vec(),
                deadline,
                priority: input.priority,
                reply,
            };
            self.queue.try_send(query).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => EngineError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "too many queries waiting for a coding batch; retry later",
                ),
                mpsc::error::TrySendError::Closed(_) => closed(),
            })?;
            answers.push(answer);
        }
        let mut data = Vec::with_capacity(input.rows * ctx.out_len);
        let mut rebuilt = Vec::new();
        for (i, answer) in answers.into_iter().enumerate() {
            match answer.await {
                Ok(Ok(row)) => {
                    data.extend_from_slice(&row.output);
                    if row.reconstructed {
                        rebuilt.push(i);
                    }
                }
                Ok(Err(e @ QueryError::Deadline { .. })) => {
                    return Err(EngineError::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "deadline",
                        e.to_string(),
                    ));
                }
                Ok(Err(QueryError::Closed)) | Err(_) => return Err(closed()),
            }
        }
        let mut answer = Answer::new(data);
        answer
            .parameters
            .insert("reconstructed".into(), (!rebuilt.is_empty()).into());
        if input.rows > 1 && !rebuilt.is_empty() {
            answer
                .parameters
                .insert("reconstructed_rows".into(), rebuilt.into());
        }
        Ok(answer)
    }
}

/// Whether the frontend is ready, given whether it has been, and how many
/// (model, parity) instances are up against how many it needs.
fn readiness(
    was: bool,
    (models, need_models): (usize, usize),
    (parities, need_parities): (usize, usize),
) -> bool {
    if was {
        models >= 1
    } else {
        models >= need_models.max(1) && parities >= need_parities
    }
}

fn closed() -> EngineError {
    EngineError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the frontend is shutting down",
    )
}

/// The served metadata: from the card when given, else from the first model
/// instance that answers, asked again until one does (instances may still
/// be starting). Also returns the card's name.
async fn model_info(
    options: &FrontendOptions,
    models: &Source,
    resolver: &Resolver,
    timeout: Duration,
    trust: &ClientTrust,
) -> anyhow::Result<(ModelInfo, Option<String>)> {
    if let Some(uri) = &options.model_card {
        let card = crate::model::fetch::card(uri)
            .await
            .with_context(|| format!("reading the model card {uri}"))?;
        let info = ModelInfo {
            name: card.name.clone(),
            versions: vec!["1".into()],
            platform: String::new(),
            input: TensorSpec::fp32(card.input.name.clone(), card.input.shape.clone()),
            output: TensorSpec::fp32(card.output.name.clone(), card.output.shape.clone()),
        };
        return Ok((info, Some(card.name)));
    }
    let Some(name) = options
        .instance_model
        .clone()
        .or(options.model_name.clone())
    else {
        bail!(
            "without --model-card, give --model-name (or --instance-model) to read the metadata from a model instance"
        );
    };
    let started = Instant::now();
    let mut warned_at = started;
    let mut last = String::from("no instance found yet");
    loop {
        let found: Found = models
            .find_as(resolver, Duration::from_secs(2), options.instances_tls)
            .await;
        if let Some(e) = &found.error {
            last = e.clone();
        }
        for url in &found.urls {
            let verify_as = found.verify_as.get(url).map(String::as_str);
            let client =
                Client::with_trust(url, timeout.min(Duration::from_secs(2)), trust, verify_as)?;
            match client.model_metadata(&name, None).await {
                Ok(m) => {
                    let tensor = |t: Option<&TensorMetadata>, what: &str| {
                        let t = t.with_context(|| format!("{url} lists no {what} for {name}"))?;
                        if t.datatype != Datatype::Fp32.as_str() {
                            bail!(
                                "{url}: {what} {} is {}, the frontend codes FP32 tensors",
                                t.name,
                                t.datatype
                            );
                        }
                        let shape = t
                            .shape
                            .iter()
                            .skip(1)
                            .map(|&d| {
                                usize::try_from(d).with_context(|| {
                                    format!(
                                        "{url}: {what} {} has a variable dimension {:?}",
                                        t.name, t.shape
                                    )
                                })
                            })
                            .collect::<anyhow::Result<Vec<_>>>()?;
                        Ok(TensorSpec::fp32(t.name.clone(), shape))
                    };
                    let info = ModelInfo {
                        name: m.name.clone(),
                        versions: vec!["1".into()],
                        platform: String::new(),
                        input: tensor(m.inputs.first(), "input")?,
                        output: tensor(m.outputs.first(), "output")?,
                    };
                    return Ok((info, None));
                }
                Err(e) => last = e.to_string(),
            }
        }
        if warned_at.elapsed() >= Duration::from_secs(10) {
            warned_at = Instant::now();
            tracing::warn!(
                waited = ?started.elapsed(),
                "no model instance has given the metadata of {name} yet; still asking: {last}"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Asks model instances for F(0) until one answers; padded groups need it.
async fn learn_zero_output(ctx: std::sync::Weak<BatchContext>) {
    loop {
        let Some(ctx) = ctx.upgrade() else { return };
        if ctx.zero.get().is_some() {
            return;
        }
        for instance in ctx.pool.pick(Role::Model, ctx.pool.models().len(), &[]) {
            let zero = vec![0f32; ctx.in_len];
            match instance
                .infer(
                    1,
                    &ctx.item_shape,
                    zero,
                    ctx.out_len,
                    Duration::from_secs(2),
                )
                .await
            {
                Ok(output) => {
                    let _ = ctx.zero.set(output);
                    tracing::debug!(instance = %instance.url, "learned F(0) for padding");
                    return;
                }
                Err(e) => tracing::debug!("F(0) not known yet: {e}"),
            }
        }
        drop(ctx);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::readiness;

    #[test]
    fn ready_with_k_models_and_r_parities_then_while_any_model_is_up() {
        // Starting, k = 2, r = 1.
        assert!(!readiness(false, (0, 2), (0, 1)));
        assert!(!readiness(false, (1, 2), (1, 1)));
        assert!(!readiness(false, (2, 2), (0, 1)));
        assert!(readiness(false, (2, 2), (1, 1)));
        // Once ready, losing instances degrades instead of leaving the
        // Service...
        assert!(readiness(true, (1, 2), (0, 1)));
        // ...until no model instance is left.
        assert!(!readiness(true, (0, 2), (1, 1)));
        // Baselines need one model instance and no parity.
        assert!(readiness(false, (1, 1), (0, 0)));
    }
}
