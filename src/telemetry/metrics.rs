//! Metric names, in one place, and the per-route handles the pipeline records into.
//!
//! Names follow `ricochet_<what>_<unit>[_total]`. Labels are few and bounded: `route` (from
//! the configuration), `source`, `outcome`, `class`, `kind`, `result` (fixed sets), and on
//! the Kafka partition gauges `topic` and `partition` (the route's own). Never a subject,
//! message id or anything else a message controls.
//!
//! Longer than 400 lines: every metric name, its help text and its per-route handles in one
//! place, so the names cannot drift apart.

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::message::reply::ERROR_KINDS;
use crate::message::ErrorKind;

pub const MESSAGES_RECEIVED: &str = "ricochet_messages_received_total";
pub const MESSAGES_HANDLED: &str = "ricochet_messages_handled_total";
pub const MESSAGES_EXPIRED: &str = "ricochet_messages_expired_total";
pub const MESSAGE_DURATION: &str = "ricochet_message_duration_seconds";
pub const HTTP_RESPONSES: &str = "ricochet_http_responses_total";
pub const HTTP_DURATION: &str = "ricochet_http_request_duration_seconds";
pub const REPLIES_PUBLISHED: &str = "ricochet_replies_published_total";
pub const ERRORS: &str = "ricochet_errors_total";
pub const IN_FLIGHT: &str = "ricochet_in_flight_messages";
pub const CIRCUIT_STATE: &str = "ricochet_circuit_state";
pub const CIRCUIT_TRANSITIONS: &str = "ricochet_circuit_transitions_total";
pub const RETRIES: &str = "ricochet_retries_total";
pub const RETRIES_SKIPPED: &str = "ricochet_retries_skipped_total";
pub const SETTLEMENTS: &str = "ricochet_settlements_total";
pub const DEAD_LETTERS: &str = "ricochet_dead_letters_total";
pub const KAFKA_ASSIGNED: &str = "ricochet_kafka_assigned_partitions";
pub const NATS_CONNECTED: &str = "ricochet_nats_connected";
pub const NATS_EVENTS: &str = "ricochet_nats_connection_events_total";
pub const VALIDATION_FAILURES: &str = "ricochet_validation_failures_total";
pub const THROTTLED: &str = "ricochet_throttled_messages_total";
pub const RATE_LIMITED: &str = "ricochet_rate_limited_total";
pub const REDELIVERIES: &str = "ricochet_redeliveries_total";
pub const JETSTREAM_PENDING: &str = "ricochet_jetstream_pending_messages";
pub const JETSTREAM_ACK_PENDING: &str = "ricochet_jetstream_ack_pending_messages";
pub const JETSTREAM_REDELIVERED: &str = "ricochet_jetstream_redelivered_messages";
pub const KAFKA_LAG: &str = "ricochet_kafka_consumer_lag_messages";
pub const KAFKA_COMMITTED: &str = "ricochet_kafka_committed_offset";
pub const TRACE_EXPORTS: &str = "ricochet_trace_exports_total";
pub const TRACE_SPANS_DROPPED: &str = "ricochet_trace_spans_dropped_total";
pub const RELOADS: &str = "ricochet_config_reloads_total";
pub const LIVENESS_FAILURES: &str = "ricochet_liveness_failures_total";
pub const REPLY_STORE_LOOKUPS: &str = "ricochet_reply_store_lookups_total";
pub const REPLY_STORE_FAILURES: &str = "ricochet_reply_store_failures_total";
pub const REPLY_STORE_UNPROTECTED: &str = "ricochet_reply_store_unprotected_total";
pub const CONCURRENCY_LIMIT: &str = "ricochet_concurrency_limit";
pub const CONCURRENCY_MIN_RTT: &str = "ricochet_concurrency_min_rtt_seconds";

/// Latency buckets in seconds: from 100 µs (a sidecar hop) to 30 s (a slow legacy call).
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 30.0,
];

/// Installs the global Prometheus recorder and describes every metric.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(MESSAGES_RECEIVED, "Request messages taken from the broker");
    describe_counter!(
        MESSAGES_HANDLED,
        "Request messages finished, by outcome: replied, no_reply (fire-and-forget), publish_failed"
    );
    describe_counter!(
        MESSAGES_EXPIRED,
        "Request messages settled without calling the service because nobody waits for them any more: past lifetime.max_age or the caller's deadline, or with less than lifetime.min_budget left"
    );
    describe_histogram!(
        MESSAGE_DURATION,
        Unit::Seconds,
        "From receiving a message to publishing its reply"
    );
    describe_counter!(
        HTTP_RESPONSES,
        "HTTP responses from the service, by status class (2xx, 4xx, ...)"
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Duration of HTTP calls to the service, including the body"
    );
    describe_counter!(REPLIES_PUBLISHED, "Replies published to the broker");
    describe_counter!(
        ERRORS,
        "Errors by kind: ricochet's own error replies and failed publishes"
    );
    describe_gauge!(IN_FLIGHT, "Messages being processed right now");
    describe_gauge!(
        CIRCUIT_STATE,
        "Circuit breaker state: 0 closed, 1 open, 2 half-open"
    );
    describe_counter!(
        CIRCUIT_TRANSITIONS,
        "Circuit breaker transitions, by the state entered"
    );
    describe_counter!(RETRIES, "HTTP attempts after the first");
    describe_counter!(
        RETRIES_SKIPPED,
        "Retryable failures not retried, by reason: attempts, budget, deadline, method, circuit_open"
    );
    describe_counter!(
        SETTLEMENTS,
        "Durable sources: settlements by action: ack (finished), nak (to be redelivered: a JetStream nak, a Kafka local retry, an AMQP retry copy), term (given up after its dead letter), in_progress (JetStream)"
    );
    describe_counter!(
        DEAD_LETTERS,
        "Durable sources: messages published to the dead-letter destination"
    );
    describe_gauge!(
        KAFKA_ASSIGNED,
        "Kafka partitions assigned to this member of the route's group"
    );
    describe_counter!(
        VALIDATION_FAILURES,
        "Requests refused and service responses rejected by the route's validation, by kind: schema, decode, unknown_schema, registry_unavailable, content_type, headers"
    );
    describe_counter!(
        THROTTLED,
        "Waits for a free max_in_flight slot: a core NATS request that waited (up to max_pending at once), a Kafka record taken while the route was full, or the next pull or delivery held back (JetStream, AMQP)"
    );
    describe_counter!(
        RATE_LIMITED,
        "Messages the route's rate limit held or refused, by result: waited, rejected, past_deadline"
    );
    describe_counter!(
        REDELIVERIES,
        "Durable sources: deliveries of a message after its first (broker redeliveries, retry copies, Kafka local retries)"
    );
    describe_gauge!(
        JETSTREAM_PENDING,
        "JetStream: messages in the stream not yet delivered to the route's consumer (read every 5 s)"
    );
    describe_gauge!(
        JETSTREAM_ACK_PENDING,
        "JetStream: messages delivered to the route's consumer and not yet acknowledged"
    );
    describe_gauge!(
        JETSTREAM_REDELIVERED,
        "JetStream: messages redelivered to the route's consumer and not yet acknowledged"
    );
    describe_gauge!(
        KAFKA_LAG,
        "Kafka: messages between the committed offset and the end of each partition assigned to this member (librdkafka's statistics)"
    );
    describe_gauge!(
        KAFKA_COMMITTED,
        "Kafka: the route's committed offset of each partition assigned to this member"
    );
    describe_counter!(
        TRACE_EXPORTS,
        "Tracing: batches of spans sent to the OTLP endpoint, by result: ok, failed (unreachable, timed out or refused; those spans are dropped)"
    );
    describe_counter!(
        TRACE_SPANS_DROPPED,
        "Tracing: spans dropped because the export queue was full (OTEL_BSP_MAX_QUEUE_SIZE spans, or 16 MiB of them: the collector too slow or unreachable, or the spans large), or a single span over 4 MiB"
    );
    describe_counter!(
        RELOADS,
        "Configuration reloads (SIGHUP or a watched file's change), by result: applied, refused (invalid, or the new routes cannot start; the running configuration stays)"
    );
    describe_gauge!(NATS_CONNECTED, "1 while connected to NATS, else 0");
    describe_gauge!(
        CONCURRENCY_LIMIT,
        "The route's in-flight limit: max_in_flight, or where the adaptive limit (max_in_flight = \"auto\") is now"
    );
    describe_gauge!(
        CONCURRENCY_MIN_RTT,
        Unit::Seconds,
        "Adaptive limit: the service's latency without queueing, as last measured (0 until the first measurement)"
    );
    describe_counter!(
        LIVENESS_FAILURES,
        "Failures that make /healthz answer 503 until a restart (cause: panic, intake_ended, nats_client_ended)"
    );
    describe_counter!(
        REPLY_STORE_LOOKUPS,
        "Reply store lookups, by result: hit, hit_after_wait (another delivery's call), miss, taken_over (a claim whose lease ended), busy (still running at this message's deadline)"
    );
    describe_counter!(
        REPLY_STORE_FAILURES,
        "Reply store requests that failed, by operation: lookup, store, release"
    );
    describe_counter!(
        REPLY_STORE_UNPROTECTED,
        "Calls or replies the reply store does not protect from a repeat, by reason: unavailable (called without a lookup), too_large, store_failed"
    );
    describe_counter!(
        NATS_EVENTS,
        "NATS connection events (connected, disconnected, ...)"
    );
}

/// How a configuration reload ended, the `result` label of [`RELOADS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    Applied,
    Refused,
}

impl ReloadResult {
    pub const ALL: [ReloadResult; 2] = [ReloadResult::Applied, ReloadResult::Refused];

    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Applied => "applied",
            ReloadResult::Refused => "refused",
        }
    }
}

/// A durable source's settlement of one delivery, the `action` label of [`SETTLEMENTS`]:
/// what the policy decided, carried out by the source (JetStream sends it to the server;
/// Kafka finishes the record or retries it locally).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    Ack,
    Nak,
    Term,
    InProgress,
}

impl Settlement {
    pub const ALL: [Settlement; 4] = [
        Settlement::Ack,
        Settlement::Nak,
        Settlement::Term,
        Settlement::InProgress,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Settlement::Ack => "ack",
            Settlement::Nak => "nak",
            Settlement::Term => "term",
            Settlement::InProgress => "in_progress",
        }
    }
}

/// Why a retryable failure was not retried, the `reason` label of [`RETRIES_SKIPPED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    Attempts,
    Budget,
    Deadline,
    Method,
    CircuitOpen,
}

impl SkipReason {
    pub const ALL: [SkipReason; 5] = [
        SkipReason::Attempts,
        SkipReason::Budget,
        SkipReason::Deadline,
        SkipReason::Method,
        SkipReason::CircuitOpen,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Attempts => "attempts",
            SkipReason::Budget => "budget",
            SkipReason::Deadline => "deadline",
            SkipReason::Method => "method",
            SkipReason::CircuitOpen => "circuit_open",
        }
    }
}

/// What the rate limit did with a message, the `result` label of [`RATE_LIMITED`] (a
/// message let through at once is not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimited {
    /// Held until the limit allowed it.
    Waited,
    /// Refused at once (`mode = "reject"`, or larger than the burst).
    Rejected,
    /// Refused: the wait would have outlasted its deadline.
    PastDeadline,
}

impl RateLimited {
    pub const ALL: [RateLimited; 3] = [
        RateLimited::Waited,
        RateLimited::Rejected,
        RateLimited::PastDeadline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RateLimited::Waited => "waited",
            RateLimited::Rejected => "rejected",
            RateLimited::PastDeadline => "past_deadline",
        }
    }
}

/// What a validation failed on, the `kind` label of [`VALIDATION_FAILURES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidationFailure {
    /// The body does not match its schema (JSON Schema, or a reply that Avro cannot encode).
    Schema,
    /// The body cannot be read at all: not JSON, not the Avro wire format, not decodable.
    Decode,
    /// The registry does not know the schema id, or it is not a version of the subject.
    UnknownSchema,
    /// The registry could not be asked: retryable, the message is not let through.
    RegistryUnavailable,
    /// The message's media type is not in the route's allow-list.
    ContentType,
    /// Too many headers, or too many bytes of them.
    Headers,
}

impl ValidationFailure {
    pub const ALL: [ValidationFailure; 6] = [
        ValidationFailure::Schema,
        ValidationFailure::Decode,
        ValidationFailure::UnknownSchema,
        ValidationFailure::RegistryUnavailable,
        ValidationFailure::ContentType,
        ValidationFailure::Headers,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ValidationFailure::Schema => "schema",
            ValidationFailure::Decode => "decode",
            ValidationFailure::UnknownSchema => "unknown_schema",
            ValidationFailure::RegistryUnavailable => "registry_unavailable",
            ValidationFailure::ContentType => "content_type",
            ValidationFailure::Headers => "headers",
        }
    }
}

/// Outcome of one message, the `outcome` label of [`MESSAGES_HANDLED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Replied,
    NoReply,
    PublishFailed,
}

/// The gauges of a route's in-flight limit.
#[derive(Debug, Clone)]
pub struct ConcurrencyMetrics {
    pub limit: Gauge,
    /// Routes with an adaptive limit only.
    pub min_rtt: Option<Gauge>,
}

impl ConcurrencyMetrics {
    pub fn new(route: &str, adaptive: bool) -> Self {
        Self {
            limit: gauge!(CONCURRENCY_LIMIT, "route" => route.to_string()),
            min_rtt: adaptive.then(|| gauge!(CONCURRENCY_MIN_RTT, "route" => route.to_string())),
        }
    }
}

/// Handles registered once per route, so the hot path never formats a label.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    pub received: Counter,
    pub in_flight: Gauge,
    pub http_duration: Histogram,
    pub message_duration: Histogram,
    pub replies_published: Counter,
    /// Indexed by status / 100 - 1 (1xx .. 5xx).
    http_responses: [Counter; 5],
    errors: [Counter; ERROR_KINDS.len()],
    pub retries: Counter,
    retries_skipped: [Counter; SkipReason::ALL.len()],
    publish_errors: Counter,
    settlements: [Counter; Settlement::ALL.len()],
    pub dead_letters: Counter,
    outcomes: [Counter; 3],
    validation_failures: [Counter; ValidationFailure::ALL.len()],
    /// Messages that waited for a `max_in_flight` slot.
    pub throttled: Counter,
    rate_limited: [Counter; RateLimited::ALL.len()],
    pub redeliveries: Counter,
    /// Messages past their lifetime, settled without a call.
    pub expired: Counter,
}

impl RouteMetrics {
    pub fn new(route: &str, source: &'static str) -> Self {
        let route = route.to_string();
        let class =
            |c: &'static str| counter!(HTTP_RESPONSES, "route" => route.clone(), "class" => c);
        let outcome =
            |o: &'static str| counter!(MESSAGES_HANDLED, "route" => route.clone(), "outcome" => o);
        Self {
            received: counter!(MESSAGES_RECEIVED, "route" => route.clone(), "source" => source),
            in_flight: gauge!(IN_FLIGHT, "route" => route.clone()),
            http_duration: histogram!(HTTP_DURATION, "route" => route.clone()),
            message_duration: histogram!(MESSAGE_DURATION, "route" => route.clone()),
            replies_published: counter!(REPLIES_PUBLISHED, "route" => route.clone()),
            http_responses: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            errors: ERROR_KINDS
                .map(|k| counter!(ERRORS, "route" => route.clone(), "kind" => k.as_str())),
            retries: counter!(RETRIES, "route" => route.clone()),
            retries_skipped: SkipReason::ALL.map(
                |r| counter!(RETRIES_SKIPPED, "route" => route.clone(), "reason" => r.as_str()),
            ),
            settlements: Settlement::ALL
                .map(|a| counter!(SETTLEMENTS, "route" => route.clone(), "action" => a.as_str())),
            dead_letters: counter!(DEAD_LETTERS, "route" => route.clone()),
            publish_errors: counter!(ERRORS, "route" => route.clone(), "kind" => "publish_failed"),
            outcomes: [
                outcome("replied"),
                outcome("no_reply"),
                outcome("publish_failed"),
            ],
            validation_failures: ValidationFailure::ALL.map(
                |k| counter!(VALIDATION_FAILURES, "route" => route.clone(), "kind" => k.as_str()),
            ),
            throttled: counter!(THROTTLED, "route" => route.clone()),
            rate_limited: RateLimited::ALL
                .map(|r| counter!(RATE_LIMITED, "route" => route.clone(), "result" => r.as_str())),
            redeliveries: counter!(REDELIVERIES, "route" => route.clone()),
            expired: counter!(MESSAGES_EXPIRED, "route" => route.clone(), "source" => source),
        }
    }

    pub fn http_response(&self, status: http::StatusCode) {
        let index = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.http_responses[index].increment(1);
    }

    pub fn error(&self, kind: ErrorKind) {
        let index = ERROR_KINDS.iter().position(|k| *k == kind).unwrap_or(0);
        self.errors[index].increment(1);
    }

    /// A retryable failure that was not retried.
    pub fn retry_skipped(&self, reason: SkipReason) {
        self.retries_skipped[reason as usize].increment(1);
    }

    /// A request refused, or a response rejected, by the route's validation.
    pub fn validation_failed(&self, kind: ValidationFailure) {
        self.validation_failures[kind as usize].increment(1);
    }

    pub fn rate_limited(&self, result: RateLimited) {
        self.rate_limited[result as usize].increment(1);
    }

    /// One settlement sent to the broker.
    pub fn settled(&self, action: Settlement) {
        self.settled_many(action, 1);
    }

    /// `count` settlements at once (Kafka exactly-once: those a transaction committed).
    pub fn settled_many(&self, action: Settlement, count: u64) {
        self.settlements[action as usize].increment(count);
    }

    pub fn outcome(&self, outcome: Outcome) {
        if outcome == Outcome::PublishFailed {
            self.publish_errors.increment(1);
        }
        self.outcomes[outcome as usize].increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counters are indexed by the enum's value: `ALL` must list the variants in order.
    #[test]
    fn every_label_set_is_indexed_by_its_own_variant() {
        for (index, action) in Settlement::ALL.iter().enumerate() {
            assert_eq!(*action as usize, index, "{}", action.as_str());
        }
        for (index, result) in RateLimited::ALL.iter().enumerate() {
            assert_eq!(*result as usize, index, "{}", result.as_str());
        }
        for (index, reason) in SkipReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index, "{}", reason.as_str());
        }
        for (index, kind) in ValidationFailure::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, index, "{}", kind.as_str());
        }
    }
}
