//! Where a request body is decoded: gzip inflate, JSON parsing and tensor
//! conversion of a large body take milliseconds of CPU, which on the I/O
//! thread would stall every other connection (probes included). Bodies
//! over [`BLOCKING_ABOVE`] are decoded on tokio's blocking pool; smaller
//! ones inline, where a hand-off would cost more than the work.

use super::engine::EngineError;
use axum::http::StatusCode;

/// Body size from which decoding leaves the I/O thread: about 0.1 ms of
/// JSON parsing, several times what a hand-off to a blocking thread costs.
pub const BLOCKING_ABOVE: usize = 64 * 1024;

/// Runs `work` (decoding a body of `size` bytes) inline when small, on a
/// blocking thread when large; errs only if that thread panicked.
pub async fn off_io_thread<T: Send + 'static>(
    size: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, EngineError> {
    if size <= BLOCKING_ABOVE {
        return Ok(work());
    }
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        EngineError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "decode_failed",
            format!("decoding the request failed: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// On a one-thread runtime, a large body's decoding blocks on a signal
    /// that only another task on that thread sends: it can only arrive if
    /// the decoding is off the thread.
    #[tokio::test(flavor = "current_thread")]
    async fn large_bodies_are_decoded_off_the_io_thread() {
        let (tx, rx) = mpsc::channel::<()>();
        let decoding = tokio::spawn(off_io_thread(BLOCKING_ABOVE + 1, move || {
            // Bounded so that a regression fails instead of hanging.
            rx.recv_timeout(Duration::from_secs(30))
        }));
        tokio::task::yield_now().await;
        tx.send(()).unwrap();
        let signalled = decoding.await.unwrap().unwrap();
        assert!(signalled.is_ok(), "the decoding stalled the I/O thread");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn small_bodies_are_decoded_inline() {
        let thread = std::thread::current().id();
        let ran_on = off_io_thread(BLOCKING_ABOVE, || std::thread::current().id())
            .await
            .unwrap();
        assert_eq!(ran_on, thread);
    }
}
