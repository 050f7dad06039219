//! The configuration of a Kafka route: its `[routes.kafka]` table, the route key only
//! durable sources have (`delivery`, here with `exactly_once`), their defaults and their
//! checks, including the HTTP deadline against `max.poll.interval.ms`. The security keys
//! (`security_protocol`, `ssl_*`, `sasl_*`) and their librdkafka properties are in
//! `security.rs`.
//!
//! Read by `settings` when a route says `source = "kafka"`; used by the intake, the reply
//! producer and the settlement policy.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use super::security::{SaslMechanism, SecurityProtocol};
use crate::config::{
    default_consumer_name, defaults, duration_list, serialize_duration_list, Delivery, RouteConfig,
    Secret,
};
use crate::route::Pattern;

/// A Kafka route's source: its `[routes.kafka]` table and its delivery guarantee.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSource {
    /// Default `at_least_once`; `exactly_once` commits replies and offsets in one
    /// transaction.
    #[serde(default)]
    pub delivery: Delivery,
    /// `[routes.kafka]`.
    #[serde(rename = "kafka")]
    pub settings: KafkaConfig,
}

/// A route's Kafka consumer group and reply producer.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`.
    pub brokers: String,
    /// Default: `ricochet-<route name>`.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Topics to consume. Default: the route's `subject` as a topic name, or as a pattern
    /// when it has wildcards.
    #[serde(default)]
    pub topics: Vec<String>,
    /// A regular expression of topic names, instead of `topics`.
    #[serde(default)]
    pub topic_pattern: Option<String>,
    #[serde(default)]
    pub ordering: Ordering,
    /// Reply topic when the request has no `reply-to` header.
    #[serde(default)]
    pub reply_topic: Option<String>,
    /// Topic for records that can never be delivered.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Compression of replies and dead letters.
    #[serde(default)]
    pub compression: Compression,
    /// Delay before the nth local retry of a record after a retryable failure (the last
    /// entry repeats). The record is retried, never skipped...
    #[serde(
        default = "defaults::redelivery_backoff",
        deserialize_with = "duration_list",
        serialize_with = "serialize_duration_list"
    )]
    pub retry_backoff: Vec<Duration>,
    /// ...unless this is set: dead-letter after this many processing rounds.
    #[serde(default)]
    pub dead_letter_after: Option<u32>,
    /// Exactly-once: the producer's transactional id, unique per replica and stable across
    /// its restarts (a restart fences the transaction it left open). Default:
    /// `ricochet-<group id>-<hostname>`.
    #[serde(default)]
    pub transactional_id: Option<String>,
    #[serde(default)]
    /// TLS and SASL to the brokers: `plaintext` (default), `ssl`, `sasl_plaintext`, `sasl_ssl`.
    pub security_protocol: SecurityProtocol,
    /// PEM CA file for `ssl`/`sasl_ssl`; default: the system's roots.
    #[serde(default)]
    pub ssl_ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS; needs `ssl_key_file`.
    #[serde(default)]
    pub ssl_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub ssl_key_file: Option<PathBuf>,
    /// Verify the broker's host name against its certificate (`https`); on by default.
    #[serde(default = "defaults::enabled")]
    pub ssl_hostname_verification: bool,
    /// Default `PLAIN` when the protocol is `sasl_*`.
    #[serde(default)]
    pub sasl_mechanism: Option<SaslMechanism>,
    #[serde(default)]
    pub sasl_username: Option<String>,
    #[serde(default)]
    pub sasl_password: Option<Secret>,
    /// The password in a file (trailing newline ignored), read when the client is made.
    #[serde(default)]
    pub sasl_password_file: Option<PathBuf>,
    /// Extra librdkafka properties of the consumer, e.g. `"fetch.wait.max.ms" = "10"`.
    #[serde(default)]
    pub consumer: BTreeMap<String, String>,
    /// Extra librdkafka properties of the reply producer.
    #[serde(default)]
    pub producer: BTreeMap<String, String>,
}

/// Which records of a route may be processed at the same time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// One record at a time per partition.
    Partition,
    /// Records with the same key in order; different keys in parallel.
    #[default]
    Key,
    /// All in parallel, up to `max_in_flight`.
    Unordered,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    /// The librdkafka `compression.type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

impl KafkaConfig {
    /// The consumer group: `group_id`, else [`default_consumer_name`].
    pub fn group(&self, route: &str) -> String {
        (self.group_id.clone()).unwrap_or_else(|| default_consumer_name(route))
    }
}

/// What to write when a Kafka route has no `[routes.kafka]` table.
pub const TABLE_HINT: &str = "a [routes.kafka] table with at least `brokers` is required";

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

impl KafkaSource {
    /// The checks serde cannot express; keys relative to the route.
    pub fn check(&self, route: &RouteConfig, push: &mut dyn FnMut(&str, String)) {
        let kafka = &self.settings;
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
        // librdkafka takes topic patterns as regular expressions starting with '^'.
        if let Some(pattern) = &kafka.topic_pattern {
            if !pattern.starts_with('^') {
                push(
                    "kafka.topic_pattern",
                    format!(
                        "{pattern:?} must start with '^' (librdkafka's mark of a topic pattern)"
                    ),
                );
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
                        format!(
                            "{topic:?} is not a Kafka topic name (letters, digits, '.', '_', '-')"
                        ),
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

    /// On revoke, in-flight records get half of `max.poll.interval.ms` to finish: the HTTP
    /// deadline must be under it.
    pub fn check_deadline(&self, deadline: Duration, push: &mut dyn FnMut(&str, String)) {
        let max_poll = (self.settings.consumer.get("max.poll.interval.ms"))
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(super::DEFAULT_MAX_POLL_INTERVAL);
        if deadline >= max_poll / 2 {
            push(
                "total_timeout",
                format!(
                    "the HTTP deadline of {deadline:?} must be under half of max.poll.interval.ms ({max_poll:?}), \
                     so in-flight records can finish when partitions are revoked"
                ),
            );
        }
    }
}
