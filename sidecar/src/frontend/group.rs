//! Coding groups: queries (rows of one request or of concurrent requests)
//! wait in one queue; the assembler takes what is queued into a coding
//! batch of whole groups of k, pads the last group with zero queries after
//! an optional linger, and starts the batch. A bounded number of batches run
//! at once, so under load queries pile up while batches run and the next
//! batch takes them all: batches grow with load, and a lone query never
//! waits for company beyond the linger.

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::batch::{self, BatchContext};

/// One row to answer, and where its answer goes.
pub struct Query {
    pub row: Vec<f32>,
    pub deadline: Instant,
    pub reply: oneshot::Sender<Result<RowAnswer, QueryError>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RowAnswer {
    pub output: Vec<f32>,
    /// Rebuilt from the parity output rather than the query's own.
    pub reconstructed: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum QueryError {
    #[error(
        "no answer within the {timeout_ms} ms deadline: the query's instance and the parity could not both be reached ({detail})"
    )]
    Deadline { timeout_ms: u64, detail: String },
    #[error("the frontend is shutting down")]
    Closed,
}

#[derive(Debug, Clone, Copy)]
pub struct GroupConfig {
    /// How long an incomplete group waits for more queries before padding.
    pub linger: Duration,
    /// Most groups in one coding batch.
    pub max_groups: usize,
    /// Coding batches in flight at once.
    pub max_inflight: usize,
}

/// Takes queries from `queue` until every sender is gone and the queue is
/// empty, then waits for the batches it started.
pub async fn assemble(
    ctx: Arc<BatchContext>,
    mut queue: mpsc::Receiver<Query>,
    config: GroupConfig,
) {
    let k = ctx.k;
    let max_rows = config.max_groups.max(1) * k;
    let slots = Arc::new(Semaphore::new(config.max_inflight.max(1)));
    let mut running = tokio::task::JoinSet::new();
    while let Some(first) = queue.recv().await {
        // Wait for a free slot first: queries that arrive meanwhile join.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut queries = vec![first];
        drain(&mut queue, &mut queries, max_rows);
        if queries.len() % k != 0 && !config.linger.is_zero() {
            let until = tokio::time::Instant::now() + config.linger;
            while queries.len() % k != 0 && queries.len() < max_rows {
                match tokio::time::timeout_at(until, queue.recv()).await {
                    Ok(Some(q)) => queries.push(q),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        running.spawn(batch::run(ctx.clone(), queries, permit));
        // Reap finished batches so the set does not grow without bound.
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
}

/// Moves already queued queries into `queries`, up to `max_rows`.
fn drain(queue: &mut mpsc::Receiver<Query>, queries: &mut Vec<Query>, max_rows: usize) {
    while queries.len() < max_rows {
        match queue.try_recv() {
            Ok(q) => queries.push(q),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
        }
    }
}
