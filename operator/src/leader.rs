//! Leader election over a coordination.k8s.io Lease, so that replicas of the
//! operator stand by and only one reconciles. Losing the lease ends the
//! process: a restarted replica rejoins as a standby with a clean cache.

use std::future::Future;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tracing::{info, warn};

use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub lease_name: String,
    pub namespace: String,
    /// This replica's name in the Lease, normally its pod name.
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub duration: Duration,
    /// How long before expiry the holder renews.
    pub grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("leader election failed: {0}")]
    Lease(#[from] LeaseManagerError),
    #[error("lost the leader lease")]
    Lost,
    #[error("the lease manager stopped")]
    Stopped,
    #[error("lease duration must exceed its renewal grace period")]
    BadTiming,
}

/// Waits for the lease, then runs `work` while holding it. Returns `Ok` when
/// `work` ends or `shutdown` fires first, and `Err(Lost)` if the lease is lost.
pub async fn run_as_leader<W, S>(
    client: Client,
    config: &LeaderConfig,
    metrics: &Metrics,
    shutdown: S,
    work: W,
) -> Result<(), LeaderError>
where
    W: Future<Output = ()>,
    S: Future<Output = ()>,
{
    let (duration, grace) = (config.duration.as_secs(), config.grace.as_secs());
    // The lease manager panics on these; refuse them as an error instead.
    if grace == 0 || grace >= duration {
        return Err(LeaderError::BadTiming);
    }
    let manager = LeaseManagerBuilder::new(client, &config.lease_name)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(duration)
        .with_grace(grace)
        .build()
        .await?;
    let (mut leading, task) = manager.watch().await;
    info!(lease = %config.lease_name, identity = %config.identity, "waiting for leadership");
    tokio::pin!(shutdown);
    // None: shut down while standing by; Some(false): the manager stopped.
    let acquired = tokio::select! {
        acquired = leading.wait_for(|is_leader| *is_leader) => Some(acquired.is_ok()),
        _ = &mut shutdown => None,
    };
    let outcome = match acquired {
        None => Ok(()),
        Some(false) => Err(LeaderError::Stopped),
        Some(true) => {
            info!("leading");
            metrics.leader.set(1);
            let outcome = tokio::select! {
                _ = work => Ok(()),
                _ = leading.wait_for(|is_leader| !*is_leader) => Err(LeaderError::Lost),
            };
            metrics.leader.set(0);
            outcome
        }
    };
    // Closing the channel makes the manager release the lease for a standby.
    drop(leading);
    match task.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!(error = %e, "releasing the lease failed"),
        Err(e) => warn!(error = %e, "lease manager task failed"),
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;

    #[tokio::test]
    async fn refuses_a_grace_period_that_is_not_shorter_than_the_lease() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let config = LeaderConfig {
            lease_name: "coded-operator".into(),
            namespace: "coded-system".into(),
            identity: "pod-0".into(),
            duration: Duration::from_secs(5),
            grace: Duration::from_secs(5),
        };
        let metrics = Metrics::new();
        let ran = std::cell::Cell::new(false);
        let outcome = run_as_leader(client, &config, &metrics, std::future::pending(), async {
            ran.set(true)
        })
        .await;
        assert!(
            matches!(outcome, Err(LeaderError::BadTiming)),
            "{outcome:?}"
        );
        assert!(!ran.get(), "work never runs without the lease");
        // The client is gone by now: the handle yields None, or times out, but no request.
        let call = tokio::time::timeout(Duration::from_millis(50), handle.next_request()).await;
        assert!(!matches!(call, Ok(Some(_))), "no API call was made");
        assert_eq!(metrics.leader.get(), 0);
    }
}
