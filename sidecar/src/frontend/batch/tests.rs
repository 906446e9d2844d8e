use super::*;
use crate::coding::{EncoderKind, encoder};
use crate::frontend::instance::test_instance_at;
use crate::protocol::{ModelInfo, TensorSpec};
use crate::worker::{Backend, BackendError, ServeOptions, Server};
use tokio::sync::Semaphore;

/// x ↦ 2x + bias: the model with bias 1, its parity model (k = 2) with
/// bias 2, so that F_P(x₁ + x₂) = F(x₁) + F(x₂) and F(0) ≠ 0.
struct Affine(f32);

impl Backend for Affine {
    fn metadata(&self) -> ModelInfo {
        ModelInfo {
            name: "m".into(),
            versions: vec!["1".into()],
            platform: "test-affine".into(),
            input: TensorSpec::fp32("input", vec![2]),
            output: TensorSpec::fp32("logits", vec![2]),
        }
    }

    fn infer_batch(&self, _shape: &[usize], data: &[f32]) -> Result<Vec<f32>, BackendError> {
        Ok(data.iter().map(|x| 2.0 * x + self.0).collect())
    }
}

/// A worker serving `model` on loopback, answering after `delay_ms`.
async fn worker(model: Affine, delay_ms: u64) -> String {
    let mut options = ServeOptions::default();
    options.http.port = 0;
    options.inject_delay_ms = delay_ms;
    let server = Server::bind(model, &options).await.expect("worker binds");
    let url = format!("http://{}", server.local_addr().expect("local addr"));
    tokio::spawn(server.run(std::future::pending()));
    url
}

fn context(pool: Pool, timeout: Duration) -> Arc<BatchContext> {
    Arc::new(BatchContext {
        k: 2,
        item_shape: vec![2],
        in_len: 2,
        out_len: 2,
        code: LinearCode::new(2, 1).expect("code"),
        encoders: vec![encoder(EncoderKind::Sum, 2, &[2]).expect("encoder")],
        berrut: None,
        learned: None,
        policy: ReconstructPolicy::Eager,
        timeout,
        pool: Arc::new(pool),
        metrics: Arc::new(Metrics::new("m", 2).expect("metrics")),
        zero: OnceLock::new(),
        tracer: None,
    })
}

/// Queries for `rows`, and where their answers come.
type Answers = Vec<oneshot::Receiver<Result<RowAnswer, QueryError>>>;

fn queries(rows: &[Vec<f32>], timeout: Duration) -> (Vec<Query>, Answers) {
    rows.iter()
        .map(|row| {
            let (reply, answer) = oneshot::channel();
            let query = Query {
                row: row.clone(),
                deadline: Instant::now() + timeout,
                priority: 0,
                reply,
            };
            (query, answer)
        })
        .unzip()
}

async fn permit() -> OwnedSemaphorePermit {
    Arc::new(Semaphore::new(1))
        .acquire_owned()
        .await
        .expect("permit")
}

/// A traced batch's line tells its story: every call with its
/// instance, what came back, and how each query was answered.
#[tokio::test]
async fn a_traced_batch_writes_its_calls_results_and_answers() {
    crate::tls::init();
    let fast = worker(Affine(1.0), 0).await;
    let slow = worker(Affine(1.0), 1_000).await;
    let parity = worker(Affine(2.0), 0).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("trace.jsonl");
    let timeout = Duration::from_secs(30);
    let pool = Pool::new(
        vec![
            test_instance_at(0, Role::Model, fast.clone()),
            test_instance_at(1, Role::Model, slow.clone()),
        ],
        vec![test_instance_at(2, Role::Parity, parity.clone())],
    );
    let mut ctx = Arc::into_inner(context(pool, timeout)).expect("one owner");
    ctx.tracer = Some(Arc::new(Tracer::create(&path, 1.0).expect("tracer")));
    let (queries, answers) = queries(&[vec![1.0, -2.0], vec![0.5, 3.0]], timeout);
    run(Arc::new(ctx), queries, permit().await).await;
    let mut kinds = Vec::new();
    for answer in answers {
        let a = answer.await.expect("answered").expect("not an error");
        kinds.push(if a.reconstructed { "rebuilt" } else { "real" });
    }

    let text = std::fs::read_to_string(&path).expect("trace written");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    let line = &lines[0];
    assert_eq!(
        (line["k"].as_u64(), line["queries"].as_u64()),
        (Some(2), Some(2))
    );
    let events = line["events"].as_array().expect("events");
    let str_of = |e: &serde_json::Value, key: &str| e[key].as_str().map(String::from);
    // Three calls: each slot to its own model instance, the parity to
    // the parity instance.
    let calls: Vec<(String, String)> = events
        .iter()
        .filter_map(|e| Some((str_of(e, "call")?, str_of(e, "instance")?)))
        .collect();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(
        calls.contains(&("parity".into(), parity.clone())),
        "{calls:?}"
    );
    let slow_slot = calls
        .iter()
        .find(|(_, i)| *i == slow)
        .map(|(c, _)| c.clone())
        .expect("a call to the slow instance");
    assert!(
        calls
            .iter()
            .any(|(c, i)| *i == fast && *c != slow_slot && c.starts_with("slot"))
    );
    // What came back before the batch ended: all but the slow slot.
    let results: Vec<String> = events
        .iter()
        .filter(|e| e["ok"].as_bool() == Some(true))
        .filter_map(|e| str_of(e, "result"))
        .collect();
    assert_eq!(results.len(), 2, "{results:?}");
    assert!(results.contains(&"parity".into()) && !results.contains(&slow_slot));
    // One answer per query, the slow slot's query rebuilt.
    let mut answered: Vec<(u64, String)> = events
        .iter()
        .filter_map(|e| Some((e["answer"].as_u64()?, str_of(e, "kind")?)))
        .collect();
    answered.sort();
    let slow_query: u64 = slow_slot
        .trim_start_matches("slot ")
        .parse()
        .expect("slot j");
    let want: Vec<(u64, String)> = (0..2)
        .map(|q| {
            (
                q,
                if q == slow_query { "rebuilt" } else { "real" }.to_string(),
            )
        })
        .collect();
    assert_eq!(answered, want);
    assert_eq!(kinds[slow_query as usize], "rebuilt");
}

/// With no model instance to send to (discovery found none), the
/// queries get their 504 at the deadline saying so; before, the slots'
/// retry time stayed in the past and the batch woke in a busy loop.
#[tokio::test]
async fn with_no_model_instance_the_deadline_error_says_so() {
    crate::tls::init();
    let parity = worker(Affine(2.0), 0).await;
    let pool = Pool::new(Vec::new(), vec![test_instance_at(2, Role::Parity, parity)]);
    let timeout = Duration::from_millis(200);
    let ctx = context(pool, timeout);
    let (queries, answers) = queries(&[vec![1.0, 2.0], vec![3.0, 4.0]], timeout);
    run(ctx.clone(), queries, permit().await).await;
    for answer in answers {
        match answer.await.expect("answered") {
            Err(QueryError::Deadline { detail, .. }) => assert_eq!(detail, NO_MODEL),
            other => panic!("expected a deadline error, got {other:?}"),
        }
    }
    assert_eq!(ctx.metrics.timeouts.get(), 2);
    assert_eq!(ctx.metrics.retries.get(), 0, "nothing was sent");
}

/// A slot is never sent again to an instance that still holds its
/// call. Here the healthy instance is marked slow (as the watcher
/// marked it under SIGSTOP, from the paused instance's stale fast
/// answers), so both first calls go to the stalled one; the parity is
/// stalled too, so neither slot decodes and both are retried. Ranked
/// by standing alone the retries went back to the stalled instance
/// (not marked, so ranked above the marked one) every retry wait until
/// its answers came, 3 s here.
#[tokio::test]
async fn a_retry_never_goes_to_the_instance_still_holding_the_slots_call() {
    crate::tls::init();
    let stalled = worker(Affine(1.0), 3_000).await;
    let healthy = worker(Affine(1.0), 0).await;
    let parity = worker(Affine(2.0), 3_000).await;
    let stalled = test_instance_at(0, Role::Model, stalled);
    let healthy = test_instance_at(1, Role::Model, healthy);
    for _ in 0..2 {
        healthy.record_success(std::time::Instant::now(), Duration::from_millis(80));
    }
    assert!(healthy.marked_slow());
    let timeout = Duration::from_secs(30);
    let ctx = context(
        Pool::new(
            vec![stalled.clone(), healthy.clone()],
            vec![test_instance_at(2, Role::Parity, parity)],
        ),
        timeout,
    );
    let metrics = ctx.metrics.clone();
    let rows = [vec![1.0, -2.0], vec![0.5, 3.0]];
    let (queries, answers) = queries(&rows, timeout);
    let permit = permit().await;
    tokio::time::timeout(Duration::from_secs(2), run(ctx, queries, permit))
        .await
        .expect("the retries went to the healthy instance");
    for (row, answer) in rows.iter().zip(answers) {
        let answer = answer.await.expect("answered").expect("not an error");
        let want: Vec<f32> = row.iter().map(|x| 2.0 * x + 1.0).collect();
        assert_eq!(answer.output, want);
        assert!(!answer.reconstructed);
    }
    assert_eq!(metrics.retries.get(), 2, "one retry per slot");
    assert_eq!(stalled.inflight(), 2, "the first calls are still out");
}

/// A fast model worker, one answering after `slow_ms`, and a parity
/// worker; the slow one's instance, and a 30 s timeout.
async fn fast_slow_and_parity(slow_ms: u64) -> (Arc<BatchContext>, Arc<Instance>, Duration) {
    crate::tls::init();
    let fast = worker(Affine(1.0), 0).await;
    let slow = worker(Affine(1.0), slow_ms).await;
    let parity = worker(Affine(2.0), 0).await;
    let slow = test_instance_at(1, Role::Model, slow);
    let timeout = Duration::from_secs(30);
    let ctx = context(
        Pool::new(
            vec![test_instance_at(0, Role::Model, fast), slow.clone()],
            vec![test_instance_at(2, Role::Parity, parity)],
        ),
        timeout,
    );
    (ctx, slow, timeout)
}

/// Once every query has its answer the batch is done, though the slow
/// instance's call is still out: before, it waited for that call (up
/// to the call timeout), so a paused instance kept every batch it had
/// a call in alive. The call itself is given up once it is late, so the
/// slow worker does not work through answers nobody waits for, and the
/// instance's pace counts it late.
#[tokio::test]
async fn a_batch_ends_with_its_last_answer_and_gives_up_its_late_calls() {
    let (ctx, slow, timeout) = fast_slow_and_parity(10_000).await;
    // After the pool, which sets every instance's limit.
    slow.set_late_after(Duration::from_millis(300));
    let metrics = ctx.metrics.clone();
    let rows = [vec![1.0, -2.0], vec![0.5, 3.0]];
    let (queries, answers) = queries(&rows, timeout);
    let permit = permit().await;
    let started = Instant::now();
    // Far less than the slow call's 10 s: the batch must not wait for it.
    tokio::time::timeout(Duration::from_secs(5), run(ctx, queries, permit))
        .await
        .expect("the batch ends once its queries are answered");
    let mut rebuilt = 0;
    for (row, answer) in rows.iter().zip(answers) {
        let answer = answer.await.expect("answered").expect("not an error");
        let want: Vec<f32> = row.iter().map(|x| 2.0 * x + 1.0).collect();
        assert_eq!(answer.output, want);
        rebuilt += usize::from(answer.reconstructed);
    }
    assert_eq!(rebuilt, 1, "the slow instance's query was rebuilt");
    assert_eq!(metrics.batches_running.get(), 0);
    // Given up once late (300 ms), long before its 10 s answer.
    while slow.inflight() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the late call was not given up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "given up before it was late"
    );
    assert_eq!(metrics.abandoned_calls.get(), 1);
    assert_eq!(metrics.late_answers.get(), 0, "no answer came");
    assert_eq!(metrics.reconstructions.get(), 1);
}

/// A call that answers after its batch is done but before it is late is
/// not given up: its answer is counted as a late one (its query was rebuilt).
#[tokio::test]
async fn an_answer_just_behind_the_rebuild_is_counted_not_given_up() {
    // Far behind the rebuild (eager waits a few times the others' time),
    // far ahead of its late limit.
    let (ctx, slow, timeout) = fast_slow_and_parity(1_000).await;
    // After the pool, which sets every instance's limit.
    slow.set_late_after(Duration::from_secs(20));
    let metrics = ctx.metrics.clone();
    let rows = [vec![1.0, -2.0], vec![0.5, 3.0]];
    let (queries, answers) = queries(&rows, timeout);
    run(ctx, queries, permit().await).await;
    for answer in answers {
        answer.await.expect("answered").expect("not an error");
    }
    for _ in 0..1_000 {
        if metrics.late_answers.get() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metrics.late_answers.get(), 1);
    assert_eq!(metrics.abandoned_calls.get(), 0);
    assert_eq!(slow.inflight(), 0);
}

/// With the Berrut code a batch sends its n coded queries to n model
/// instances, no parity, and decodes every query from the first k answers:
/// with k = 2 two answers interpolate linearly, exact for this affine
/// model, so the answers equal 2x + 1 only if the slow instance's answer
/// was not waited for. The padded group's zero query is not answered.
#[tokio::test]
async fn a_berrut_batch_decodes_every_query_from_the_first_k_answers() {
    crate::tls::init();
    let fast = [worker(Affine(1.0), 0).await, worker(Affine(1.0), 0).await];
    let slow = worker(Affine(1.0), 2_000).await;
    let timeout = Duration::from_secs(30);
    let pool = Pool::new(
        vec![
            test_instance_at(0, Role::Model, fast[0].clone()),
            test_instance_at(1, Role::Model, slow),
            test_instance_at(2, Role::Model, fast[1].clone()),
        ],
        Vec::new(),
    );
    let mut ctx = Arc::into_inner(context(pool, timeout)).expect("one owner");
    ctx.berrut = Some(BerrutCode::new(2, 3).expect("code"));
    ctx.encoders = Vec::new();
    let rows = [vec![1.0, -2.0], vec![0.5, 3.0], vec![-1.5, 0.25]];
    let (queries, answers) = queries(&rows, timeout);
    let ctx = Arc::new(ctx);
    run(ctx.clone(), queries, permit().await).await;
    for (row, answer) in rows.iter().zip(answers) {
        let a = answer.await.expect("answered").expect("not an error");
        assert!(a.reconstructed, "every Berrut answer is decoded");
        let want: Vec<f32> = row.iter().map(|x| 2.0 * x + 1.0).collect();
        for (w, g) in want.iter().zip(&a.output) {
            assert!((w - g).abs() < 1e-4, "{row:?}: {:?} not {want:?}", a.output);
        }
    }
    assert_eq!(ctx.metrics.reconstructions.get(), 3);
    assert_eq!(ctx.metrics.retries.get(), 0);
}
