//! The invoker: calls the co-located HTTP service for one message, with the route's
//! resilience stack, in this order:
//!
//! ```text
//! rate limit -> [ retry loop: breaker permit -> attempt (timeout) -> classify ] -> outcome
//! ```
//!
//! - The rate limit admits the message once (`max_in_flight` is enforced earlier, by the
//!   source, so that a full route stops intake; with `max_in_flight = "auto"` every attempt's
//!   latency and overload signal move that limit, see `concurrency.rs` and `adaptive.rs`).
//! - Every attempt needs a breaker permit and reports its verdict to the breaker, so each
//!   attempt is one health sample and an open breaker stops a retry loop at once. The first
//!   attempt refused by the breaker makes the message a fast 503.
//! - Each attempt has the route's timeout, cut to what is left of the message's deadline;
//!   no attempt or backoff runs past the deadline.
//! - A retryable verdict is retried while attempts, deadline, retry budget and the method's
//!   idempotency allow; otherwise the last result is the outcome.
//! - Each attempt tells the service its budget, its number and the message's delivery count
//!   ([`AttemptHeaders`]), unless the route turns that off.

pub mod adaptive;
pub mod breaker;
pub mod classify;
pub mod client;
pub mod concurrency;
pub mod error;
pub mod limit;
pub mod retry;
pub mod tls;

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::Request;
use tokio::time::Instant;
use tracing::debug;

pub use breaker::Breaker;
pub use classify::{Class, Classifier, Verdict};
pub use client::{Upstream, UpstreamResponse};
pub use concurrency::{Concurrency, Slot};
pub use error::{ConnectError, InvokeError};
pub use limit::{RateLimit, Throttled};
pub use retry::{RetryBudget, RetryPolicy};

use crate::config::{RouteConfig, UpstreamConfig};
use crate::message::ErrorKind;
use crate::telemetry::metrics::{RateLimited, RouteMetrics, SkipReason};
use crate::telemetry::trace::{MessageTrace, RouteSpans};

/// Attempts are not started with less time than this left before the deadline.
const MIN_ATTEMPT: Duration = Duration::from_millis(1);

/// Why a message got no response from the service.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Upstream(#[from] InvokeError),
    #[error("circuit open")]
    CircuitOpen { retry_in: Duration },
    #[error(transparent)]
    Throttled(#[from] Throttled),
}

impl Failure {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Failure::Upstream(e) => e.kind(),
            Failure::CircuitOpen { .. } => ErrorKind::CircuitOpen,
            Failure::Throttled(_) => ErrorKind::RateLimited,
        }
    }
}

/// One message's call: when nobody waits for its answer any more, and what each attempt
/// tells the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    pub deadline: Instant,
    pub headers: AttemptHeaders,
}

/// What each HTTP attempt tells the service of its message (`lifetime.attempt_headers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptHeaders {
    Off,
    /// `Ricochet-Budget-Ms`, `Ricochet-Attempt` and `Ricochet-Delivery-Count` (`delivered`:
    /// the broker's deliveries of the message, this one included).
    On {
        delivered: u32,
    },
}

/// The attempt headers' names, made once: a name given as text is parsed and copied
/// (lowercased) on every insert.
const BUDGET_NAME: HeaderName = HeaderName::from_static("ricochet-budget-ms");
const ATTEMPT_NAME: HeaderName = HeaderName::from_static("ricochet-attempt");
const DELIVERY_COUNT_NAME: HeaderName = HeaderName::from_static("ricochet-delivery-count");

impl AttemptHeaders {
    /// Sets the headers of attempt number `attempt`, whose budget header is `budget` (see
    /// [`budget_ms`]). They replace any of the same name (a message's own `Ricochet-*`
    /// headers are never forwarded anyway).
    fn stamp(self, headers: &mut http::HeaderMap, attempt: u32, budget: HeaderValue) {
        let AttemptHeaders::On { delivered } = self else {
            return;
        };
        headers.insert(BUDGET_NAME, budget);
        headers.insert(ATTEMPT_NAME, number(attempt.into()));
        headers.insert(DELIVERY_COUNT_NAME, number(delivered.into()));
    }
}

/// `Ricochet-Budget-Ms` for an attempt ricochet waits `budget` for: whole milliseconds,
/// rounded down (the service never counts on more than it has).
fn budget_ms(budget: Duration) -> HeaderValue {
    number(u64::try_from(budget.as_millis()).unwrap_or(u64::MAX))
}

/// A number as a header value; the small ones (attempt numbers, delivery counts) from
/// static text, without an allocation.
fn number(n: u64) -> HeaderValue {
    match crate::message::reply::digit_text(n) {
        Some(text) => HeaderValue::from_static(text),
        None => HeaderValue::from(n),
    }
}

/// The result of all attempts for one message.
#[derive(Debug)]
pub struct Outcome {
    pub result: Result<UpstreamResponse, Failure>,
    /// HTTP attempts made (0 when refused before the first).
    pub attempts: u32,
    /// The classification of the final result; refusals (limit, breaker) are retryable.
    pub class: Class,
}

/// One route's resilience stack around the shared HTTP client.
#[derive(Debug)]
pub struct RouteInvoker {
    timeout: Duration,
    classifier: Classifier,
    policy: RetryPolicy,
    budget: RetryBudget,
    pub breaker: Breaker,
    limit: Option<RateLimit>,
    /// The route's in-flight limit, which every attempt's latency and overload signal
    /// feed when it adapts (its slots are handed out by admission, before the call).
    pub concurrency: std::sync::Arc<Concurrency>,
    /// `Ricochet-Budget-Ms` of an attempt with the route's whole `timeout` (most first
    /// attempts), made once.
    full_budget: HeaderValue,
}

impl RouteInvoker {
    /// `durable`: the route's source can redeliver (its default retries and its wait for
    /// the rate limit depend on it).
    pub fn new(route: &RouteConfig, upstream: &UpstreamConfig, durable: bool) -> Self {
        let timeout = route.timeout_or(upstream);
        Self {
            timeout,
            full_budget: budget_ms(timeout),
            classifier: Classifier::new(route, durable),
            policy: RetryPolicy::new(&route.retry),
            budget: RetryBudget::new(&route.retry),
            breaker: Breaker::new(&route.name, &route.circuit_breaker),
            limit: route.rate_limit.as_ref().map(|l| {
                // A durable source has no caller waiting for a fast 429, and a refusal
                // would be a redelivery: its messages wait for the limit instead.
                RateLimit::new(l, route.max_payload, durable)
            }),
            concurrency: std::sync::Arc::new(Concurrency::new(route)),
        }
    }

    pub async fn invoke(
        &self,
        upstream: &Upstream,
        request: Request<Bytes>,
        call: Call,
        metrics: &RouteMetrics,
        trace: &MessageTrace<'_>,
        spans: &RouteSpans,
    ) -> Outcome {
        let deadline = call.deadline;
        let refused = |failure: Failure| Outcome {
            result: Err(failure),
            attempts: 0,
            class: Class::Retryable,
        };
        if let Some(limit) = &self.limit {
            match limit.acquire(request.body().len(), deadline).await {
                Ok(false) => {}
                Ok(true) => metrics.rate_limited(RateLimited::Waited),
                Err(throttled) => {
                    metrics.rate_limited(match throttled {
                        Throttled::OverLimit => RateLimited::Rejected,
                        Throttled::PastDeadline => RateLimited::PastDeadline,
                    });
                    return refused(throttled.into());
                }
            }
        }
        self.budget.record_request();
        let (parts, body) = request.into_parts();
        // Made on the first retry only: most messages never need it.
        let mut backoff = None;
        let mut attempts = 0;
        // The previous attempt's result, while a retry is pending.
        let mut last: Option<Result<UpstreamResponse, InvokeError>> = None;
        loop {
            let finish = |result: Result<UpstreamResponse, InvokeError>, attempts, class| Outcome {
                result: result.map_err(Failure::from),
                attempts,
                class,
            };
            let previous = last.take();
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining < MIN_ATTEMPT {
                // Too little time left for a fair attempt: the last answer stands, or the
                // message has timed out (it waited too long for a slot or the rate limit).
                return match previous {
                    Some(previous) => {
                        metrics.retry_skipped(SkipReason::Deadline);
                        finish(previous, attempts, Class::Retryable)
                    }
                    None => refused(InvokeError::Timeout(Duration::ZERO).into()),
                };
            }
            let permit = match (self.breaker.try_acquire(), previous) {
                (Ok(permit), _) => permit,
                (Err(rejected), None) => {
                    return refused(Failure::CircuitOpen {
                        retry_in: rejected.retry_in,
                    })
                }
                // The breaker opened during the backoff: the last answer stands.
                (Err(_), Some(previous)) => {
                    metrics.retry_skipped(SkipReason::CircuitOpen);
                    return finish(previous, attempts, Class::Retryable);
                }
            };
            attempts += 1;
            if attempts > 1 {
                metrics.retries.increment(1);
            }
            let attempt_timeout = self.timeout.min(remaining);
            let mut span = trace.attempt(spans, &parts.method, attempts);
            let mut request = rebuild(&parts, &body);
            let budget = match attempt_timeout == self.timeout {
                true => self.full_budget.clone(),
                false => budget_ms(attempt_timeout),
            };
            (call.headers).stamp(request.headers_mut(), attempts, budget);
            span.inject_http(request.headers_mut());
            let in_flight = self.concurrency.sampling();
            let started = Instant::now();
            let result = upstream.call(request, attempt_timeout).await;
            let rtt = started.elapsed();
            metrics.http_duration.record(rtt);
            match &result {
                Ok(response) => span.status(response.status.as_u16()),
                Err(e) => span.failed(e.kind().as_str()),
            }
            span.end();
            let verdict = self.classifier.classify(result.as_ref().map(|r| r.status));
            if matches!(result, Err(InvokeError::Timeout(_))) && attempt_timeout < self.timeout {
                // Cut short by the message's deadline (possibly a caller's tiny
                // Ricochet-Timeout): says nothing about the service's health.
                drop(permit);
            } else {
                permit.record(verdict.failed);
                if let Some(in_flight) = in_flight {
                    let ended = started + rtt;
                    (self.concurrency).record(ended, rtt, in_flight, overload(&result));
                }
            }
            if let Ok(response) = &result {
                metrics.http_response(response.status);
            }
            if verdict.class != Class::Retryable {
                return finish(result, attempts, verdict.class);
            }
            match self.next_attempt(&parts, &result, attempts, deadline, &mut backoff) {
                Err(reason) => {
                    debug!(
                        attempts,
                        reason = reason.as_str(),
                        "retryable failure not retried"
                    );
                    metrics.retry_skipped(reason);
                    return finish(result, attempts, verdict.class);
                }
                Ok(delay) => {
                    debug!(attempts, ?delay, "retrying");
                    last = Some(result);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// The delay before the next attempt, or why there is none.
    fn next_attempt(
        &self,
        parts: &http::request::Parts,
        result: &Result<UpstreamResponse, InvokeError>,
        attempts: u32,
        deadline: Instant,
        backoff: &mut Option<backoff::ExponentialBackoff>,
    ) -> Result<Duration, SkipReason> {
        if attempts >= self.policy.max_attempts {
            return Err(SkipReason::Attempts);
        }
        if !self
            .policy
            .may_repeat(&parts.method, &parts.headers, result.as_ref().err())
        {
            return Err(SkipReason::Method);
        }
        let (status, headers) = match result {
            Ok(response) => (Some(response.status), Some(&response.headers)),
            Err(_) => (None, None),
        };
        let backoff = backoff.get_or_insert_with(|| self.policy.backoff());
        let delay = retry::next_delay(backoff, status, headers);
        if Instant::now()
            .checked_add(delay)
            .is_none_or(|at| at >= deadline)
        {
            return Err(SkipReason::Deadline);
        }
        if let breaker::State::Open { .. } = self.breaker.state() {
            return Err(SkipReason::CircuitOpen);
        }
        if !self.budget.try_retry() {
            return Err(SkipReason::Budget);
        }
        Ok(delay)
    }
}

/// What an attempt tells the adaptive limit: a timeout, a connection that could not be
/// made or broke, a 503 or a 429 say the service is overloaded; any other answer is a
/// latency sample.
fn overload(result: &Result<UpstreamResponse, InvokeError>) -> adaptive::Signal {
    match result {
        Ok(response)
            if response.status == http::StatusCode::SERVICE_UNAVAILABLE
                || response.status == http::StatusCode::TOO_MANY_REQUESTS =>
        {
            adaptive::Signal::Overload
        }
        Ok(_) | Err(InvokeError::ResponseTooLarge(_)) => adaptive::Signal::Answered,
        Err(InvokeError::Timeout(_) | InvokeError::Connect(_) | InvokeError::Connection(_)) => {
            adaptive::Signal::Overload
        }
    }
}

/// A fresh request for the next attempt; the body is shared, not copied.
fn rebuild(parts: &http::request::Parts, body: &Bytes) -> Request<Bytes> {
    let mut request = Request::new(body.clone());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.headers_mut() = parts.headers.clone();
    request
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::reply::{ATTEMPT_HEADER, BUDGET_HEADER, DELIVERY_COUNT_HEADER};

    #[test]
    fn attempt_headers_carry_the_contract_names_and_their_numbers_as_text() {
        let mut headers = http::HeaderMap::new();
        let on = AttemptHeaders::On { delivered: 12 };
        on.stamp(&mut headers, 3, budget_ms(Duration::from_micros(2_500_900)));
        let get = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(get(BUDGET_HEADER).as_deref(), Some("2500"));
        assert_eq!(get(ATTEMPT_HEADER).as_deref(), Some("3"));
        assert_eq!(get(DELIVERY_COUNT_HEADER).as_deref(), Some("12"));
        assert_eq!(headers.len(), 3);
        for n in [0, 9, 10, 99_999, u64::MAX] {
            assert_eq!(number(n).to_str().unwrap(), n.to_string());
        }
        let mut off = http::HeaderMap::new();
        AttemptHeaders::Off.stamp(&mut off, 1, budget_ms(Duration::from_secs(1)));
        assert!(off.is_empty());
    }
}
