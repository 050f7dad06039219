//! One AMQP delivery: its [`Inbound`] form, and how the pipeline's decisions are carried out
//! on RabbitMQ (the [`Settle`] of this source).
//!
//! | pipeline | on the broker |
//! |---|---|
//! | reply | publish to `reply_to` through the default exchange, confirmed |
//! | ack | `basic.ack` |
//! | redeliver after a delay | a confirmed copy to the retry queue of that delay (or the request queue itself when the delay is zero), carrying its delivery number, routing key and exchange, then `basic.ack` |
//! | dead letter | a confirmed copy with ricochet's dead-letter headers to `dead_letter_exchange` |
//! | terminate | `basic.reject`, no requeue (the queue's own dead-letter exchange, if any, receives it) |
//!
//! A copy (retry or dead letter) carries the request's properties, payload and header table
//! as they arrived (`fields::copy`), so its headers keep their AMQP types.
//!
//! When the delivery's channel is gone, the broker has requeued it: nothing is settled and
//! no reply is published (it will be answered on its next delivery).

use std::time::Duration;

use bytes::Bytes;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::BasicProperties;

use super::fields;
use super::publish::{self as publisher, PERSISTENT};
use super::topology::{self, DELIVERIES_HEADER, EXCHANGE_HEADER, ROUTING_KEY_HEADER};
use super::{AmqpRoute, Session, MAX_MESSAGE_SIZE};
use crate::message::Reply;
use crate::message::{dead_letter, DeadLetter};
use crate::message::{
    header, reply_destination, Accepted, Cause, Confirmed, DeadLettered, Inbound, Redelivered,
    Settle, SettleError, Undelivered,
};
use crate::pipeline::Taken;

impl AmqpRoute {
    /// One delivery from receipt to settlement (its slot is held by the task running this).
    pub(super) async fn handle(&self, session: &Session, mut delivery: Delivery, _taken: Taken) {
        let route = &self.route;
        let payload = Bytes::from(std::mem::take(&mut delivery.data));
        let inbound = self.inbound(&delivery, payload);
        let settle = Request {
            source: self,
            session,
            delivery: &delivery,
            exchange: self.first_exchange(&delivery, &inbound),
            inbound: &inbound,
        };
        let captures = route.pattern.matches(&inbound.subject);
        self.pipeline
            .deliver(route, captures, &inbound, &settle)
            .await;
    }

    fn inbound(&self, delivery: &Delivery, payload: Bytes) -> Inbound {
        let config = &self.route.config;
        let properties = &delivery.properties;
        let table = properties.headers().as_ref();
        let fields::Decoded {
            mut headers,
            unreadable,
        } = fields::decode(table);
        if let Some(content_type) = properties.content_type() {
            if header(&headers, "content-type").is_none() {
                headers.push(("Content-Type".into(), content_type.to_string()));
            }
        }
        // A retry copy comes back under the queue's name; its first routing key routes it.
        let routing_key = delivery.routing_key.as_str();
        let subject = match header(&headers, ROUTING_KEY_HEADER) {
            Some(original) if routing_key == self.queue => original.to_string(),
            _ => routing_key.to_string(),
        };
        let reply = match properties.reply_to() {
            Some(queue) => Some(queue.to_string()),
            None => reply_destination(&headers, &config.reply_to_header, None),
        };
        let count = |name: &str| {
            let table = table?;
            let (_, value) = table
                .inner()
                .iter()
                .find(|(n, _)| n.as_str().eq_ignore_ascii_case(name))?;
            fields::number_of(value)
        };
        let delivered = topology::delivery_count(
            count(DELIVERIES_HEADER),
            count("x-delivery-count"),
            delivery.redelivered,
        );
        let mut inbound = Inbound::new(subject, reply, headers, payload);
        inbound.correlation = match properties.correlation_id() {
            Some(id) => Some(id.to_string()),
            None => inbound
                .header(&config.correlation_header)
                .map(str::to_string),
        };
        inbound.idempotency_key = properties.message_id().as_ref().map(|id| id.to_string());
        inbound.delivered = delivered;
        inbound.unreadable = unreadable;
        inbound.sent_at = fields::sent_at(*properties.timestamp());
        inbound.expires_in =
            fields::expires_in(properties.expiration().as_ref().map(|e| e.as_str()));
        inbound
    }

    /// The exchange the request was first published to: a retry copy comes back through the
    /// default exchange under the queue's name, carrying it (as it carries the routing key).
    fn first_exchange(&self, delivery: &Delivery, inbound: &Inbound) -> String {
        let exchange = delivery.exchange.as_str();
        match inbound.header(EXCHANGE_HEADER) {
            Some(first) if exchange.is_empty() && delivery.routing_key.as_str() == self.queue => {
                first.to_string()
            }
            _ => exchange.to_string(),
        }
    }
}

/// Publishing and settling one delivery.
struct Request<'a> {
    source: &'a AmqpRoute,
    session: &'a Session,
    delivery: &'a Delivery,
    /// The exchange the request was first published to (see `first_exchange`).
    exchange: String,
    inbound: &'a Inbound,
}

impl Request<'_> {
    /// The delivery's channel is gone: the broker has requeued it.
    fn lost(&self) -> bool {
        self.delivery.acker.poisoned() || !self.session.consume.status().connected()
    }

    /// Publishes on the session's confirm channel; a broken channel breaks the session.
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), Undelivered> {
        if self.lost() {
            return Err(Undelivered::Lost);
        }
        let channel = &self.session.publish;
        let published =
            publisher::publish_confirmed(channel, exchange, routing_key, payload, properties).await;
        if published.is_err() && !channel.status().connected() {
            self.session.broken.cancel();
            return Err(Undelivered::Lost);
        }
        published
    }

    /// The request's own properties and header table, minus ricochet's retry bookkeeping,
    /// with `ours` added: what a retry copy and a dead letter carry.
    fn copy_with(&self, ours: Vec<(&str, &str)>) -> BasicProperties {
        let bookkeeping = [ROUTING_KEY_HEADER, DELIVERIES_HEADER, EXCHANGE_HEADER];
        let original = self.delivery.properties.headers().as_ref();
        (self.delivery.properties.clone())
            .with_headers(fields::copy(original, &bookkeeping, ours))
            .with_delivery_mode(PERSISTENT)
    }

    fn settled(result: lapin::Result<bool>, what: &'static str) -> Result<Confirmed, SettleError> {
        match result {
            Ok(true) => Ok(Confirmed::Now),
            Ok(false) => Err(SettleError::ConnectionLost),
            Err(e) => Err(SettleError::Broker {
                what,
                cause: Cause::new(e),
            }),
        }
    }
}

impl Settle for Request<'_> {
    fn too_large(&self, _: &str, reply: &Reply) -> Option<(usize, usize, &'static str)> {
        let headers: usize = (reply.headers.iter()).map(|(n, v)| n.len() + v.len()).sum();
        let size = reply.body.len() + headers;
        (size > MAX_MESSAGE_SIZE).then_some((size, MAX_MESSAGE_SIZE, "RabbitMQ's max_message_size"))
    }

    fn destination_problem(&self, destination: &str) -> Option<&'static str> {
        // A routing key is an AMQP short string.
        if destination.is_empty() {
            Some("is empty")
        } else if destination.len() > 255 {
            Some("is longer than 255 bytes")
        } else {
            None
        }
    }

    async fn accept(&self) -> Result<Accepted, SettleError> {
        let acked = self.delivery.acker.ack(BasicAckOptions::default()).await;
        Self::settled(acked, "ack on receipt").map(|_| Accepted::Settled)
    }

    async fn reply(&self, destination: &str, reply: &Reply) -> Result<Confirmed, Undelivered> {
        let correlation = self.inbound.correlation.as_deref();
        let properties = publisher::reply_message(destination, reply, correlation);
        let published = self.publish("", destination, &reply.body, properties).await;
        published.map(|()| Confirmed::Now)
    }

    async fn dead_letter(&self, letter: &DeadLetter<'_>) -> Result<DeadLettered, Undelivered> {
        let Some(exchange) = &self.source.config.dead_letter_exchange else {
            return Ok(DeadLettered::NoDestination);
        };
        let routing_key = (self.source.config.dead_letter_routing_key.as_deref())
            .unwrap_or(letter.inbound.subject.as_str());
        let ours = letter.headers();
        let origin = [
            (dead_letter::ORIGINAL_QUEUE, self.source.queue.as_str()),
            (dead_letter::ORIGINAL_EXCHANGE, self.exchange.as_str()),
            (
                dead_letter::ORIGINAL_ROUTING_KEY,
                letter.inbound.subject.as_str(),
            ),
        ];
        let headers = (ours.iter().map(|(n, v)| (*n, v.as_str())))
            .chain(origin)
            .collect();
        let properties = self.copy_with(headers);
        let payload = &letter.inbound.payload;
        (self
            .publish(exchange, routing_key, payload, properties)
            .await)
            .map(|()| DeadLettered::Published(Confirmed::Now))
    }

    async fn ack(&self) -> Result<Confirmed, SettleError> {
        let acked = self.delivery.acker.ack(BasicAckOptions::default()).await;
        Self::settled(acked, "basic.ack")
    }

    async fn redeliver(&self, delay: Duration) -> Result<Redelivered, SettleError> {
        let queue = &self.source.queue;
        let target = match delay.is_zero() {
            true => queue.clone(),
            false => topology::retry_queue(queue, delay),
        };
        let next = self.inbound.delivered.saturating_add(1).to_string();
        let headers = vec![
            (ROUTING_KEY_HEADER, self.inbound.subject.as_str()),
            (EXCHANGE_HEADER, self.exchange.as_str()),
            (DELIVERIES_HEADER, next.as_str()),
        ];
        let properties = self.copy_with(headers);
        let copied = self
            .publish("", &target, &self.inbound.payload, properties)
            .await;
        match copied {
            Ok(()) => {
                let acked = self.delivery.acker.ack(BasicAckOptions::default()).await;
                Self::settled(acked, "basic.ack after the retry copy")
                    .map(|_| Redelivered::ByBroker)
            }
            Err(Undelivered::Lost) => Err(SettleError::ConnectionLost),
            Err(e) => {
                if let Undelivered::Dropped(_) = e {
                    // The retry queue is gone (deleted while ricochet runs): connecting again
                    // declares it again.
                    self.session.broken.cancel();
                }
                // Without its copy the request must not stay unsettled (it would hold a
                // prefetch slot): back into the queue, without the delay.
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                let nacked = self.delivery.acker.nack(requeue).await;
                Self::settled(nacked, "basic.nack")?;
                Err(SettleError::Broker {
                    what: "retry copy (the message was requeued at once)",
                    cause: Cause::text(format!("{target:?}: {e}")),
                })
            }
        }
    }

    async fn terminate(&self) -> Result<Confirmed, SettleError> {
        let rejected = (self.delivery.acker)
            .reject(BasicRejectOptions { requeue: false })
            .await;
        Self::settled(rejected, "basic.reject")
    }
}
