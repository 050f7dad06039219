//! Retry policy: which failures are retried, how long to wait between attempts (exponential
//! backoff with jitter, from the `backoff` crate, or the service's `Retry-After`), and the
//! retry budget that keeps an outage from multiplying the load on the service.
//!
//! Time comes from tokio, so tests run with a paused clock and zero jitter.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use backoff::backoff::Backoff;
use backoff::ExponentialBackoff;
use http::{HeaderMap, Method, StatusCode};
use tokio::time::Instant;

use super::InvokeError;
use crate::config::RetryConfig;

pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// How often and how far apart a message's attempts go. What is worth retrying at all is
/// the classification's call (`classify.rs`).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    config: RetryConfig,
}

impl RetryPolicy {
    pub fn new(config: &RetryConfig) -> Self {
        Self {
            max_attempts: config.max_attempts.max(1),
            config: config.clone(),
        }
    }

    /// Whether repeating this request is safe. Idempotent methods always; others when the
    /// route allows it or the request carries an `Idempotency-Key`. A request whose
    /// connection never opened did not reach the service, so it may always be repeated.
    pub fn may_repeat(
        &self,
        method: &Method,
        headers: &HeaderMap,
        last: Option<&InvokeError>,
    ) -> bool {
        method.is_idempotent()
            || self.config.retry_non_idempotent
            || headers.contains_key(IDEMPOTENCY_KEY)
            || matches!(last, Some(InvokeError::Connect(_)))
    }

    /// The delays between attempts of one message.
    pub fn backoff(&self) -> ExponentialBackoff {
        ExponentialBackoff {
            current_interval: self.config.initial_interval,
            initial_interval: self.config.initial_interval,
            randomization_factor: self.config.jitter,
            multiplier: self.config.multiplier,
            max_interval: self.config.max_interval,
            max_elapsed_time: None,
            ..ExponentialBackoff::default()
        }
    }
}

/// The next delay: the backoff's, or longer if the service asked for it with `Retry-After`
/// on a 429 or 503.
pub fn next_delay(
    backoff: &mut ExponentialBackoff,
    status: Option<StatusCode>,
    headers: Option<&HeaderMap>,
) -> Duration {
    let delay = backoff.next_backoff().unwrap_or(backoff.max_interval);
    let asked = match (status, headers) {
        (Some(StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE), Some(headers)) => {
            retry_after(headers, SystemTime::now())
        }
        _ => None,
    };
    asked.map_or(delay, |asked| asked.max(delay))
}

/// Longest `Retry-After` taken at its word; any message deadline is far shorter.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// `Retry-After` as seconds or as an HTTP date, relative to `now`, at most a day.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let asked = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let when = httpdate::parse_http_date(value).ok()?;
            when.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(asked.min(MAX_RETRY_AFTER))
}

/// Retries may add at most `ratio` of the route's requests over a sliding window, plus a
/// floor of `min_per_second` so that a quiet route can still retry.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    floor: f64,
    bucket_width: Duration,
    /// (bucket start, requests, retries), oldest first; at most 10 buckets span the window.
    buckets: Mutex<VecDeque<(Instant, u32, u32)>>,
}

const BUCKETS: u32 = 10;

impl RetryBudget {
    pub fn new(config: &RetryConfig) -> Self {
        Self {
            ratio: config.budget_ratio,
            floor: f64::from(config.budget_min_per_second) * config.budget_window.as_secs_f64(),
            bucket_width: config.budget_window / BUCKETS,
            buckets: Mutex::new(VecDeque::new()),
        }
    }

    /// Counts a first attempt.
    pub fn record_request(&self) {
        self.with_current(|bucket| bucket.1 += 1);
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn try_retry(&self) -> bool {
        let mut allowed = false;
        let (ratio, floor) = (self.ratio, self.floor);
        self.with_window(|buckets| {
            let (requests, retries) = buckets.iter().fold((0u64, 0u64), |(q, r), b| {
                (q + u64::from(b.1), r + u64::from(b.2))
            });
            if (retries as f64) < floor + ratio * requests as f64 {
                allowed = true;
                if let Some(current) = buckets.back_mut() {
                    current.2 += 1;
                }
            }
        });
        allowed
    }

    fn with_current(&self, f: impl FnOnce(&mut (Instant, u32, u32))) {
        self.with_window(|buckets| {
            if let Some(current) = buckets.back_mut() {
                f(current)
            }
        });
    }

    /// Drops buckets older than the window and makes sure the newest covers `now`.
    fn with_window(&self, f: impl FnOnce(&mut VecDeque<(Instant, u32, u32)>)) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let window = self.bucket_width * BUCKETS;
        while buckets
            .front()
            .is_some_and(|b| now.duration_since(b.0) >= window)
        {
            buckets.pop_front();
        }
        if buckets
            .back()
            .is_none_or(|b| now.duration_since(b.0) >= self.bucket_width)
        {
            buckets.push_back((now, 0, 0));
        }
        f(&mut buckets);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invoke::ConnectError;

    fn config(extra: impl FnOnce(&mut RetryConfig)) -> RetryConfig {
        let mut config = RetryConfig {
            jitter: 0.0,
            ..RetryConfig::default()
        };
        extra(&mut config);
        config
    }

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        let policy = RetryPolicy::new(&config(|c| {
            c.initial_interval = Duration::from_millis(100);
            c.max_interval = Duration::from_millis(500);
        }));
        let mut backoff = policy.backoff();
        let delays: Vec<u128> = (0..5)
            .map(|_| next_delay(&mut backoff, None, None).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
    }

    #[test]
    fn retry_after_wins_when_longer() {
        let policy = RetryPolicy::new(&config(|_| {}));
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "3".parse().unwrap());
        let mut backoff = policy.backoff();
        assert_eq!(
            next_delay(
                &mut backoff,
                Some(StatusCode::SERVICE_UNAVAILABLE),
                Some(&headers)
            ),
            Duration::from_secs(3)
        );
        // Only 429 and 503 carry a meaningful Retry-After.
        assert_eq!(
            next_delay(&mut backoff, Some(StatusCode::BAD_GATEWAY), Some(&headers)),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn retry_after_accepts_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut headers = HeaderMap::new();
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        headers.insert("retry-after", later.parse().unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(7)));
        headers.insert(
            "retry-after",
            httpdate::fmt_http_date(now - Duration::from_secs(7))
                .parse()
                .unwrap(),
        );
        assert_eq!(retry_after(&headers, now), Some(Duration::ZERO));
        headers.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&headers, now), None);
        headers.insert("retry-after", u64::MAX.to_string().parse().unwrap());
        assert_eq!(
            retry_after(&headers, now),
            Some(MAX_RETRY_AFTER),
            "no overflow"
        );
    }

    #[test]
    fn non_idempotent_methods_need_permission() {
        let strict = RetryPolicy::new(&config(|_| {}));
        let none = HeaderMap::new();
        assert!(strict.may_repeat(&Method::GET, &none, None));
        assert!(strict.may_repeat(&Method::PUT, &none, None));
        assert!(!strict.may_repeat(&Method::POST, &none, None));
        assert!(!strict.may_repeat(
            &Method::PATCH,
            &none,
            Some(&InvokeError::Timeout(Duration::ZERO))
        ));
        assert!(strict.may_repeat(
            &Method::POST,
            &none,
            Some(&InvokeError::Connect(ConnectError::Tcp(
                std::io::ErrorKind::ConnectionRefused.into()
            )))
        ));
        let mut keyed = HeaderMap::new();
        keyed.insert("Idempotency-Key", "abc".parse().unwrap());
        assert!(strict.may_repeat(&Method::POST, &keyed, None));
        let lenient = RetryPolicy::new(&config(|c| c.retry_non_idempotent = true));
        assert!(lenient.may_repeat(&Method::POST, &none, None));
    }

    #[tokio::test(start_paused = true)]
    async fn budget_limits_retries_to_a_fraction_of_requests() {
        let budget = RetryBudget::new(&config(|c| {
            c.budget_ratio = 0.2;
            c.budget_min_per_second = 0;
            c.budget_window = Duration::from_secs(10);
        }));
        for _ in 0..100 {
            budget.record_request();
        }
        let granted = (0..100).filter(|_| budget.try_retry()).count();
        assert_eq!(granted, 20);
        // Once the window has passed, the old requests no longer pay for retries.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!budget.try_retry());
        budget.record_request();
        budget.record_request();
        budget.record_request();
        budget.record_request();
        budget.record_request();
        assert!(budget.try_retry());
        assert!(!budget.try_retry());
    }

    #[tokio::test(start_paused = true)]
    async fn budget_floor_allows_retries_on_a_quiet_route() {
        let budget = RetryBudget::new(&config(|c| {
            c.budget_ratio = 0.0;
            c.budget_min_per_second = 1;
            c.budget_window = Duration::from_secs(5);
        }));
        let granted = (0..20).filter(|_| budget.try_retry()).count();
        assert_eq!(granted, 5);
    }
}
