//! What the driver (`batch.rs`) needs of a coding batch's decisions, so
//! that one driver runs either code: the linear code's [`BatchState`] or
//! Berrut's [`BerrutState`].

use std::time::Instant;

use super::berrut::BerrutState;
use super::{Action, BatchState, Layout, Target, Waits};

pub trait CodingBatch: Send {
    fn layout(&self) -> Layout;
    /// The actions decided since the last call, in order.
    fn take_actions(&mut self) -> Vec<Action>;
    /// Every query has its answer.
    fn is_done(&self) -> bool;
    /// F(0) became known; a code that needs none ignores it.
    fn learn_zero(&mut self, zero: &[f32]);
    fn knows_zero(&self) -> bool;
    fn answered(&mut self, target: Target, output: Vec<f32>);
    fn failed(&mut self, target: Target, error: String);
    /// What a real answer of slot j arriving once the batch is done drops.
    fn late_if_answered(&self, j: usize) -> usize;
    fn poll(&mut self, now: Instant, waits: &Waits);
    fn next_wake(&self, waits: &Waits) -> Option<Instant>;
}

impl CodingBatch for BatchState {
    fn layout(&self) -> Layout {
        BatchState::layout(self)
    }
    fn take_actions(&mut self) -> Vec<Action> {
        BatchState::take_actions(self)
    }
    fn is_done(&self) -> bool {
        BatchState::is_done(self)
    }
    fn learn_zero(&mut self, zero: &[f32]) {
        BatchState::learn_zero(self, zero);
    }
    fn knows_zero(&self) -> bool {
        BatchState::knows_zero(self)
    }
    fn answered(&mut self, target: Target, output: Vec<f32>) {
        BatchState::answered(self, target, output);
    }
    fn failed(&mut self, target: Target, error: String) {
        BatchState::failed(self, target, error);
    }
    fn late_if_answered(&self, j: usize) -> usize {
        BatchState::late_if_answered(self, j)
    }
    fn poll(&mut self, now: Instant, waits: &Waits) {
        BatchState::poll(self, now, waits);
    }
    fn next_wake(&self, waits: &Waits) -> Option<Instant> {
        BatchState::next_wake(self, waits)
    }
}

impl CodingBatch for BerrutState {
    fn layout(&self) -> Layout {
        BerrutState::layout(self)
    }
    fn take_actions(&mut self) -> Vec<Action> {
        BerrutState::take_actions(self)
    }
    fn is_done(&self) -> bool {
        BerrutState::is_done(self)
    }
    fn learn_zero(&mut self, _zero: &[f32]) {}
    /// Berrut never waits for F(0): padding is zero queries whose decoded
    /// outputs are dropped.
    fn knows_zero(&self) -> bool {
        true
    }
    fn answered(&mut self, target: Target, output: Vec<f32>) {
        BerrutState::answered(self, target, output);
    }
    fn failed(&mut self, target: Target, error: String) {
        BerrutState::failed(self, target, error);
    }
    fn late_if_answered(&self, j: usize) -> usize {
        BerrutState::late_if_answered(self, j)
    }
    fn poll(&mut self, now: Instant, waits: &Waits) {
        BerrutState::poll(self, now, waits);
    }
    fn next_wake(&self, waits: &Waits) -> Option<Instant> {
        BerrutState::next_wake(self, waits)
    }
}
