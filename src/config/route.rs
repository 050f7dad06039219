//! The common part of a route (`[[routes]]` without its source's keys) and the resilience
//! tables every route may have: retries, circuit breaker, rate limit, header filters.
//! Their checks are in `validate_route.rs`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{defaults, ByteSize, LifetimeConfig, ReplyStoreConfig, UpstreamConfig, ValidateConfig};

/// One subject pattern mapped to one HTTP endpoint: the settings every route has, whatever
/// its source. The source's part (`source = "..."`, its route keys and its table) is
/// `source::SourceConfig`, read beside it by `settings`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Used in logs and as the `route` metric label.
    pub name: String,
    /// NATS subject pattern: literal tokens, `*`, a final `>`, and named tokens `{id}`.
    pub subject: String,
    #[serde(default = "defaults::method")]
    pub method: String,
    /// Path (and optional query) template; `{name}` is replaced by the captured token.
    pub path: String,
    /// Timeout of each HTTP attempt; overrides `upstream.request_timeout`.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// The message's deadline: all attempts and backoff together. A caller may shorten it
    /// with the `Ricochet-Timeout` request header. Default: enough for every attempt.
    #[serde(default, with = "humantime_serde")]
    pub total_timeout: Option<Duration>,
    /// Statuses besides 2xx that count as success (for the breaker, retries and metrics).
    #[serde(default)]
    pub success_statuses: Vec<u16>,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub circuit_breaker: BreakerConfig,
    /// Absent: no rate limit (only `max_in_flight`).
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Durable sources: request header naming the reply destination.
    #[serde(default = "defaults::reply_to_header")]
    pub reply_to_header: String,
    /// Request header echoed on the reply, to match replies to requests.
    #[serde(default = "defaults::correlation_header")]
    pub correlation_header: String,
    /// Messages of this route processed at the same time.
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: usize,
    /// Larger messages get a 413 error reply and never reach the service.
    #[serde(default = "defaults::max_payload")]
    pub max_payload: ByteSize,
    /// Content-Type sent when the message has none.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Which message headers become HTTP request headers.
    #[serde(default)]
    pub request_headers: HeaderFilterConfig,
    /// Which HTTP response headers become reply headers.
    #[serde(default)]
    pub response_headers: HeaderFilterConfig,
    /// What a request must be before the service is called, and what its answer must be.
    #[serde(default)]
    pub validate: Option<ValidateConfig>,
    /// How long a request is wanted, and what the service is told of its deadline.
    #[serde(default)]
    pub lifetime: LifetimeConfig,
    /// The shared reply store: a message whose reply is stored is answered from it without
    /// calling the service (`store/`).
    #[serde(default)]
    pub reply_store: Option<ReplyStoreConfig>,
}

impl RouteConfig {
    /// What this route retries: `retry.retry_on`, else the default of its kind of source
    /// (`durable`: one that can redeliver, see `source::Source::DURABLE`).
    pub fn retry_on(&self, durable: bool) -> Vec<RetryOn> {
        (self.retry.retry_on.clone()).unwrap_or_else(|| defaults::retry_on(durable))
    }

    /// The per-attempt HTTP timeout of this route.
    pub fn timeout_or(&self, upstream: &UpstreamConfig) -> Duration {
        self.timeout.unwrap_or(upstream.request_timeout)
    }

    /// The message deadline: `total_timeout`, else every attempt at its full timeout plus
    /// the longest backoff between them.
    pub fn total_timeout_or(&self, upstream: &UpstreamConfig) -> Duration {
        self.total_timeout.unwrap_or_else(|| {
            let attempts = self.retry.max_attempts.max(1);
            self.timeout_or(upstream) * attempts + self.retry.max_interval * (attempts - 1)
        })
    }
}

/// Retries with exponential backoff, per route.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in total, the first one included; 1 disables retries.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "defaults::initial_interval", with = "humantime_serde")]
    pub initial_interval: Duration,
    #[serde(default = "defaults::max_interval", with = "humantime_serde")]
    pub max_interval: Duration,
    #[serde(default = "defaults::multiplier")]
    pub multiplier: f64,
    /// Each delay is randomised by +/- this fraction (0 = exact delays).
    #[serde(default = "defaults::jitter")]
    pub jitter: f64,
    /// Statuses and conditions (`connect-failure`, `reset`, `timeout`) worth retrying.
    /// Unset: the source's default ([`RouteConfig::retry_on`]).
    #[serde(default)]
    pub retry_on: Option<Vec<RetryOn>>,
    /// Retry POST, PATCH and other non-idempotent methods even without `Idempotency-Key`.
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// Retries may add at most this fraction of the route's requests over `budget_window`...
    #[serde(default = "defaults::budget_ratio")]
    pub budget_ratio: f64,
    #[serde(default = "defaults::budget_window", with = "humantime_serde")]
    pub budget_window: Duration,
    /// ...but this many retries per second are always allowed, so that low traffic retries.
    #[serde(default = "defaults::budget_min_per_second")]
    pub budget_min_per_second: u32,
}

/// A status code, or a failure that produced no status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    Status(u16),
    Condition(RetryCondition),
}

impl Serialize for RetryOn {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            RetryOn::Status(code) => serializer.serialize_u16(*code),
            RetryOn::Condition(RetryCondition::ConnectFailure) => {
                serializer.serialize_str("connect-failure")
            }
            RetryOn::Condition(RetryCondition::Reset) => serializer.serialize_str("reset"),
            RetryOn::Condition(RetryCondition::Timeout) => serializer.serialize_str("timeout"),
        }
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{Error, Unexpected};
        const EXPECTED: &str =
            "a status code like 503, or \"connect-failure\", \"reset\" or \"timeout\"";
        match toml::Value::deserialize(deserializer)? {
            toml::Value::Integer(code) => u16::try_from(code)
                .map(RetryOn::Status)
                .map_err(|_| D::Error::invalid_value(Unexpected::Signed(code), &EXPECTED)),
            toml::Value::String(text) => match text.as_str() {
                "connect-failure" => Ok(RetryOn::Condition(RetryCondition::ConnectFailure)),
                "reset" => Ok(RetryOn::Condition(RetryCondition::Reset)),
                "timeout" => Ok(RetryOn::Condition(RetryCondition::Timeout)),
                other => Err(D::Error::invalid_value(Unexpected::Str(other), &EXPECTED)),
            },
            _ => Err(D::Error::custom(format!("expected {EXPECTED}"))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCondition {
    /// The connection could not be opened: the request never reached the service.
    ConnectFailure,
    /// The connection broke during the exchange.
    Reset,
    /// The attempt ran out of time.
    Timeout,
}

/// Circuit breaker, per route.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    #[serde(default = "defaults::enabled")]
    pub enabled: bool,
    /// Opens after this many failed attempts in a row...
    #[serde(default = "defaults::consecutive_failures")]
    pub consecutive_failures: u32,
    /// ...or when this fraction of the last `window_calls` attempts failed, once at least
    /// `minimum_calls` were made.
    #[serde(default = "defaults::failure_rate")]
    pub failure_rate: f64,
    #[serde(default = "defaults::window_calls")]
    pub window_calls: u32,
    #[serde(default = "defaults::minimum_calls")]
    pub minimum_calls: u32,
    /// Open this long after the first trip; doubled on each further trip up to the max.
    #[serde(default = "defaults::break_duration", with = "humantime_serde")]
    pub break_duration: Duration,
    #[serde(default = "defaults::max_break_duration", with = "humantime_serde")]
    pub max_break_duration: Duration,
    /// Probe requests let through while half-open; this many successes close the breaker.
    #[serde(default = "defaults::half_open_probes")]
    pub half_open_probes: u32,
}

/// Token-bucket rate limits, per route.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    #[serde(default)]
    pub messages_per_second: Option<u32>,
    /// Messages allowed at once above the rate; default: one second's worth.
    #[serde(default)]
    pub burst_messages: Option<u32>,
    #[serde(default)]
    pub bytes_per_second: Option<ByteSize>,
    /// Default: one second's worth, and never less than `max_payload`.
    #[serde(default)]
    pub burst_bytes: Option<ByteSize>,
    #[serde(default)]
    pub mode: RateLimitMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitMode {
    /// Hold the message until the limit allows it, within its deadline.
    #[default]
    Wait,
    /// Answer 429 at once.
    Reject,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: defaults::max_attempts(),
            initial_interval: defaults::initial_interval(),
            max_interval: defaults::max_interval(),
            multiplier: defaults::multiplier(),
            jitter: defaults::jitter(),
            retry_on: None,
            retry_non_idempotent: false,
            budget_ratio: defaults::budget_ratio(),
            budget_window: defaults::budget_window(),
            budget_min_per_second: defaults::budget_min_per_second(),
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            enabled: defaults::enabled(),
            consecutive_failures: defaults::consecutive_failures(),
            failure_rate: defaults::failure_rate(),
            window_calls: defaults::window_calls(),
            minimum_calls: defaults::minimum_calls(),
            break_duration: defaults::break_duration(),
            max_break_duration: defaults::max_break_duration(),
            half_open_probes: defaults::half_open_probes(),
        }
    }
}

/// Allow/deny list of header names (case-insensitive). An empty `allow` allows all.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderFilterConfig {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}
