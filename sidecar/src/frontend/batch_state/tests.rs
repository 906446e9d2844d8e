//! The batch's decisions driven by a made-up clock and fake models where
//! the model F, each parity model F_P,l and F(0) all differ: F(x) = A·x + b
//! with b ≠ 0, F_P,l(x) = A·x + (Σ_j c_lj)·b, which is what the code needs
//! (F_P,l(Σ_j c_lj x_j) = Σ_j c_lj F(x_j); with r = 1, F_P(x) = A·x + k·b). A slot's output given as the parity's, a parity
//! output given to a slot, or F(0) taken as 0 for a padded group all give
//! wrong answers here.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

mod parities;

const D_IN: usize = 3;
const OUT: usize = 2;
const A: [[f32; D_IN]; OUT] = [[1.0, -2.0, 0.5], [0.25, 3.0, -1.0]];
const B: [f32; OUT] = [0.75, -1.5];

fn affine(x: &[f32], bias: f32) -> Vec<f32> {
    A.iter()
        .zip(B)
        .map(|(a, b)| a.iter().zip(x).map(|(a, x)| a * x).sum::<f32>() + bias * b)
        .collect()
}

/// The queries of one batch and what the fakes answer for them.
struct Fakes {
    layout: Layout,
    code: LinearCode,
    rows: Vec<Vec<f32>>,
}

impl Fakes {
    fn new(k: usize, r: usize, n: usize) -> Self {
        let rows = (0..n)
            .map(|q| {
                let q = q as f32;
                vec![0.5 + q * 0.25, 1.0 - q * 0.5, q * 0.75 - 2.0]
            })
            .collect();
        Fakes {
            layout: Layout {
                k,
                r,
                n,
                out_len: OUT,
            },
            code: LinearCode::new(k, r).expect("a code"),
            rows,
        }
    }

    /// F(x_q), the model's answer for query q.
    fn expected(&self, q: usize) -> Vec<f32> {
        affine(&self.rows[q], 1.0)
    }

    fn zero() -> Vec<f32> {
        affine(&[0.0; D_IN], 1.0)
    }

    /// What a call of `target` answers.
    fn output(&self, target: Target) -> Vec<f32> {
        let Layout { k, n, .. } = self.layout;
        match target {
            Target::Slot(j) => self
                .layout
                .members(j)
                .into_iter()
                .flat_map(|q| self.expected(q))
                .collect(),
            // Parity l's encoded group is Σ_j c_lj x_j, padding zero.
            Target::Parity(l) => (0..self.layout.groups())
                .flat_map(|g| {
                    let c = self.code.row(l);
                    let mut p = [0f32; D_IN];
                    for q in (g * k..(g + 1) * k).filter(|&q| q < n) {
                        for (p, x) in p.iter_mut().zip(&self.rows[q]) {
                            *p += c[q - g * k] as f32 * x;
                        }
                    }
                    affine(&p, c.iter().sum::<f64>() as f32)
                })
                .collect(),
        }
    }
}

/// What happens to one call, in ms after it was made.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Answer(u64),
    Fail(u64),
    /// Answers with the wrong number of values.
    Garbage(u64),
    Hang,
}

enum Due {
    Result(Target, Result<Vec<f32>, String>),
    LearnZero,
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const WAITS: Waits = Waits {
    eager_after: Duration::from_millis(2),
    reconstruct_after: Duration::from_millis(30),
    retry_after: Duration::from_millis(50),
};
const DEADLINE_MS: u64 = 1000;

/// A batch driven the way `batch.rs` drives it, on a made-up clock: each
/// call's fate decides what comes back when; the state is polled after
/// every event and at every wake it asks for.
struct Sim {
    fakes: Fakes,
    state: BatchState,
    t0: Instant,
    now: Instant,
    waits: Waits,
    fate: Box<dyn FnMut(Call) -> Fate>,
    /// Events to come, in the order they were scheduled within an instant.
    due: Vec<(Instant, usize, Due)>,
    seq: usize,
    /// Every answer each query got, and when.
    answers: Vec<Vec<(Duration, Answer)>>,
    calls: Vec<(Duration, Call)>,
    late: usize,
    done_at: Option<Duration>,
    /// Wakes in a row that did not move the clock.
    wakes_now: usize,
}

impl Sim {
    fn new(
        k: usize,
        n: usize,
        policy: ReconstructPolicy,
        fate: impl FnMut(Call) -> Fate + 'static,
    ) -> Self {
        Sim::build(k, n, policy, Some(0), fate)
    }

    /// A batch of a code with r parities.
    fn with_r(
        k: usize,
        r: usize,
        n: usize,
        policy: ReconstructPolicy,
        fate: impl FnMut(Call) -> Fate + 'static,
    ) -> Self {
        Sim::build_code(k, r, n, policy, Some(0), fate)
    }

    /// A batch that learns F(0) `zero_after` ms after its start (0: before
    /// its first poll; None: never).
    fn build(
        k: usize,
        n: usize,
        policy: ReconstructPolicy,
        zero_after: Option<u64>,
        fate: impl FnMut(Call) -> Fate + 'static,
    ) -> Self {
        Sim::build_code(k, 1, n, policy, zero_after, fate)
    }

    fn build_code(
        k: usize,
        r: usize,
        n: usize,
        policy: ReconstructPolicy,
        zero_after: Option<u64>,
        fate: impl FnMut(Call) -> Fate + 'static,
    ) -> Self {
        let t0 = Instant::now();
        let deadline = t0 + ms(DEADLINE_MS);
        let fakes = Fakes::new(k, r, n);
        let code = fakes.code.clone();
        let mut state = BatchState::new(fakes.layout, policy, code, deadline, t0);
        if zero_after == Some(0) {
            state.learn_zero(&Fakes::zero());
        }
        let mut sim = Sim {
            fakes,
            state,
            t0,
            now: t0,
            waits: WAITS,
            fate: Box::new(fate),
            due: Vec::new(),
            seq: 0,
            answers: vec![Vec::new(); n],
            calls: Vec::new(),
            late: 0,
            done_at: None,
            wakes_now: 0,
        };
        if let Some(after) = zero_after.filter(|&a| a > 0) {
            sim.schedule(t0 + ms(after), Due::LearnZero);
        }
        sim.collect();
        sim
    }

    fn schedule(&mut self, at: Instant, due: Due) {
        self.due.push((at, self.seq, due));
        self.seq += 1;
    }

    fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    /// Takes the state's actions: calls get their fate scheduled.
    fn collect(&mut self) {
        for action in self.state.take_actions() {
            match action {
                Action::Call(call) => {
                    self.calls.push((self.elapsed(), call));
                    let (after, result) = match (self.fate)(call) {
                        Fate::Answer(after) => (after, Ok(self.fakes.output(call.target))),
                        Fate::Fail(after) => (after, Err(format!("{:?} failed", call.target))),
                        Fate::Garbage(after) => (after, Ok(vec![1.0])),
                        Fate::Hang => continue,
                    };
                    self.schedule(self.now + ms(after), Due::Result(call.target, result));
                }
                Action::Answer { query, answer } => {
                    let at = self.elapsed();
                    self.answers[query].push((at, answer));
                }
                Action::LateDropped(n) => self.late += n,
            }
        }
        if self.done_at.is_none() && self.state.is_done() {
            self.done_at = Some(self.elapsed());
        }
    }

    /// One event or wake; false once nothing is left to happen.
    fn step(&mut self) -> bool {
        let next_due = self.due.iter().map(|(at, seq, _)| (*at, *seq)).min();
        let wake = self.state.next_wake(&self.waits);
        let event_first = match (next_due, wake) {
            (None, None) => return false,
            (Some((at, _)), Some(wake)) => at <= wake,
            (Some(_), None) => true,
            (None, Some(_)) => false,
        };
        if event_first {
            let Some((at, seq)) = next_due else {
                return false;
            };
            assert!(at >= self.now, "time runs forward");
            self.now = at;
            let i = self
                .due
                .iter()
                .position(|d| (d.0, d.1) == (at, seq))
                .expect("the event just found");
            match self.due.remove(i).2 {
                Due::Result(target, Ok(output)) => self.state.answered(target, output),
                Due::Result(target, Err(e)) => self.state.failed(target, e),
                Due::LearnZero => self.state.learn_zero(&Fakes::zero()),
            }
        } else if let Some(wake) = wake {
            // A wake at the same instant can follow a poll once (a retry
            // just made restarts a rebuild's wait, which may be zero), not
            // again and again.
            if wake <= self.now {
                self.wakes_now += 1;
                assert!(
                    self.wakes_now < 3,
                    "the state keeps asking to be woken at {:?}, now: it spins",
                    self.elapsed()
                );
            } else {
                self.wakes_now = 0;
            }
            self.now = self.now.max(wake);
        }
        self.state.poll(self.now, &self.waits);
        self.collect();
        true
    }

    /// Runs until nothing is left: every call's result delivered, even
    /// after the batch is done.
    fn run(mut self) -> Self {
        for _ in 0..10_000 {
            if !self.step() {
                return self;
            }
        }
        panic!("the batch did not settle in 10,000 steps");
    }

    /// The one answer of query q.
    fn answer(&self, q: usize) -> &(Duration, Answer) {
        assert_eq!(
            self.answers[q].len(),
            1,
            "query {q} got {:?}",
            self.answers[q]
        );
        &self.answers[q][0]
    }

    fn retries(&self) -> Vec<(Duration, Call)> {
        self.calls
            .iter()
            .filter(|(_, c)| c.attempt > 0)
            .copied()
            .collect()
    }

    /// Checks that query q got exactly one answer: its own output, or a
    /// rebuilt one equal to it (the fakes' code is exact); returns whether
    /// it was rebuilt, and when.
    fn check(&self, q: usize) -> (bool, Duration) {
        let (at, answer) = self.answer(q);
        let want = self.fakes.expected(q);
        match answer {
            Answer::Real(got) => {
                assert_eq!(got, &want, "query {q}'s real answer");
                (false, *at)
            }
            Answer::Rebuilt(got) => {
                assert_close(got, &want, q);
                (true, *at)
            }
            Answer::Failed(e) => panic!("query {q} failed at {at:?}: {e}"),
        }
    }
}

fn assert_close(got: &[f32], want: &[f32], q: usize) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() < 1e-4,
            "query {q} rebuilt as {got:?}, its output is {want:?}"
        );
    }
}

/// Every set of lost calls, for k = 2, 3, 4, with full and padded last
/// groups: one lost slot with the parity in is rebuilt exactly, at the
/// eager wait; anything else is retried after the retry wait and answered
/// by the retry; with nothing lost, nothing is rebuilt or retried.
#[test]
fn every_erasure_pattern_is_answered_right() {
    for k in 2..=4 {
        for n in [2 * k, 2 * k - 1, k + 1] {
            for lost in 0..1u32 << (k + 1) {
                let slot_lost = move |j: usize| lost & (1 << j) != 0;
                let parity_lost = lost & (1 << k) != 0;
                let sim = Sim::new(k, n, ReconstructPolicy::Eager, move |call| {
                    match (call.target, call.attempt) {
                        (_, a) if a > 0 => Fate::Answer(1),
                        (Target::Parity(_), _) if parity_lost => Fate::Hang,
                        (Target::Parity(_), _) => Fate::Answer(2),
                        (Target::Slot(j), _) if slot_lost(j) => Fate::Hang,
                        (Target::Slot(j), _) => Fate::Answer(1 + j as u64),
                    }
                })
                .run();
                let case = format!("k {k}, n {n}, lost {lost:#b}");
                let active: Vec<usize> = (0..k).filter(|&j| j < n).collect();
                let lost_slots: Vec<usize> =
                    active.iter().copied().filter(|&j| slot_lost(j)).collect();
                // The rest of the batch is in when its last call answers.
                let rest = active
                    .iter()
                    .filter(|&&j| !slot_lost(j))
                    .map(|&j| 1 + j as u64)
                    .chain((!parity_lost).then_some(2))
                    .max()
                    .unwrap_or(0);
                for q in 0..n {
                    let (rebuilt, at) = sim.check(q);
                    let lost_q = slot_lost(q % k);
                    if lost_slots.len() == 1 && !parity_lost && lost_q {
                        assert!(rebuilt, "{case}: query {q} is rebuilt");
                        assert_eq!(at, ms(2).max(ms(2 * rest)), "{case}: eager wait");
                    } else if lost_q {
                        assert!(!rebuilt, "{case}: query {q} answered by its retry");
                        assert_eq!(at, WAITS.retry_after + ms(1), "{case}");
                    } else {
                        assert!(!rebuilt, "{case}: query {q}");
                        assert_eq!(at, ms(1 + (q % k) as u64), "{case}");
                    }
                }
                let retried: Vec<usize> = sim
                    .retries()
                    .iter()
                    .map(|(at, c)| {
                        assert_eq!(*at, WAITS.retry_after, "{case}");
                        match c.target {
                            Target::Slot(j) => j,
                            Target::Parity(_) => panic!("{case}: the parity is never sent again"),
                        }
                    })
                    .collect();
                let decodable = lost_slots.len() == 1 && !parity_lost;
                let want: Vec<usize> = if decodable { vec![] } else { lost_slots };
                assert_eq!(retried, want, "{case}: retried slots");
                assert_eq!(sim.late, 0, "{case}: lost calls never answer");
            }
        }
    }
}

#[test]
fn a_real_answer_after_the_rebuild_is_dropped_and_counted() {
    let mut sim = Sim::new(2, 4, ReconstructPolicy::Eager, |call| match call.target {
        Target::Slot(1) => Fate::Answer(40),
        _ => Fate::Answer(3),
    });
    while sim.done_at.is_none() {
        assert!(sim.step());
    }
    assert_eq!(sim.done_at, Some(ms(6)), "rebuilt after twice the rest");
    assert_eq!(sim.state.late_if_answered(1), 2);
    assert_eq!(sim.state.late_if_answered(0), 0);
    let sim = sim.run();
    for q in [1, 3] {
        assert_eq!(sim.check(q), (true, ms(6)));
    }
    assert_eq!(sim.late, 2, "both of slot 1's answers came too late");
    assert_eq!(sim.state.late_if_answered(1), 0, "counted once");
    assert!(sim.retries().is_empty());
}

#[test]
fn a_failed_call_is_rebuilt_as_soon_as_the_rest_is_in() {
    for policy in [ReconstructPolicy::Eager, ReconstructPolicy::Deadline] {
        for (fate, why) in [(Fate::Fail(1), "failed"), (Fate::Garbage(1), "garbled")] {
            let mut sim = Sim::new(3, 3, policy, move |call| match call.target {
                Target::Slot(2) if call.attempt == 0 => fate,
                Target::Slot(2) => Fate::Hang,
                Target::Slot(j) => Fate::Answer(4 + j as u64),
                Target::Parity(_) => Fate::Answer(3),
            });
            // Waits far beyond the calls: only the failure explains a rebuild.
            sim.waits.eager_after = ms(100);
            let sim = sim.run();
            assert_eq!(sim.check(2), (true, ms(5)), "{why} call, {policy:?}");
            assert_eq!(sim.check(0), (false, ms(4)));
        }
    }
}

#[test]
fn eager_waits_twice_the_rest_and_deadline_its_quantile() {
    // Slot 1 answers at 20 ms; the rest is in at 6 ms.
    let fate = |call: Call| match call.target {
        Target::Slot(0) => Fate::Answer(5),
        Target::Slot(_) => Fate::Answer(20),
        Target::Parity(_) => Fate::Answer(6),
    };
    let eager = Sim::new(2, 2, ReconstructPolicy::Eager, fate).run();
    assert_eq!(eager.check(1), (true, ms(12)));
    assert_eq!(eager.late, 1);
    let deadline = Sim::new(2, 2, ReconstructPolicy::Deadline, fate).run();
    assert_eq!(
        deadline.check(1),
        (false, ms(20)),
        "within the 30 ms quantile"
    );
    assert_eq!(deadline.late, 0);
    // Later than the quantile, deadline rebuilds at it.
    let slow = move |call: Call| match call.target {
        Target::Slot(1) => Fate::Answer(45),
        _ => fate(call),
    };
    let deadline = Sim::new(2, 2, ReconstructPolicy::Deadline, slow).run();
    assert_eq!(deadline.check(1), (true, WAITS.reconstruct_after));
    // Eager's floor is the typical median, however fast the rest was.
    let mut eager = Sim::new(2, 2, ReconstructPolicy::Eager, slow);
    eager.waits.eager_after = ms(17);
    assert_eq!(eager.run().check(1), (true, ms(17)));
}

#[test]
fn two_losses_in_a_group_are_retried_then_answered_with_an_error_at_the_deadline() {
    // Calls out and silent: sent again every retry wait.
    let sim = Sim::new(2, 2, ReconstructPolicy::Eager, |call| match call.target {
        Target::Parity(_) => Fate::Answer(1),
        Target::Slot(_) => Fate::Hang,
    })
    .run();
    for q in 0..2 {
        let (at, answer) = sim.answer(q);
        assert_eq!(*at, ms(DEADLINE_MS));
        assert_eq!(answer, &Answer::Failed("calls still in flight".into()));
    }
    let times: Vec<Duration> = sim
        .retries()
        .iter()
        .filter(|(_, c)| c.target == Target::Slot(0))
        .map(|(at, _)| *at)
        .collect();
    let want: Vec<Duration> = (1..20).map(|i| WAITS.retry_after * i).collect();
    assert_eq!(times, want);

    // Calls that fail: sent again after a gap that doubles with each send.
    let sim = Sim::new(2, 2, ReconstructPolicy::Eager, |call| match call.target {
        Target::Parity(_) => Fate::Answer(1),
        Target::Slot(_) => Fate::Fail(1),
    })
    .run();
    let times: Vec<u64> = sim
        .retries()
        .iter()
        .filter(|(_, c)| c.target == Target::Slot(1))
        .map(|(at, _)| at.as_millis() as u64)
        .collect();
    // Sent at 0, failed at 1; each next send after 5 ms × 2^sends, at most 320 ms.
    assert_eq!(times, vec![10, 30, 70, 150, 310, 630, 950]);
    let (at, answer) = sim.answer(0);
    assert_eq!(*at, ms(DEADLINE_MS));
    // The last failure, slot 1's retry at 950 ms, says why.
    assert_eq!(answer, &Answer::Failed("Slot(1) failed".into()));
}

#[test]
fn padded_groups_are_rebuilt_with_f_of_zero() {
    // k = 3, n = 4: group 1 is query 3 and two zero queries.
    let lose_slot_0 = |call: Call| match call.target {
        Target::Slot(0) if call.attempt == 0 => Fate::Hang,
        Target::Slot(0) => Fate::Answer(500),
        _ => Fate::Answer(1),
    };
    let sim = Sim::new(3, 4, ReconstructPolicy::Eager, lose_slot_0).run();
    assert_eq!(sim.check(0), (true, ms(2)));
    assert_eq!(sim.check(3), (true, ms(2)), "needs F(0) for both pads");
    assert!(sim.retries().is_empty());

    // F(0) not known yet: the full group is rebuilt, the padded one waits
    // and its slot is retried; once F(0) is known it is rebuilt.
    let sim = Sim::build(3, 4, ReconstructPolicy::Eager, Some(20), lose_slot_0).run();
    assert_eq!(sim.check(0), (true, ms(2)));
    assert_eq!(sim.check(3), (true, ms(20)));
    assert_eq!(sim.retries().len(), 0, "rebuilt before the retry was due");
    let sim = Sim::build(3, 4, ReconstructPolicy::Eager, None, lose_slot_0).run();
    assert_eq!(sim.check(0), (true, ms(2)));
    assert_eq!(sim.check(3), (false, WAITS.retry_after + ms(500)));
    assert_eq!(sim.late, 1, "query 0 was rebuilt before its retry answered");
}

#[test]
fn a_batch_smaller_than_a_group_uses_only_the_slots_it_needs() {
    let sim = Sim::new(4, 1, ReconstructPolicy::Eager, |call| match call.target {
        Target::Slot(_) => Fate::Hang,
        Target::Parity(_) => Fate::Answer(1),
    })
    .run();
    let first: Vec<Target> = sim
        .calls
        .iter()
        .filter(|(_, c)| c.attempt == 0)
        .map(|(_, c)| c.target)
        .collect();
    assert_eq!(first, vec![Target::Slot(0), Target::Parity(0)]);
    // With three pads, F_P(x₀) − 3 F(0) is F(x₀).
    assert_eq!(sim.check(0), (true, ms(2)));
}

#[test]
fn an_empty_batch_is_done_at_once() {
    let t0 = Instant::now();
    let mut state = BatchState::new(
        Layout {
            k: 2,
            r: 1,
            n: 0,
            out_len: OUT,
        },
        ReconstructPolicy::Eager,
        LinearCode::new(2, 1).expect("a code"),
        t0 + ms(10),
        t0,
    );
    assert!(state.is_done());
    assert!(state.take_actions().is_empty());
    assert_eq!(state.next_wake(&WAITS), None);
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        4 => (0u64..120).prop_map(Fate::Answer),
        2 => (0u64..120).prop_map(Fate::Fail),
        1 => (0u64..120).prop_map(Fate::Garbage),
        2 => Just(Fate::Hang),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the calls do and when: every query is answered exactly
    /// once, by the deadline; a real answer is the query's own output and
    /// a rebuilt one equals it (the fakes' code is exact); errors come
    /// only at the deadline; nothing is answered once the batch is done;
    /// late answers dropped never outnumber the rebuilt queries.
    #[test]
    fn every_query_gets_exactly_one_answer(
        k in 2usize..=4,
        r in 1usize..=2,
        groups in 1usize..=3,
        short in 0usize..4,
        deadline_policy in any::<bool>(),
        fates in proptest::collection::vec(fate(), 0..24),
        zero_after in proptest::option::of(0u64..150),

        eager_after in 0u64..20,
        reconstruct_after in 0u64..100,
        retry_after in 1u64..100,
    ) {
        let n = (groups * k).saturating_sub(short).max(1);
        let policy = if deadline_policy { ReconstructPolicy::Deadline } else { ReconstructPolicy::Eager };
        let mut fates = fates.into_iter();
        let mut sim = Sim::build_code(k, r, n, policy, zero_after, move |_| fates.next().unwrap_or(Fate::Hang));
        sim.waits = Waits {
            eager_after: ms(eager_after),
            reconstruct_after: ms(reconstruct_after),
            retry_after: ms(retry_after),
        };
        let sim = sim.run();
        let done_at = sim.done_at.expect("every batch ends");
        prop_assert!(done_at <= ms(DEADLINE_MS));
        let mut rebuilt = 0;
        for q in 0..n {
            prop_assert_eq!(sim.answers[q].len(), 1, "query {} got {:?}", q, sim.answers[q]);
            let (at, answer) = &sim.answers[q][0];
            prop_assert!(*at <= done_at);
            let want = sim.fakes.expected(q);
            match answer {
                Answer::Real(got) => prop_assert_eq!(got, &want),
                Answer::Rebuilt(got) => {
                    rebuilt += 1;
                    for (g, w) in got.iter().zip(&want) {
                        prop_assert!((g - w).abs() < 1e-3, "query {} rebuilt as {:?}, not {:?}", q, got, want);
                    }
                }
                Answer::Failed(_) => prop_assert_eq!(*at, ms(DEADLINE_MS)),
            }
        }
        prop_assert!(sim.late <= rebuilt);
        // A call is made only for a query still waiting.
        for (at, call) in &sim.calls {
            prop_assert!(*at <= done_at, "{:?} made at {:?}, after the batch was done", call, at);
        }
    }
}
