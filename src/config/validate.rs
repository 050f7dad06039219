//! Checks that need more than one key, or more than serde can express. Each returns every
//! problem it finds, with the key it concerns.

use std::collections::HashSet;

use http::{HeaderName, HeaderValue, Method, Uri};

use super::{
    BreakerConfig, ByteSize, Config, ConfigError, Delivery, HeaderFilterConfig, JetStreamSource,
    KafkaSource, RateLimitConfig, RetryConfig, RetryOn, RouteConfig, RouteFile, SourceConfig,
    SourceKind, UpstreamConfig,
};
use crate::mapping::PathTemplate;
use crate::route::Pattern;

/// Top-level sections other than the routes.
pub(super) fn top(config: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut push = |key: &str, message: String| errors.push(ConfigError::new(key, message));

    let nats = &config.nats;
    match super::split_credentials(&nats.url) {
        Err(message) => push("nats.url", message),
        Ok((servers, auth)) => {
            for server in servers {
                if let Err(e) = server.parse::<async_nats::ServerAddr>() {
                    push(
                        "nats.url",
                        format!("{server:?} is not a NATS server URL: {e}"),
                    );
                }
            }
            if auth.is_some() {
                if let Some(other) = other_nats_credentials(nats) {
                    push(
                        "nats.url",
                        format!("carries credentials, and so does nats.{other}: use one of them (the URL's user:password@ or token@, or the nats.* settings)"),
                    );
                }
            }
        }
    }
    if let Err(message) = check_token(&nats.queue_group) {
        push("nats.queue_group", message);
    }
    let has_password = nats.password.is_some() || nats.password_file.is_some();
    if has_password && nats.user.is_none() {
        push("nats.password", "a password needs nats.user".into());
    }
    if nats.user.is_some() && !has_password {
        push(
            "nats.user",
            "a user needs nats.password (or nats.password_file)".into(),
        );
    }
    if nats.token.is_some() && nats.user.is_some() {
        push(
            "nats.token",
            "use either nats.token or nats.user/password, not both".into(),
        );
    }
    if let Some(path) = &nats.creds_file {
        if let Err(message) = check_creds_file(path) {
            push("nats.creds_file", message);
        }
    }
    super::security::check_nats(nats, &mut push);
    if config.reload.watch_interval < std::time::Duration::from_millis(100) {
        push(
            "reload.watch_interval",
            format!(
                "{:?} is too short: at least 100ms",
                config.reload.watch_interval
            ),
        );
    }
    let tracing = &config.tracing;
    if !(0.0..=1.0).contains(&tracing.sample_ratio) {
        push(
            "tracing.sample_ratio",
            format!("{} is not between 0.0 and 1.0", tracing.sample_ratio),
        );
    }
    match tracing.endpoint.parse::<http::Uri>() {
        Ok(_) if super::has_userinfo(&tracing.endpoint) => push(
            "tracing.endpoint",
            format!(
                "{:?}: credentials in the URL are not sent (the OTLP exporter sends no HTTP Basic auth); remove them, and keep the collector beside ricochet",
                super::redact_url(&tracing.endpoint)
            ),
        ),
        Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some() => {}
        Ok(_) => push(
            "tracing.endpoint",
            format!(
                "{:?} is not an http:// URL (OTLP goes to a collector beside ricochet, in plain HTTP)",
                super::redact_url(&tracing.endpoint)
            ),
        ),
        Err(e) => push(
            "tracing.endpoint",
            format!("{:?} is not a URL: {e}", super::redact_url(&tracing.endpoint)),
        ),
    }
    if tracing.service_name.trim().is_empty() {
        push("tracing.service_name", "must not be empty".into());
    }
    if nats.connect_timeout.is_zero() {
        push("nats.connect_timeout", "must be greater than zero".into());
    }
    if let Some(service) = &nats.service {
        let name_ok = !service.name.is_empty()
            && (service.name.chars()).all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            push(
                "nats.service.name",
                format!(
                    "{:?} must be non-empty and use only letters, digits, '-' and '_'",
                    service.name
                ),
            );
        }
        if !semantic_version(&service.version) {
            push(
                "nats.service.version",
                format!("{:?} is not a semantic version like 1.2.3", service.version),
            );
        }
    }

    let upstream = &config.upstream;
    if let Err(message) = check_base_url(&upstream.base_url) {
        push("upstream.base_url", message);
    }
    super::security::check_upstream(upstream, &mut push);
    if upstream.request_timeout.is_zero() {
        push(
            "upstream.request_timeout",
            "must be greater than zero".into(),
        );
    }
    if upstream.connect_timeout.is_zero() {
        push(
            "upstream.connect_timeout",
            "must be greater than zero".into(),
        );
    }
    if upstream.max_response_size.bytes() == 0 {
        push(
            "upstream.max_response_size",
            "must be greater than zero".into(),
        );
    }
    if config.runtime.worker_threads == Some(0) {
        push("runtime.worker_threads", "must be at least 1".into());
    }
    if let Err(e) = config.log.level.parse::<tracing_subscriber::EnvFilter>() {
        push("log.level", format!("not a valid log filter: {e}"));
    }
    errors
}

/// `MAJOR.MINOR.PATCH` with an optional `-pre-release` and `+build`, as the NATS micro
/// services API requires.
fn semantic_version(version: &str) -> bool {
    let (core, _build) = version.split_once('+').unwrap_or((version, ""));
    let (core, pre) = core
        .split_once('-')
        .map_or((core, None), |(c, p)| (c, Some(p)));
    let numbers: Vec<&str> = core.split('.').collect();
    let number = |n: &&str| {
        !n.is_empty()
            && n.chars().all(|c| c.is_ascii_digit())
            && (n.len() == 1 || !n.starts_with('0'))
    };
    numbers.len() == 3
        && numbers.iter().all(number)
        && pre.is_none_or(|p| {
            !p.is_empty()
                && (p.split('.')).all(|i| {
                    !i.is_empty() && i.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                })
        })
}

/// One route on its own, as written.
pub(super) fn route(prefix: &str, route: &RouteFile) -> Vec<ConfigError> {
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
    // With a bad subject, the path is still checked, minus whether its names are captured.
    let capture_names = match Pattern::parse(&route.subject) {
        Ok(pattern) => pattern.capture_names().to_vec(),
        Err(e) => {
            push("subject", e.to_string());
            route
                .path
                .split('{')
                .skip(1)
                .filter_map(|rest| rest.split_once('}').map(|(name, _)| name.to_string()))
                .collect()
        }
    };
    if let Err(e) = PathTemplate::parse(&route.path, &capture_names) {
        push("path", e.to_string());
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
    if route.max_in_flight == 0 {
        push("max_in_flight", "must be at least 1".into());
    }
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
    if let Some(group) = &route.queue_group {
        if let Err(message) = check_token(group) {
            push("queue_group", message);
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
    check_source(route, &mut push);
    super::schemas::route(route, &mut push);
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

/// A durable source redelivers a message whose ack does not come within `ack_wait`; the
/// whole HTTP deadline must fit in it, unless in-progress signals extend it.
pub(super) fn deadlines(
    routes: &[(usize, RouteConfig)],
    upstream: &UpstreamConfig,
) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for (index, route) in routes {
        let total = route.total_timeout_or(upstream);
        match &route.source {
            SourceConfig::Kafka(KafkaSource { settings, .. }) => {
                let max_poll = settings
                    .consumer
                    .get("max.poll.interval.ms")
                    .and_then(|v| v.parse().ok())
                    .map(std::time::Duration::from_millis)
                    .unwrap_or(crate::source::kafka::DEFAULT_MAX_POLL_INTERVAL);
                // On revoke, in-flight records get half of it to finish.
                if total >= max_poll / 2 {
                    errors.push(ConfigError::new(
                        format!("routes[{index}].total_timeout"),
                        format!(
                            "the HTTP deadline of {total:?} must be under half of max.poll.interval.ms ({max_poll:?}), \
                             so in-flight records can finish when partitions are revoked"
                        ),
                    ));
                }
            }
            // Strictly shorter: the reply and the ack still have to happen after the deadline.
            SourceConfig::Jetstream(JetStreamSource { settings: js, .. })
                if !js.in_progress && total >= js.ack_wait =>
            {
                errors.push(ConfigError::new(
                    format!("routes[{index}].jetstream.ack_wait"),
                    format!(
                        "{:?} is shorter than the route's HTTP deadline of {total:?} (attempts, timeouts and backoff): \
                         raise ack_wait, lower total_timeout, or set in_progress = true",
                        js.ack_wait
                    ),
                ));
            }
            // A delivery unacknowledged for longer than the broker's consumer_timeout closes
            // the channel, and the message comes again.
            SourceConfig::Amqp(_) if total >= crate::source::amqp::CONSUMER_TIMEOUT => {
                errors.push(ConfigError::new(
                    format!("routes[{index}].total_timeout"),
                    format!(
                        "the HTTP deadline of {total:?} must be under RabbitMQ's default consumer_timeout ({:?})",
                        crate::source::amqp::CONSUMER_TIMEOUT
                    ),
                ));
            }
            SourceConfig::Jetstream(_) | SourceConfig::Nats(_) | SourceConfig::Amqp(_) => {}
        }
    }
    errors
}

fn check_source(route: &RouteFile, push: &mut impl FnMut(&str, String)) {
    for (key, value) in [
        ("reply_subject", &route.reply_subject),
        ("dead_letter", &route.dead_letter),
    ] {
        if let Some(subject) = value {
            if subject.is_empty()
                || subject.contains(['*', '>'])
                || subject.chars().any(char::is_whitespace)
            {
                push(
                    key,
                    format!("{subject:?} must be a subject without wildcards or spaces"),
                );
            }
        }
    }
    for (key, name) in [
        ("reply_to_header", &route.reply_to_header),
        ("correlation_header", &route.correlation_header),
    ] {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            push(key, format!("{name:?} is not a valid header name"));
        }
    }
    if route.source != SourceKind::Kafka && route.kafka.is_some() {
        push("kafka", "only for source = \"kafka\"".into());
    }
    if route.source != SourceKind::Kafka && route.delivery == Some(Delivery::ExactlyOnce) {
        push("delivery", "exactly_once is only for Kafka routes".into());
    }
    if route.source != SourceKind::Jetstream && route.jetstream.is_some() {
        push("jetstream", "only for source = \"jetstream\"".into());
    }
    if route.source != SourceKind::Amqp && route.amqp.is_some() {
        push("amqp", "only for source = \"amqp\"".into());
    }
    if route.source != SourceKind::Nats && route.max_pending.is_some() {
        push(
            "max_pending",
            "only for source = \"nats\": a durable route leaves what it cannot take yet in the broker".into(),
        );
    }
    if route.source != SourceKind::Nats && route.queue_group.is_some() {
        push(
            "queue_group",
            "only for source = \"nats\": replicas of a durable route share its durable consumer or consumer group".into(),
        );
    }
    // NATS subjects for replies and dead letters belong to JetStream routes only.
    let hint = match route.source {
        SourceKind::Jetstream => None,
        SourceKind::Kafka => Some("Kafka routes use kafka.reply_topic and kafka.dead_letter_topic"),
        SourceKind::Amqp => {
            Some("AMQP routes reply to the request's reply_to and use amqp.dead_letter_exchange")
        }
        SourceKind::Nats => {
            Some("only for durable sources: core NATS replies to the request's inbox")
        }
    };
    for (key, set) in [
        ("reply_subject", route.reply_subject.is_some()),
        ("dead_letter", route.dead_letter.is_some()),
    ] {
        if let (true, Some(hint)) = (set, hint) {
            push(key, hint.into());
        }
    }
    match route.source {
        SourceKind::Nats => {
            if route.delivery == Some(Delivery::AtLeastOnce) {
                push(
                    "delivery",
                    "core NATS is at-most-once; use source = \"jetstream\" for at-least-once"
                        .into(),
                );
            }
        }
        SourceKind::Kafka => check_kafka(route, push),
        SourceKind::Amqp => check_amqp(route, push),
        SourceKind::Jetstream => {
            let Some(js) = &route.jetstream else {
                push(
                    "jetstream",
                    "a [routes.jetstream] table with at least `stream` is required".into(),
                );
                return;
            };
            if let Err(message) = check_token(&js.stream) {
                push("jetstream.stream", message);
            }
            if let Some(durable) = &js.durable {
                if let Err(message) = check_token(durable) {
                    push("jetstream.durable", message);
                }
            }
            for subject in &js.filter_subjects {
                if Pattern::parse(subject).is_err() || subject.contains(['{', '}']) {
                    push(
                        "jetstream.filter_subjects",
                        format!("{subject:?} is not a NATS subject"),
                    );
                }
            }
            if js.ack_wait < std::time::Duration::from_millis(100) {
                push("jetstream.ack_wait", "must be at least 100ms".into());
            }
            if js.max_deliver == 0 {
                push("jetstream.max_deliver", "must be at least 1".into());
            }
            if js.redelivery_backoff.is_empty() {
                push(
                    "jetstream.redelivery_backoff",
                    "needs at least one delay".into(),
                );
            }
            if js.max_ack_pending == 0 {
                push("jetstream.max_ack_pending", "must be at least 1".into());
            }
        }
    }
}

fn check_amqp(route: &RouteFile, push: &mut impl FnMut(&str, String)) {
    let Some(amqp) = &route.amqp else {
        push(
            "amqp",
            "a [routes.amqp] table with at least `url` is required".into(),
        );
        return;
    };
    let redacted = super::redact_url(&amqp.url);
    // The parser's message may quote the URL, credentials and all: it is left out.
    if amqp.url.parse::<lapin::uri::AMQPUri>().is_err() {
        push(
            "amqp.url",
            format!("{redacted:?} is not an AMQP URL (amqp://host:port/vhost or amqps://...)"),
        );
    }
    let in_file = amqp.user.is_some() || amqp.password.is_some() || amqp.password_file.is_some();
    if redacted != amqp.url && in_file {
        push(
            "amqp.url",
            "has credentials, and so do amqp.user/password/password_file: set them in one place"
                .into(),
        );
    }
    if (amqp.password.is_some() || amqp.password_file.is_some()) && amqp.user.is_none() {
        push("amqp.user", "a password needs amqp.user".into());
    }
    if amqp.password.is_some() && amqp.password_file.is_some() {
        push(
            "amqp.password_file",
            "use either amqp.password or amqp.password_file".into(),
        );
    }
    if let Some(path) = &amqp.password_file {
        if !path.is_file() {
            push(
                "amqp.password_file",
                format!("{} is not a readable file", path.display()),
            );
        }
    }
    super::security::check_amqp(amqp, push);
    let literal = !route.subject.contains(['*', '>', '{']);
    match &amqp.queue {
        None if !literal => push(
            "amqp.queue",
            format!(
                "required: the subject {:?} has wildcards, so it cannot name the queue",
                route.subject
            ),
        ),
        Some(queue) if !crate::source::amqp::valid_name(queue) => push(
            "amqp.queue",
            format!("{queue:?} must be 1 to 255 bytes and not start with \"amq.\""),
        ),
        _ => {}
    }
    if amqp.exchange.is_none() && !amqp.routing_keys.is_empty() {
        push(
            "amqp.routing_keys",
            "binding keys need amqp.exchange".into(),
        );
    }
    if amqp.exchange.is_none() && !literal {
        push(
            "amqp.exchange",
            format!(
                "required: messages reach a queue without an exchange under the queue's name, which the subject {:?} with wildcards cannot route",
                route.subject
            ),
        );
    }
    for (key, name) in [
        ("amqp.exchange", &amqp.exchange),
        ("amqp.dead_letter_exchange", &amqp.dead_letter_exchange),
    ] {
        if let Some(name) = name {
            if name.is_empty() || name.len() > 255 {
                push(key, format!("{name:?} must be 1 to 255 bytes"));
            }
        }
    }
    if amqp.dead_letter_routing_key.is_some() && amqp.dead_letter_exchange.is_none() {
        push(
            "amqp.dead_letter_routing_key",
            "needs amqp.dead_letter_exchange".into(),
        );
    }
    if amqp.max_deliver == 0 {
        push("amqp.max_deliver", "must be at least 1".into());
    }
    if amqp.redelivery_backoff.is_empty() {
        push("amqp.redelivery_backoff", "needs at least one delay".into());
    }
    if route.max_in_flight > usize::from(u16::MAX) {
        push(
            "max_in_flight",
            "AMQP routes take at most 65535 (it is the channel's prefetch count)".into(),
        );
    }
}

fn check_kafka(route: &RouteFile, push: &mut impl FnMut(&str, String)) {
    let Some(kafka) = &route.kafka else {
        push(
            "kafka",
            "a [routes.kafka] table with at least `brokers` is required".into(),
        );
        return;
    };
    if kafka.brokers.trim().is_empty() {
        push("kafka.brokers", "must name at least one broker".into());
    }
    kafka.check_security(push);
    if !kafka.topics.is_empty() && kafka.topic_pattern.is_some() {
        push(
            "kafka.topic_pattern",
            "use either kafka.topics or kafka.topic_pattern".into(),
        );
    }
    if let Some(pattern) = &kafka.topic_pattern {
        if let Err(e) = regex_syntax_check(pattern) {
            push("kafka.topic_pattern", e);
        }
    }
    for (key, topic) in [
        ("kafka.reply_topic", &kafka.reply_topic),
        ("kafka.dead_letter_topic", &kafka.dead_letter_topic),
    ] {
        if let Some(topic) = topic {
            if !valid_topic(topic) {
                push(
                    key,
                    format!("{topic:?} is not a Kafka topic name (letters, digits, '.', '_', '-')"),
                );
            }
        }
    }
    if let Ok(pattern) = Pattern::parse(&route.subject) {
        if !pattern.capture_names().is_empty() {
            for topic in &kafka.topics {
                if pattern.matches(topic).is_none() {
                    push("kafka.topics", format!("{topic:?} does not match the route's subject {:?}, whose captures the path needs", route.subject));
                }
            }
        }
    }
    for topic in &kafka.topics {
        if !valid_topic(topic) {
            push(
                "kafka.topics",
                format!("{topic:?} is not a Kafka topic name (letters, digits, '.', '_', '-')"),
            );
        }
    }
    if kafka.retry_backoff.is_empty() {
        push("kafka.retry_backoff", "needs at least one delay".into());
    }
    if kafka.dead_letter_after == Some(0) {
        push("kafka.dead_letter_after", "must be at least 1".into());
    }
    for (key, props) in [
        ("kafka.consumer", &kafka.consumer),
        ("kafka.producer", &kafka.producer),
    ] {
        for name in props.keys() {
            if MANAGED_KAFKA_PROPERTIES.contains(&name.as_str()) {
                push(
                    key,
                    format!("{name:?} is set by ricochet and cannot be overridden"),
                );
            }
        }
    }
}

/// librdkafka properties ricochet sets itself because its guarantees depend on them.
pub const MANAGED_KAFKA_PROPERTIES: [&str; 6] = [
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.idempotence",
    "group.id",
    "transactional.id",
    "bootstrap.servers",
];

/// A legal Kafka topic name.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 249
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// librdkafka takes topic patterns as regular expressions starting with '^'.
fn regex_syntax_check(pattern: &str) -> Result<(), String> {
    if !pattern.starts_with('^') {
        return Err(format!(
            "{pattern:?} must start with '^' (librdkafka's mark of a topic pattern)"
        ));
    }
    Ok(())
}

/// Checks across routes; `names` holds those of the routes that deserialized, with their
/// index, out of `count` in the file.
pub(super) fn across(names: &[(usize, String)], count: usize) -> Vec<ConfigError> {
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

fn check_token(value: &str) -> Result<(), String> {
    if value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || c == '.' || c == '*' || c == '>')
    {
        return Err(format!(
            "{value:?} must be one NATS token: non-empty, no spaces, '.', '*' or '>'"
        ));
    }
    Ok(())
}

/// The settings besides `nats.url` that say how to authenticate, the first one set.
fn other_nats_credentials(nats: &super::NatsConfig) -> Option<&'static str> {
    [
        ("user", nats.user.is_some()),
        ("password", nats.password.is_some()),
        ("password_file", nats.password_file.is_some()),
        ("token", nats.token.is_some()),
        ("token_file", nats.token_file.is_some()),
        ("nkey_seed", nats.nkey_seed.is_some()),
        ("nkey_seed_file", nats.nkey_seed_file.is_some()),
        ("creds_file", nats.creds_file.is_some()),
    ]
    .into_iter()
    .find_map(|(key, set)| set.then_some(key))
}

/// Reads and parses a creds file as the NATS client will at start-up (user JWT and NKey
/// seed), so that `check` refuses what `run` would.
fn check_creds_file(path: &std::path::Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    // async-nats' texts name what is missing, never the file's content.
    async_nats::ConnectOptions::with_credentials(&text)
        .map(drop)
        .map_err(|e| {
            format!(
                "{} is not a NATS credentials file (a user JWT and an NKey seed, as `nsc` writes them): {e}",
                path.display()
            )
        })
}

fn check_base_url(url: &str) -> Result<(), String> {
    let shown = super::redact_url(url);
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{shown:?} is not a URL: {e}"))?;
    if super::has_userinfo(url) {
        return Err(format!(
            "{shown:?}: credentials in the URL are not sent (ricochet sends no HTTP Basic auth from a URL); remove them"
        ));
    }
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{shown:?} must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{shown:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!(
            "{shown:?} must not have a query; put it in the route's path"
        ));
    }
    Ok(())
}
