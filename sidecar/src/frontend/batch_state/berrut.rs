//! A Berrut coding batch's decisions, with no I/O inside (the same events
//! and actions as [`BatchState`](super::BatchState)). Coded query i of every
//! group goes out in one call (`Target::Slot(i)`, i = 0..n); there are no
//! parity calls. Once k calls have answered, every query of the batch is
//! decoded from them (and from any more already in) and answered as
//! rebuilt: with this code no answer is a model's own. At the deadline the
//! batch decodes from whatever arrived, if anything did, and only then
//! answers with an error. A call that fails is sent again elsewhere only
//! when the calls still out could no longer bring k answers, and a call
//! out longer than the retry wait only while fewer than k are in. Padded
//! group members are zero queries whose decoded outputs are dropped: the
//! code needs no F(0).

use std::time::Instant;

use super::{Action, Answer, Call, Layout, RETRY_GAP, Target, Waits};
use crate::coding::BerrutCode;

/// Coded query i of every group.
#[derive(Debug)]
struct CodedSlot {
    /// Its outputs, `groups × out_len`, once a call answered.
    output: Option<Vec<f32>>,
    pending: usize,
    sends: usize,
    last_sent: Instant,
}

#[derive(Debug)]
pub struct BerrutState {
    layout: Layout,
    code: BerrutCode,
    slots: Vec<CodedSlot>,
    /// Every query has its answer (decoded, or failed at the deadline).
    done: bool,
    /// The batch was decoded: outputs that come after are dropped.
    decoded: bool,
    deadline: Instant,
    last_error: Option<String>,
    actions: Vec<Action>,
}

impl BerrutState {
    /// A batch started at `now`: its first calls (the n coded queries) are
    /// the first actions. `layout.k` must be the code's k.
    pub fn new(layout: Layout, code: BerrutCode, deadline: Instant, now: Instant) -> Self {
        let slots = (0..code.n())
            .map(|_| CodedSlot {
                output: None,
                pending: 0,
                sends: 0,
                last_sent: now,
            })
            .collect();
        let mut state = BerrutState {
            layout,
            code,
            slots,
            done: layout.n == 0,
            decoded: false,
            deadline,
            last_error: None,
            actions: Vec::new(),
        };
        if layout.n > 0 {
            for i in 0..state.slots.len() {
                state.send(i, now);
            }
        }
        state
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Coded call `target` answered. With the k-th answer in, the batch is
    /// decoded at once; an output of the wrong length counts as a failure.
    pub fn answered(&mut self, target: Target, output: Vec<f32>) {
        let Target::Slot(i) = target else { return };
        let want = self.layout.groups() * self.layout.out_len;
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        slot.pending = slot.pending.saturating_sub(1);
        if output.len() != want {
            self.last_error = Some(format!(
                "coded query {i} answered {} values, not {want}",
                output.len()
            ));
            return;
        }
        if slot.output.is_some() {
            return;
        }
        if self.decoded {
            self.actions.push(Action::LateDropped(self.layout.groups()));
            return;
        }
        slot.output = Some(output);
        if !self.done && self.arrived().len() >= self.code.k() {
            self.decode();
        }
    }

    pub fn failed(&mut self, target: Target, error: String) {
        if let Target::Slot(i) = target
            && let Some(slot) = self.slots.get_mut(i)
        {
            slot.pending = slot.pending.saturating_sub(1);
        }
        self.last_error = Some(error);
    }

    /// Coded rows an answer of call i arriving now would drop: all of them
    /// once the batch was decoded without it.
    pub fn late_if_answered(&self, i: usize) -> usize {
        match self.slots.get(i) {
            Some(slot) if self.decoded && slot.output.is_none() => self.layout.groups(),
            _ => 0,
        }
    }

    /// At the deadline: decode from what arrived, or fail. Before: send
    /// stuck calls again when due.
    pub fn poll(&mut self, now: Instant, waits: &Waits) {
        if self.done {
            return;
        }
        if now >= self.deadline {
            if self.arrived().is_empty() {
                self.fail_all();
            } else {
                self.decode();
            }
            return;
        }
        for i in 0..self.slots.len() {
            if self.stuck(i) && now >= self.retry_at(i, waits) {
                self.send(i, now);
            }
        }
    }

    pub fn next_wake(&self, waits: &Waits) -> Option<Instant> {
        if self.done {
            return None;
        }
        let retries = (0..self.slots.len())
            .filter(|&i| self.stuck(i))
            .map(|i| self.retry_at(i, waits));
        Some(retries.fold(self.deadline, Instant::min))
    }

    fn send(&mut self, i: usize, now: Instant) {
        let slot = &mut self.slots[i];
        slot.pending += 1;
        slot.sends += 1;
        slot.last_sent = now;
        let attempt = slot.sends - 1;
        self.actions.push(Action::Call(Call {
            target: Target::Slot(i),
            attempt,
        }));
    }

    /// The coded queries whose output is in, in node order.
    fn arrived(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].output.is_some())
            .collect()
    }

    /// Whether call i is worth sending again: its output is missing, fewer
    /// than k are in, and either none of its calls is out and the calls
    /// out cannot bring k (a failure), or its call is out (late).
    fn stuck(&self, i: usize) -> bool {
        let slot = &self.slots[i];
        if slot.output.is_some() || self.done {
            return false;
        }
        let k = self.code.k();
        let arrived = self.arrived().len();
        if slot.pending > 0 {
            return arrived < k;
        }
        let coming = self
            .slots
            .iter()
            .filter(|s| s.output.is_none() && s.pending > 0)
            .count();
        arrived + coming < k
    }

    /// After a failure: a short gap doubling with each send; while out:
    /// the retry wait.
    fn retry_at(&self, i: usize, waits: &Waits) -> Instant {
        let slot = &self.slots[i];
        if slot.pending == 0 {
            slot.last_sent + RETRY_GAP * 2u32.pow(slot.sends.min(6) as u32)
        } else {
            slot.last_sent + waits.retry_after
        }
    }

    /// Decodes every group from the outputs in and answers every query.
    fn decode(&mut self) {
        let arrived = self.arrived();
        let Layout { k, n, out_len, .. } = self.layout;
        let groups = self.layout.groups();
        let mut outputs = Vec::with_capacity(groups * arrived.len() * out_len);
        for g in 0..groups {
            for &i in &arrived {
                if let Some(o) = &self.slots[i].output {
                    outputs.extend_from_slice(&o[g * out_len..(g + 1) * out_len]);
                }
            }
        }
        match self.code.decode_flat(&arrived, &outputs, groups, out_len) {
            Ok(decoded) => {
                self.decoded = true;
                self.done = true;
                // Query q is member q % k of group q / k: row q of the
                // decoded `[groups, k, out]`; padding rows are dropped.
                for (q, output) in decoded.chunks_exact(out_len).take(n).enumerate() {
                    debug_assert!(q / k < groups);
                    self.actions.push(Action::Answer {
                        query: q,
                        answer: Answer::Rebuilt(output.to_vec()),
                    });
                }
            }
            Err(e) => {
                tracing::warn!("decoding failed: {e}");
                self.last_error = Some(format!("decoding failed: {e}"));
                self.fail_all();
            }
        }
    }

    fn fail_all(&mut self) {
        let detail = self
            .last_error
            .clone()
            .unwrap_or_else(|| "calls still in flight".to_owned());
        self.done = true;
        for q in 0..self.layout.n {
            self.actions.push(Action::Answer {
                query: q,
                answer: Answer::Failed(detail.clone()),
            });
        }
    }
}

#[cfg(test)]
mod tests;
