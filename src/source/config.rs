//! The configuration side of "the one match over source kinds": [`SourceConfig`] holds one
//! route's source part (one variant per source, each type in `source/<name>/config.rs`),
//! and this module reads it from the route's table, checks it and writes it back for
//! `ricochet check --print`.
//!
//! The file format: a route says `source = "kafka"` (absent: `nats`); the keys of that
//! source's type (its route-level keys and its `[routes.<name>]` table) are taken out of the
//! route's table and read as that type, with `deny_unknown_fields`; the rest is the route's
//! common part, `config::RouteConfig`. A key another source has is reported naming the
//! route's source and its keys, rather than as an unknown key.
//!
//! Adding a source: its `config.rs` type, one variant below, one line in each match.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use super::amqp::{self, AmqpSource};
use super::jetstream::{self, JetStreamSource};
use super::kafka::{self, KafkaSource};
use super::nats::NatsSource;
use crate::config::{field_names, ConfigError, Document, RouteConfig};

/// The value of a route's `source` key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// Core NATS request-reply (queue subscriptions).
    #[default]
    Nats,
    /// A durable JetStream pull consumer.
    Jetstream,
    /// A Kafka consumer group.
    Kafka,
    /// A RabbitMQ queue (AMQP 0-9-1).
    Amqp,
}

impl SourceKind {
    pub const ALL: [SourceKind; 4] = [
        SourceKind::Nats,
        SourceKind::Jetstream,
        SourceKind::Kafka,
        SourceKind::Amqp,
    ];

    /// The `source` metric label and config value.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Nats => "nats",
            SourceKind::Jetstream => "jetstream",
            SourceKind::Kafka => "kafka",
            SourceKind::Amqp => "amqp",
        }
    }

    /// Whether routes of this source need the NATS connection.
    pub fn uses_nats(self) -> bool {
        matches!(self, SourceKind::Nats | SourceKind::Jetstream)
    }

    /// Durable sources keep a message until it is settled, so they can redeliver it later.
    pub fn is_durable(self) -> bool {
        self != SourceKind::Nats
    }

    /// The route keys of this source, as its type's fields name them.
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            SourceKind::Nats => field_names::<NatsSource>(),
            SourceKind::Jetstream => field_names::<JetStreamSource>(),
            SourceKind::Kafka => field_names::<KafkaSource>(),
            SourceKind::Amqp => field_names::<AmqpSource>(),
        }
    }

    /// The source's own `[routes.<name>]` table, required, and what to say when it is
    /// missing (serde's "required key is missing" would not say what it needs).
    fn table(self) -> Option<(&'static str, &'static str)> {
        match self {
            SourceKind::Nats => None,
            SourceKind::Jetstream => Some(("jetstream", jetstream::config::TABLE_HINT)),
            SourceKind::Kafka => Some(("kafka", kafka::config::TABLE_HINT)),
            SourceKind::Amqp => Some(("amqp", amqp::config::TABLE_HINT)),
        }
    }
}

/// The source part of a route: one variant per source, so settings of one source cannot
/// appear on a route of another.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// Core NATS request-reply: queue subscriptions, replies to the request's inbox.
    Nats(NatsSource),
    /// A durable JetStream pull consumer.
    Jetstream(JetStreamSource),
    /// A Kafka consumer group.
    Kafka(KafkaSource),
    /// A RabbitMQ (AMQP 0-9-1) queue, RPC style: replies to each request's `reply_to`.
    Amqp(AmqpSource),
}

impl SourceConfig {
    pub fn kind(&self) -> SourceKind {
        match self {
            SourceConfig::Nats(_) => SourceKind::Nats,
            SourceConfig::Jetstream(_) => SourceKind::Jetstream,
            SourceConfig::Kafka(_) => SourceKind::Kafka,
            SourceConfig::Amqp(_) => SourceKind::Amqp,
        }
    }

    /// Takes the source part out of one route's `table` (at key path `prefix`,
    /// `routes[2]`): the `source` key, the keys of that source, and the keys of other
    /// sources (reported). What is left is the route's common part. `None` when the source
    /// part has a problem, reported in the errors.
    pub fn take(
        document: &Document,
        prefix: &str,
        table: &mut Table,
    ) -> (Option<Self>, Vec<ConfigError>) {
        let mut errors = Vec::new();
        let kind = match table.remove("source") {
            None => Some(SourceKind::Nats),
            Some(value) => {
                let (kind, more) = document.deserialize(value, &format!("{prefix}.source"));
                errors.extend(more);
                kind
            }
        };
        let own = kind.map_or(&[][..], SourceKind::keys);
        let mut part = Table::new();
        let names: Vec<String> = table.keys().cloned().collect();
        for name in names {
            if own.contains(&name.as_str()) {
                part.insert(name.clone(), table.remove(&name).expect("listed"));
                continue;
            }
            let foreign = SourceKind::ALL
                .iter()
                .any(|k| k.keys().contains(&name.as_str()));
            if !foreign {
                continue; // a common key, or unknown: the common part reports it
            }
            table.remove(&name);
            // With an unknown source, its keys are not judged.
            if let Some(kind) = kind {
                errors.push(ConfigError::new(
                    format!("{prefix}.{name}"),
                    format!(
                        "not a key of a route with source = \"{}\" (its keys: {})",
                        kind.as_str(),
                        own.join(", ")
                    ),
                ));
            }
        }
        let Some(kind) = kind else {
            return (None, errors);
        };
        if let Some((key, hint)) = kind.table() {
            if !part.contains_key(key) {
                errors.push(ConfigError::new(format!("{prefix}.{key}"), hint));
                return (None, errors);
            }
        }
        let part = Value::Table(part);
        let (source, more) = match kind {
            SourceKind::Nats => wrap(document.deserialize(part, prefix), SourceConfig::Nats),
            SourceKind::Jetstream => {
                wrap(document.deserialize(part, prefix), SourceConfig::Jetstream)
            }
            SourceKind::Kafka => wrap(document.deserialize(part, prefix), SourceConfig::Kafka),
            SourceKind::Amqp => wrap(document.deserialize(part, prefix), SourceConfig::Amqp),
        };
        errors.extend(more);
        (source, errors)
    }

    /// The source's checks of itself and against the route's common settings; keys
    /// relative to the route.
    pub fn check(&self, route: &RouteConfig, push: &mut dyn FnMut(&str, String)) {
        match self {
            SourceConfig::Nats(nats) => nats.check(route, push),
            SourceConfig::Jetstream(js) => js.check(route, push),
            SourceConfig::Kafka(kafka) => kafka.check(route, push),
            SourceConfig::Amqp(amqp) => amqp.check(route, push),
        }
    }

    /// The route's HTTP deadline (all attempts) against the broker's own deadline for a
    /// message in hand: the broker must not redeliver a message ricochet still works on.
    pub fn check_deadline(&self, deadline: Duration, push: &mut dyn FnMut(&str, String)) {
        match self {
            SourceConfig::Nats(_) => {}
            SourceConfig::Jetstream(js) => js.check_deadline(deadline, push),
            SourceConfig::Kafka(kafka) => kafka.check_deadline(deadline, push),
            SourceConfig::Amqp(amqp) => amqp.check_deadline(deadline, push),
        }
    }

    /// The source part as the route's table says it, `source` included, every default
    /// written out: what [`SourceConfig::take`] reads back as the same.
    pub fn to_table(&self) -> Result<Table, toml::ser::Error> {
        let value = match self {
            SourceConfig::Nats(nats) => Value::try_from(nats)?,
            SourceConfig::Jetstream(js) => Value::try_from(js)?,
            SourceConfig::Kafka(kafka) => Value::try_from(kafka)?,
            SourceConfig::Amqp(amqp) => Value::try_from(amqp)?,
        };
        let mut table = match value {
            Value::Table(table) => table,
            _ => Table::new(),
        };
        table.insert("source".into(), Value::String(self.kind().as_str().into()));
        Ok(table)
    }
}

fn wrap<T>(
    (parsed, errors): (Option<T>, Vec<ConfigError>),
    variant: fn(T) -> SourceConfig,
) -> (Option<SourceConfig>, Vec<ConfigError>) {
    (parsed.map(variant), errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_names_its_route_keys() {
        assert_eq!(
            SourceKind::Nats.keys(),
            ["delivery", "queue_group", "max_pending"]
        );
        assert_eq!(
            SourceKind::Jetstream.keys(),
            ["delivery", "reply_subject", "dead_letter", "jetstream"]
        );
        assert_eq!(SourceKind::Kafka.keys(), ["delivery", "kafka"]);
        assert_eq!(SourceKind::Amqp.keys(), ["delivery", "amqp"]);
    }
}
