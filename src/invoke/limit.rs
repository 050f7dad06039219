//! Rate limits per route: messages per second and bytes per second, token buckets (GCRA,
//! from `governor`) with a burst. Over the limit a message either waits, within its
//! deadline, or is refused at once (429), as the route's `mode` says.
//!
//! The limiter reads tokio's clock, so tests run with a paused clock.

use std::num::NonZeroU32;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use crate::config::{ByteSize, RateLimitConfig, RateLimitMode};

/// governor's clock, driven by tokio's (pausable) time.
#[derive(Debug, Clone, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;

    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }
}

type Bucket = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<std::time::Instant>>;

/// Why a message was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Throttled {
    #[error("the route's rate limit is exceeded")]
    OverLimit,
    #[error("the route's rate limit would hold the message past its deadline")]
    PastDeadline,
}

#[derive(Debug)]
pub struct RateLimit {
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
    mode: RateLimitMode,
}

impl RateLimit {
    /// From a validated config; `max_payload` sets the smallest byte burst. `always_wait`
    /// makes `reject` behave as `wait` (durable sources).
    pub fn new(config: &RateLimitConfig, max_payload: ByteSize, always_wait: bool) -> Self {
        let bucket = |rate: u32, burst: u32| {
            let rate = NonZeroU32::new(rate.max(1)).expect("non-zero");
            let burst = NonZeroU32::new(burst.max(1)).expect("non-zero");
            RateLimiter::direct_with_clock(Quota::per_second(rate).allow_burst(burst), TokioClock)
        };
        let as_u32 = |size: ByteSize| u32::try_from(size.bytes()).unwrap_or(u32::MAX);
        Self {
            messages: config
                .messages_per_second
                .map(|rate| bucket(rate, config.burst_messages.unwrap_or(rate))),
            bytes: config.bytes_per_second.map(|rate| {
                let burst = config.burst_bytes.unwrap_or(rate.max(max_payload));
                bucket(as_u32(rate), as_u32(burst))
            }),
            mode: if always_wait {
                RateLimitMode::Wait
            } else {
                config.mode
            },
        }
    }

    /// Lets one message of `size` bytes through, waiting if the mode allows it and the wait
    /// ends before `deadline`. `Ok(true)` when it had to wait.
    pub async fn acquire(&self, size: usize, deadline: Instant) -> Result<bool, Throttled> {
        let mut waited = false;
        if let Some(messages) = &self.messages {
            waited |= self.take(messages, NonZeroU32::MIN, deadline).await?;
        }
        if let (Some(bytes), Some(size)) = (
            &self.bytes,
            NonZeroU32::new(u32::try_from(size).unwrap_or(u32::MAX)),
        ) {
            waited |= self.take(bytes, size, deadline).await?;
        }
        Ok(waited)
    }

    /// `Ok(true)` when the bucket made the message wait.
    async fn take(
        &self,
        bucket: &Bucket,
        cells: NonZeroU32,
        deadline: Instant,
    ) -> Result<bool, Throttled> {
        let mut waited = false;
        loop {
            let wait = match bucket.check_n(cells) {
                Ok(Ok(())) => return Ok(waited),
                Ok(Err(not_until)) => not_until.wait_time_from(TokioClock.now()),
                // Larger than the burst: it could never pass.
                Err(_) => return Err(Throttled::OverLimit),
            };
            if self.mode == RateLimitMode::Reject {
                return Err(Throttled::OverLimit);
            }
            if Instant::now() + wait > deadline {
                return Err(Throttled::PastDeadline);
            }
            tokio::time::sleep(wait).await;
            waited = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limit(mode: RateLimitMode, messages: Option<u32>, bytes: Option<u64>) -> RateLimit {
        let config = RateLimitConfig {
            messages_per_second: messages,
            burst_messages: None,
            bytes_per_second: bytes.map(ByteSize),
            burst_bytes: None,
            mode,
        };
        RateLimit::new(&config, ByteSize(100), false)
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[tokio::test(start_paused = true)]
    async fn reject_mode_refuses_beyond_the_burst_and_refills() {
        let l = limit(RateLimitMode::Reject, Some(10), None);
        for _ in 0..10 {
            l.acquire(1, far()).await.unwrap();
        }
        assert_eq!(l.acquire(1, far()).await, Err(Throttled::OverLimit));
        tokio::time::advance(Duration::from_millis(100)).await;
        l.acquire(1, far())
            .await
            .expect("one token back after 100 ms");
        assert_eq!(l.acquire(1, far()).await, Err(Throttled::OverLimit));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_mode_spaces_messages_at_the_rate() {
        let l = limit(RateLimitMode::Wait, Some(10), None);
        let start = Instant::now();
        let mut waited = 0;
        for _ in 0..30 {
            waited += usize::from(l.acquire(1, far()).await.unwrap());
        }
        // 10 at once (burst), then one every 100 ms: the 20 after the burst waited.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(waited, 20);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_mode_gives_up_when_the_deadline_comes_first() {
        let l = limit(RateLimitMode::Wait, Some(1), None);
        l.acquire(1, far()).await.unwrap();
        let soon = Instant::now() + Duration::from_millis(500);
        assert_eq!(l.acquire(1, soon).await, Err(Throttled::PastDeadline));
        assert_eq!(
            Instant::now() + Duration::from_millis(500),
            soon,
            "it did not wait in vain"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_per_second_limits_by_size() {
        let l = limit(RateLimitMode::Wait, None, Some(1000));
        let start = Instant::now();
        l.acquire(1000, far()).await.unwrap();
        l.acquire(500, far()).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(500));
        let r = limit(RateLimitMode::Reject, None, Some(1000));
        r.acquire(600, far()).await.unwrap();
        assert_eq!(r.acquire(600, far()).await, Err(Throttled::OverLimit));
        assert_eq!(
            r.acquire(5000, far()).await,
            Err(Throttled::OverLimit),
            "larger than the burst"
        );
    }
}
