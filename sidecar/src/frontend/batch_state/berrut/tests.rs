//! A Berrut batch driven by a made-up clock, with an affine fake model
//! F(x) = A·x + b: what each coded call answers is F of that coded query,
//! and the decoded answers are checked against the code's own decode.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

const D_IN: usize = 3;
const OUT: usize = 2;
const DEADLINE: Duration = Duration::from_millis(1000);
const WAITS: Waits = Waits {
    eager_after: Duration::from_millis(2),
    reconstruct_after: Duration::from_millis(30),
    retry_after: Duration::from_millis(50),
};

fn f(x: &[f32]) -> Vec<f32> {
    vec![
        x[0] - 2.0 * x[1] + 0.5 * x[2] + 0.75,
        0.25 * x[0] + 3.0 * x[1] - x[2] - 1.5,
    ]
}

struct Fakes {
    layout: Layout,
    code: BerrutCode,
    rows: Vec<Vec<f32>>,
}

impl Fakes {
    fn new(k: usize, n_coded: usize, queries: usize) -> Self {
        let rows = (0..queries)
            .map(|q| {
                let q = q as f32;
                vec![0.5 + q * 0.25, 1.0 - q * 0.5, q * 0.75 - 2.0]
            })
            .collect();
        Fakes {
            layout: Layout {
                k,
                r: 0,
                n: queries,
                out_len: OUT,
            },
            code: BerrutCode::new(k, n_coded).expect("a code"),
            rows,
        }
    }

    /// The queries as `[groups, k, D_IN]`, padded with zero queries.
    fn flat(&self) -> Vec<f32> {
        let mut flat = vec![0f32; self.layout.groups() * self.layout.k * D_IN];
        for (q, row) in self.rows.iter().enumerate() {
            flat[q * D_IN..(q + 1) * D_IN].copy_from_slice(row);
        }
        flat
    }

    /// What coded call i answers: F of coded query i of every group.
    fn output(&self, i: usize) -> Vec<f32> {
        let coded = self
            .code
            .encode_one(i, &self.flat(), self.layout.groups(), D_IN)
            .expect("encodes");
        coded.chunks(D_IN).flat_map(f).collect()
    }

    /// What query q decodes to from the coded answers `arrived`.
    fn decoded(&self, arrived: &[usize], q: usize) -> Vec<f32> {
        let groups = self.layout.groups();
        let outputs: Vec<Vec<f32>> = arrived.iter().map(|&i| self.output(i)).collect();
        let mut flat = Vec::new();
        for g in 0..groups {
            for o in &outputs {
                flat.extend_from_slice(&o[g * OUT..(g + 1) * OUT]);
            }
        }
        let all = self
            .code
            .decode_flat(arrived, &flat, groups, OUT)
            .expect("decodes");
        all[q * OUT..(q + 1) * OUT].to_vec()
    }

    fn state(&self, t0: Instant) -> BerrutState {
        BerrutState::new(self.layout, self.code.clone(), t0 + DEADLINE, t0)
    }
}

fn answers(actions: &[Action]) -> Vec<(usize, Answer)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Answer { query, answer } => Some((*query, answer.clone())),
            _ => None,
        })
        .collect()
}

fn calls(actions: &[Action]) -> Vec<Call> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Call(c) => Some(*c),
            _ => None,
        })
        .collect()
}

#[test]
fn n_coded_calls_go_out_and_the_kth_answer_decodes_every_query() {
    // k = 2, n = 4, three queries: two groups, the second padded.
    let fakes = Fakes::new(2, 4, 3);
    let t0 = Instant::now();
    let mut state = fakes.state(t0);
    let first = state.take_actions();
    assert_eq!(
        calls(&first),
        (0..4)
            .map(|i| Call {
                target: Target::Slot(i),
                attempt: 0
            })
            .collect::<Vec<_>>()
    );
    state.answered(Target::Slot(3), fakes.output(3));
    state.poll(t0 + Duration::from_millis(1), &WAITS);
    assert!(state.take_actions().is_empty(), "one answer of k = 2 waits");
    assert!(!state.is_done());
    state.answered(Target::Slot(1), fakes.output(1));
    let got = answers(&state.take_actions());
    assert!(state.is_done());
    assert_eq!(got.len(), 3, "the padding's output is dropped");
    for (q, answer) in got {
        let Answer::Rebuilt(output) = answer else {
            panic!("query {q} answered {answer:?}, not rebuilt");
        };
        assert_eq!(output, fakes.decoded(&[1, 3], q));
        // Approximate, yet near the truth for this smooth fake.
        let truth = f(&fakes.rows[q]);
        let err: f32 = output.iter().zip(&truth).map(|(a, b)| (a - b).abs()).sum();
        assert!(err < 5.0, "query {q}: {output:?} vs {truth:?}");
    }
    // The stragglers' answers come too late: dropped and counted.
    assert_eq!(state.late_if_answered(0), 2);
    assert_eq!(state.late_if_answered(1), 0);
    state.answered(Target::Slot(0), fakes.output(0));
    assert_eq!(state.take_actions(), vec![Action::LateDropped(2)]);
    assert_eq!(state.next_wake(&WAITS), None);
}

#[test]
fn with_all_n_in_the_decode_uses_them_all() {
    let fakes = Fakes::new(3, 4, 3);
    let t0 = Instant::now();
    let mut state = fakes.state(t0);
    state.take_actions();
    state.answered(Target::Slot(0), fakes.output(0));
    state.answered(Target::Slot(2), fakes.output(2));
    state.answered(Target::Slot(3), fakes.output(3));
    let got = answers(&state.take_actions());
    assert_eq!(got.len(), 3);
    for (q, answer) in got {
        assert_eq!(answer, Answer::Rebuilt(fakes.decoded(&[0, 2, 3], q)));
    }
}

#[test]
fn at_the_deadline_it_decodes_from_what_arrived_or_fails() {
    // No retry before the deadline: only what arrived decodes.
    let waits = Waits {
        retry_after: DEADLINE * 2,
        ..WAITS
    };
    let fakes = Fakes::new(2, 3, 2);
    let t0 = Instant::now();
    let mut state = fakes.state(t0);
    state.take_actions();
    state.answered(Target::Slot(2), fakes.output(2));
    assert_eq!(state.next_wake(&waits), Some(t0 + DEADLINE));
    state.poll(t0 + DEADLINE - Duration::from_millis(1), &waits);
    assert!(state.take_actions().is_empty());
    state.poll(t0 + DEADLINE, &waits);
    let got = answers(&state.take_actions());
    assert_eq!(got.len(), 2);
    for (q, answer) in got {
        assert_eq!(answer, Answer::Rebuilt(fakes.decoded(&[2], q)));
    }

    let mut state = fakes.state(t0);
    state.take_actions();
    state.failed(Target::Slot(0), "instance down".into());
    state.poll(t0 + DEADLINE, &WAITS);
    let got = answers(&state.take_actions());
    assert_eq!(got.len(), 2);
    assert!(
        got.iter()
            .all(|(_, a)| matches!(a, Answer::Failed(d) if d == "instance down"))
    );
    assert!(state.is_done());
}

#[test]
fn failed_calls_are_sent_again_only_when_k_answers_can_no_longer_come() {
    let fakes = Fakes::new(2, 4, 2);
    let t0 = Instant::now();
    let mut state = fakes.state(t0);
    state.take_actions();
    // Two of four fail: the two still out can bring k = 2.
    state.failed(Target::Slot(0), "down".into());
    state.failed(Target::Slot(1), "down".into());
    state.poll(t0 + Duration::from_millis(40), &WAITS);
    assert!(calls(&state.take_actions()).is_empty());
    // A third fails: one failed call goes out again after the gap, as
    // many as k answers need.
    state.failed(Target::Slot(2), "down".into());
    let wake = state.next_wake(&WAITS).expect("waits");
    assert_eq!(wake, t0 + RETRY_GAP * 2);
    state.poll(wake, &WAITS);
    let again = calls(&state.take_actions());
    assert_eq!(
        again,
        vec![Call {
            target: Target::Slot(0),
            attempt: 1
        }]
    );
    state.answered(Target::Slot(0), fakes.output(0));
    assert!(answers(&state.take_actions()).is_empty());
    state.answered(Target::Slot(3), fakes.output(3));
    assert_eq!(answers(&state.take_actions()).len(), 2);
}

#[test]
fn late_calls_are_sent_again_after_the_retry_wait_while_fewer_than_k_are_in() {
    let fakes = Fakes::new(2, 3, 2);
    let t0 = Instant::now();
    let mut state = fakes.state(t0);
    state.take_actions();
    state.answered(Target::Slot(0), fakes.output(0));
    assert_eq!(state.next_wake(&WAITS), Some(t0 + WAITS.retry_after));
    state.poll(t0 + WAITS.retry_after, &WAITS);
    let again = calls(&state.take_actions());
    assert_eq!(
        again.iter().map(|c| c.target).collect::<Vec<_>>(),
        vec![Target::Slot(1), Target::Slot(2)]
    );
}

#[test]
fn an_empty_batch_is_done_at_once_and_a_wrong_length_is_a_failure() {
    let fakes = Fakes::new(2, 3, 0);
    let mut state = fakes.state(Instant::now());
    assert!(state.is_done());
    assert!(state.take_actions().is_empty());

    let fakes = Fakes::new(2, 3, 2);
    let t0 = Instant::now();
    let mut state = fakes.state(t0);
    state.take_actions();
    state.answered(Target::Slot(0), vec![1.0; 5]);
    state.answered(Target::Slot(1), fakes.output(1));
    assert!(answers(&state.take_actions()).is_empty(), "one good answer");
    state.answered(Target::Slot(2), fakes.output(2));
    assert_eq!(answers(&state.take_actions()).len(), 2);
}

/// What a call does: answer or fail after some ms, or never return.
#[derive(Debug, Clone, Copy)]
enum Fate {
    Answer(u64),
    Fail(u64),
    Hang,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        4 => (0u64..120).prop_map(Fate::Answer),
        2 => (0u64..120).prop_map(Fate::Fail),
        2 => Just(Fate::Hang),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the calls do and when: every query is answered exactly
    /// once, by the deadline, rebuilt from the answers in when it was
    /// decoded (finite) or failed at the deadline when none came; nothing
    /// is called once the batch is done.
    #[test]
    fn every_query_gets_exactly_one_answer(
        k in 2usize..=4,
        extra in 1usize..=2,
        queries in 0usize..10,
        fates in proptest::collection::vec(fate(), 0..20),
    ) {
        let fakes = Fakes::new(k, k + extra, queries);
        let t0 = Instant::now();
        let mut state = fakes.state(t0);
        let mut fates = fates.into_iter();
        // (when, slot, Some(output) | None for a failure)
        let mut due: Vec<(Instant, usize, Option<Vec<f32>>)> = Vec::new();
        let mut got: Vec<Vec<(Instant, Answer)>> = vec![Vec::new(); queries];
        let mut arrived: Vec<usize> = Vec::new();
        let mut now = t0;
        let mut done_at = None;
        for _ in 0..10_000 {
            for action in state.take_actions() {
                match action {
                    Action::Call(Call { target: Target::Slot(i), .. }) => {
                        prop_assert!(done_at.is_none(), "a call after the batch was done");
                        match fates.next().unwrap_or(Fate::Answer(5)) {
                            Fate::Answer(d) => due.push((now + Duration::from_millis(d), i, Some(fakes.output(i)))),
                            Fate::Fail(d) => due.push((now + Duration::from_millis(d), i, None)),
                            Fate::Hang => {}
                        }
                    }
                    Action::Call(_) => prop_assert!(false, "a parity call"),
                    Action::Answer { query, answer } => {
                        if let Answer::Rebuilt(output) = &answer {
                            prop_assert!(output.iter().all(|v| v.is_finite()));
                            let mut sorted = arrived.clone();
                            sorted.sort_unstable();
                            sorted.dedup();
                            prop_assert_eq!(output, &fakes.decoded(&sorted, query));
                        } else {
                            prop_assert_eq!(now, t0 + DEADLINE);
                        }
                        got[query].push((now, answer));
                    }
                    Action::LateDropped(_) => {}
                }
            }
            if state.is_done() {
                done_at.get_or_insert(now);
                break;
            }
            let wake = state.next_wake(&WAITS).expect("not done");
            due.sort_by_key(|d| d.0);
            if let Some(first) = due.first().filter(|d| d.0 <= wake) {
                now = now.max(first.0);
                let (_, i, output) = due.remove(0);
                match output {
                    Some(o) => {
                        if !state.is_done() {
                            arrived.push(i);
                        }
                        state.answered(Target::Slot(i), o);
                    }
                    None => state.failed(Target::Slot(i), "failed".into()),
                }
            } else {
                now = now.max(wake);
            }
            state.poll(now, &WAITS);
        }
        let done_at = done_at.expect("every batch ends");
        prop_assert!(done_at <= t0 + DEADLINE);
        for (q, answers) in got.iter().enumerate() {
            prop_assert_eq!(answers.len(), 1, "query {} got {:?}", q, answers);
        }
    }
}
