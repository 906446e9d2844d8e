//! Admission: global caps on the infer requests a server holds at once and
//! on the request bytes they hold, shared by the HTTP and gRPC doors and
//! checked before a body is decoded, so that a refused request costs no
//! work and an overload cannot grow memory without bound.
//!
//! A refusal is a 503 with `Retry-After` (gRPC RESOURCE_EXHAUSTED), not a
//! 429: the limit is the server's capacity, not one client's rate, and a
//! 503 is what load balancers and the frontend's own client already treat
//! as "try another instance". Health, metadata and metrics are never
//! refused, so probes keep answering under overload.
//!
//! With a [`Shedder`] (the frontend's `--shed-queue-delay-ms`), the cap on
//! requests is also learnt from their latency, so that those admitted are
//! answered without a standing queue (see [`super::shedding`]).

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use axum::http::StatusCode;
use prometheus::{IntCounterVec, IntGauge};

use super::engine::EngineError;
use super::shedding::{ShedConfig, Shedder};

/// `reason` of a request refused by `--max-inflight-requests`.
pub const INFLIGHT_REQUESTS: &str = "inflight_requests";
/// `reason` of a request refused by `--max-inflight-bytes`.
pub const INFLIGHT_BYTES: &str = "inflight_bytes";
/// `reason` of a request refused by the learnt cap (`--shed-queue-delay-ms`).
pub const QUEUE_DELAY: &str = "queue_delay";
/// What `Retry-After` says, in seconds (the header's unit).
pub const RETRY_AFTER_SECS: u64 = 1;

/// A cap given on the command line: a number, or `0` / `off` for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub Option<u64>);

impl Limit {
    pub const OFF: Limit = Limit(None);

    pub fn of(n: u64) -> Limit {
        Limit((n > 0).then_some(n))
    }
}

impl FromStr for Limit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Limit::OFF);
        }
        s.parse::<u64>()
            .map(Limit::of)
            .map_err(|_| format!("expected a number (0 for no limit) or `off`, got {s:?}"))
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("off"),
        }
    }
}

/// The caps and what is held against them now.
pub struct Admission {
    max_requests: Option<usize>,
    max_bytes: Option<usize>,
    requests: AtomicUsize,
    bytes: AtomicUsize,
    shedder: Option<Shedder>,
    refused: IntCounterVec,
    /// `*_inflight_limit`: the cap in force, kept current as it is learnt.
    limit: IntGauge,
}

/// One admitted request: holds its place and its bytes until dropped.
pub struct Ticket {
    admission: Arc<Admission>,
    bytes: AtomicUsize,
    admitted: Instant,
    /// Answered (not refused or failed): its latency teaches the shedder.
    answered: AtomicBool,
}

impl Admission {
    /// The caps; with `shed`, the cap on requests is also learnt (at most
    /// `max_requests`). Refusals are counted in `refused` by reason, and
    /// the cap in force is kept in `limit` (0: none).
    pub fn new(
        max_requests: Limit,
        max_bytes: Limit,
        shed: Option<ShedConfig>,
        refused: IntCounterVec,
        limit: IntGauge,
    ) -> Arc<Self> {
        let size = |l: Limit| l.0.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let max = size(max_requests);
        let admission = Admission {
            max_requests: max,
            max_bytes: size(max_bytes),
            requests: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            shedder: shed.map(|c| Shedder::new(c, max.unwrap_or(usize::MAX), Instant::now())),
            refused,
            limit,
        };
        admission.show_limit();
        Arc::new(admission)
    }

    /// Sets `*_inflight_limit` to the cap in force.
    fn show_limit(&self) {
        let cap = match (&self.shedder, self.max_requests) {
            (Some(s), _) => Some(s.limit()),
            (None, max) => max,
        };
        let cap = cap.filter(|&c| c != usize::MAX).unwrap_or(0);
        self.limit.set(i64::try_from(cap).unwrap_or(i64::MAX));
    }

    /// The learnt cap, when shedding.
    pub fn shedder(&self) -> Option<&Shedder> {
        self.shedder.as_ref()
    }

    /// Admits one more request holding `bytes` (its announced size, or 0
    /// when unknown: [`Ticket::hold`] adds bytes as they are read).
    pub fn admit(self: &Arc<Self>, bytes: usize) -> Result<Ticket, EngineError> {
        let held = self.requests.fetch_add(1, Ordering::SeqCst);
        if self.max_requests.is_some_and(|max| held >= max) {
            self.requests.fetch_sub(1, Ordering::SeqCst);
            return Err(self.refuse(INFLIGHT_REQUESTS));
        }
        if self.shedder.as_ref().is_some_and(|s| !s.admits(held)) {
            self.requests.fetch_sub(1, Ordering::SeqCst);
            return Err(self.refuse(QUEUE_DELAY));
        }
        let ticket = Ticket {
            admission: self.clone(),
            bytes: AtomicUsize::new(0),
            admitted: Instant::now(),
            answered: AtomicBool::new(false),
        };
        ticket.hold(bytes)?;
        Ok(ticket)
    }

    /// Requests admitted and not yet answered.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Request bytes held by admitted requests.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::SeqCst)
    }

    fn refuse(&self, reason: &'static str) -> EngineError {
        self.refused.with_label_values(&[reason]).inc();
        let message = match reason {
            INFLIGHT_REQUESTS => format!(
                "the server is answering its limit of {} requests (--max-inflight-requests); retry later",
                self.max_requests.unwrap_or_default()
            ),
            QUEUE_DELAY => {
                let (target, limit) = self
                    .shedder
                    .as_ref()
                    .map_or((0, 0), |s| (s.config().target.as_millis(), s.limit()));
                format!(
                    "the server is shedding load: its requests queued over {target} ms (--shed-queue-delay-ms), so it answers {limit} at a time for now; retry later"
                )
            }
            _ => format!(
                "the requests in flight hold the server's limit of {} bytes (--max-inflight-bytes); retry later",
                self.max_bytes.unwrap_or_default()
            ),
        };
        EngineError::new(StatusCode::SERVICE_UNAVAILABLE, reason, message)
    }
}

impl Ticket {
    /// Holds `n` more bytes for this request, or refuses it when that
    /// would take the server over `--max-inflight-bytes` (the bytes it
    /// already holds are kept until the ticket is dropped).
    pub fn hold(&self, n: usize) -> Result<(), EngineError> {
        if n == 0 {
            return Ok(());
        }
        let a = &self.admission;
        let before = a.bytes.fetch_add(n, Ordering::SeqCst);
        self.bytes.fetch_add(n, Ordering::SeqCst);
        if a.max_bytes
            .is_some_and(|max| before.saturating_add(n) > max)
        {
            a.bytes.fetch_sub(n, Ordering::SeqCst);
            self.bytes.fetch_sub(n, Ordering::SeqCst);
            return Err(a.refuse(INFLIGHT_BYTES));
        }
        Ok(())
    }

    /// Bytes this request holds.
    pub fn held(&self) -> usize {
        self.bytes.load(Ordering::SeqCst)
    }

    /// The request was answered: its latency counts (failures' do not, so
    /// that fast refusals and errors cannot hide a queue).
    pub fn answered(&self) {
        self.answered.store(true, Ordering::Relaxed);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let a = &self.admission;
        a.bytes
            .fetch_sub(self.bytes.load(Ordering::SeqCst), Ordering::SeqCst);
        let held = a.requests.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
        if let Some(s) = &a.shedder
            && self.answered.load(Ordering::Relaxed)
        {
            let now = Instant::now();
            s.answered(now.saturating_duration_since(self.admitted), held, now);
            a.show_limit();
        }
    }
}

/// Whether an error is an admission refusal (gRPC: RESOURCE_EXHAUSTED).
pub fn is_refusal(reason: &str) -> bool {
    reason == INFLIGHT_REQUESTS || reason == INFLIGHT_BYTES || reason == QUEUE_DELAY
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    fn admission(requests: Limit, bytes: Limit) -> Arc<Admission> {
        let refused = IntCounterVec::new(Opts::new("refused", "r"), &["reason"]).unwrap();
        let limit = IntGauge::new("limit", "l").unwrap();
        Admission::new(requests, bytes, None, refused, limit)
    }

    #[test]
    fn limits_parse_with_zero_and_off_for_none() {
        assert_eq!("off".parse::<Limit>(), Ok(Limit::OFF));
        assert_eq!("0".parse::<Limit>(), Ok(Limit::OFF));
        assert_eq!("12".parse::<Limit>(), Ok(Limit(Some(12))));
        assert!("-1".parse::<Limit>().is_err());
        assert_eq!(Limit::of(3).to_string(), "3");
        assert_eq!(Limit::OFF.to_string(), "off");
    }

    #[test]
    fn requests_are_capped_and_released_when_answered() {
        let a = admission(Limit::of(2), Limit::OFF);
        let t1 = a.admit(0).unwrap();
        let _t2 = a.admit(0).unwrap();
        let e = a.admit(0).err().unwrap();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.reason, INFLIGHT_REQUESTS);
        assert!(e.message.contains("limit of 2 requests"), "{e}");
        assert_eq!(a.requests(), 2, "a refusal holds nothing");
        drop(t1);
        assert!(a.admit(0).is_ok());
        assert_eq!(a.refused.with_label_values(&[INFLIGHT_REQUESTS]).get(), 1);
    }

    #[test]
    fn bytes_are_capped_as_they_are_held() {
        let a = admission(Limit::OFF, Limit::of(100));
        let t1 = a.admit(60).unwrap();
        let e = a.admit(41).err().unwrap();
        assert_eq!(e.reason, INFLIGHT_BYTES);
        assert!(e.message.contains("limit of 100 bytes"), "{e}");
        assert_eq!((a.requests(), a.bytes()), (1, 60), "the refused one let go");
        let t2 = a.admit(0).unwrap();
        t2.hold(40).unwrap();
        assert_eq!(t2.hold(1).unwrap_err().reason, INFLIGHT_BYTES);
        assert_eq!(t2.held(), 40);
        drop(t1);
        drop(t2);
        assert_eq!((a.requests(), a.bytes()), (0, 0));
    }

    #[test]
    fn no_limit_admits_anything() {
        let a = admission(Limit::OFF, Limit::OFF);
        let tickets: Vec<_> = (0..100)
            .map(|_| a.admit(usize::MAX / 200).unwrap())
            .collect();
        assert_eq!(a.requests(), 100);
        drop(tickets);
        assert_eq!(a.bytes(), 0);
    }
}
