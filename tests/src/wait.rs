//! Waiting for a condition with a deadline: the only way tests synchronize with the cluster.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Polls `probe` every `interval` until it returns `Some`, or fails after `timeout` with
/// `what` in the message.
pub async fn until<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
