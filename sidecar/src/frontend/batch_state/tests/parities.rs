//! The batch with r = 2 parities, on the same fakes and made-up clock.

use super::*;

/// With r = 2 (fakes with distinct F, F_P,0, F_P,1 and F(0)): every set of
/// lost calls among the k slots and both parities, for k = 2, 3, 4, with
/// full and padded last groups. Up to as many lost slots as parities in are
/// rebuilt exactly, at the eager wait counted from when the batch became
/// decodable; more are retried and answered by the retry.
#[test]
fn with_two_parities_every_pattern_of_losses_is_answered_right() {
    const R: usize = 2;
    for k in 2..=4 {
        for n in [2 * k, 2 * k - 1, k + 1] {
            for lost in 0..1u32 << (k + R) {
                let slot_lost = move |j: usize| lost & (1 << j) != 0;
                let parity_lost = move |l: usize| lost & (1 << (k + l)) != 0;
                let sim = Sim::with_r(k, R, n, ReconstructPolicy::Eager, move |call| {
                    match (call.target, call.attempt) {
                        (_, a) if a > 0 => Fate::Answer(1),
                        (Target::Parity(l), _) if parity_lost(l) => Fate::Hang,
                        (Target::Parity(l), _) => Fate::Answer(2 + l as u64),
                        (Target::Slot(j), _) if slot_lost(j) => Fate::Hang,
                        (Target::Slot(j), _) => Fate::Answer(1 + j as u64),
                    }
                })
                .run();
                let case = format!("k {k}, n {n}, lost {lost:#b}");
                let active: Vec<usize> = (0..k).filter(|&j| j < n).collect();
                let lost_slots: Vec<usize> =
                    active.iter().copied().filter(|&j| slot_lost(j)).collect();
                let parities_in: Vec<u64> = (0..R)
                    .filter(|&l| !parity_lost(l))
                    .map(|l| 2 + l as u64)
                    .collect();
                let decodable = !lost_slots.is_empty() && lost_slots.len() <= parities_in.len();
                // Decodable once no more slots are missing than parities
                // are in: any k of the k + r outputs.
                let slot_at = |j: usize| (!slot_lost(j)).then_some(1 + j as u64);
                let decodable_at = (0..=10u64)
                    .find(|&t| {
                        let missing = active
                            .iter()
                            .filter(|&&j| slot_at(j).is_none_or(|a| a > t))
                            .count();
                        let parities = parities_in.iter().filter(|&&a| a <= t).count();
                        missing <= parities
                    })
                    .unwrap_or(0);
                for q in 0..n {
                    let (rebuilt, at) = sim.check(q);
                    let lost_q = slot_lost(q % k);
                    if decodable && lost_q {
                        assert!(rebuilt, "{case}: query {q} is rebuilt");
                        assert_eq!(at, ms(2).max(ms(2 * decodable_at)), "{case}: eager wait");
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
                    .map(|(_, c)| match c.target {
                        Target::Slot(j) => j,
                        Target::Parity(_) => panic!("{case}: a parity is never sent again"),
                    })
                    .collect();
                let want: Vec<usize> = if decodable { vec![] } else { lost_slots };
                assert_eq!(retried, want, "{case}: retried slots");
                assert_eq!(sim.late, 0, "{case}: lost calls never answer");
            }
        }
    }
}

/// Two slots lost for good with r = 2: both are rebuilt from the two
/// parities alone, and a late real answer of one is dropped and counted.
#[test]
fn two_late_slots_are_rebuilt_from_two_parities_and_late_answers_dropped() {
    let sim = Sim::with_r(3, 2, 6, ReconstructPolicy::Eager, |call| {
        match call.target {
            Target::Slot(0) => Fate::Answer(100),
            Target::Slot(2) => Fate::Hang,
            Target::Slot(_) => Fate::Answer(2),
            Target::Parity(l) => Fate::Answer(3 + l as u64),
        }
    })
    .run();
    // Decodable at 4 ms (the second parity): rebuilt at twice that.
    for q in [0, 2, 3, 5] {
        assert_eq!(sim.check(q), (true, ms(8)), "query {q}");
    }
    for q in [1, 4] {
        assert_eq!(sim.check(q), (false, ms(2)), "query {q}");
    }
    assert_eq!(sim.late, 2, "slot 0's two answers came after their rebuild");
    assert!(sim.retries().is_empty());
}
