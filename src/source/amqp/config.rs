//! The configuration of an AMQP route: its `[routes.amqp]` table, the route key only
//! durable sources have (`delivery`), their defaults and their checks, including the HTTP
//! deadline against RabbitMQ's `consumer_timeout`.
//!
//! Read by `settings` when a route says `source = "amqp"`; used by the intake, the
//! topology it declares and the settlement policy.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{
    defaults, duration_list, redact_url, serialize_duration_list, Delivery, RouteConfig, Secret,
    TlsFilesConfig,
};

/// An AMQP route's source: its `[routes.amqp]` table and its delivery guarantee.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSource {
    /// Default `at_least_once`: ack after the reply's publisher confirm.
    #[serde(default)]
    pub delivery: Delivery,
    /// `[routes.amqp]`.
    #[serde(rename = "amqp")]
    pub settings: AmqpConfig,
}

/// A route's RabbitMQ queue, and where its replies, redeliveries and dead letters go.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// `amqp://host:port/vhost` or `amqps://...`; credentials may be in it, or below.
    pub url: String,
    /// User name; overrides one in `url`.
    #[serde(default)]
    pub user: Option<String>,
    /// Password; overrides one in `url`. Or from a file: `password_file`.
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The queue to consume. Default: the route's `subject` (which must then be literal).
    /// Declared durable when missing; an existing queue is used as it is.
    #[serde(default)]
    pub queue: Option<String>,
    /// Type of the queue when ricochet declares it.
    #[serde(default)]
    pub queue_type: QueueType,
    /// An exchange to bind the queue to (it must exist). Without it, requests are published
    /// to the queue through the default exchange.
    #[serde(default)]
    pub exchange: Option<String>,
    /// Binding keys on `exchange`. Default: the route's subject in AMQP topic syntax
    /// (`{id}` and `*` as `*`, a final `>` as `#`).
    #[serde(default)]
    pub routing_keys: Vec<String>,
    /// Default: `ricochet-<route name>`.
    #[serde(default)]
    pub consumer_tag: Option<String>,
    /// Deliveries before a message that keeps failing is dead-lettered.
    #[serde(default = "defaults::max_deliver")]
    pub max_deliver: u32,
    /// Delay of the nth redelivery after a retryable failure (the last entry repeats); each
    /// distinct delay is a retry queue with that TTL.
    #[serde(
        default = "defaults::redelivery_backoff",
        deserialize_with = "duration_list",
        serialize_with = "serialize_duration_list"
    )]
    pub redelivery_backoff: Vec<Duration>,
    /// Exchange for messages that can never be delivered, published with ricochet's
    /// dead-letter headers. Without it they are rejected (`requeue = false`), which the
    /// queue's own dead-letter exchange, if it has one, receives.
    #[serde(default)]
    pub dead_letter_exchange: Option<String>,
    /// Default: the message's own routing key.
    #[serde(default)]
    pub dead_letter_routing_key: Option<String>,
    /// CA and client certificate for an `amqps://` URL.
    #[serde(default)]
    pub tls: TlsFilesConfig,
}

/// `x-queue-type` of a queue ricochet declares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    #[default]
    Classic,
    /// Replicated; counts deliveries itself (`x-delivery-count`).
    Quorum,
}

/// What to write when an AMQP route has no `[routes.amqp]` table.
pub const TABLE_HINT: &str = "a [routes.amqp] table with at least `url` is required";

impl AmqpSource {
    /// The checks serde cannot express; keys relative to the route.
    pub fn check(&self, route: &RouteConfig, push: &mut dyn FnMut(&str, String)) {
        if self.delivery == Delivery::ExactlyOnce {
            push("delivery", "exactly_once is only for Kafka routes".into());
        }
        let amqp = &self.settings;
        let redacted = redact_url(&amqp.url);
        // The parser's message may quote the URL, credentials and all: it is left out.
        if amqp.url.parse::<lapin::uri::AMQPUri>().is_err() {
            push(
                "amqp.url",
                format!("{redacted:?} is not an AMQP URL (amqp://host:port/vhost or amqps://...)"),
            );
        }
        let in_file =
            amqp.user.is_some() || amqp.password.is_some() || amqp.password_file.is_some();
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
        check_tls(amqp, push);
        let literal = !route.subject.contains(['*', '>', '{']);
        match &amqp.queue {
            None if !literal => push(
                "amqp.queue",
                format!(
                    "required: the subject {:?} has wildcards, so it cannot name the queue",
                    route.subject
                ),
            ),
            Some(queue) if !super::valid_name(queue) => push(
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
        if route.max_in_flight_bound() > usize::from(u16::MAX) {
            let key = match route.max_in_flight {
                crate::config::MaxInFlight::Fixed(_) => "max_in_flight",
                crate::config::MaxInFlight::Auto => "concurrency.max",
            };
            push(
                key,
                "AMQP routes take at most 65535 (it is the channel's prefetch count)".into(),
            );
        }
    }

    /// A delivery unacknowledged for longer than the broker's `consumer_timeout` closes the
    /// channel, and the message comes again: the HTTP deadline must be under it.
    pub fn check_deadline(&self, deadline: Duration, push: &mut dyn FnMut(&str, String)) {
        if deadline >= super::CONSUMER_TIMEOUT {
            push(
                "total_timeout",
                format!(
                    "the HTTP deadline of {deadline:?} must be under RabbitMQ's default consumer_timeout ({:?})",
                    super::CONSUMER_TIMEOUT
                ),
            );
        }
    }
}

/// `[routes.amqp.tls]` against the URL's scheme.
fn check_tls(amqp: &AmqpConfig, push: &mut dyn FnMut(&str, String)) {
    (amqp.tls).check("amqp.tls", (amqp.url.as_str(), "url", "amqps://"), push);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp_tls_needs_an_amqps_url_and_a_key_with_its_certificate() {
        let amqp: AmqpConfig =
            toml::from_str("url = \"amqp://h:5672/%2f\"\n[tls]\ncert_file = \"/nowhere/c.pem\"\n")
                .unwrap();
        let mut keys = Vec::new();
        check_tls(&amqp, &mut |key: &str, _| keys.push(key.to_string()));
        assert_eq!(
            keys,
            ["amqp.tls", "amqp.tls.cert_file", "amqp.tls.cert_file"],
            "needs amqps, needs its key, and the file must exist"
        );
    }
}
