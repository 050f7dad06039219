//! Named defaults, so the documentation and the code agree on one value each. The defaults
//! of one source's keys are in its `source/<name>/config.rs`; those shared by several
//! sources (`max_deliver`, `redelivery_backoff`) are here.

use super::{ByteSize, MaxInFlight, RetryCondition, RetryOn};
use std::net::SocketAddr;
use std::time::Duration;

pub fn nats_url() -> String {
    "nats://127.0.0.1:4222".into()
}
pub fn nats_name() -> String {
    "ricochet".into()
}
pub fn queue_group() -> String {
    "ricochet".into()
}
pub fn nats_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
pub fn service_version() -> String {
    "0.0.0".into()
}
pub fn request_timeout() -> Duration {
    Duration::from_secs(5)
}
pub fn connect_timeout() -> Duration {
    Duration::from_secs(2)
}
pub fn max_response_size() -> ByteSize {
    ByteSize(8 * 1024 * 1024)
}
pub fn pool_max_idle() -> usize {
    256
}
pub fn pool_idle_timeout() -> Duration {
    Duration::from_secs(90)
}
pub fn admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}
/// Inside Kubernetes' default `terminationGracePeriodSeconds` (30 s) with margin.
pub fn grace_period() -> Duration {
    Duration::from_secs(25)
}
pub fn log_level() -> String {
    "info".into()
}
pub fn otlp_endpoint() -> String {
    "http://127.0.0.1:4318/v1/traces".into()
}
pub fn sample_ratio() -> f64 {
    1.0
}
pub fn service_name() -> String {
    "ricochet".into()
}
pub fn otlp_timeout() -> Duration {
    Duration::from_secs(10)
}
pub fn watch_interval() -> Duration {
    Duration::from_secs(2)
}
pub fn method() -> String {
    "POST".into()
}
pub fn max_in_flight() -> MaxInFlight {
    MaxInFlight::Fixed(64)
}
/// The adaptive limit's floor: Envoy's `min_concurrency`.
pub fn concurrency_min() -> usize {
    3
}
pub fn concurrency_max() -> usize {
    256
}
/// Envoy's `concurrency_update_interval`.
pub fn sample_interval() -> Duration {
    Duration::from_millis(100)
}
/// Envoy's `min_rtt_calc_interval`.
pub fn min_rtt_interval() -> Duration {
    Duration::from_secs(60)
}
pub fn max_payload() -> ByteSize {
    ByteSize(1024 * 1024)
}
pub fn max_attempts() -> u32 {
    3
}
pub fn initial_interval() -> Duration {
    Duration::from_millis(100)
}
pub fn max_interval() -> Duration {
    Duration::from_secs(2)
}
pub fn multiplier() -> f64 {
    2.0
}
pub fn jitter() -> f64 {
    0.2
}
/// Core NATS: a caller waits, so only what is likely to pass on a quick second try.
/// Durable sources: also every other 5xx but 501 (Not Implemented) and 505 (HTTP
/// Version Not Supported), which no later attempt changes. A 500 is often a passing
/// fault (a restart, a lost database connection); a durable source can afford to try
/// again later instead of turning it into a final answer, as Dapr, Knative and Envoy's
/// `5xx` policy do.
pub fn retry_on(durable: bool) -> Vec<RetryOn> {
    let statuses: Vec<u16> = if durable {
        [408, 429]
            .into_iter()
            .chain((500..=599).filter(|s| !matches!(s, 501 | 505)))
            .collect()
    } else {
        vec![408, 429, 502, 503, 504]
    };
    let mut list: Vec<RetryOn> = statuses.into_iter().map(RetryOn::Status).collect();
    list.extend(
        [
            RetryCondition::ConnectFailure,
            RetryCondition::Reset,
            RetryCondition::Timeout,
        ]
        .map(RetryOn::Condition),
    );
    list
}
pub fn budget_ratio() -> f64 {
    0.2
}
pub fn budget_window() -> Duration {
    Duration::from_secs(10)
}
pub fn budget_min_per_second() -> u32 {
    10
}
pub fn enabled() -> bool {
    true
}
pub fn consecutive_failures() -> u32 {
    5
}
pub fn failure_rate() -> f64 {
    0.5
}
pub fn window_calls() -> u32 {
    100
}
pub fn minimum_calls() -> u32 {
    20
}
pub fn break_duration() -> Duration {
    Duration::from_secs(5)
}
pub fn max_break_duration() -> Duration {
    Duration::from_secs(60)
}
pub fn half_open_probes() -> u32 {
    1
}
pub fn reply_to_header() -> String {
    "reply-to".into()
}
pub fn correlation_header() -> String {
    "correlation-id".into()
}
pub fn max_deliver() -> u32 {
    5
}
pub fn redelivery_backoff() -> Vec<Duration> {
    [1, 5, 30].map(Duration::from_secs).to_vec()
}
pub fn registry_timeout() -> Duration {
    Duration::from_secs(2)
}
pub fn registry_latest_refresh() -> Duration {
    Duration::from_secs(60)
}
/// `lifetime.min_budget`: below this, an HTTP call cannot do useful work (a connection
/// from the pool and one small exchange with a co-located service take about a millisecond).
pub fn min_budget() -> Duration {
    Duration::from_millis(5)
}
pub fn reply_store_bucket() -> String {
    "ricochet_replies".into()
}
pub fn reply_store_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
pub fn reply_store_timeout() -> Duration {
    Duration::from_secs(1)
}
