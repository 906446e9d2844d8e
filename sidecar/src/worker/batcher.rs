//! Dynamic batching: rows of concurrent requests share one model call.
//!
//! A request's rows join a queue. The batcher takes the oldest request and
//! adds whatever else is queued until the batch has `max_batch_size` rows or
//! `max_queue_delay` has passed since the oldest request arrived, runs the
//! model once on a blocking thread and hands each request its slice of the
//! output. Requests that pile up while a batch runs form the next batch
//! without further waiting, so batches grow with load and a lone request
//! waits at most the delay.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};

use super::backend::Backend;
use super::metrics::Metrics;
use super::service_time::ServiceTime;

/// How requests are grouped into model calls.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Most rows per model call. A request with more rows is cut into
    /// parts of this size (`Batcher::infer`).
    pub max_batch_size: usize,
    /// Longest a request waits for others to join its batch.
    pub max_queue_delay: Duration,
    /// Model calls that may run at once (each on its own blocking thread).
    pub concurrency: usize,
    /// Run the model on the batcher's own thread instead of a blocking
    /// thread: for a server on one I/O thread, where a hand-off to another
    /// thread and back costs more than these models' compute. One call at
    /// a time, and only batches predicted to take under INLINE_BUDGET
    /// (2 ms): longer ones (and the first, whose cost is unknown) run on a
    /// blocking thread, so that health checks are answered meanwhile.
    pub inline: bool,
    /// An emulated accelerator: each batch holds its model slot for a drawn
    /// service time (`--service-time-ms`), its answers given at the end.
    pub service_time: Option<ServiceTime>,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_batch_size: 64,
            // Batches still form under load; see `ServeOptions::max_queue_delay_us`.
            max_queue_delay: Duration::ZERO,
            concurrency: 1,
            inline: false,
            service_time: None,
        }
    }
}

/// Why a request got no output from the batcher.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    #[error("model failed: {0}")]
    Backend(String),
    #[error("model returned {got} values for {rows} rows, expected {expected}")]
    OutputLength {
        rows: usize,
        expected: usize,
        got: usize,
    },
    #[error("model panicked")]
    Panicked,
    #[error("worker is shutting down")]
    Closed,
}

struct Job {
    rows: usize,
    data: Vec<f32>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Vec<f32>, BatchError>>,
}

/// Handle to submit rows; cheap to clone. The batcher task stops once every
/// handle is dropped and the queued work is done.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    max_batch_size: usize,
}

impl Batcher {
    /// Starts the batcher task for `backend`. `input_len`/`output_len` are
    /// the values per row.
    pub fn spawn(
        backend: Arc<dyn Backend>,
        input_shape: Vec<usize>,
        output_len: usize,
        config: BatchConfig,
        metrics: Arc<Metrics>,
    ) -> (Batcher, JoinHandle<()>) {
        // Bounded so that a flood of requests waits in their handlers (and
        // shows in latency) instead of growing memory without limit.
        let (tx, rx) = mpsc::channel(4096);
        let config = BatchConfig {
            max_batch_size: config.max_batch_size.max(1),
            concurrency: if config.inline {
                1
            } else {
                config.concurrency.max(1)
            },
            ..config
        };
        let max_batch_size = config.max_batch_size;
        let task = tokio::spawn(run(backend, input_shape, output_len, config, metrics, rx));
        (Batcher { tx, max_batch_size }, task)
    }

    /// Runs `rows` rows (`data` row-major) through the model and returns
    /// their outputs. More rows than the largest batch are cut into
    /// batch-sized parts, queued together and answered in order: one big
    /// request never becomes one model call the size of the whole request.
    pub async fn infer(&self, rows: usize, data: Vec<f32>) -> Result<Vec<f32>, BatchError> {
        let row_len = data.len() / rows.max(1);
        if rows <= self.max_batch_size || row_len == 0 {
            return self
                .submit(rows, data)
                .await?
                .await
                .unwrap_or(Err(BatchError::Closed));
        }
        let mut parts = Vec::with_capacity(rows.div_ceil(self.max_batch_size));
        for chunk in data.chunks(self.max_batch_size * row_len) {
            parts.push(self.submit(chunk.len() / row_len, chunk.to_vec()).await?);
        }
        drop(data);
        let mut out = Vec::new();
        for part in parts {
            out.extend(part.await.unwrap_or(Err(BatchError::Closed))?);
        }
        Ok(out)
    }

    /// Queues one job; the receiver gets its outputs.
    async fn submit(
        &self,
        rows: usize,
        data: Vec<f32>,
    ) -> Result<oneshot::Receiver<Result<Vec<f32>, BatchError>>, BatchError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            rows,
            data,
            enqueued: Instant::now(),
            reply,
        };
        self.tx.send(job).await.map_err(|_| BatchError::Closed)?;
        Ok(answer)
    }
}

async fn run(
    backend: Arc<dyn Backend>,
    input_shape: Vec<usize>,
    output_len: usize,
    config: BatchConfig,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<Job>,
) {
    let slots = Arc::new(Semaphore::new(config.concurrency));
    let mut carried: Option<Job> = None;
    let mut pace = Pace::default();
    let mut service_time = config.service_time.clone();
    loop {
        // Wait for a free model slot first: requests keep queueing meanwhile
        // and join the next batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let first = match carried.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => break,
            },
        };
        let deadline = first.enqueued + config.max_queue_delay;
        let mut rows = first.rows;
        let mut jobs = vec![first];
        while rows < config.max_batch_size {
            // Take what is already queued without touching the timer: tokio
            // timers tick in whole milliseconds, so even an expired deadline
            // would cost up to a millisecond.
            let next = match rx.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) if Instant::now() >= deadline => break,
                Err(TryRecvError::Empty) => match timeout_at(deadline, rx.recv()).await {
                    Ok(Some(job)) => job,
                    // Timed out, or every handle dropped: run what we have.
                    Ok(None) | Err(_) => break,
                },
            };
            if rows + next.rows > config.max_batch_size {
                carried = Some(next);
                break;
            }
            rows += next.rows;
            jobs.push(next);
        }
        let hold = service_time.as_mut().map(|s| s.sample(rows));
        if config.inline {
            // Inline only while the batch is predicted short: a long one
            // would hold health checks and `/metrics` on the one I/O
            // thread for its whole run (ResNet-18, batch 64: seconds).
            let inline = pace.predict(rows).is_some_and(|d| d <= INLINE_BUDGET);
            let batch = Batch { jobs, inline, hold };
            if let Some(compute) =
                run_batch(backend.clone(), &input_shape, output_len, batch, &metrics).await
            {
                pace.record(rows, compute);
            }
            drop(slot);
            continue;
        }
        let backend = backend.clone();
        let metrics = metrics.clone();
        let input_shape = input_shape.clone();
        tokio::spawn(async move {
            let batch = Batch {
                jobs,
                inline: false,
                hold,
            };
            run_batch(backend, &input_shape, output_len, batch, &metrics).await;
            drop(slot);
        });
    }
    // Wait for batches still running so that their requests are answered
    // before the worker reports that it has drained.
    let _ = slots.acquire_many(config.concurrency as u32).await;
}

/// Longest batch run inline on the I/O thread: health checks and other
/// requests wait at most this long behind it.
const INLINE_BUDGET: Duration = Duration::from_millis(2);

/// What a row costs the model, from the batches so far (a moving average),
/// to predict how long the next batch takes.
#[derive(Debug, Default)]
struct Pace {
    per_row: Option<f64>,
}

impl Pace {
    /// Unknown before the first batch: then the batch runs off the I/O
    /// thread, whatever it turns out to cost.
    fn predict(&self, rows: usize) -> Option<Duration> {
        self.per_row
            .and_then(|s| Duration::try_from_secs_f64(s * rows as f64).ok())
    }

    fn record(&mut self, rows: usize, took: Duration) {
        let sample = took.as_secs_f64() / rows.max(1) as f64;
        self.per_row = Some(match self.per_row {
            // A slower batch counts at once, a faster one gradually: a
            // model that turned slow must leave the I/O thread now.
            Some(old) if sample < old => 0.8 * old + 0.2 * sample,
            _ => sample,
        });
    }
}

/// One model call's worth of requests, and how to run it.
struct Batch {
    jobs: Vec<Job>,
    /// On the calling thread instead of a blocking one.
    inline: bool,
    /// The emulated service time: answers are given this long after the
    /// batch started, however long the model took.
    hold: Option<Duration>,
}

/// Runs one batch and answers its requests; returns how long the model
/// itself took (None when every caller had left and nothing ran).
async fn run_batch(
    backend: Arc<dyn Backend>,
    input_shape: &[usize],
    output_len: usize,
    batch: Batch,
    metrics: &Metrics,
) -> Option<Duration> {
    let Batch { jobs, inline, hold } = batch;
    // Callers that went away (client disconnected) need no compute.
    let jobs: Vec<Job> = jobs.into_iter().filter(|j| !j.reply.is_closed()).collect();
    let rows: usize = jobs.iter().map(|j| j.rows).sum();
    if jobs.is_empty() {
        return None;
    }
    let started = Instant::now();
    for job in &jobs {
        metrics
            .queue_duration
            .observe(started.duration_since(job.enqueued).as_secs_f64());
    }
    metrics.batch_size.observe(rows as f64);

    // The first request's buffer becomes the batch: no copy for a lone request.
    let total: usize = jobs.iter().map(|j| j.data.len()).sum();
    let mut replies = Vec::with_capacity(jobs.len());
    let mut data = Vec::new();
    for job in jobs {
        if data.is_empty() {
            data = job.data;
            data.reserve(total - data.len());
        } else {
            data.extend_from_slice(&job.data);
        }
        replies.push((job.rows, job.reply));
    }
    let shape: Vec<usize> = std::iter::once(rows)
        .chain(input_shape.iter().copied())
        .collect();

    let outcome = if inline {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            backend.infer_batch(&shape, &data)
        }))
        .map_err(|_| ())
    } else {
        tokio::task::spawn_blocking(move || backend.infer_batch(&shape, &data))
            .await
            .map_err(|_| ())
    };
    let expected = rows * output_len;
    let output = match outcome {
        Ok(Ok(out)) if out.len() == expected => Ok(out),
        Ok(Ok(out)) => Err(BatchError::OutputLength {
            rows,
            expected,
            got: out.len(),
        }),
        Ok(Err(e)) => Err(BatchError::Backend(e.to_string())),
        Err(()) => Err(BatchError::Panicked),
    };
    let compute = started.elapsed();
    if let Some(hold) = hold {
        // The accelerator is busy until then; the slot stays taken.
        tokio::time::sleep_until(started + hold).await;
    }
    match output {
        Ok(mut out) => {
            // From the back, so the first caller gets the buffer itself and
            // a lone request's output is never copied.
            for (job_rows, reply) in replies.into_iter().rev() {
                let n = job_rows * output_len;
                let part = if n == out.len() {
                    std::mem::take(&mut out)
                } else {
                    out.split_off(out.len() - n)
                };
                // A caller that left meanwhile just doesn't get its answer.
                let _ = reply.send(Ok(part));
            }
        }
        Err(e) => {
            for (_, reply) in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
    Some(compute)
}

#[cfg(test)]
mod tests {
    use super::Pace;

    #[test]
    fn pace_predicts_from_rows_and_leaves_the_io_thread_at_once_when_slower() {
        let ms = std::time::Duration::from_millis;
        let mut pace = Pace::default();
        assert_eq!(pace.predict(1), None, "unknown before the first batch");
        pace.record(4, ms(4));
        assert_eq!(pace.predict(8), Some(ms(8)));
        // Faster batches lower the cost gradually...
        pace.record(1, ms(0));
        assert_eq!(pace.predict(10), Some(ms(8)));
        // ...a slower one raises it at once.
        pace.record(1, ms(50));
        assert_eq!(pace.predict(2), Some(ms(100)));
    }

    use super::*;
    use crate::protocol::{ModelInfo, TensorSpec};
    use crate::worker::backend::BackendError;
    use std::sync::Mutex;

    /// Doubles each of 2 inputs into 1 output (their sum × 2) and records
    /// the batch sizes it saw.
    struct Recorder {
        batches: Mutex<Vec<usize>>,
        fail: bool,
    }

    impl Backend for Recorder {
        fn metadata(&self) -> ModelInfo {
            ModelInfo {
                name: "r".into(),
                versions: vec!["1".into()],
                platform: "test".into(),
                input: TensorSpec::fp32("x", vec![2]),
                output: TensorSpec::fp32("y", vec![1]),
            }
        }

        fn infer_batch(&self, shape: &[usize], data: &[f32]) -> Result<Vec<f32>, BackendError> {
            self.batches.lock().unwrap().push(shape[0]);
            if self.fail {
                return Err(BackendError::msg("boom"));
            }
            std::thread::sleep(Duration::from_millis(5));
            Ok(data.chunks(2).map(|r| 2.0 * (r[0] + r[1])).collect())
        }
    }

    fn start(fail: bool, config: BatchConfig) -> (Arc<Recorder>, Batcher, JoinHandle<()>) {
        let backend = Arc::new(Recorder {
            batches: Mutex::new(Vec::new()),
            fail,
        });
        let metrics = Arc::new(Metrics::new("r").unwrap());
        let (b, task) = Batcher::spawn(backend.clone(), vec![2], 1, config, metrics);
        (backend, b, task)
    }

    #[tokio::test]
    async fn concurrent_requests_share_batches_and_get_their_own_rows() {
        share_batches(false).await;
    }

    #[tokio::test]
    async fn inline_batches_share_and_answer_alike() {
        share_batches(true).await;
    }

    async fn share_batches(inline: bool) {
        let config = BatchConfig {
            max_batch_size: 8,
            max_queue_delay: Duration::from_millis(20),
            concurrency: 1,
            inline,
            service_time: None,
        };
        let (backend, batcher, task) = start(false, config);
        let mut handles = Vec::new();
        for i in 0..20 {
            let b = batcher.clone();
            let rows = 1 + i % 3;
            let data: Vec<f32> = (0..rows * 2).map(|j| (i * 10 + j) as f32).collect();
            handles.push(tokio::spawn(async move {
                let out = b.infer(rows, data.clone()).await.unwrap();
                let want: Vec<f32> = data.chunks(2).map(|r| 2.0 * (r[0] + r[1])).collect();
                assert_eq!(out, want);
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        drop(batcher);
        task.await.unwrap();
        let batches = backend.batches.lock().unwrap().clone();
        assert!(batches.iter().all(|&b| b <= 8), "{batches:?}");
        assert!(batches.len() < 20, "no batching happened: {batches:?}");
        assert_eq!(
            batches.iter().sum::<usize>(),
            (0..20usize).map(|i| 1 + i % 3).sum::<usize>()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_emulated_accelerator_serves_one_batch_per_service_time() {
        let service_time = crate::worker::service_time::ServiceTimeArgs {
            service_time_ms: 50.0,
            service_time_per_row_ms: 10.0,
            ..Default::default()
        }
        .model()
        .unwrap();
        let config = BatchConfig {
            max_batch_size: 2,
            service_time,
            ..Default::default()
        };
        let (_, batcher, _task) = start(false, config);
        let start = Instant::now();
        let mut calls = Vec::new();
        for i in 0..4 {
            let b = batcher.clone();
            calls.push(tokio::spawn(async move {
                let out = b.infer(1, vec![i as f32, 0.0]).await.unwrap();
                (out, start.elapsed())
            }));
            tokio::task::yield_now().await;
        }
        let mut done = Vec::new();
        for (i, call) in calls.into_iter().enumerate() {
            let (out, at) = call.await.unwrap();
            assert_eq!(out, vec![2.0 * i as f32], "real answers");
            done.push(at.as_millis());
        }
        // The first request runs alone (50 + 10 ms); the three that queued
        // meanwhile form batches of 2 and 1 (70 ms, then 60 ms), one after
        // the other: the slot is held for each whole service time.
        assert_eq!(done, vec![60, 130, 130, 190]);
    }

    /// Panics on a batch whose first value is negative.
    struct Fragile;

    impl Backend for Fragile {
        fn metadata(&self) -> ModelInfo {
            Recorder {
                batches: Mutex::new(Vec::new()),
                fail: false,
            }
            .metadata()
        }

        fn infer_batch(&self, _shape: &[usize], data: &[f32]) -> Result<Vec<f32>, BackendError> {
            assert!(data[0] >= 0.0, "negative input");
            Ok(vec![data[0]; data.len() / 2])
        }
    }

    #[tokio::test]
    async fn a_panicking_model_fails_its_batch_and_the_next_one_runs() {
        for inline in [false, true] {
            let metrics = Arc::new(Metrics::new("r").unwrap());
            let config = BatchConfig {
                inline,
                ..Default::default()
            };
            let (batcher, _task) = Batcher::spawn(Arc::new(Fragile), vec![2], 1, config, metrics);
            let failed = batcher.infer(1, vec![-1.0, 0.0]).await;
            assert!(matches!(failed, Err(BatchError::Panicked)), "{failed:?}");
            assert_eq!(batcher.infer(1, vec![3.0, 0.0]).await.unwrap(), vec![3.0]);
        }
    }

    #[tokio::test]
    async fn oversized_requests_are_cut_into_batches_and_errors_reach_every_caller() {
        let (backend, batcher, _task) = start(
            false,
            BatchConfig {
                max_batch_size: 2,
                ..Default::default()
            },
        );
        let out = batcher.infer(5, vec![1.0; 10]).await.unwrap();
        assert_eq!(out, vec![4.0; 5]);
        assert_eq!(*backend.batches.lock().unwrap(), vec![2, 2, 1]);

        let (_, batcher, _task) = start(true, BatchConfig::default());
        let (a, b) = tokio::join!(
            batcher.infer(1, vec![0.0; 2]),
            batcher.infer(1, vec![0.0; 2])
        );
        assert!(
            matches!(a, Err(BatchError::Backend(ref m)) if m == "boom"),
            "{a:?}"
        );
        assert!(b.is_err());
    }
}
