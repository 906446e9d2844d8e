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
    /// An answer that took longer than this was late; late answers in a
    /// row mark their instance slow until answers in time clear it
    /// (`Instance::note_pace`).
    pub late_after: Duration,
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
            late_after: Duration::from_millis(50),
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
    /// A call of it is out too long, or none finishes: judged afresh at
    /// every pick, and often only busy (it took every call of a batch).
    Lagging,
    /// Marked slow (late answers in a row, or its median): slow for
    /// seconds, so a lagging instance is the better choice.
    Straggler,
    Down,
}

impl Pool {
    pub fn new(models: Vec<Arc<Instance>>, parities: Vec<Arc<Instance>>) -> Self {
        let limit = Snapshot::initial().late_after;
        for inst in models.iter().chain(&parities) {
            inst.set_late_after(limit);
        }
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

    /// Publishes the watcher's conclusions; `late_after` also tells each
    /// instance which of its answers are late (see `Instance::note_pace`).
    pub fn set_snapshot(&self, snapshot: Snapshot) {
        for inst in self.models().iter().chain(self.parities().iter()) {
            inst.set_late_after(snapshot.late_after);
        }
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

    /// The instances of `role` serving parity `parity` (models: 0).
    pub fn instances_of(&self, role: Role, parity: usize) -> Vec<Arc<Instance>> {
        self.instances(role)
            .iter()
            .filter(|i| i.parity == parity)
            .cloned()
            .collect()
    }

    /// Replaces the instances of `role` serving parity `parity`, keeping
    /// those of the other parities.
    pub fn set_instances_of(&self, role: Role, parity: usize, instances: Vec<Arc<Instance>>) {
        let mut all: Vec<Arc<Instance>> = self
            .instances(role)
            .iter()
            .filter(|i| i.parity != parity)
            .cloned()
            .collect();
        all.extend(instances);
        self.set_instances(role, all);
    }

    /// Replaces the instances of `role`; new picks see only these.
    pub fn set_instances(&self, role: Role, instances: Vec<Arc<Instance>>) {
        let limit = self.snapshot().late_after;
        for inst in &instances {
            inst.set_late_after(limit);
        }
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
        if slow.contains(&instance.id) || instance.marked_slow() {
            Standing::Straggler
        } else if instance.stalled_for(now) > snapshot.stall_after
            || instance.oldest_call_age(now) > snapshot.lag_after
        {
            Standing::Lagging
        } else {
            Standing::Usable
        }
    }

    /// `n` instances of `role` for one batch, best first, preferring ones
    /// not in `avoid` (instances a retried slot already tried).
    pub fn pick(&self, role: Role, n: usize, avoid: &[usize]) -> Vec<Arc<Instance>> {
        self.pick_except(role, n, avoid, &[])
    }

    /// The best instance of parity l for one batch.
    pub fn pick_parity(&self, l: usize) -> Option<Arc<Instance>> {
        let others: Vec<usize> = self
            .parities()
            .iter()
            .filter(|i| i.parity != l)
            .map(|i| i.id)
            .collect();
        self.pick_except(Role::Parity, 1, &[], &others).pop()
    }

    /// An instance for a retried slot: preferring one not in `tried`, and
    /// never one in `holding` (those with the slot's call still out). A
    /// second copy there waits behind the first, and ranked by standing
    /// alone, a paused instance (lagging) beat a marked healthy one
    /// (straggler), so retries piled up on the paused instance until its
    /// health probe failed.
    pub fn pick_retry(
        &self,
        role: Role,
        tried: &[usize],
        holding: &[usize],
    ) -> Option<Arc<Instance>> {
        self.pick_except(role, 1, tried, holding).pop()
    }

    fn pick_except(
        &self,
        role: Role,
        n: usize,
        avoid: &[usize],
        except: &[usize],
    ) -> Vec<Arc<Instance>> {
        let all: Vec<Arc<Instance>> = self
            .instances(role)
            .iter()
            .filter(|i| !except.contains(&i.id))
            .cloned()
            .collect();
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
        // The best standing present: usable ones, else lagging ones (a
        // busy instance beats one slow for seconds), which calls reuse
        // when there are fewer of them than calls. With none of those,
        // every instance is tried.
        let best = ranked[0].1;
        let first: Vec<&Arc<Instance>> =
            ranked.iter().filter(|r| r.1 == best).map(|r| r.4).collect();
        if first.len() >= n || best >= Standing::Straggler {
            return (0..n).map(|i| ranked[i % ranked.len()].4.clone()).collect();
        }
        (0..n).map(|i| first[i % first.len()].clone()).collect()
    }

    /// Sends a copy of a call (`rows` rows of `item_shape`, the same the
    /// batch sends to `picked`) to each instance of `role` marked slow and
    /// due a sample. Its answer is only timed: the instance's pace shows
    /// whether it recovered, without a query waiting on it. Down instances
    /// are left to their probes. Returns how many copies went out.
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        &self,
        role: Role,
        picked: &[Arc<Instance>],
        rows: usize,
        item_shape: &[usize],
        data: &[f32],
        out_len: usize,
        timeout: Duration,
    ) -> usize {
        let now = Instant::now();
        // Parity l's encoded groups go to instances of parity l only.
        let parity = picked.first().map_or(0, |p| p.parity);
        let due: Vec<Arc<Instance>> = self
            .instances(role)
            .iter()
            .filter(|i| i.parity == parity && !picked.iter().any(|p| p.id == i.id))
            .filter(|i| !i.is_down(now) && i.probe_ok() && i.claim_sample(now))
            .cloned()
            .collect();
        for instance in &due {
            let (instance, item, data) = (instance.clone(), item_shape.to_vec(), data.to_vec());
            tokio::spawn(async move {
                let _ = instance.infer(rows, &item, data, out_len, timeout).await;
            });
        }
        due.len()
    }

    /// Whether some usable model instance has no call in flight: a query
    /// rebuilt now could have had a real answer.
    pub fn idle_usable_model(&self) -> bool {
        let snapshot = self.snapshot();
        let now = Instant::now();
        self.models()
            .iter()
            .any(|m| m.inflight() == 0 && self.standing(m, &snapshot, now) == Standing::Usable)
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

    /// How many of the parities 0..r have an instance up.
    pub fn parities_up(&self, r: usize) -> usize {
        let now = Instant::now();
        let parities = self.parities();
        (0..r)
            .filter(|&l| {
                parities
                    .iter()
                    .any(|p| p.parity == l && !p.is_down(now) && p.probe_ok())
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::instance::test_instance as instance;

    /// Each parity's calls go to its own instances; replacing one
    /// parity's instances (discovery) keeps the other's.
    #[test]
    fn parities_are_picked_and_replaced_per_index() {
        use crate::frontend::instance::test_parity_at;
        let p = |id: usize, l: usize| {
            test_parity_at(
                id,
                Role::Parity,
                l,
                format!("http://127.0.0.1:{}", 1 + id),
                "p",
            )
        };
        let pool = Pool::new(
            vec![instance(0, Role::Model)],
            vec![p(1, 0), p(2, 1), p(3, 1)],
        );
        for _ in 0..4 {
            assert_eq!(pool.pick_parity(0).map(|i| i.id), Some(1));
            let one = pool.pick_parity(1).expect("parity 1").id;
            assert!(one == 2 || one == 3, "{one}");
        }
        assert_eq!(pool.pick_parity(2).map(|i| i.id), None);
        assert_eq!(pool.parities_up(2), 2);
        pool.set_instances_of(Role::Parity, 1, vec![p(4, 1)]);
        let ids: Vec<usize> = pool.parities().iter().map(|i| i.id).collect();
        assert_eq!(ids, vec![1, 4]);
        pool.set_instances_of(Role::Parity, 0, Vec::new());
        assert_eq!(pool.parities_up(2), 1);
        assert_eq!(pool.pick_parity(0).map(|i| i.id), None);
    }

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
            Standing::Lagging
        );
    }

    /// Two answers later than the late limit (50 ms before the watcher
    /// sets one).
    fn mark_slow(instance: &Instance) {
        for _ in 0..2 {
            instance.record_success(Instant::now(), Duration::from_millis(80));
        }
        assert!(instance.marked_slow());
    }

    #[test]
    fn an_instance_marked_by_late_answers_gets_no_calls_while_others_can_take_them() {
        let p = pool(3);
        let models = p.models();
        mark_slow(&models[1]);
        assert_eq!(
            p.standing(&models[1], &p.snapshot(), Instant::now()),
            Standing::Straggler
        );
        for _ in 0..4 {
            let mut picked = indices(&p.pick(Role::Model, 2, &[]));
            picked.sort();
            assert_eq!(picked, vec![0, 2]);
        }
        // The watcher's limit reaches instances already in the pool and
        // those that join.
        let mut s = (*p.snapshot()).clone();
        s.late_after = Duration::from_millis(500);
        p.set_snapshot(s);
        models[0].record_success(Instant::now(), Duration::from_millis(80));
        models[0].record_success(Instant::now(), Duration::from_millis(80));
        assert!(!models[0].marked_slow());
        let joined = instance(7, Role::Model);
        p.set_instances(Role::Model, vec![models[0].clone(), joined.clone()]);
        joined.record_success(Instant::now(), Duration::from_millis(80));
        joined.record_success(Instant::now(), Duration::from_millis(80));
        assert!(!joined.marked_slow());
    }

    #[test]
    fn a_parity_instance_marked_slow_is_avoided_while_another_can_take_its_calls() {
        let p = Pool::new(
            vec![instance(0, Role::Model), instance(1, Role::Model)],
            vec![instance(2, Role::Parity), instance(3, Role::Parity)],
        );
        mark_slow(&p.parities()[0]);
        for _ in 0..4 {
            assert_eq!(indices(&p.pick(Role::Parity, 1, &[])), vec![3]);
        }
        // With one parity instance, a slow parity beats none.
        let p = pool(2);
        mark_slow(&p.parities()[0]);
        assert_eq!(p.pick(Role::Parity, 1, &[]).len(), 1);
    }

    #[test]
    fn a_busy_instance_is_preferred_to_one_marked_slow() {
        // m = k = 2, model 1 marked: model 0 takes both slots, and keeps
        // them when a call of it is out long enough to make it lag.
        let p = pool(2);
        let mut s = (*p.snapshot()).clone();
        s.lag_after = Duration::from_millis(5);
        p.set_snapshot(s);
        let models = p.models();
        mark_slow(&models[1]);
        let _busy = models[0].hold_call(Instant::now() - Duration::from_millis(8));
        assert_eq!(
            p.standing(&models[0], &p.snapshot(), Instant::now()),
            Standing::Lagging
        );
        for _ in 0..4 {
            assert_eq!(indices(&p.pick(Role::Model, 2, &[])), vec![0, 0]);
            assert_eq!(indices(&p.pick(Role::Model, 1, &[0])), vec![0]);
        }
    }

    #[tokio::test]
    async fn marked_instances_get_one_sampled_copy_per_period_unless_picked() {
        let p = pool(3);
        let models = p.models();
        mark_slow(&models[1]);
        let copy = |p: &Pool, picked: &[Arc<Instance>]| {
            p.sample(
                Role::Model,
                picked,
                1,
                &[2],
                &[0.0, 0.0],
                1,
                Duration::from_millis(10),
            )
        };
        let picked = p.pick(Role::Model, 2, &[]);
        assert_eq!(copy(&p, &picked), 1, "the marked instance gets a copy");
        assert_eq!(copy(&p, &picked), 0, "and no second one in the same period");
        // Marked and picked (nothing else could take the call): the call
        // itself tells its pace, no copy is sent.
        let p = pool(2);
        let models = p.models();
        mark_slow(&models[0]);
        mark_slow(&models[1]);
        let picked = p.pick(Role::Model, 2, &[]);
        assert_eq!(copy(&p, &picked), 0);
        let unmarked = pool(2);
        let picked = unmarked.pick(Role::Model, 1, &[]);
        assert_eq!(
            copy(&unmarked, &picked),
            0,
            "instances not marked get no copies"
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
