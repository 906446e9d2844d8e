//! Runs one coding batch from start to last answer: the I/O around
//! [`BatchState`], which decides. Slot j of every group goes to one model
//! instance in one call, the groups encoded for parity l to an instance of
//! parity l in one call (k + r calls for the whole batch); this driver picks the
//! instances, makes the calls in their own tasks, sleeps until the state
//! wants to be woken, sends the answers and counts the metrics. With the
//! Berrut code ([`BerrutState`] decides) slot i is coded query i of every
//! group, n calls to n model instances, and there are no parity calls.
//!
//! Once every query has its answer the batch stops waiting. A call still
//! out (a straggler's, a paused instance's) runs on in its own task until it
//! is late (`Instance::late_after`), so that an answer just behind the
//! rebuild still counts as in time, and is then given up: dropping it
//! closes its connection, and the worker skips rows whose caller is gone
//! instead of working through a backlog of answers nobody waits for (a
//! paused worker, resumed, was 400–600 ms behind). The instance's pace
//! counts the call as late, so giving up does not hide a slow instance.
//! A call that answers first counts its answer as late if its queries were
//! rebuilt.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot, watch};
use tokio::time::Instant;

use super::batch_state::{
    Action, Answer, BatchState, BerrutState, Call, CodingBatch, Layout, Target, Waits,
};
use super::dispatch::Pool;
use super::group::{Query, QueryError, RowAnswer};
use super::instance::{CallError, Instance, Role};
use super::metrics::Metrics;
use super::trace::{BatchTrace, Tracer};
use crate::coding::{BerrutCode, CodingError, Encoder, LinearCode};

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
    /// The Berrut code (`--code berrut`): when set, batches send its n
    /// coded queries to model instances and decode every answer from
    /// them; `code` and `encoders` are then unused.
    pub berrut: Option<BerrutCode>,
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
        encoder.encode_flat(self.padded(rows, groups), groups)
    }

    /// `rows` as `[groups, k, in_len]`, zero-padded to whole groups.
    fn padded(&self, rows: &[Vec<f32>], groups: usize) -> Vec<f32> {
        let mut flat = vec![0f32; groups * self.k * self.in_len];
        for (q, row) in rows.iter().enumerate() {
            flat[q * self.in_len..(q + 1) * self.in_len].copy_from_slice(row);
        }
        flat
    }

    /// Calls a batch makes to model instances: k slots, or Berrut's n.
    fn slots(&self) -> usize {
        self.berrut.as_ref().map_or(self.k, BerrutCode::n)
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
    /// Set once every query has its answer: calls still out are given up
    /// once late.
    done: watch::Sender<bool>,
}

pub async fn run(ctx: Arc<BatchContext>, queries: Vec<Query>, permit: OwnedSemaphorePermit) {
    let running = Running::enter(&ctx.metrics);
    let layout = Layout {
        k: ctx.k,
        r: if ctx.berrut.is_some() {
            0
        } else {
            ctx.code.r()
        },
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
    let mut state: Box<dyn CodingBatch> = match &ctx.berrut {
        Some(code) => Box::new(BerrutState::new(
            layout,
            code.clone(),
            deadline.into_std(),
            started.into_std(),
        )),
        None => Box::new(
            BatchState::new(
                layout,
                ctx.policy,
                ctx.code.clone(),
                deadline.into_std(),
                started.into_std(),
            )
            .with_learned(ctx.learned.clone()),
        ),
    };
    let slots = ctx.slots();
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
        tried: vec![Vec::new(); slots],
        holding: vec![Vec::new(); slots],
        events,
        late: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        trace,
        done: watch::Sender::new(false),
        ctx,
    };
    driver.start(state.as_mut());

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
        driver.learn_zero(state.as_mut());
        state.poll(Instant::now().into_std(), &driver.ctx.waits());
        driver.act(state.as_mut());
    }
    driver.finish(state.as_ref(), inbox);
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
    fn start(&mut self, state: &mut dyn CodingBatch) {
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
        if let Some(&j) = slots.first()
            && let Ok((rows, data)) = self.slot_rows(j)
        {
            self.sample(Role::Model, &picked, rows, &data);
        }
        let mut picked = picked.into_iter();
        for j in slots {
            match picked.next() {
                Some(instance) => self.send_slot(state, j, instance, 0),
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

    fn learn_zero(&self, state: &mut dyn CodingBatch) {
        if !state.knows_zero()
            && let Some(zero) = self.ctx.zero.get()
        {
            state.learn_zero(zero);
        }
    }

    /// Carries out what the state decided.
    fn act(&mut self, state: &mut dyn CodingBatch) {
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
    fn retry(&mut self, state: &mut dyn CodingBatch, call: Call) {
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
                        self.send_slot(state, j, instance, call.attempt);
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
                // Berrut's answers are all decoded: no idle instance could
                // have made one exact.
                if self.ctx.berrut.is_none() && self.ctx.pool.idle_usable_model() {
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

    /// Slot j's rows, one per group it has a query in, and their count;
    /// with Berrut, coded query j of every group.
    fn slot_rows(&self, j: usize) -> Result<(usize, Vec<f32>), CodingError> {
        if let Some(code) = &self.ctx.berrut {
            let groups = self.layout.groups();
            let flat = self.ctx.padded(&self.rows, groups);
            return Ok((groups, code.encode_one(j, &flat, groups, self.ctx.in_len)?));
        }
        let members = self.layout.members(j);
        let data = members
            .iter()
            .flat_map(|&q| self.rows[q].iter().copied())
            .collect();
        Ok((members.len(), data))
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

    fn send_slot(
        &mut self,
        state: &mut dyn CodingBatch,
        j: usize,
        instance: Arc<Instance>,
        attempt: usize,
    ) {
        let (rows, data) = match self.slot_rows(j) {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!("cannot encode coded query {j} of a batch: {e}");
                state.failed(Target::Slot(j), format!("cannot encode the batch: {e}"));
                return;
            }
        };
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
    fn send_parity(&mut self, state: &mut dyn CodingBatch, l: usize, attempt: usize) {
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
        let mut done = self.done.subscribe();
        tokio::spawn(async move {
            let started = Instant::now();
            let call = instance.infer(rows, &item, data, out_len, timeout);
            let given_up = async {
                // An error means the batch is gone without finishing (the
                // runtime shutting down): nothing waits for the answer.
                let _ = done.wait_for(|&done| done).await;
                tokio::time::sleep_until(started + instance.late_after()).await;
            };
            let result = tokio::select! {
                result = call => result,
                () = given_up => {
                    instance.abandoned(started.elapsed());
                    metrics.abandoned_calls.inc();
                    tracing::debug!(instance = %instance.url, role = instance.role.as_str(), "gave up a late call: its batch is done");
                    return;
                }
            };
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
    fn finish(mut self, state: &dyn CodingBatch, mut inbox: mpsc::UnboundedReceiver<Event>) {
        if let (Some(tracer), Some(trace)) = (&self.ctx.tracer, self.trace.take()) {
            tracer.finish(trace);
        }
        for (j, late) in self.late.iter().enumerate() {
            late.store(state.late_if_answered(j) as u64, Ordering::SeqCst);
        }
        inbox.close();
        self.done.send_replace(true);
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
