//! Which instances get a coding batch's calls. Instances are ranked: usable
//! ones first (fewest calls in flight, ties rotated), then stragglers, then
//! those marked down. A batch needs k distinct model instances; when fewer
//! are usable it reuses usable ones rather than feed a straggler or a dead
//! instance (the parity still covers one loss per group).
//!
//! The instances of each role can change while the frontend runs (service
//! discovery, [`super::discovery`]): dispatch reads the current list, and
//! every decision that outlives one pick (straggler marks, the instances a
//! retried slot already tried) names instances by their id, which is never
//! reused, not by their place in the list.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::instance::{Instance, Role};
use super::watcher::LatencySource;

/// What the watcher last concluded (see `watcher.rs`).
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The `eager` policy's floor: a decodable query is rebuilt no sooner
    /// than the typical instance's median (and no sooner than twice what the
    /// rest of its batch took): a real answer that is merely last of k + 1
    /// concurrent calls is not late, and is worth its accuracy.
    pub eager_after: Duration,
    /// The `deadline` policy waits this long for a real answer.
    pub reconstruct_after: Duration,
    /// `--dispatch hedged` sends its backup after this long (p95 of calls).
    pub hedge_after: Duration,
    /// An undecodable slot is sent again after this long.
    pub retry_after: Duration,
    /// Calls in flight this long with none finishing mark a straggler.
    pub stall_after: Duration,
    /// An instance whose oldest call in flight is older than this gets no
    /// new calls while usable ones remain: an instance turned slow is
    /// avoided within a few typical latencies, not once its slow answers
    /// have moved a median (a 500 ms slow spell is over by then).
    pub lag_after: Duration,
    /// Ids of the model instances, then of the parity instances, slow
    /// enough to avoid.
    pub slow_models: BTreeSet<usize>,
    pub slow_parities: BTreeSet<usize>,
    /// The model-call latency quantile the deadline came from, once known.
    pub observed_tail: Option<Duration>,
    /// Whether the marks and the deadline came from Prometheus.
    pub source: LatencySource,
}

impl Snapshot {
    pub fn initial() -> Self {
        Snapshot {
            eager_after: Duration::from_millis(2),
            reconstruct_after: Duration::from_millis(50),
            hedge_after: Duration::from_millis(10),
            retry_after: Duration::from_millis(50),
            stall_after: Duration::from_millis(50),
            lag_after: Duration::from_millis(50),
            slow_models: BTreeSet::new(),
            slow_parities: BTreeSet::new(),
            observed_tail: None,
            source: LatencySource::Local,
        }
    }
}

/// The instances of one role, replaced whole when discovery changes them.
pub type Instances = Arc<[Arc<Instance>]>;

pub struct Pool {
    models: RwLock<Instances>,
    parities: RwLock<Instances>,
    /// Shared, not copied: read on every dispatch and wait decision.
    snapshot: RwLock<Arc<Snapshot>>,
    /// Where each role's rotation starts next (models, parities). One
    /// counter per role: a shared one advanced twice per batch (models,
    /// then parity), so with two model instances every batch started at
    /// the same one, and a lone query always went to it.
    turns: [AtomicUsize; 2],
}

/// How usable an instance is right now; lower is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Standing {
    Usable,
    Straggler,
    Down,
}

impl Pool {
    pub fn new(models: Vec<Arc<Instance>>, parities: Vec<Arc<Instance>>) -> Self {
        Pool {
            models: RwLock::new(models.into()),
            parities: RwLock::new(parities.into()),
            snapshot: RwLock::new(Arc::new(Snapshot::initial())),
            turns: [AtomicUsize::new(0), AtomicUsize::new(0)],
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.snapshot.read() {
            Ok(s) => s.clone(),
            Err(e) => e.into_inner().clone(),
        }
    }

    pub fn set_snapshot(&self, snapshot: Snapshot) {
        match self.snapshot.write() {
            Ok(mut s) => *s = Arc::new(snapshot),
            Err(e) => *e.into_inner() = Arc::new(snapshot),
        }
    }

    fn list(&self, role: Role) -> &RwLock<Instances> {
        match role {
            Role::Model => &self.models,
            Role::Parity => &self.parities,
        }
    }

    /// The instances of `role` now. Calls already made to an instance that
    /// has since left the list finish normally (they hold their instance).
    pub fn instances(&self, role: Role) -> Instances {
        match self.list(role).read() {
            Ok(l) => l.clone(),
            Err(e) => e.into_inner().clone(),
        }
    }

    pub fn models(&self) -> Instances {
        self.instances(Role::Model)
    }

    pub fn parities(&self) -> Instances {
        self.instances(Role::Parity)
    }

    /// Replaces the instances of `role`; new picks see only these.
    pub fn set_instances(&self, role: Role, instances: Vec<Arc<Instance>>) {
        match self.list(role).write() {
            Ok(mut l) => *l = instances.into(),
            Err(e) => *e.into_inner() = instances.into(),
        }
    }

    pub fn standing(&self, instance: &Instance, snapshot: &Snapshot, now: Instant) -> Standing {
        // Down after failed calls (with back-off), and from a failed health
        // probe until a probe succeeds: a dead instance costs one probe a
        // second, not a stream of failed calls.
        if instance.is_down(now) || !instance.probe_ok() {
            return Standing::Down;
        }
        let slow = match instance.role {
            Role::Model => &snapshot.slow_models,
            Role::Parity => &snapshot.slow_parities,
        };
        if slow.contains(&instance.id)
            || instance.stalled_for(now) > snapshot.stall_after
            || instance.oldest_call_age(now) > snapshot.lag_after
        {
            Standing::Straggler
        } else {
            Standing::Usable
        }
    }

    /// `n` instances of `role` for one batch, best first, preferring ones
    /// not in `avoid` (instances a retried slot already tried).
    pub fn pick(&self, role: Role, n: usize, avoid: &[usize]) -> Vec<Arc<Instance>> {
        let all = self.instances(role);
        let all = &all[..];
        if all.is_empty() || n == 0 {
            return Vec::new();
        }
        let snapshot = self.snapshot();
        let now = Instant::now();
        let turn = self.turns[match role {
            Role::Model => 0,
            Role::Parity => 1,
        }]
        .fetch_add(1, Ordering::Relaxed);
        let mut ranked: Vec<(bool, Standing, usize, usize, &Arc<Instance>)> = all
            .iter()
            .enumerate()
            .map(|(i, inst)| {
                (
                    avoid.contains(&inst.id),
                    self.standing(inst, &snapshot, now),
                    inst.inflight(),
                    (i + all.len() - turn % all.len()) % all.len(),
                    inst,
                )
            })
            .collect();
        ranked.sort_by_key(|&(avoided, standing, inflight, rotation, _)| {
            (standing, avoided, inflight, rotation)
        });
        let usable: Vec<&Arc<Instance>> = ranked
            .iter()
            .filter(|r| r.1 == Standing::Usable)
            .map(|r| r.4)
            .collect();
        if usable.len() >= n || usable.is_empty() {
            // Enough usable ones, or none at all: take the best n, cycling
            // when there are fewer instances than calls.
            return (0..n).map(|i| ranked[i % ranked.len()].4.clone()).collect();
        }
        (0..n).map(|i| usable[i % usable.len()].clone()).collect()
    }

    /// How many instances of `role` could answer now: not down after
    /// failed calls, and ready at their last health probe.
    pub fn up(&self, role: Role) -> usize {
        let now = Instant::now();
        self.instances(role)
            .iter()
            .filter(|m| !m.is_down(now) && m.probe_ok())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::instance::test_instance as instance;

    fn pool(models: usize) -> Pool {
        Pool::new(
            (0..models).map(|i| instance(i, Role::Model)).collect(),
            vec![instance(0, Role::Parity)],
        )
    }

    fn indices(v: &[Arc<Instance>]) -> Vec<usize> {
        v.iter().map(|i| i.id).collect()
    }

    #[test]
    fn picks_distinct_instances_and_rotates() {
        let p = pool(3);
        let a = indices(&p.pick(Role::Model, 2, &[]));
        let b = indices(&p.pick(Role::Model, 2, &[]));
        assert_eq!(a.len(), 2);
        assert_ne!(a[0], a[1]);
        assert_ne!(a, b, "consecutive batches rotate over the instances");
    }

    #[test]
    fn slow_instances_are_avoided_when_enough_others_are_usable() {
        let p = pool(3);
        let mut s = (*p.snapshot()).clone();
        s.slow_models.insert(1);
        p.set_snapshot(s);
        for _ in 0..4 {
            let mut picked = indices(&p.pick(Role::Model, 2, &[]));
            picked.sort();
            assert_eq!(picked, vec![0, 2]);
        }
    }

    #[test]
    fn with_m_equal_k_a_straggler_slot_doubles_up_on_a_usable_instance() {
        let p = pool(2);
        let mut s = (*p.snapshot()).clone();
        s.slow_models.insert(1);
        p.set_snapshot(s);
        for _ in 0..4 {
            assert_eq!(indices(&p.pick(Role::Model, 2, &[])), vec![0, 0]);
        }
    }

    #[test]
    fn an_instance_with_a_call_out_too_long_gets_no_new_calls() {
        let p = pool(3);
        let mut s = (*p.snapshot()).clone();
        s.lag_after = Duration::from_millis(5);
        p.set_snapshot(s);
        let now = Instant::now();
        let models = p.models();
        let _late = models[1].hold_call(now - Duration::from_millis(8));
        for _ in 0..4 {
            let mut picked = indices(&p.pick(Role::Model, 2, &[]));
            picked.sort();
            assert_eq!(picked, vec![0, 2]);
        }
        // A call out for less than the limit changes nothing.
        let _recent = models[2].hold_call(now - Duration::from_millis(1));
        let snapshot = p.snapshot();
        assert_eq!(
            p.standing(&models[2], &snapshot, Instant::now()),
            Standing::Usable
        );
        assert_eq!(
            p.standing(&models[1], &snapshot, Instant::now()),
            Standing::Straggler
        );
    }

    #[test]
    fn with_nothing_usable_every_instance_is_still_tried() {
        let p = pool(2);
        let mut s = (*p.snapshot()).clone();
        s.slow_models = BTreeSet::from([0, 1]);
        p.set_snapshot(s);
        let picked = indices(&p.pick(Role::Model, 2, &[]));
        assert_eq!(picked.len(), 2);
        assert_ne!(picked[0], picked[1]);
    }

    #[test]
    fn lone_queries_rotate_over_the_models_despite_parity_picks() {
        // A batch of one query picks one model, then the parity.
        let p = pool(2);
        let firsts: Vec<usize> = (0..4)
            .map(|_| {
                let m = indices(&p.pick(Role::Model, 1, &[]))[0];
                p.pick(Role::Parity, 1, &[]);
                m
            })
            .collect();
        assert_eq!(firsts, vec![0, 1, 0, 1]);
    }

    #[test]
    fn retries_prefer_instances_not_yet_tried() {
        let p = pool(3);
        for _ in 0..3 {
            let picked = indices(&p.pick(Role::Model, 1, &[0, 1]));
            assert_eq!(picked, vec![2]);
        }
        // With every instance tried, one is still returned.
        assert_eq!(p.pick(Role::Model, 1, &[0, 1, 2]).len(), 1);
    }
}
