//! One model or parity instance as the frontend sees it: a v2 client plus
//! what its calls have shown (recent latencies, calls in flight, when it
//! last made progress, whether it is down).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntCounter};

use crate::protocol::client::{Client, ClientError, Encoding, InferTarget};
use crate::protocol::{InferRequest, NamedTensor, OutputSelection};
use crate::tls::ClientTrust;

/// Latencies kept per instance, and how long one stays relevant.
const WINDOW: usize = 256;
const WINDOW_AGE: Duration = Duration::from_secs(5);
/// Longest an instance is skipped after failures, before it is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Answers in a row later than the late limit that mark an instance slow,
/// and answers in a row within it that clear the mark. Two, not one: a
/// single late answer is as likely a hiccup (a page fault, a big batch) as
/// a slow instance.
const LATE_TO_MARK: u32 = 2;
const ON_TIME_TO_CLEAR: u32 = 2;
/// A marked instance gets a copy of a real call this often (its answer is
/// only timed), so that it is seen to recover without a query paying for it.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// The late limit until the pool sets one from what calls took.
const FIRST_LATE_AFTER: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Model,
    Parity,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Model => "model",
            Role::Parity => "parity",
        }
    }
}

/// Why a call gave no usable output.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{url} answered {got} values for {rows} rows of {row_len}")]
    OutputLength {
        url: String,
        rows: usize,
        row_len: usize,
        got: usize,
    },
}

pub struct Instance {
    /// Unique within a frontend, never reused: straggler marks and retries
    /// name instances by it while discovery adds and removes them.
    pub id: usize,
    pub role: Role,
    /// Which parity of the code a parity instance serves (0 for models).
    pub parity: usize,
    pub url: String,
    /// Name of the model at this instance.
    pub model: String,
    input_name: String,
    output_name: String,
    client: Client,
    target: InferTarget,
    /// Clock origin for the atomics below (µs since `epoch`).
    epoch: Instant,
    inflight: AtomicUsize,
    /// When each call now in flight started (µs since `epoch`): the oldest
    /// tells a lagging instance within a few typical latencies, long before
    /// its slow answers move a median.
    started: Mutex<Vec<u64>>,
    /// Last time a call finished, or the first call started after an idle
    /// spell: a paused instance stops moving it.
    progress_at: AtomicU64,
    down_until: AtomicU64,
    failures: AtomicU64,
    /// The last health probe's answer.
    probe_ok: AtomicBool,
    samples: Mutex<VecDeque<(u64, f32)>>,
    duration: Histogram,
    errors: IntCounter,
    /// An answer later than this (µs) is late: the pool sets it from the
    /// watcher's snapshot (`Snapshot::late_after`).
    late_after: AtomicU64,
    /// Marked slow from its late answers; read on every pick.
    slow: AtomicBool,
    pace: Mutex<Pace>,
}

/// The answers in a row that were late, or in time, and when a marked
/// instance last got a sampled call (µs since `epoch`).
#[derive(Debug, Default)]
struct Pace {
    late: u32,
    on_time: u32,
    sampled_at: Option<u64>,
}

/// One call in flight at an instance, counted until it finishes or is
/// dropped: hedged and replicated requests cancel the losing call, and a
/// count that leaked there would rank the instance as busy, then stalled,
/// for good.
struct InFlight<'a> {
    instance: &'a Instance,
    started: u64,
}

impl<'a> InFlight<'a> {
    fn enter(instance: &'a Instance, at: Instant) -> Self {
        let started = instance.micros(at);
        if instance.inflight.fetch_add(1, Ordering::SeqCst) == 0 {
            instance.progress_at.store(started, Ordering::SeqCst);
        }
        if let Ok(mut s) = instance.started.lock() {
            s.push(started);
        }
        Self { instance, started }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.instance.inflight.fetch_sub(1, Ordering::SeqCst);
        if let Ok(mut s) = self.instance.started.lock()
            && let Some(i) = s.iter().position(|&t| t == self.started)
        {
            s.swap_remove(i);
        }
    }
}

/// What the watcher reads of an instance.
#[derive(Debug, Clone, Copy, Default)]
pub struct InstanceStats {
    pub samples: usize,
    pub p50: Option<Duration>,
    pub inflight: usize,
    /// How long calls have been in flight with none finishing.
    pub stalled_for: Duration,
    pub down: bool,
}

pub struct InstanceSpec {
    pub id: usize,
    pub role: Role,
    /// The parity index a parity instance serves (0 for models).
    pub parity: usize,
    pub url: String,
    pub model: String,
    pub input_name: String,
    pub output_name: String,
    pub duration: Histogram,
    pub errors: IntCounter,
    /// Whether the instance gets calls before its first health probe: yes
    /// for instances named on the command line, no for discovered ones (a
    /// pod's address is published before its worker loaded the model).
    pub ready_until_probed: bool,
    /// Roots an https instance's certificate is checked against.
    pub trust: ClientTrust,
    /// The name its certificate must show, when reached by address.
    pub verify_as: Option<String>,
}

impl Instance {
    pub fn new(spec: InstanceSpec, epoch: Instant, timeout: Duration) -> Result<Self, ClientError> {
        let client =
            Client::with_trust(&spec.url, timeout, &spec.trust, spec.verify_as.as_deref())?;
        Ok(Instance {
            target: client.infer_target(&spec.model, None)?,
            client,
            id: spec.id,
            role: spec.role,
            parity: spec.parity,
            url: spec.url,
            model: spec.model,
            input_name: spec.input_name,
            output_name: spec.output_name,
            epoch,
            inflight: AtomicUsize::new(0),
            started: Mutex::new(Vec::new()),
            progress_at: AtomicU64::new(0),
            down_until: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            probe_ok: AtomicBool::new(spec.ready_until_probed),
            samples: Mutex::new(VecDeque::with_capacity(WINDOW)),
            duration: spec.duration,
            errors: spec.errors,
            late_after: AtomicU64::new(FIRST_LATE_AFTER.as_micros() as u64),
            slow: AtomicBool::new(false),
            pace: Mutex::new(Pace::default()),
        })
    }

    fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// Runs `rows` rows (`row_shape` each) through the instance's model and
    /// returns `rows × out_len` outputs, recording what the call showed.
    pub async fn infer(
        &self,
        rows: usize,
        row_shape: &[usize],
        data: Vec<f32>,
        out_len: usize,
        timeout: Duration,
    ) -> Result<Vec<f32>, CallError> {
        let started = Instant::now();
        let call = InFlight::enter(self, started);
        let request = InferRequest {
            id: None,
            parameters: Default::default(),
            inputs: vec![NamedTensor {
                name: self.input_name.clone(),
                shape: std::iter::once(rows)
                    .chain(row_shape.iter().copied())
                    .collect(),
                data,
            }],
            outputs: OutputSelection::all(true),
        };
        let result = self
            .client
            .infer_at(&self.target, &request, Encoding::Binary, timeout)
            .await
            .map_err(CallError::from)
            .and_then(|mut response| {
                // The named output, else the first; taken, not copied.
                let at = response
                    .outputs
                    .iter()
                    .position(|t| t.name == self.output_name)
                    .unwrap_or(0);
                let output = if at < response.outputs.len() {
                    response.outputs.swap_remove(at).data
                } else {
                    Vec::new()
                };
                if output.len() == rows * out_len {
                    Ok(output)
                } else {
                    Err(CallError::OutputLength {
                        url: self.url.clone(),
                        rows,
                        row_len: out_len,
                        got: output.len(),
                    })
                }
            });
        let done = Instant::now();
        drop(call);
        self.progress_at.store(self.micros(done), Ordering::SeqCst);
        match &result {
            Ok(_) => self.record_success(done, done - started),
            Err(_) => self.record_failure(done),
        }
        result
    }

    pub(crate) fn record_success(&self, at: Instant, latency: Duration) {
        self.duration.observe(latency.as_secs_f64());
        self.failures.store(0, Ordering::SeqCst);
        self.down_until.store(0, Ordering::SeqCst);
        if let Ok(mut samples) = self.samples.lock() {
            if samples.len() == WINDOW {
                samples.pop_front();
            }
            samples.push_back((self.micros(at), latency.as_secs_f32()));
        }
        self.note_pace(latency);
    }

    /// Marks the instance slow after LATE_TO_MARK late answers in a row,
    /// whether or not their queries had been rebuilt meanwhile, and clears
    /// the mark after ON_TIME_TO_CLEAR answers in time (sampled calls
    /// included). The mark holds however long the instance gets no calls:
    /// only answers show it recovered. Logs each change once.
    fn note_pace(&self, latency: Duration) {
        let limit = Duration::from_micros(self.late_after.load(Ordering::SeqCst));
        let Ok(mut pace) = self.pace.lock() else {
            return;
        };
        let slow = self.slow.load(Ordering::SeqCst);
        if latency > limit {
            pace.late += 1;
            pace.on_time = 0;
            if !slow && pace.late >= LATE_TO_MARK {
                self.slow.store(true, Ordering::SeqCst);
                pace.sampled_at = None;
                tracing::warn!(
                    instance = %self.url,
                    role = self.role.as_str(),
                    "marked slow: {} answers in a row came later than {:.1} ms (the last in {:.1} ms); \
                     it gets no calls while others can take them, only a sampled copy every {} ms",
                    pace.late,
                    ms(limit),
                    ms(latency),
                    SAMPLE_EVERY.as_millis(),
                );
            }
        } else {
            pace.on_time += 1;
            pace.late = 0;
            if slow && pace.on_time >= ON_TIME_TO_CLEAR {
                self.slow.store(false, Ordering::SeqCst);
                tracing::info!(
                    instance = %self.url,
                    role = self.role.as_str(),
                    "no longer slow: {} answers in a row within {:.1} ms (the last in {:.1} ms)",
                    pace.on_time,
                    ms(limit),
                    ms(latency),
                );
            }
        }
    }

    /// A call given up after `waited` (its batch was done and it was
    /// late): counts as a late answer for the instance's pace, so giving
    /// up does not hide that it is slow.
    pub fn abandoned(&self, waited: Duration) {
        self.note_pace(waited.max(self.late_after() + Duration::from_micros(1)));
    }

    /// Answers that take longer than this are late.
    pub fn late_after(&self) -> Duration {
        Duration::from_micros(self.late_after.load(Ordering::SeqCst))
    }

    /// Whether late answers marked the instance slow (see `note_pace`).
    pub fn marked_slow(&self) -> bool {
        self.slow.load(Ordering::SeqCst)
    }

    /// Sets the late limit: answers that took longer are late.
    pub fn set_late_after(&self, limit: Duration) {
        self.late_after
            .store(limit.as_micros() as u64, Ordering::SeqCst);
    }

    /// Whether a marked instance is due a sampled call now: none in flight
    /// and none for SAMPLE_EVERY. Claims the turn, so that concurrent
    /// batches send one copy, not one each.
    pub fn claim_sample(&self, now: Instant) -> bool {
        if !self.marked_slow() || self.inflight() > 0 {
            return false;
        }
        let now = self.micros(now);
        let Ok(mut pace) = self.pace.lock() else {
            return false;
        };
        let due = pace
            .sampled_at
            .is_none_or(|t| now.saturating_sub(t) >= SAMPLE_EVERY.as_micros() as u64);
        if due {
            pace.sampled_at = Some(now);
        }
        due
    }

    /// Failed calls put the instance aside for a backoff that doubles with
    /// each consecutive failure; it is tried again afterwards.
    fn record_failure(&self, at: Instant) {
        self.errors.inc();
        let failures = self.failures.fetch_add(1, Ordering::SeqCst) + 1;
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << failures.min(16).saturating_sub(1))
            .min(MAX_BACKOFF);
        self.down_until
            .store(self.micros(at + backoff), Ordering::SeqCst);
    }

    /// Asks the instance whether it is ready; a failed probe marks it down
    /// like a failed call, a good one clears a down mark.
    pub async fn probe(&self) -> bool {
        let ok = matches!(self.client.model_ready(&self.model, None).await, Ok(true));
        self.probe_ok.store(ok, Ordering::SeqCst);
        let now = Instant::now();
        if ok {
            if self.down_until.load(Ordering::SeqCst) != 0 && self.inflight() == 0 {
                self.failures.store(0, Ordering::SeqCst);
                self.down_until.store(0, Ordering::SeqCst);
            }
        } else {
            self.record_failure(now);
        }
        ok
    }

    /// A probe that got no answer in time counts as a failed one.
    pub fn probe_timed_out(&self) {
        self.probe_ok.store(false, Ordering::SeqCst);
        self.record_failure(Instant::now());
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    pub fn is_down(&self, now: Instant) -> bool {
        self.micros(now) < self.down_until.load(Ordering::SeqCst)
    }

    pub fn probe_ok(&self) -> bool {
        self.probe_ok.load(Ordering::SeqCst)
    }

    /// How long calls have been in flight without any finishing.
    pub fn stalled_for(&self, now: Instant) -> Duration {
        if self.inflight() == 0 {
            return Duration::ZERO;
        }
        let since = self.progress_at.load(Ordering::SeqCst);
        Duration::from_micros(self.micros(now).saturating_sub(since))
    }

    /// How long the oldest call now in flight has been out (zero when none is).
    pub fn oldest_call_age(&self, now: Instant) -> Duration {
        let oldest = match self.started.lock() {
            Ok(s) => s.iter().min().copied(),
            Err(_) => None,
        };
        oldest.map_or(Duration::ZERO, |t| {
            Duration::from_micros(self.micros(now).saturating_sub(t))
        })
    }

    /// Latencies of successful calls in the last few seconds.
    pub fn recent_latencies(&self, now: Instant) -> Vec<f32> {
        let oldest = self
            .micros(now)
            .saturating_sub(WINDOW_AGE.as_micros() as u64);
        match self.samples.lock() {
            Ok(samples) => samples
                .iter()
                .filter(|(at, _)| *at >= oldest)
                .map(|&(_, l)| l)
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    pub fn stats(&self, now: Instant) -> InstanceStats {
        let mut recent = self.recent_latencies(now);
        InstanceStats {
            samples: recent.len(),
            p50: quantile(&mut recent, 0.5).map(Duration::from_secs_f32),
            inflight: self.inflight(),
            stalled_for: self.stalled_for(now),
            down: self.is_down(now),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `q` quantile (nearest rank) of `values`, which it sorts.
pub fn quantile(values: &mut [f32], q: f64) -> Option<f32> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f32::total_cmp);
    let rank = ((q.clamp(0.0, 1.0) * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

impl Instance {
    /// A call held in flight from `at` until the guard drops, for unit tests.
    #[cfg(test)]
    pub(crate) fn hold_call(&self, at: Instant) -> impl Drop + '_ {
        InFlight::enter(self, at)
    }
}

/// An instance at a made-up loopback URL, for unit tests.
#[cfg(test)]
pub(crate) fn test_instance(id: usize, role: Role) -> std::sync::Arc<Instance> {
    test_instance_at(id, role, format!("http://127.0.0.1:{}", 1 + id))
}

#[cfg(test)]
pub(crate) fn test_instance_at(id: usize, role: Role, url: String) -> std::sync::Arc<Instance> {
    test_parity_at(id, role, 0, url, "m")
}

/// An instance of parity `parity` (or a model, index 0) calling `model`.
#[cfg(test)]
pub(crate) fn test_parity_at(
    id: usize,
    role: Role,
    parity: usize,
    url: String,
    model: &str,
) -> std::sync::Arc<Instance> {
    use prometheus::{HistogramOpts, IntCounter};
    let spec = InstanceSpec {
        id,
        role,
        parity,
        url,
        model: model.into(),
        input_name: "input".into(),
        output_name: "logits".into(),
        duration: Histogram::with_opts(HistogramOpts::new("d", "d")).expect("histogram"),
        errors: IntCounter::new("e", "e").expect("counter"),
        ready_until_probed: true,
        trust: ClientTrust::default(),
        verify_as: None,
    };
    std::sync::Arc::new(
        Instance::new(spec, Instant::now(), Duration::from_secs(1)).expect("instance"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_is_nearest_rank() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&mut v, 0.5), Some(3.0));
        assert_eq!(quantile(&mut v, 0.99), Some(5.0));
        assert_eq!(quantile(&mut v, 0.0), Some(1.0));
        assert_eq!(quantile(&mut [], 0.5), None);
    }

    /// A call dropped before its answer (the loser of a hedge or a
    /// replica race) no longer counts as in flight.
    #[tokio::test]
    async fn a_cancelled_call_leaves_the_inflight_count() {
        // Accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let instance = test_instance_at(0, Role::Model, url);
        let calling = instance.clone();
        let call = tokio::spawn(async move {
            calling
                .infer(1, &[2], vec![0.0, 0.0], 1, Duration::from_secs(30))
                .await
        });
        while instance.inflight() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(instance.inflight(), 1);
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        assert_eq!(instance.inflight(), 0);
        assert_eq!(instance.stalled_for(Instant::now()), Duration::ZERO);
        assert_eq!(instance.oldest_call_age(Instant::now()), Duration::ZERO);
        held.abort();
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn late_answers_in_a_row_mark_an_instance_and_answers_in_time_clear_it() {
        let i = test_instance(0, Role::Model);
        i.set_late_after(ms(20));
        let at = Instant::now();
        i.record_success(at, ms(30));
        assert!(!i.marked_slow(), "one late answer is a hiccup");
        i.record_success(at, ms(5));
        i.record_success(at, ms(30));
        assert!(!i.marked_slow(), "late answers must come in a row");
        i.record_success(at, ms(30));
        assert!(i.marked_slow());
        i.record_success(at, ms(5));
        assert!(i.marked_slow(), "one answer in time is not enough");
        i.record_success(at, ms(30));
        i.record_success(at, ms(5));
        assert!(i.marked_slow(), "answers in time must come in a row");
        i.record_success(at, ms(5));
        assert!(!i.marked_slow());
        // The limit is the pool's to set: the same answers under a higher
        // one are in time.
        i.set_late_after(ms(100));
        i.record_success(at, ms(30));
        i.record_success(at, ms(30));
        assert!(!i.marked_slow());
    }

    #[test]
    fn a_marked_instance_is_due_one_sample_per_period_and_none_while_a_call_is_out() {
        let i = test_instance(0, Role::Model);
        i.set_late_after(ms(20));
        let t0 = Instant::now();
        assert!(!i.claim_sample(t0), "an instance not marked is not sampled");
        i.record_success(t0, ms(30));
        i.record_success(t0, ms(30));
        assert!(i.claim_sample(t0));
        assert!(
            !i.claim_sample(t0 + ms(1)),
            "one copy per period, however many batches ask"
        );
        let due = t0 + SAMPLE_EVERY;
        let call = i.hold_call(due);
        assert!(!i.claim_sample(due), "none while a call is out");
        drop(call);
        assert!(i.claim_sample(due));
    }

    #[test]
    fn the_oldest_call_in_flight_sets_the_age() {
        let instance = test_instance(0, Role::Model);
        let t0 = Instant::now();
        let first = instance.hold_call(t0);
        let second = instance.hold_call(t0 + Duration::from_millis(3));
        let now = t0 + Duration::from_millis(10);
        assert_eq!(instance.oldest_call_age(now), Duration::from_millis(10));
        drop(first);
        assert_eq!(instance.oldest_call_age(now), Duration::from_millis(7));
        drop(second);
        assert_eq!(instance.oldest_call_age(now), Duration::ZERO);
    }
}
