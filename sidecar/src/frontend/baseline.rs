//! What a user would run instead of coding, for the benchmark to compare
//! against at equal resources: each request goes whole to the least-loaded
//! model instance; `hedged` also sends a backup copy to another instance
//! once the first has taken longer than the observed p95 (Dean & Barroso,
//! "The Tail at Scale"); `replicated` sends every request to two instances.
//! The first answer wins; failures are retried elsewhere until the deadline.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::dispatch::Pool;
use super::instance::{Instance, Role};
use crate::http::EngineError;

/// How requests reach model instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DispatchMode {
    /// Coding groups, parity models, reconstruction (the product).
    #[default]
    Coded,
    /// No redundancy: the least-loaded instance.
    LeastLoaded,
    /// A backup request after the observed p95.
    Hedged,
    /// Every request to two instances.
    Replicated,
}

pub struct Call<'a> {
    pub rows: usize,
    pub item_shape: &'a [usize],
    pub data: &'a [f32],
    pub out_len: usize,
    pub deadline: Instant,
}

/// Answers one request under a baseline mode.
/// `sampled` counts the copies sent to instances marked slow.
pub async fn infer(
    pool: &Pool,
    mode: DispatchMode,
    call: Call<'_>,
    sampled: &prometheus::IntCounter,
) -> Result<Vec<f32>, EngineError> {
    let mut tried: Vec<usize> = Vec::new();
    let mut running: JoinSet<Result<Vec<f32>, String>> = JoinSet::new();
    let mut last_error = String::from("no model instance answered");
    let spawn = |running: &mut JoinSet<_>, tried: &mut Vec<usize>, instance: Arc<Instance>| {
        tried.push(instance.id);
        let (rows, item, data, out_len) = (
            call.rows,
            call.item_shape.to_vec(),
            call.data.to_vec(),
            call.out_len,
        );
        let timeout = call
            .deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        running.spawn(async move {
            instance
                .infer(rows, &item, data, out_len, timeout)
                .await
                .map_err(|e| e.to_string())
        });
    };
    let first = if mode == DispatchMode::Replicated {
        2
    } else {
        1
    };
    let mut picked = pool.pick(Role::Model, first, &[]);
    picked.dedup_by_key(|i| i.id);
    sampled.inc_by(
        pool.sample(
            Role::Model,
            &picked,
            call.rows,
            call.item_shape,
            call.data,
            call.out_len,
            call.deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ) as u64,
    );
    for instance in picked {
        spawn(&mut running, &mut tried, instance);
    }
    let mut hedge_at =
        (mode == DispatchMode::Hedged).then(|| Instant::now() + pool.snapshot().hedge_after);
    loop {
        let wake = hedge_at.unwrap_or(call.deadline).min(call.deadline);
        tokio::select! {
            done = running.join_next(), if !running.is_empty() => match done {
                Some(Ok(Ok(output))) => return Ok(output),
                Some(Ok(Err(e))) => last_error = e,
                Some(Err(e)) => last_error = format!("call task failed: {e}"),
                None => {}
            },
            () = tokio::time::sleep_until(wake) => {
                hedge_at = None;
                if Instant::now() < call.deadline
                    && let Some(instance) = pool.pick(Role::Model, 1, &tried).pop()
                {
                    spawn(&mut running, &mut tried, instance);
                }
            }
        }
        if Instant::now() >= call.deadline {
            return Err(EngineError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "deadline",
                format!("no answer by the deadline: {last_error}"),
            ));
        }
        if running.is_empty() {
            // Every call failed: try another instance after a short pause.
            tokio::time::sleep(Duration::from_millis(5)).await;
            if let Some(instance) = pool.pick(Role::Model, 1, &tried).pop() {
                spawn(&mut running, &mut tried, instance);
            }
        }
    }
}
