//! Per-resource exponential backoff for failed reconciliations: a resource
//! that keeps failing is retried less and less often, and one failing
//! resource does not slow the others.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<String, u32>>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_secs(5), Duration::from_secs(300))
    }
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records a failure of `key` and returns how long to wait before the next try.
    pub fn fail(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let factor = 2u32.saturating_pow(n.saturating_sub(1).min(16));
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Forgets the failures of `key` after a success.
    pub fn reset(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets_per_key() {
        let b = Backoff::new(Duration::from_secs(5), Duration::from_secs(30));
        let waits: Vec<u64> = (0..5).map(|_| b.fail("ns/a").as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 30, 30]);
        assert_eq!(b.fail("ns/b").as_secs(), 5, "keys are independent");
        b.reset("ns/a");
        assert_eq!(b.fail("ns/a").as_secs(), 5);
    }
}
