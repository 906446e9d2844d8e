//! One coding batch from start to last answer. Slot j of every group goes
//! to one model instance in one call, the encoded groups to a parity
//! instance in one call (k + 1 calls for the whole batch). Each query is
//! answered by its own output if that comes first, or decoded from the
//! parity output and the other k − 1 outputs of its group once its own call
//! is late: out twice as long as the rest of its batch took (`eager`), or
//! than the configured quantile of every call (`deadline`); at once if its
//! own call failed.
//! A query that cannot be rebuilt is sent again to another instance until
//! its deadline, then answered with an error. Late real answers are
//! dropped and counted; nothing is answered twice.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use candle_core::{Device, Tensor};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;

use super::dispatch::Pool;
use super::group::{Query, QueryError, RowAnswer};
use super::instance::{CallError, Instance, Role};
use super::metrics::Metrics;
use crate::coding::{CodingError, Decoder, Encoder};

/// When a decodable query is rebuilt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ReconstructPolicy {
    /// As soon as the parity output and the other k − 1 outputs are in and
    /// the query's own call has been out twice as long as the rest of the
    /// batch took to arrive (and at least the typical instance's median).
    #[default]
    Eager,
    /// Once the query's own call is later than the configured latency
    /// quantile (`--deadline-quantile`, p99 by default).
    Deadline,
}

/// What every batch shares: the code, the instances, the metrics.
pub struct BatchContext {
    pub k: usize,
    pub item_shape: Vec<usize>,
    pub in_len: usize,
    pub out_len: usize,
    pub encoder: Box<dyn Encoder>,
    pub decoder: Decoder,
    pub policy: ReconstructPolicy,
    pub timeout: Duration,
    pub pool: Arc<Pool>,
    pub metrics: Arc<Metrics>,
    /// F(0), the output of a zero query, for padded groups.
    pub zero: OnceLock<Vec<f32>>,
}

impl BatchContext {
    /// Parity queries `[groups, in_len]` for `rows` (zero-padded to whole groups).
    fn encode(&self, rows: &[Vec<f32>], groups: usize) -> Result<Vec<f32>, CodingError> {
        let mut flat = vec![0f32; groups * self.k * self.in_len];
        for (q, row) in rows.iter().enumerate() {
            flat[q * self.in_len..(q + 1) * self.in_len].copy_from_slice(row);
        }
        self.encoder.encode_flat(flat, groups)
    }

    /// Rebuilds one output per group from parity outputs `[n, out]` and the
    /// k − 1 other outputs `[n, k − 1, out]`.
    fn decode(
        &self,
        parity: Vec<f32>,
        others: Vec<f32>,
        n: usize,
    ) -> Result<Vec<f32>, CodingError> {
        let parity = Tensor::from_vec(parity, (n, self.out_len), &Device::Cpu)?;
        let others = Tensor::from_vec(others, (n, self.k - 1, self.out_len), &Device::Cpu)?;
        Ok(self
            .decoder
            .decode(&parity, &others)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }
}

enum Event {
    Slot {
        slot: usize,
        result: Result<Vec<f32>, CallError>,
    },
    Parity(Result<Vec<f32>, CallError>),
}

/// Slot j: query j of every group.
struct Slot {
    /// Query indices, one per group that has a real query in this slot.
    members: Vec<usize>,
    /// Its real outputs, `members.len() × out_len`, once a call answered.
    output: Option<Vec<f32>>,
    pending: usize,
    tried: Vec<usize>,
    last_sent: Instant,
}

struct Batch {
    ctx: Arc<BatchContext>,
    groups: usize,
    n: usize,
    rows: Vec<Vec<f32>>,
    replies: Vec<Option<tokio::sync::oneshot::Sender<Result<RowAnswer, QueryError>>>>,
    reconstructed: Vec<bool>,
    slots: Vec<Slot>,
    parity: Option<Vec<f32>>,
    parity_pending: bool,
    /// When the parity and all but one slot were first in.
    decodable_at: Option<Instant>,
    deadline: Instant,
    events: mpsc::UnboundedSender<Event>,
    last_error: Option<String>,
}

pub async fn run(ctx: Arc<BatchContext>, queries: Vec<Query>, permit: OwnedSemaphorePermit) {
    let k = ctx.k;
    let n = queries.len();
    let groups = n.div_ceil(k);
    ctx.metrics.batch_groups.observe(groups as f64);
    for g in 0..groups {
        ctx.metrics.group_fill.observe((n - g * k).min(k) as f64);
    }
    let started = Instant::now();
    let deadline = queries
        .iter()
        .map(|q| q.deadline)
        .min()
        .unwrap_or(started + ctx.timeout);
    let (rows, replies): (Vec<_>, Vec<_>) =
        queries.into_iter().map(|q| (q.row, Some(q.reply))).unzip();
    let (events, mut inbox) = mpsc::unbounded_channel();
    let slots = (0..k)
        .map(|j| Slot {
            members: (0..groups).map(|g| g * k + j).filter(|&q| q < n).collect(),
            output: None,
            pending: 0,
            tried: Vec::new(),
            last_sent: started,
        })
        .collect();
    let mut batch = Batch {
        ctx,
        groups,
        n,
        rows,
        replies,
        reconstructed: vec![false; n],
        slots,
        parity: None,
        parity_pending: false,
        decodable_at: None,
        deadline,
        events,
        last_error: None,
    };
    batch.start();

    while batch.unanswered() > 0 {
        let wake = batch.next_wake();
        tokio::select! {
            event = inbox.recv() => match event {
                Some(event) => batch.handle(event),
                None => break,
            },
            () = tokio::time::sleep_until(wake) => {}
        }
        let now = Instant::now();
        if now >= batch.deadline {
            batch.fail_remaining();
            break;
        }
        batch.reconstruct(now);
        batch.retry(now);
    }
    drop(permit);
    // Calls still out (stragglers) finish by their timeout; their answers
    // are dropped, and counted if the query had been rebuilt meanwhile.
    let outstanding =
        batch.slots.iter().map(|s| s.pending).sum::<usize>() + usize::from(batch.parity_pending);
    let mut left = outstanding;
    drop(batch.events);
    while left > 0 {
        match inbox.recv().await {
            Some(Event::Slot { slot, result }) => {
                left -= 1;
                if result.is_ok() {
                    let late = batch.slots[slot]
                        .members
                        .iter()
                        .filter(|&&q| batch.reconstructed[q])
                        .count();
                    batch.ctx.metrics.late_answers.inc_by(late as u64);
                }
            }
            Some(Event::Parity(_)) => left -= 1,
            None => break,
        }
    }
}

impl Batch {
    fn start(&mut self) {
        let active: Vec<usize> = (0..self.ctx.k)
            .filter(|&j| !self.slots[j].members.is_empty())
            .collect();
        let picked = self.ctx.pool.pick(Role::Model, active.len(), &[]);
        if let Some(&j) = active.first() {
            let (rows, data) = self.slot_rows(j);
            self.sample(Role::Model, &picked, rows, &data);
        }
        for (j, instance) in active.into_iter().zip(picked) {
            self.send_slot(j, instance);
        }
        match self.ctx.encode(&self.rows, self.groups) {
            Ok(parity_rows) => {
                let picked = self.ctx.pool.pick(Role::Parity, 1, &[]);
                self.sample(Role::Parity, &picked, self.groups, &parity_rows);
                if let Some(instance) = picked.into_iter().next() {
                    self.send_parity(instance, parity_rows);
                }
            }
            Err(e) => tracing::warn!("cannot encode a coding batch, it runs unprotected: {e}"),
        }
    }

    fn call_timeout(&self) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    }

    /// Slot j's rows, one per group it has a query in, and their count.
    fn slot_rows(&self, j: usize) -> (usize, Vec<f32>) {
        let members = &self.slots[j].members;
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

    fn send_slot(&mut self, j: usize, instance: Arc<Instance>) {
        let (rows, data) = self.slot_rows(j);
        let slot = &mut self.slots[j];
        slot.pending += 1;
        slot.tried.push(instance.id);
        slot.last_sent = Instant::now();
        self.call(instance, rows, data, move |result| Event::Slot {
            slot: j,
            result,
        });
    }

    fn send_parity(&mut self, instance: Arc<Instance>, data: Vec<f32>) {
        self.parity_pending = true;
        self.call(instance, self.groups, data, Event::Parity);
    }

    /// Runs one call in its own task (it may outlive the batch) and reports
    /// its result as `event`.
    fn call(
        &self,
        instance: Arc<Instance>,
        rows: usize,
        data: Vec<f32>,
        event: impl FnOnce(Result<Vec<f32>, CallError>) -> Event + Send + 'static,
    ) {
        let item = self.ctx.item_shape.clone();
        let out_len = self.ctx.out_len;
        let timeout = self.call_timeout();
        let events = self.events.clone();
        tokio::spawn(async move {
            let result = instance.infer(rows, &item, data, out_len, timeout).await;
            if let Err(e) = &result {
                tracing::debug!(instance = %instance.url, role = instance.role.as_str(), "call failed: {e}");
            }
            let _ = events.send(event(result));
        });
    }

    fn unanswered(&self) -> usize {
        self.replies.iter().filter(|r| r.is_some()).count()
    }

    fn answer(&mut self, q: usize, output: Vec<f32>, reconstructed: bool) {
        if let Some(reply) = self.replies[q].take() {
            self.reconstructed[q] = reconstructed;
            if reconstructed {
                self.ctx.metrics.reconstructions.inc();
                if self.ctx.pool.idle_usable_model() {
                    self.ctx.metrics.rebuilt_while_idle.inc();
                }
            }
            let _ = reply.send(Ok(RowAnswer {
                output,
                reconstructed,
            }));
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Slot { slot, result } => {
                self.slots[slot].pending -= 1;
                match result {
                    Ok(output) => {
                        if self.slots[slot].output.is_none() {
                            let out_len = self.ctx.out_len;
                            let members = self.slots[slot].members.clone();
                            let mut late = 0;
                            for (i, &q) in members.iter().enumerate() {
                                if self.replies[q].is_some() {
                                    self.answer(
                                        q,
                                        output[i * out_len..(i + 1) * out_len].to_vec(),
                                        false,
                                    );
                                } else if self.reconstructed[q] {
                                    late += 1;
                                }
                            }
                            self.ctx.metrics.late_answers.inc_by(late);
                            self.slots[slot].output = Some(output);
                        }
                    }
                    Err(e) => self.last_error = Some(e.to_string()),
                }
            }
            Event::Parity(result) => {
                self.parity_pending = false;
                match result {
                    Ok(output) => self.parity = Some(output),
                    Err(e) => self.last_error = Some(e.to_string()),
                }
            }
        }
    }

    /// The one slot still missing an output, if the rest of every group is in.
    fn decodable_slot(&self) -> Option<usize> {
        self.parity.as_ref()?;
        let mut missing = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.output.is_none() && !s.members.is_empty());
        let (m, _) = missing.next()?;
        if missing.next().is_some() {
            return None;
        }
        let slot = &self.slots[m];
        slot.members
            .iter()
            .any(|&q| self.replies[q].is_some())
            .then_some(m)
    }

    /// Rebuilds the missing slot's queries when the policy allows.
    fn reconstruct(&mut self, now: Instant) {
        let Some(m) = self.decodable_slot() else {
            return;
        };
        let decodable_at = *self.decodable_at.get_or_insert(now);
        let slot = &self.slots[m];
        if slot.pending > 0 && now < slot.last_sent + self.wait_before_rebuilding(m, decodable_at) {
            return;
        }
        let (k, out_len) = (self.ctx.k, self.ctx.out_len);
        let zero = self.ctx.zero.get();
        let Some(parity) = self.parity.as_ref() else {
            return;
        };
        let mut targets = Vec::new();
        let mut parity_rows = Vec::new();
        let mut others = Vec::new();
        'group: for &q in &slot.members {
            if self.replies[q].is_none() {
                continue;
            }
            let g = q / k;
            let mut row = Vec::with_capacity((k - 1) * out_len);
            for (j, other) in self.slots.iter().enumerate() {
                if j == m {
                    continue;
                }
                let p = g * k + j;
                if p < self.n {
                    // Slot j has a member in every group up to its last.
                    let i = other.members.iter().position(|&x| x == p);
                    match (other.output.as_ref(), i) {
                        (Some(out), Some(i)) => {
                            row.extend_from_slice(&out[i * out_len..(i + 1) * out_len])
                        }
                        _ => continue 'group,
                    }
                } else {
                    match zero {
                        Some(z) => row.extend_from_slice(z),
                        None => continue 'group,
                    }
                }
            }
            targets.push(q);
            parity_rows.extend_from_slice(&parity[g * out_len..(g + 1) * out_len]);
            others.extend(row);
        }
        if targets.is_empty() {
            return;
        }
        match self.ctx.decode(parity_rows, others, targets.len()) {
            Ok(decoded) => {
                for (i, q) in targets.into_iter().enumerate() {
                    self.answer(q, decoded[i * out_len..(i + 1) * out_len].to_vec(), true);
                }
            }
            Err(e) => {
                tracing::warn!("decoding failed: {e}");
                self.last_error = Some(format!("decoding failed: {e}"));
            }
        }
    }

    /// How long slot `m`'s call may be out before its decodable queries are
    /// rebuilt. Eager: twice as long as the rest of the batch took to come
    /// in (the calls ran side by side, so a call that takes twice as long is
    /// late), and at least the typical instance's median.
    fn wait_before_rebuilding(&self, m: usize, decodable_at: Instant) -> Duration {
        let snapshot = self.ctx.pool.snapshot();
        match self.ctx.policy {
            ReconstructPolicy::Eager => {
                let rest = decodable_at.saturating_duration_since(self.slots[m].last_sent);
                snapshot.eager_after.max(rest * 2)
            }
            ReconstructPolicy::Deadline => snapshot.reconstruct_after,
        }
    }

    /// Whether some query in `slot` waits and only its own call can help.
    fn stuck(&self, j: usize, decodable: Option<usize>) -> bool {
        let slot = &self.slots[j];
        slot.output.is_none()
            && slot.members.iter().any(|&q| self.replies[q].is_some())
            && (decodable != Some(j) || self.ctx.zero.get().is_none())
    }

    /// When a stuck slot is sent again: at once after its calls failed
    /// (with a short gap, so dead instances are not hammered), or after the
    /// retry delay while its call is outstanding.
    fn retry_at(&self, j: usize) -> Instant {
        let slot = &self.slots[j];
        if slot.pending == 0 {
            let doublings = slot.tried.len().min(6) as u32;
            slot.last_sent + RETRY_GAP * 2u32.pow(doublings)
        } else {
            slot.last_sent + self.ctx.pool.snapshot().retry_after
        }
    }

    fn retry(&mut self, now: Instant) {
        let decodable = self.decodable_slot();
        for j in 0..self.slots.len() {
            if !self.stuck(j, decodable) || now < self.retry_at(j) {
                continue;
            }
            let tried = self.slots[j].tried.clone();
            if let Some(instance) = self.ctx.pool.pick(Role::Model, 1, &tried).pop() {
                self.ctx.metrics.retries.inc();
                tracing::debug!(slot = j, instance = %instance.url, "retrying a slot");
                self.send_slot(j, instance);
            }
        }
    }

    fn next_wake(&self) -> Instant {
        let mut wake = self.deadline;
        let decodable = self.decodable_slot();
        if let (Some(m), Some(at)) = (decodable, self.decodable_at)
            && self.slots[m].pending > 0
        {
            wake = wake.min(self.slots[m].last_sent + self.wait_before_rebuilding(m, at));
        }
        for j in 0..self.slots.len() {
            if self.stuck(j, decodable) {
                wake = wake.min(self.retry_at(j));
            }
        }
        wake
    }

    fn fail_remaining(&mut self) {
        let detail = self
            .last_error
            .clone()
            .unwrap_or_else(|| "calls still in flight".to_owned());
        let timeout_ms = self.ctx.timeout.as_millis() as u64;
        for reply in self.replies.iter_mut().filter_map(Option::take) {
            self.ctx.metrics.timeouts.inc();
            let _ = reply.send(Err(QueryError::Deadline {
                timeout_ms,
                detail: detail.clone(),
            }));
        }
    }
}

/// Least time between two sends of a slot whose calls failed; it doubles
/// with each send (5 ms to 320 ms), so dead instances are not hammered.
const RETRY_GAP: Duration = Duration::from_millis(5);
