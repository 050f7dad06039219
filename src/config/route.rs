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
    /// Messages of this route processed at the same time: a number, or `"auto"` for the
    /// adaptive limit within `concurrency`'s bounds.
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: MaxInFlight,
    /// The adaptive limit's bounds and intervals (`max_in_flight = "auto"` only).
    #[serde(default)]
    pub concurrency: Option<ConcurrencyConfig>,
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
    /// The most messages this route ever has in flight: the fixed `max_in_flight`, or the
    /// adaptive limit's `concurrency.max` (AMQP's prefetch, Kafka's hold limit and core
    /// NATS's default `max_pending` follow it).
    pub fn max_in_flight_bound(&self) -> usize {
        match self.max_in_flight {
            MaxInFlight::Fixed(n) => n,
            MaxInFlight::Auto => self.adaptive().map_or(0, |c| c.max),
        }
    }

    /// The adaptive limit's settings, when `max_in_flight = "auto"`.
    pub fn adaptive(&self) -> Option<ConcurrencyConfig> {
        (self.max_in_flight == MaxInFlight::Auto)
            .then(|| self.concurrency.clone().unwrap_or_default())
    }

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

/// `max_in_flight`: a fixed number of messages at once, or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxInFlight {
    Fixed(usize),
    /// The adaptive limit (`invoke::adaptive`), within `[routes.concurrency]`'s bounds.
    Auto,
}

impl Serialize for MaxInFlight {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            MaxInFlight::Fixed(n) => serializer.serialize_u64(*n as u64),
            MaxInFlight::Auto => serializer.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for MaxInFlight {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{Error, Unexpected};
        const EXPECTED: &str = "a whole number, 0 or more, or \"auto\"";
        match toml::Value::deserialize(deserializer)? {
            toml::Value::Integer(n) => usize::try_from(n)
                .map(MaxInFlight::Fixed)
                .map_err(|_| D::Error::invalid_value(Unexpected::Signed(n), &EXPECTED)),
            toml::Value::String(text) if text == "auto" => Ok(MaxInFlight::Auto),
            toml::Value::String(text) => {
                Err(D::Error::invalid_type(Unexpected::Str(&text), &EXPECTED))
            }
            _ => Err(D::Error::custom(format!("expected {EXPECTED}"))),
        }
    }
}

/// The adaptive limit of a route with `max_in_flight = "auto"` (`[routes.concurrency]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyConfig {
    /// The limit never goes below this; the min RTT is measured at it.
    #[serde(default = "defaults::concurrency_min")]
    pub min: usize,
    /// The limit never goes above this.
    #[serde(default = "defaults::concurrency_max")]
    pub max: usize,
    /// How often the limit is recomputed from the latency of the attempts in between.
    #[serde(default = "defaults::sample_interval", with = "humantime_serde")]
    pub sample_interval: Duration,
    /// How often the service's latency without queueing (min RTT) is measured again.
    #[serde(default = "defaults::min_rtt_interval", with = "humantime_serde")]
    pub min_rtt_interval: Duration,
}

impl Default for ConcurrencyConfig {
    fn default() -> Self {
        Self {
            min: defaults::concurrency_min(),
            max: defaults::concurrency_max(),
            sample_interval: defaults::sample_interval(),
            min_rtt_interval: defaults::min_rtt_interval(),
        }
    }
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
