//! What an AMQP route needs on the broker, declared when ricochet connects: the request
//! queue (used as it is when it exists, else declared durable), its bindings, and one
//! delayed-retry queue per distinct redelivery delay.
//!
//! Why retry queues rather than holding a message and nacking it with requeue once its delay
//! passed: a held message keeps a prefetch slot (and its channel) busy for the whole delay,
//! a classic queue counts no deliveries on a requeue, and a nack-requeue puts the message
//! back at the head of the queue, where it comes again at once after a restart. A copy in a
//! retry queue (queue TTL = the delay, dead-lettered back into the request queue by the
//! broker) frees the slot, carries its delivery count and waits out its delay across
//! restarts. One queue per delay, because RabbitMQ expires messages only at a queue's head:
//! a 30 s message would hold back a 1 s one behind it.
//!
//! The pure parts (names, binding keys, delivery counts) are unit-tested here.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Connection, ExchangeKind};

use super::config::{AmqpConfig, QueueType};

/// On a retry copy: the routing key the request first came with (the copy comes back
/// through the default exchange, under the queue's name).
pub const ROUTING_KEY_HEADER: &str = "Ricochet-Routing-Key";
/// On a retry copy: the exchange the request was first published to (the copy comes back
/// through the default exchange), for its dead letter's `Ricochet-Original-Exchange`.
pub const EXCHANGE_HEADER: &str = "Ricochet-Exchange";
/// On a retry copy: which delivery of the request the copy is (2 for the first retry).
pub const DELIVERIES_HEADER: &str = "Ricochet-Deliveries";

/// A queue or exchange name RabbitMQ accepts for a queue ricochet may declare: 1 to 255
/// bytes, not in the reserved `amq.` namespace.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && !name.starts_with("amq.")
}

/// A route subject in AMQP topic-exchange syntax: `*` and `{name}` match one word, a final
/// `>` (one or more words) becomes `#`.
pub fn binding_key(subject: &str) -> String {
    let words: Vec<&str> = subject
        .split('.')
        .map(|token| match token {
            ">" => "#",
            t if t == "*" || (t.starts_with('{') && t.ends_with('}')) => "*",
            t => t,
        })
        .collect();
    words.join(".")
}

/// The retry queue of `queue` for one delay.
pub fn retry_queue(queue: &str, delay: Duration) -> String {
    format!("{queue}.ricochet-retry.{}ms", delay.as_millis())
}

/// Deliveries of a message, this one included: the number ricochet gave its retry copy
/// (`ours`, absent on the original: 1) plus the broker's redeliveries of this copy (a
/// quorum queue counts them in `x-delivery-count`; a classic queue only says
/// `redelivered`).
pub fn delivery_count(ours: Option<u64>, broker: Option<u64>, redelivered: bool) -> u32 {
    let before = ours.unwrap_or(1).max(1);
    let again = broker.unwrap_or(u64::from(redelivered));
    u32::try_from(before.saturating_add(again)).unwrap_or(u32::MAX)
}

/// Why the broker does not have what the route needs.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {error}")]
pub struct TopologyError {
    what: String,
    error: lapin::Error,
}

fn failed(what: impl Into<String>) -> impl FnOnce(lapin::Error) -> TopologyError {
    let what = what.into();
    move |error| TopologyError { what, error }
}

/// Declares what the route needs. Each check that may close its channel (a passive declare
/// of something missing) runs on a channel of its own.
pub async fn declare(
    connection: &Connection,
    config: &AmqpConfig,
    queue: &str,
    subject: &str,
) -> Result<(), TopologyError> {
    let channel = || async {
        connection
            .create_channel()
            .await
            .map_err(failed("open a channel"))
    };
    // Declared durable with ricochet's arguments; a queue that exists with others (a
    // PRECONDITION_FAILED, which closes the channel) is used as it is.
    let mut arguments = FieldTable::default();
    let kind = match config.queue_type {
        QueueType::Classic => "classic",
        QueueType::Quorum => "quorum",
    };
    arguments.insert("x-queue-type".into(), text(kind));
    let declaring = channel().await?;
    let declared = declaring
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), arguments)
        .await;
    let setup = match declared {
        Ok(_) => declaring,
        Err(declare_error) => {
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            let probe = channel().await?;
            (probe
                .queue_declare(queue.into(), passive, FieldTable::default())
                .await)
                .map_err(|_| TopologyError {
                    what: format!("declare queue {queue:?}"),
                    error: declare_error,
                })?;
            probe
        }
    };
    if let Some(exchange) = &config.exchange {
        let keys = match config.routing_keys.is_empty() {
            true => vec![binding_key(subject)],
            false => config.routing_keys.clone(),
        };
        for key in keys {
            setup
                .queue_bind(
                    queue.into(),
                    exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(failed(format!(
                    "bind queue {queue:?} to exchange {exchange:?} with {key:?}"
                )))?;
        }
    }
    let mut delays = config.redelivery_backoff.clone();
    delays.sort();
    delays.dedup();
    for delay in delays.into_iter().filter(|d| !d.is_zero()) {
        let name = retry_queue(queue, delay);
        let mut arguments = FieldTable::default();
        let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
        arguments.insert("x-dead-letter-exchange".into(), text(""));
        arguments.insert("x-dead-letter-routing-key".into(), text(queue));
        setup
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions::durable(),
                arguments,
            )
            .await
            .map_err(failed(format!("declare retry queue {name:?}")))?;
    }
    let _ = setup.close(200, "OK".into()).await;
    if let Some(exchange) = &config.dead_letter_exchange {
        // Publishing to a missing exchange would close the publishing channel: check now.
        let probe = channel().await?;
        let options = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        probe
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                options,
                FieldTable::default(),
            )
            .await
            .map_err(failed(format!("dead-letter exchange {exchange:?}")))?;
        let _ = probe.close(200, "OK".into()).await;
    }
    Ok(())
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_become_topic_binding_keys() {
        assert_eq!(binding_key("orders.{id}.get"), "orders.*.get");
        assert_eq!(binding_key("orders.*"), "orders.*");
        assert_eq!(binding_key("orders.>"), "orders.#");
        assert_eq!(binding_key("orders.create"), "orders.create");
    }

    #[test]
    fn each_delay_has_its_own_retry_queue() {
        assert_eq!(
            retry_queue("orders", Duration::from_secs(5)),
            "orders.ricochet-retry.5000ms"
        );
        assert_ne!(
            retry_queue("orders", Duration::from_millis(1500)),
            retry_queue("orders", Duration::from_secs(1))
        );
    }

    #[test]
    fn deliveries_add_up_across_retry_copies_and_broker_redeliveries() {
        // First delivery of a request.
        assert_eq!(delivery_count(None, None, false), 1);
        // Redelivered by a classic queue (ricochet stopped before settling it).
        assert_eq!(delivery_count(None, None, true), 2);
        // A quorum queue counts its own redeliveries.
        assert_eq!(delivery_count(None, Some(3), true), 4);
        // The third retry copy, first delivered.
        assert_eq!(delivery_count(Some(3), None, false), 3);
        assert_eq!(delivery_count(Some(3), Some(1), true), 4);
        // A nonsense count never goes below one delivery before.
        assert_eq!(delivery_count(Some(0), None, false), 1);
        assert_eq!(delivery_count(Some(u64::MAX), Some(1), true), u32::MAX);
    }

    #[test]
    fn names_are_bounded_and_not_reserved() {
        assert!(valid_name("orders"));
        assert!(!valid_name(""));
        assert!(!valid_name("amq.gen-1"));
        assert!(!valid_name(&"q".repeat(256)));
    }
}
