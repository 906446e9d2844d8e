//! Coding groups: queries (rows of one request or of concurrent requests)
//! wait in one queue; the assembler takes what is queued into a coding
//! batch of whole groups of k, pads the last group with zero queries after
//! an optional linger, and starts the batch. A bounded number of batches run
//! at once, so under load queries pile up while batches run and the next
//! batch takes them all: batches grow with load, and a lone query never
//! waits for company beyond the linger.
//!
//! Priority (the request's `priority` parameter, Triton's levels: 1 is the
//! most urgent, 0 or none the default level after every given one): when
//! more queries wait than one batch takes, the assembler moves them into a
//! backlog and starts the next batch with the most urgent, in arrival
//! order within a level. A query whose caller has gone (its request timed
//! out) is dropped there, never dispatched.

use std::collections::BinaryHeap;
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
    /// The request's priority level: lower is more urgent, 0 is the default
    /// level (after every other).
    pub priority: u64,
    pub reply: oneshot::Sender<Result<RowAnswer, QueryError>>,
}

/// A query in the backlog, ordered most urgent first, then by arrival.
struct Waiting {
    level: u64,
    seq: u64,
    query: Query,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        (self.level, self.seq) == (other.level, other.seq)
    }
}

impl Eq for Waiting {}

impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiting {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the lowest level
    /// and, within it, the earliest arrival.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.level, other.seq).cmp(&(self.level, self.seq))
    }
}

/// Queries moved out of the channel, most urgent first.
struct Backlog {
    heap: BinaryHeap<Waiting>,
    seq: u64,
    max: usize,
}

impl Backlog {
    fn push(&mut self, query: Query) {
        let level = if query.priority == 0 {
            u64::MAX
        } else {
            query.priority
        };
        self.seq += 1;
        self.heap.push(Waiting {
            level,
            seq: self.seq,
            query,
        });
    }

    /// Moves what the channel holds into the backlog, up to its size.
    fn fill(&mut self, queue: &mut mpsc::Receiver<Query>) {
        while self.heap.len() < self.max {
            match queue.try_recv() {
                Ok(q) => self.push(q),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }

    /// The most urgent queries whose callers still wait, up to `n`.
    fn take(&mut self, n: usize) -> Vec<Query> {
        let mut out = Vec::new();
        while out.len() < n {
            let Some(w) = self.heap.pop() else { break };
            if !w.query.reply.is_closed() {
                out.push(w.query);
            }
        }
        out
    }
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
    /// Most queries the assembler holds beside the channel, to order them
    /// by priority (`--max-queued`).
    pub max_backlog: usize,
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
    let mut backlog = Backlog {
        heap: BinaryHeap::new(),
        seq: 0,
        max: config.max_backlog.max(max_rows),
    };
    loop {
        if backlog.heap.is_empty() {
            match queue.recv().await {
                Some(q) => backlog.push(q),
                None => break,
            }
        }
        // Wait for a free slot first: queries that arrive meanwhile join.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        backlog.fill(&mut queue);
        let mut queries = backlog.take(max_rows);
        if queries.is_empty() {
            continue;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn query(priority: u64) -> (Query, oneshot::Receiver<Result<RowAnswer, QueryError>>) {
        let (reply, answer) = oneshot::channel();
        let q = Query {
            row: vec![priority as f32],
            deadline: Instant::now(),
            priority,
            reply,
        };
        (q, answer)
    }

    #[test]
    fn the_most_urgent_level_goes_first_then_arrival_order() {
        let mut backlog = Backlog {
            heap: BinaryHeap::new(),
            seq: 0,
            max: 100,
        };
        let mut answers = Vec::new();
        for p in [0, 2, 1, 0, 2, 1] {
            let (q, a) = query(p);
            backlog.push(q);
            answers.push(a);
        }
        // The caller of the second level-1 query went away (timed out).
        drop(answers.remove(5));
        let order: Vec<f32> = backlog.take(10).iter().map(|q| q.row[0]).collect();
        assert_eq!(order, [1.0, 2.0, 2.0, 0.0, 0.0]);
    }

    #[tokio::test]
    async fn the_backlog_takes_from_the_channel_up_to_its_size() {
        let (tx, mut rx) = mpsc::channel(10);
        let mut answers = Vec::new();
        for p in [0, 3, 1, 2] {
            let (q, a) = query(p);
            tx.try_send(q).ok().unwrap();
            answers.push(a);
        }
        let mut backlog = Backlog {
            heap: BinaryHeap::new(),
            seq: 0,
            max: 3,
        };
        backlog.fill(&mut rx);
        assert_eq!(backlog.heap.len(), 3, "bounded");
        let first: Vec<f32> = backlog.take(2).iter().map(|q| q.row[0]).collect();
        assert_eq!(first, [1.0, 3.0], "most urgent of those taken in");
        backlog.fill(&mut rx);
        let rest: Vec<f32> = backlog.take(5).iter().map(|q| q.row[0]).collect();
        assert_eq!(rest, [2.0, 0.0]);
    }
}
