//! Checks of a route's common part (`config::RouteConfig`) that serde cannot express, and
//! across routes. Each returns every problem it finds, with the key it concerns.

use std::collections::HashSet;

use http::{HeaderName, HeaderValue, Method};

use super::{
    BreakerConfig, ByteSize, ConfigError, HeaderFilterConfig, MaxInFlight, RateLimitConfig,
    RetryConfig, RetryOn, RouteConfig,
};
use crate::route::Pattern;

/// `max_in_flight` and, with `"auto"`, the adaptive limit's table.
fn check_concurrency(route: &RouteConfig, push: &mut impl FnMut(&str, String)) {
    match (route.max_in_flight, &route.concurrency) {
        (MaxInFlight::Fixed(0), _) => push("max_in_flight", "must be at least 1".into()),
        (MaxInFlight::Fixed(_), Some(_)) => push(
            "concurrency",
            "applies only with max_in_flight = \"auto\" (a fixed max_in_flight does not adapt)"
                .into(),
        ),
        (MaxInFlight::Fixed(_), None) | (MaxInFlight::Auto, None) => {}
        (MaxInFlight::Auto, Some(table)) => {
            if table.min == 0 {
                push("concurrency.min", "must be at least 1".into());
            }
            if table.max < table.min {
                push(
                    "concurrency.max",
                    format!("must be at least concurrency.min ({})", table.min),
                );
            }
            if table.sample_interval.is_zero() {
                push(
                    "concurrency.sample_interval",
                    "must be greater than zero".into(),
                );
            }
            if table.min_rtt_interval <= table.sample_interval {
                push(
                    "concurrency.min_rtt_interval",
                    format!(
                        "must be longer than concurrency.sample_interval ({:?})",
                        table.sample_interval
                    ),
                );
            }
        }
    }
}

/// The common part of one route on its own. The path template is checked by `settings`
/// (it needs `mapping::PathTemplate`), the source's keys by the source.
pub fn route(prefix: &str, route: &RouteConfig) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut push = |key: &str, message: String| {
        errors.push(ConfigError::new(format!("{prefix}.{key}"), message))
    };

    if route.name.is_empty()
        || !route
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        push(
            "name",
            format!(
                "{:?} must be non-empty and use only letters, digits, '-', '_' and '.'",
                route.name
            ),
        );
    }
    if let Err(e) = Pattern::parse(&route.subject) {
        push("subject", e.to_string());
    }
    if Method::from_bytes(route.method.as_bytes()).is_err() {
        push(
            "method",
            format!("{:?} is not an HTTP method", route.method),
        );
    }
    if route.timeout.is_some_and(|t| t.is_zero()) {
        push("timeout", "must be greater than zero".into());
    }
    check_concurrency(route, &mut push);
    if route.max_payload.bytes() == 0 {
        push("max_payload", "must be greater than zero".into());
    }
    if let Some(content_type) = &route.content_type {
        if HeaderValue::from_str(content_type).is_err() {
            push(
                "content_type",
                format!("{content_type:?} is not a valid header value"),
            );
        }
    }
    if route.total_timeout.is_some_and(|t| t.is_zero()) {
        push("total_timeout", "must be greater than zero".into());
    }
    for status in &route.success_statuses {
        if !(100..=599).contains(status) {
            push(
                "success_statuses",
                format!("{status} is not an HTTP status"),
            );
        }
    }
    check_retry(&route.retry, &mut push);
    check_breaker(&route.circuit_breaker, &mut push);
    if let Some(limit) = &route.rate_limit {
        check_rate_limit(limit, route.max_payload, &mut push);
    }
    for (key, name) in [
        ("reply_to_header", &route.reply_to_header),
        ("correlation_header", &route.correlation_header),
    ] {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            push(key, format!("{name:?} is not a valid header name"));
        }
    }
    super::schemas::route(route, &mut push);
    super::lifetime::check(&route.lifetime, &mut push);
    if let Some(store) = &route.reply_store {
        store.check(&mut push);
    }
    for (key, filter) in [
        ("request_headers", &route.request_headers),
        ("response_headers", &route.response_headers),
    ] {
        for (list, name) in header_names(filter) {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                push(
                    &format!("{key}.{list}"),
                    format!("{name:?} is not a valid header name"),
                );
            }
        }
    }
    errors
}

/// Checks across routes; `names` holds those of the routes that deserialized, with their
/// index, out of `count` in the file.
pub fn across(names: &[(usize, String)], count: usize) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    if count == 0 {
        errors.push(ConfigError::new(
            "routes",
            "at least one [[routes]] entry is required",
        ));
    }
    let mut seen = HashSet::new();
    for (index, name) in names {
        if !seen.insert(name.as_str()) {
            errors.push(ConfigError::new(
                format!("routes[{index}].name"),
                format!("{name:?} is used by an earlier route; names must be unique"),
            ));
        }
    }
    errors
}

fn check_retry(retry: &RetryConfig, push: &mut impl FnMut(&str, String)) {
    if retry.max_attempts == 0 {
        push(
            "retry.max_attempts",
            "must be at least 1 (1 = no retries)".into(),
        );
    }
    if retry.max_interval < retry.initial_interval {
        push(
            "retry.max_interval",
            "must not be shorter than retry.initial_interval".into(),
        );
    }
    if !(retry.multiplier >= 1.0 && retry.multiplier.is_finite()) {
        push(
            "retry.multiplier",
            format!("{} must be at least 1.0", retry.multiplier),
        );
    }
    if !(0.0..1.0).contains(&retry.jitter) {
        push(
            "retry.jitter",
            format!("{} must be in [0, 1)", retry.jitter),
        );
    }
    for on in retry.retry_on.iter().flatten() {
        if let RetryOn::Status(status) = on {
            if !(100..=599).contains(status) {
                push("retry.retry_on", format!("{status} is not an HTTP status"));
            }
        }
    }
    if !(retry.budget_ratio >= 0.0 && retry.budget_ratio.is_finite()) {
        push(
            "retry.budget_ratio",
            format!("{} must be zero or more", retry.budget_ratio),
        );
    }
    if retry.budget_window.is_zero() {
        push("retry.budget_window", "must be greater than zero".into());
    }
}

fn check_breaker(breaker: &BreakerConfig, push: &mut impl FnMut(&str, String)) {
    if breaker.consecutive_failures == 0 {
        push(
            "circuit_breaker.consecutive_failures",
            "must be at least 1".into(),
        );
    }
    if !(breaker.failure_rate > 0.0 && breaker.failure_rate <= 1.0) {
        push(
            "circuit_breaker.failure_rate",
            format!("{} must be in (0, 1]", breaker.failure_rate),
        );
    }
    if breaker.window_calls == 0 {
        push("circuit_breaker.window_calls", "must be at least 1".into());
    }
    if breaker.minimum_calls == 0 || breaker.minimum_calls > breaker.window_calls {
        push(
            "circuit_breaker.minimum_calls",
            "must be between 1 and circuit_breaker.window_calls".into(),
        );
    }
    if breaker.break_duration.is_zero() {
        push(
            "circuit_breaker.break_duration",
            "must be greater than zero".into(),
        );
    }
    if breaker.max_break_duration < breaker.break_duration {
        push(
            "circuit_breaker.max_break_duration",
            "must not be shorter than circuit_breaker.break_duration".into(),
        );
    }
    if breaker.half_open_probes == 0 {
        push(
            "circuit_breaker.half_open_probes",
            "must be at least 1".into(),
        );
    }
}

fn check_rate_limit(
    limit: &RateLimitConfig,
    max_payload: ByteSize,
    push: &mut impl FnMut(&str, String),
) {
    if limit.messages_per_second.is_none() && limit.bytes_per_second.is_none() {
        push(
            "rate_limit",
            "set messages_per_second, bytes_per_second or both".into(),
        );
    }
    if limit.messages_per_second == Some(0) {
        push(
            "rate_limit.messages_per_second",
            "must be at least 1".into(),
        );
    }
    if limit.burst_messages == Some(0) {
        push("rate_limit.burst_messages", "must be at least 1".into());
    }
    let too_big = |size: ByteSize| size.bytes() > u64::from(u32::MAX);
    if let Some(rate) = limit.bytes_per_second {
        if rate.bytes() == 0 || too_big(rate) {
            push(
                "rate_limit.bytes_per_second",
                "must be between 1 byte and 4 GiB".into(),
            );
        }
    }
    if let Some(burst) = limit.burst_bytes {
        if too_big(burst) {
            push("rate_limit.burst_bytes", "must be at most 4 GiB".into());
        } else if burst < max_payload {
            push(
                "rate_limit.burst_bytes",
                format!("{burst} is less than max_payload ({max_payload}): the largest messages could never pass"),
            );
        }
    }
}

fn header_names(filter: &HeaderFilterConfig) -> impl Iterator<Item = (&'static str, &String)> {
    let allow = filter.allow.iter().map(|n| ("allow", n));
    let deny = filter.deny.iter().map(|n| ("deny", n));
    allow.chain(deny)
}
