//! Runs one coding batch from start to last answer: the I/O around
//! [`BatchState`], which decides. Slot j of every group goes to one model
//! instance in one call, the groups encoded for parity l to an instance of
//! parity l in one call (k + r calls for the whole batch); this driver picks the
//! instances, makes the calls in their own tasks, sleeps until the state
//! wants to be woken, sends the answers and counts the metrics.
//!
//! Once every query has its answer the batch stops waiting: calls still
//! out (a straggler's, a paused instance's) run on in their own tasks until
//! they return or time out, so that their latency still marks a slow
//! instance, and count their own answers as late if their queries were
//! rebuilt. Before, the batch waited for them, so a paused instance kept
//! every batch it had a call in alive for up to the call timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::time::Instant;

use super::batch_state::{Action, Answer, BatchState, Call, Layout, Target, Waits};
use super::dispatch::Pool;
use super::group::{Query, QueryError, RowAnswer};
use super::instance::{CallError, Instance, Role};
use super::metrics::Metrics;
use super::trace::{BatchTrace, Tracer};
use crate::coding::{CodingError, Encoder, LinearCode};

pub use super::batch_state::ReconstructPolicy;

/// What every batch shares: the code, the instances, the metrics.
pub struct BatchContext {
    pub k: usize,
    pub item_shape: Vec<usize>,
    pub in_len: usize,
    pub out_len: usize,
    /// The code (k, r and its coefficients) the decoder solves with.
    pub code: LinearCode,
    /// One encoder per parity, parity l's at l.
    pub encoders: Vec<Box<dyn Encoder>>,
    /// A learned code's networks: its decoder rebuilds lost outputs.
    pub learned: Option<Arc<crate::coding::LearnedCode>>,
    pub policy: ReconstructPolicy,
    pub timeout: Duration,
    pub pool: Arc<Pool>,
    pub metrics: Arc<Metrics>,
    /// F(0), the output of a zero query, for padded groups.
    pub zero: OnceLock<Vec<f32>>,
    /// Sampled batches' traces (`--trace-file`).
    pub tracer: Option<Arc<Tracer>>,
}

impl BatchContext {
    /// Parity l's queries `[groups, in_len]` for `rows` (zero-padded to
    /// whole groups).
    fn encode(&self, l: usize, rows: &[Vec<f32>], groups: usize) -> Result<Vec<f32>, CodingError> {
        let encoder = self.encoders.get(l).ok_or(CodingError::Parities {
            k: self.k,
            r: l + 1,
        })?;
        let mut flat = vec![0f32; groups * self.k * self.in_len];
        for (q, row) in rows.iter().enumerate() {
            flat[q * self.in_len..(q + 1) * self.in_len].copy_from_slice(row);
        }
        encoder.encode_flat(flat, groups)
    }

    /// The waits the watcher last concluded.
    fn waits(&self) -> Waits {
        let s = self.pool.snapshot();
        Waits {
            eager_after: s.eager_after,
            reconstruct_after: s.reconstruct_after,
            retry_after: s.retry_after,
        }
    }
}

/// A call's result, for its batch.
struct Event {
    target: Target,
    /// The instance that answered (or failed).
    instance: usize,
    result: Result<Vec<f32>, CallError>,
}

type Reply = oneshot::Sender<Result<RowAnswer, QueryError>>;

struct Driver {
    ctx: Arc<BatchContext>,
    layout: Layout,
    rows: Vec<Vec<f32>>,
    replies: Vec<Option<Reply>>,
    deadline: Instant,
    /// The instances each slot was sent to, so that a retry goes elsewhere.
    tried: Vec<Vec<usize>>,
    /// The instances with a call of each slot still out: a retry never
    /// goes there.
    holding: Vec<Vec<usize>>,
    events: mpsc::UnboundedSender<Event>,
    /// Per slot, the real answers that a call still out once the batch is
    /// done drops (its queries were rebuilt): set when the batch is done,
    /// taken by the first such call to answer.
    late: Arc<[AtomicU64]>,
    /// This batch's trace, when it is sampled.
    trace: Option<BatchTrace>,
}

pub async fn run(ctx: Arc<BatchContext>, queries: Vec<Query>, permit: OwnedSemaphorePermit) {
    let running = Running::enter(&ctx.metrics);
    let layout = Layout {
        k: ctx.k,
        r: ctx.code.r(),
        n: queries.len(),
        out_len: ctx.out_len,
    };
    ctx.metrics.batch_groups.observe(layout.groups() as f64);
    for g in 0..layout.groups() {
        ctx.metrics
            .group_fill
            .observe((layout.n - g * layout.k).min(layout.k) as f64);
    }
    let started = Instant::now();
    let deadline = queries
        .iter()
        .map(|q| q.deadline)
        .min()
        .unwrap_or(started + ctx.timeout);
    let (rows, replies): (Vec<_>, Vec<_>) =
        queries.into_iter().map(|q| (q.row, Some(q.reply))).unzip();
    let mut state = BatchState::new(
        layout,
        ctx.policy,
        ctx.code.clone(),
        deadline.into_std(),
        started.into_std(),
    )
    .with_learned(ctx.learned.clone());
    let (events, mut inbox) = mpsc::unbounded_channel();
    let trace = ctx.tracer.as_ref().and_then(|t| {
        let deadline_us = deadline.saturating_duration_since(started).as_micros() as u64;
        t.begin(layout.k, layout.n, deadline_us)
    });
    let mut driver = Driver {
        layout,
        rows,
        replies,
        deadline,
        tried: vec![Vec::new(); layout.k],
        holding: vec![Vec::new(); layout.k],
        events,
        late: (0..layout.k).map(|_| AtomicU64::new(0)).collect(),
        trace,
        ctx,
    };
    driver.start(&mut state);

    while !state.is_done() {
        let Some(wake) = state.next_wake(&driver.ctx.waits()) else {
            break;
        };
        tokio::select! {
            event = inbox.recv() => match event {
                Some(Event { target, instance, result }) => {
                    driver.returned(target, instance);
                    if let Some(t) = &mut driver.trace {
                        t.result(target, result.as_ref().err().map(ToString::to_string));
                    }
                    match result {
                        Ok(output) => state.answered(target, output),
                        Err(e) => state.failed(target, e.to_string()),
                    }
                }
                None => break,
            },
            () = tokio::time::sleep_until(Instant::from_std(wake)) => {}
        }
        driver.learn_zero(&mut state);
        state.poll(Instant::now().into_std(), &driver.ctx.waits());
        driver.act(&mut state);
    }
    driver.finish(&state, inbox);
    drop(running);
    drop(permit);
}

/// Counts a batch in `coded_frontend_batches_running` while it runs, also
/// when its task is dropped (the runtime shutting down).
struct Running(prometheus::IntGauge);

impl Running {
    fn enter(metrics: &Metrics) -> Self {
        metrics.batches_running.inc();
        Running(metrics.batches_running.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Driver {
    /// Makes the batch's first calls: k distinct model instances picked
    /// together, and one instance of each parity.
    fn start(&mut self, state: &mut BatchState) {
        self.learn_zero(state);
        let mut slots = Vec::new();
        let mut parities = Vec::new();
        for action in state.take_actions() {
            match action {
                Action::Call(Call {
                    target: Target::Slot(j),
                    ..
                }) => slots.push(j),
                Action::Call(Call {
                    target: Target::Parity(l),
                    ..
                }) => parities.push(l),
                // A new batch answers nothing before its first poll.
                Action::Answer { .. } | Action::LateDropped(_) => {}
            }
        }
        let picked = self.ctx.pool.pick(Role::Model, slots.len(), &[]);
        if let Some(&j) = slots.first() {
            let (rows, data) = self.slot_rows(j);
            self.sample(Role::Model, &picked, rows, &data);
        }
        let mut picked = picked.into_iter();
        for j in slots {
            match picked.next() {
                Some(instance) => self.send_slot(j, instance, 0),
                None => state.failed(Target::Slot(j), NO_MODEL.to_owned()),
            }
        }
        for l in parities {
            self.send_parity(state, l, 0);
        }
    }

    /// A call of `target` to `instance` is back: the instance no longer
    /// holds it.
    fn returned(&mut self, target: Target, instance: usize) {
        if let Target::Slot(j) = target
            && let Some(holding) = self.holding.get_mut(j)
            && let Some(at) = holding.iter().position(|&i| i == instance)
        {
            holding.swap_remove(at);
        }
    }

    fn learn_zero(&self, state: &mut BatchState) {
        if !state.knows_zero()
            && let Some(zero) = self.ctx.zero.get()
        {
            state.learn_zero(zero);
        }
    }

    /// Carries out what the state decided.
    fn act(&mut self, state: &mut BatchState) {
        for action in state.take_actions() {
            match action {
                Action::Call(call) => self.retry(state, call),
                Action::Answer { query, answer } => self.answer(query, answer),
                Action::LateDropped(n) => self.ctx.metrics.late_answers.inc_by(n as u64),
            }
        }
    }

    /// A call after the first ones: a slot sent again, to an instance it
    /// has not tried when there is one.
    fn retry(&mut self, state: &mut BatchState, call: Call) {
        match call.target {
            Target::Slot(j) => {
                let Some(tried) = self.tried.get(j) else {
                    return;
                };
                let holding = self.holding.get(j).map_or(&[][..], Vec::as_slice);
                match self.ctx.pool.pick_retry(Role::Model, tried, holding) {
                    Some(instance) => {
                        if call.attempt > 0 {
                            self.ctx.metrics.retries.inc();
                        }
                        tracing::debug!(slot = j, instance = %instance.url, "retrying a slot");
                        self.send_slot(j, instance, call.attempt);
                    }
                    // Reported as a failed call: the state backs off
                    // before asking again.
                    None if holding.is_empty() => state.failed(call.target, NO_MODEL.to_owned()),
                    None => state.failed(call.target, NO_OTHER_MODEL.to_owned()),
                }
            }
            Target::Parity(l) => self.send_parity(state, l, call.attempt),
        }
    }

    fn answer(&mut self, query: usize, answer: Answer) {
        let Some(reply) = self.replies.get_mut(query).and_then(Option::take) else {
            return;
        };
        if let Some(t) = &mut self.trace {
            match &answer {
                Answer::Real(_) => t.answer(query, "real", None),
                Answer::Rebuilt(_) => t.answer(query, "rebuilt", None),
                Answer::Failed(detail) => t.answer(query, "failed", Some(detail.clone())),
            }
        }
        let metrics = &self.ctx.metrics;
        let result = match answer {
            Answer::Real(output) => Ok(RowAnswer {
                output,
                reconstructed: false,
            }),
            Answer::Rebuilt(output) => {
                metrics.reconstructions.inc();
                if self.ctx.pool.idle_usable_model() {
                    metrics.rebuilt_while_idle.inc();
                }
                Ok(RowAnswer {
                    output,
                    reconstructed: true,
                })
            }
            Answer::Failed(detail) => {
                metrics.timeouts.inc();
                Err(QueryError::Deadline {
                    timeout_ms: self.ctx.timeout.as_millis() as u64,
                    detail,
                })
            }
        };
        let _ = reply.send(result);
    }

    fn call_timeout(&self) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    }

    /// Slot j's rows, one per group it has a query in, and their count.
    fn slot_rows(&self, j: usize) -> (usize, Vec<f32>) {
        let members = self.layout.members(j);
        let data = members
            .iter()
            .flat_map(|&q| self.rows[q].iter().copied())
            .collect();
        (members.len(), data)
    }

    /// Copies of a call to instances of `role` marked slow (see
    /// `Pool::sample`).
    fn sample(&self, role: Role, picked: &[Arc<Instance>], rows: usize, data: &[f32]) {
        let ctx = &self.ctx;
        let sent = ctx.pool.sample(
            role,
            picked,
            rows,
            &ctx.item_shape,
            data,
            ctx.out_len,
            self.call_timeout(),
        );
        ctx.metrics.sampled_calls.inc_by(sent as u64);
    }

    fn send_slot(&mut self, j: usize, instance: Arc<Instance>, attempt: usize) {
        let (rows, data) = self.slot_rows(j);
        if let Some(tried) = self.tried.get_mut(j) {
            tried.push(instance.id);
        }
        if let Some(holding) = self.holding.get_mut(j) {
            holding.push(instance.id);
        }
        self.call(instance, Target::Slot(j), attempt, rows, data);
    }

    /// Encodes the groups for parity l and sends them to an instance of
    /// parity l; without either the batch has one parity less.
    fn send_parity(&mut self, state: &mut BatchState, l: usize, attempt: usize) {
        let groups = self.layout.groups();
        let target = Target::Parity(l);
        match self.ctx.encode(l, &self.rows, groups) {
            Ok(parity_rows) => {
                let picked: Vec<_> = self.ctx.pool.pick_parity(l).into_iter().collect();
                self.sample(Role::Parity, &picked, groups, &parity_rows);
                match picked.into_iter().next() {
                    Some(instance) => self.call(instance, target, attempt, groups, parity_rows),
                    None => state.failed(target, format!("{NO_PARITY} {l}")),
                }
            }
            Err(e) => {
                tracing::warn!("cannot encode a coding batch for parity {l}: {e}");
                state.failed(target, format!("cannot encode the batch: {e}"));
            }
        }
    }

    /// Runs one call in its own task (it may outlive the batch) and reports
    /// its result to the batch, or counts it as late once the batch is done.
    fn call(
        &mut self,
        instance: Arc<Instance>,
        target: Target,
        attempt: usize,
        rows: usize,
        data: Vec<f32>,
    ) {
        if let Some(t) = &mut self.trace {
            t.call(target, &instance.url, attempt);
        }
        let item = self.ctx.item_shape.clone();
        let out_len = self.ctx.out_len;
        let timeout = self.call_timeout();
        let events = self.events.clone();
        let late = self.late.clone();
        let metrics = self.ctx.metrics.clone();
        tokio::spawn(async move {
            let result = instance.infer(rows, &item, data, out_len, timeout).await;
            if let Err(e) = &result {
                tracing::debug!(instance = %instance.url, role = instance.role.as_str(), "call failed: {e}");
            }
            let event = Event {
                target,
                instance: instance.id,
                result,
            };
            if let Err(mpsc::error::SendError(event)) = events.send(event) {
                count_late(&late, &metrics, &event);
            }
        });
    }

    /// Stops waiting: publishes what each slot's late answer would drop,
    /// then closes the inbox, counting what had already arrived there.
    fn finish(mut self, state: &BatchState, mut inbox: mpsc::UnboundedReceiver<Event>) {
        if let (Some(tracer), Some(trace)) = (&self.ctx.tracer, self.trace.take()) {
            tracer.finish(trace);
        }
        for (j, late) in self.late.iter().enumerate() {
            late.store(state.late_if_answered(j) as u64, Ordering::SeqCst);
        }
        inbox.close();
        while let Ok(event) = inbox.try_recv() {
            count_late(&self.late, &self.ctx.metrics, &event);
        }
    }
}

/// Counts a slot's real answer that came after its batch was done, if its
/// queries had been rebuilt (once per slot, however many calls it had).
fn count_late(late: &[AtomicU64], metrics: &Metrics, event: &Event) {
    if let (Target::Slot(j), Ok(_)) = (event.target, &event.result)
        && let Some(n) = late.get(j)
    {
        metrics.late_answers.inc_by(n.swap(0, Ordering::SeqCst));
    }
}

const NO_MODEL: &str = "no model instance to send the query to";
const NO_OTHER_MODEL: &str =
    "no model instance to send the query to but the one its call is still out at";
const NO_PARITY: &str = "no instance to send the encoded groups to for parity";

#[cfg(test)]
mod tests;
