//! The one reconnect and re-publish rule every source uses: wait, doubling from `min` up to
//! `max`, and start again from `min` once a connection has held (or a publish went through).
//! The wait ends early when the intake is told to stop. Time comes from tokio, so tests run
//! on a paused clock.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Waits between attempts to connect (or to publish again).
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    /// When the last attempt succeeded: a connection that then held for `max` resets the
    /// wait; one lost sooner counts as failing again (a message that breaks it every time
    /// must not make it reconnect many times a second).
    connected: Option<Instant>,
}

/// Between broker connection attempts: from 100 ms to 5 s.
pub const RECONNECT: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

impl Backoff {
    pub fn new((min, max): (Duration, Duration)) -> Self {
        Self {
            min,
            max,
            next: min,
            connected: None,
        }
    }

    /// The wait before the next attempt, doubling it for the one after.
    pub fn next_wait(&mut self) -> Duration {
        if let Some(since) = self.connected.take() {
            if since.elapsed() >= self.max {
                self.next = self.min;
            }
        }
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// The attempt succeeded (connected, published): the waits start again from `min` once
    /// it has held for `max`.
    pub fn succeeded(&mut self) {
        self.connected = Some(Instant::now());
    }

    /// Waits [`Self::next_wait`]; `false` when `stop` came first.
    pub async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let wait = self.next_wait();
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = stop.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn waits_double_up_to_the_limit_and_start_over_after_a_connection_held() {
        let mut backoff = Backoff::new((100 * MS, 800 * MS));
        let waits: Vec<_> = (0..5).map(|_| backoff.next_wait()).collect();
        assert_eq!(waits, [100 * MS, 200 * MS, 400 * MS, 800 * MS, 800 * MS]);
        // Connected, then lost at once: still failing, the wait stays long.
        backoff.succeeded();
        tokio::time::advance(10 * MS).await;
        assert_eq!(backoff.next_wait(), 800 * MS);
        // Connected and held for the longest wait: the next loss starts over.
        backoff.succeeded();
        tokio::time::advance(800 * MS).await;
        assert_eq!(backoff.next_wait(), 100 * MS);
        assert_eq!(backoff.next_wait(), 200 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_wait() {
        let mut backoff = Backoff::new((Duration::from_secs(60), Duration::from_secs(60)));
        let stop = CancellationToken::new();
        stop.cancel();
        let started = Instant::now();
        assert!(!backoff.wait(&stop).await);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
