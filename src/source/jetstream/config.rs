//! The configuration of a JetStream route: its `[routes.jetstream]` table, the route keys
//! only JetStream routes have (`delivery`, `reply_subject`, `dead_letter`), their defaults
//! and their checks, including the HTTP deadline against the consumer's `ack_wait`.
//!
//! Read by `settings` when a route says `source = "jetstream"`; used by the intake
//! (`super::JetStreamRoute`) and the settlement policy.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{
    default_consumer_name, defaults, duration_list, nats_token, serialize_duration_list, Delivery,
    RouteConfig,
};
use crate::route::Pattern;

/// A JetStream route's source: its `[routes.jetstream]` table and the route keys only
/// JetStream routes have.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamSource {
    /// Default `at_least_once`; `at_most_once` acks on receipt.
    #[serde(default)]
    pub delivery: Delivery,
    /// Reply subject when the request names none.
    #[serde(default)]
    pub reply_subject: Option<String>,
    /// Subject for messages that can never be delivered.
    #[serde(default)]
    pub dead_letter: Option<String>,
    /// `[routes.jetstream]`.
    #[serde(rename = "jetstream")]
    pub settings: JetStreamConfig,
}

/// A route's JetStream consumer.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamConfig {
    /// The stream holding the requests; it must exist.
    pub stream: String,
    /// Durable consumer name: created if missing, updated/bound if it exists.
    /// Default: `ricochet-<route name>`.
    #[serde(default)]
    pub durable: Option<String>,
    /// Default: the route's subject, with named tokens as `*`.
    #[serde(default)]
    pub filter_subjects: Vec<String>,
    /// How long the server waits for an ack before redelivering.
    #[serde(default = "default_ack_wait", with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Deliveries before a message is dead-lettered.
    #[serde(default = "defaults::max_deliver")]
    pub max_deliver: u32,
    /// Delay of the nth redelivery after a retryable failure (the last entry repeats).
    #[serde(
        default = "defaults::redelivery_backoff",
        deserialize_with = "duration_list",
        serialize_with = "serialize_duration_list"
    )]
    pub redelivery_backoff: Vec<Duration>,
    /// Messages delivered but not yet acknowledged, across all replicas.
    #[serde(default = "default_max_ack_pending")]
    pub max_ack_pending: u32,
    /// Tell the server a slow call is still running (every `ack_wait` / 2) so it does not
    /// redeliver the message meanwhile.
    #[serde(default = "defaults::enabled")]
    pub in_progress: bool,
}

/// The server's own default.
pub fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}

pub fn default_max_ack_pending() -> u32 {
    1000
}

impl JetStreamConfig {
    /// The durable consumer: `durable`, else [`default_consumer_name`].
    pub fn durable_name(&self, route: &str) -> String {
        (self.durable.clone()).unwrap_or_else(|| default_consumer_name(route))
    }
}

/// What to write instead of a key only JetStream routes have, on a route of another source.
pub const TABLE_HINT: &str = "a [routes.jetstream] table with at least `stream` is required";

impl JetStreamSource {
    /// The checks serde cannot express; keys relative to the route.
    pub fn check(&self, _route: &RouteConfig, push: &mut dyn FnMut(&str, String)) {
        if self.delivery == Delivery::ExactlyOnce {
            push("delivery", "exactly_once is only for Kafka routes".into());
        }
        for (key, value) in [
            ("reply_subject", &self.reply_subject),
            ("dead_letter", &self.dead_letter),
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
        let js = &self.settings;
        if let Err(message) = nats_token(&js.stream) {
            push("jetstream.stream", message);
        }
        if let Some(durable) = &js.durable {
            if let Err(message) = nats_token(durable) {
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
        if js.ack_wait < Duration::from_millis(100) {
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

    /// The server redelivers a message whose ack does not come within `ack_wait`: the whole
    /// HTTP deadline must fit in it (strictly: the reply and the ack still follow), unless
    /// in-progress signals extend it.
    pub fn check_deadline(&self, deadline: Duration, push: &mut dyn FnMut(&str, String)) {
        let js = &self.settings;
        if !js.in_progress && deadline >= js.ack_wait {
            push(
                "jetstream.ack_wait",
                format!(
                    "{:?} is shorter than the route's HTTP deadline of {deadline:?} (attempts, timeouts and backoff): \
                     raise ack_wait, lower total_timeout, or set in_progress = true",
                    js.ack_wait
                ),
            );
        }
    }
}
