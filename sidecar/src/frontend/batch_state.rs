//! One coding batch's decisions, with no I/O inside: which calls are out,
//! what has arrived, when a query is rebuilt, when a slot is sent again,
//! what every query is answered. The driver (`batch.rs`) makes the calls,
//! keeps the timers and counts the metrics; this state machine is fed
//! events (a call answered or failed, the clock) and hands back actions
//! (make a call, answer a query, count dropped late answers), in the way
//! quinn-proto keeps QUIC's logic apart from sockets. Time comes in as
//! `Instant` values, so tests drive it with a made-up clock.
//!
//! The rules: slot j of every group goes out in one call, the encoded
//! groups in one call per parity (r of them). A query is answered by its
//! own output if that comes first, or rebuilt once the batch is decodable
//! (no more slots missing than parity outputs in; with r = 1, the parity
//! and the other k − 1 of its group) and its own call is late (`eager`:
//! out twice as long as the rest of the batch took, and at least the
//! typical median; `deadline`: the configured quantile), at once if its
//! call failed. Padded group members count as F(0) (every parity encodes a
//! zero query as zero). A query that cannot be rebuilt is sent again to
//! another instance until the deadline, then answered with an error. A real
//! answer that comes after its query was rebuilt is dropped and counted;
//! nothing is answered twice.
//!
//! The Berrut code's batches decide in [`berrut`] by the same events and
//! actions; [`machine`] is what the driver needs of either.

use std::time::{Duration, Instant};

use std::sync::Arc;

use crate::coding::{CodingError, LearnedCode, LinearCode};

pub mod berrut;
pub mod machine;

pub use berrut::BerrutState;
pub use machine::CodingBatch;

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

/// Least time between two sends of a slot whose calls failed; it doubles
/// with each send (5 ms to 320 ms), so dead instances are not hammered.
pub const RETRY_GAP: Duration = Duration::from_millis(5);

/// What a call carries: slot j of every group, or the groups encoded for
/// parity l.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Slot(usize),
    Parity(usize),
}

/// A call to make now. `attempt` counts the earlier sends of the same
/// target: 0 for the first, more for a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    pub target: Target,
    pub attempt: usize,
}

/// How a query is answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Its own output.
    Real(Vec<f32>),
    /// Decoded from the parity output and the rest of its group.
    Rebuilt(Vec<f32>),
    /// Its deadline passed; why, in words.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Call(Call),
    Answer {
        query: usize,
        answer: Answer,
    },
    /// Real answers dropped because their queries had been rebuilt.
    LateDropped(usize),
}

/// How long the batch waits before rebuilding or retrying; the driver reads
/// them from what the watcher last concluded, and they may change between
/// polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waits {
    /// `eager`'s floor: the typical instance's median.
    pub eager_after: Duration,
    /// `deadline`'s wait for a real answer.
    pub reconstruct_after: Duration,
    /// How long an undecodable slot's call may be out before it is sent
    /// again elsewhere.
    pub retry_after: Duration,
}

/// The batch's shape: k queries and r parities a group, n queries,
/// `out_len` values an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub k: usize,
    pub r: usize,
    pub n: usize,
    pub out_len: usize,
}

impl Layout {
    pub fn groups(&self) -> usize {
        self.n.div_ceil(self.k)
    }

    /// The queries of slot j: query j of every group that has one.
    pub fn members(&self, j: usize) -> Vec<usize> {
        (0..self.groups())
            .map(|g| g * self.k + j)
            .filter(|&q| q < self.n)
            .collect()
    }
}

/// Where a query stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Waiting,
    Real,
    Rebuilt,
    Failed,
}

/// Slot j: query j of every group.
#[derive(Debug)]
struct Slot {
    members: Vec<usize>,
    /// Its real outputs, `members.len() × out_len`, once a call answered.
    output: Option<Vec<f32>>,
    /// Calls out now.
    pending: usize,
    /// Calls made so far.
    sends: usize,
    last_sent: Instant,
}

#[derive(Debug)]
pub struct BatchState {
    layout: Layout,
    policy: ReconstructPolicy,
    code: LinearCode,
    /// A learned code: its decoder network rebuilds instead of the solve.
    learned: Option<Arc<LearnedCode>>,
    /// F(0), the output of a zero query, for padded groups; learned once.
    zero: Option<Vec<f32>>,
    status: Vec<Status>,
    slots: Vec<Slot>,
    /// Each parity's output, once its call answered.
    parity: Vec<Option<Vec<f32>>>,
    /// When the batch first became decodable (with r = 1: the parity and
    /// all but one slot in).
    decodable_at: Option<Instant>,
    deadline: Instant,
    last_error: Option<String>,
    actions: Vec<Action>,
}

impl BatchState {
    /// A batch started at `now`: its first calls (every slot with a query,
    /// and the parity) are the first actions.
    /// `code` must have the layout's k and r.
    pub fn new(
        layout: Layout,
        policy: ReconstructPolicy,
        code: LinearCode,
        deadline: Instant,
        now: Instant,
    ) -> Self {
        let slots: Vec<Slot> = (0..layout.k)
            .map(|j| Slot {
                members: layout.members(j),
                output: None,
                pending: 0,
                sends: 0,
                last_sent: now,
            })
            .collect();
        let mut state = BatchState {
            layout,
            policy,
            code,
            learned: None,
            zero: None,
            status: vec![Status::Waiting; layout.n],
            slots,
            parity: vec![None; layout.r],
            decodable_at: None,
            deadline,
            last_error: None,
            actions: Vec::new(),
        };
        if layout.n > 0 {
            for j in 0..layout.k {
                if !state.slots[j].members.is_empty() {
                    state.send(Target::Slot(j), now);
                }
            }
            for l in 0..layout.r {
                state.send(Target::Parity(l), now);
            }
        }
        state
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The actions decided since the last call, in order.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Every query has its answer: no call still out can change anything.
    pub fn is_done(&self) -> bool {
        self.status.iter().all(|s| *s != Status::Waiting)
    }

    /// F(0) became known (the frontend learns it from an instance at start).
    /// Rebuilds with a learned code's decoder rather than the linear solve.
    pub fn with_learned(mut self, learned: Option<Arc<LearnedCode>>) -> Self {
        self.learned = learned;
        self
    }

    pub fn learn_zero(&mut self, zero: &[f32]) {
        if self.zero.is_none() && zero.len() == self.layout.out_len {
            self.zero = Some(zero.to_vec());
        }
    }

    pub fn knows_zero(&self) -> bool {
        self.zero.is_some()
    }

    /// A call of `target` answered with `output`. Slot outputs answer
    /// their queries still waiting at once; an output of the wrong length
    /// counts as a failed call.
    pub fn answered(&mut self, target: Target, output: Vec<f32>) {
        let out_len = self.layout.out_len;
        match target {
            Target::Parity(l) => {
                if output.len() != self.layout.groups() * out_len {
                    self.last_error = Some(wrong_length(&format!("parity {l}"), output.len()));
                } else if let Some(p @ None) = self.parity.get_mut(l) {
                    *p = Some(output);
                }
            }
            Target::Slot(j) => {
                let Some(slot) = self.slots.get_mut(j) else {
                    return;
                };
                slot.pending = slot.pending.saturating_sub(1);
                if output.len() != slot.members.len() * out_len {
                    self.last_error = Some(wrong_length(&format!("slot {j}"), output.len()));
                    return;
                }
                if slot.output.is_some() {
                    return;
                }
                let mut late = 0;
                for (i, &q) in slot.members.iter().enumerate() {
                    match self.status[q] {
                        Status::Waiting => {
                            self.status[q] = Status::Real;
                            self.actions.push(Action::Answer {
                                query: q,
                                answer: Answer::Real(
                                    output[i * out_len..(i + 1) * out_len].to_vec(),
                                ),
                            });
                        }
                        Status::Rebuilt => late += 1,
                        Status::Real | Status::Failed => {}
                    }
                }
                if late > 0 {
                    self.actions.push(Action::LateDropped(late));
                }
                slot.output = Some(output);
            }
        }
    }

    /// A call of `target` failed (or could not be made).
    pub fn failed(&mut self, target: Target, error: String) {
        if let Target::Slot(j) = target
            && let Some(slot) = self.slots.get_mut(j)
        {
            slot.pending = slot.pending.saturating_sub(1);
        }
        self.last_error = Some(error);
    }

    /// How many of slot j's queries a real answer arriving now would find
    /// rebuilt: what a call still out when the batch is done will drop.
    pub fn late_if_answered(&self, j: usize) -> usize {
        match self.slots.get(j) {
            Some(slot) if slot.output.is_none() => slot
                .members
                .iter()
                .filter(|&&q| self.status[q] == Status::Rebuilt)
                .count(),
            _ => 0,
        }
    }

    /// Acts on the clock: at the deadline every query still waiting gets an
    /// error; before it, decodable queries whose call is late are rebuilt
    /// and undecodable slots are sent again when due.
    pub fn poll(&mut self, now: Instant, waits: &Waits) {
        if self.is_done() {
            return;
        }
        if now >= self.deadline {
            self.fail_remaining();
            return;
        }
        self.rebuild(now, waits);
        self.retry(now, waits);
    }

    /// When the next poll has something to do, if the batch is not done:
    /// the deadline at the latest.
    pub fn next_wake(&self, waits: &Waits) -> Option<Instant> {
        if self.is_done() {
            return None;
        }
        let decodable = self.decodable_slots();
        // A rebuild held up by an unknown F(0) is no reason to wake: once
        // due, it would wake the batch again and again until the call came
        // back (the slot's retries wake it meanwhile).
        let rebuild = self.decodable_at.and_then(|at| {
            decodable
                .iter()
                .filter(|&&m| self.slots[m].pending > 0 && self.can_rebuild(m))
                .map(|&m| self.slots[m].last_sent + self.wait_before_rebuilding(m, at, waits))
                .min()
        });
        let retries = (0..self.slots.len())
            .filter(|&j| self.stuck(j, &decodable))
            .map(|j| self.retry_at(j, waits));
        let soonest = rebuild.into_iter().chain(retries).min();
        Some(soonest.map_or(self.deadline, |t| t.min(self.deadline)))
    }

    fn send(&mut self, target: Target, now: Instant) {
        let attempt = match target {
            Target::Parity(_) => 0,
            Target::Slot(j) => {
                let slot = &mut self.slots[j];
                slot.pending += 1;
                slot.sends += 1;
                slot.last_sent = now;
                slot.sends - 1
            }
        };
        self.actions.push(Action::Call(Call { target, attempt }));
    }

    /// The parities whose output is in.
    fn parities_in(&self) -> Vec<usize> {
        (0..self.parity.len())
            .filter(|&l| self.parity[l].is_some())
            .collect()
    }

    /// The slots still missing an output, if there are no more of them
    /// than parity outputs in (so every group decodes) and some query of
    /// them still waits; empty otherwise.
    fn decodable_slots(&self) -> Vec<usize> {
        let missing: Vec<usize> = (0..self.slots.len())
            .filter(|&j| self.slots[j].output.is_none() && !self.slots[j].members.is_empty())
            .collect();
        let waiting = missing.iter().any(|&m| {
            self.slots[m]
                .members
                .iter()
                .any(|&q| self.status[q] == Status::Waiting)
        });
        if missing.len() > self.parities_in().len() || !waiting {
            return Vec::new();
        }
        missing
    }

    /// Whether a padded group needs F(0) to rebuild query q, and it is unknown.
    fn needs_unknown_zero(&self, q: usize) -> bool {
        let Layout { k, n, .. } = self.layout;
        self.zero.is_none() && (q / k + 1) * k > n
    }

    /// Whether some waiting query of the decodable slot m can be rebuilt.
    fn can_rebuild(&self, m: usize) -> bool {
        self.slots[m]
            .members
            .iter()
            .any(|&q| self.status[q] == Status::Waiting && !self.needs_unknown_zero(q))
    }

    /// Rebuilds the waiting queries of missing slots whose wait is over,
    /// solving each group for every missing slot at once.
    fn rebuild(&mut self, now: Instant, waits: &Waits) {
        let missing = self.decodable_slots();
        if missing.is_empty() {
            return;
        }
        let decodable_at = *self.decodable_at.get_or_insert(now);
        let due: Vec<usize> = missing
            .iter()
            .copied()
            .filter(|&m| {
                let slot = &self.slots[m];
                slot.pending == 0
                    || now >= slot.last_sent + self.wait_before_rebuilding(m, decodable_at, waits)
            })
            .collect();
        if due.is_empty() {
            return;
        }
        let parities = self.parities_in();
        let weights = match self.code.weights(&missing, &parities) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("decoding failed: {e}");
                self.last_error = Some(format!("decoding failed: {e}"));
                return;
            }
        };
        let Layout { k, n, out_len, .. } = self.layout;
        let mut answers = Vec::new();
        for g in 0..self.layout.groups() {
            let targets: Vec<(usize, usize)> = due
                .iter()
                .map(|&m| (m, g * k + m))
                .filter(|&(_, q)| q < n && self.status[q] == Status::Waiting)
                .collect();
            if targets.is_empty() {
                continue;
            }
            let rows = g * out_len..(g + 1) * out_len;
            let parity_rows: Vec<&[f32]> = parities
                .iter()
                .filter_map(|&l| self.parity[l].as_ref().map(|p| &p[rows.clone()]))
                .collect();
            // Known outputs: the real ones, F(0) for padding; the missing
            // slots' are solved for.
            let mut outputs: Vec<Option<&[f32]>> = Vec::with_capacity(k);
            for (j, slot) in self.slots.iter().enumerate() {
                if missing.contains(&j) {
                    outputs.push(None);
                } else if g * k + j < n {
                    // Slot j has a member in every group up to its last,
                    // so the member of group g is its g-th.
                    outputs.push(slot.output.as_ref().map(|o| &o[rows.clone()]));
                } else {
                    outputs.push(self.zero.as_deref());
                }
            }
            if outputs
                .iter()
                .enumerate()
                .any(|(j, o)| o.is_none() && !missing.contains(&j))
            {
                // F(0) not known yet: this group waits.
                continue;
            }
            let decoded = match &self.learned {
                Some(code) => learned_decode(code, &self.parity, &rows, outputs, &missing),
                None => weights.apply(&parity_rows, &outputs, out_len),
            };
            match decoded {
                Ok(decoded) => {
                    for (m, q) in targets {
                        if let Some(e) = missing.iter().position(|&x| x == m) {
                            answers.push((q, decoded[e].clone()));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("decoding failed: {e}");
                    self.last_error = Some(format!("decoding failed: {e}"));
                    return;
                }
            }
        }
        for (q, output) in answers {
            self.status[q] = Status::Rebuilt;
            self.actions.push(Action::Answer {
                query: q,
                answer: Answer::Rebuilt(output),
            });
        }
    }

    /// How long slot `m`'s call may be out before its decodable queries are
    /// rebuilt. Eager: twice as long as the rest of the batch took to come
    /// in (the calls ran side by side, so a call that takes twice as long is
    /// late), and at least the typical instance's median.
    fn wait_before_rebuilding(&self, m: usize, decodable_at: Instant, waits: &Waits) -> Duration {
        match self.policy {
            ReconstructPolicy::Eager => {
                let rest = decodable_at.saturating_duration_since(self.slots[m].last_sent);
                waits.eager_after.max(rest * 2)
            }
            ReconstructPolicy::Deadline => waits.reconstruct_after,
        }
    }

    /// Whether some query of slot j waits and only its own call can help:
    /// the slot is not decodable, or the query's group is padded and F(0)
    /// is not known yet.
    fn stuck(&self, j: usize, decodable: &[usize]) -> bool {
        let slot = &self.slots[j];
        slot.output.is_none()
            && slot.members.iter().any(|&q| {
                self.status[q] == Status::Waiting
                    && (!decodable.contains(&j) || self.needs_unknown_zero(q))
            })
    }

    /// When a stuck slot is sent again: at once after its calls failed
    /// (with a short gap, so dead instances are not hammered), or after the
    /// retry wait while its call is out.
    fn retry_at(&self, j: usize, waits: &Waits) -> Instant {
        let slot = &self.slots[j];
        if slot.pending == 0 {
            let doublings = slot.sends.min(6) as u32;
            slot.last_sent + RETRY_GAP * 2u32.pow(doublings)
        } else {
            slot.last_sent + waits.retry_after
        }
    }

    fn retry(&mut self, now: Instant, waits: &Waits) {
        let decodable = self.decodable_slots();
        for j in 0..self.slots.len() {
            if self.stuck(j, &decodable) && now >= self.retry_at(j, waits) {
                self.send(Target::Slot(j), now);
            }
        }
    }

    fn fail_remaining(&mut self) {
        let detail = self
            .last_error
            .clone()
            .unwrap_or_else(|| "calls still in flight".to_owned());
        for (q, status) in self.status.iter_mut().enumerate() {
            if *status == Status::Waiting {
                *status = Status::Failed;
                self.actions.push(Action::Answer {
                    query: q,
                    answer: Answer::Failed(detail.clone()),
                });
            }
        }
    }
}

fn wrong_length(what: &str, got: usize) -> String {
    format!("{what} answered {got} values, not one output per query")
}

/// One group's lost outputs rebuilt by a learned decoder: the k outputs
/// (`None` where missing) and every parity's rows of group `rows`.
fn learned_decode<'a>(
    code: &LearnedCode,
    parity: &'a [Option<Vec<f32>>],
    rows: &std::ops::Range<usize>,
    mut outputs: Vec<Option<&'a [f32]>>,
    missing: &[usize],
) -> Result<Vec<Vec<f32>>, CodingError> {
    outputs.extend(parity.iter().map(|p| p.as_ref().map(|p| &p[rows.clone()])));
    code.decode_group(&outputs, missing)
}

#[cfg(test)]
mod tests;
