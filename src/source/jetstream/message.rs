//! One JetStream message: its [`Inbound`] form, the in-progress signal while a slow call
//! runs, and how the pipeline's decisions are carried out on the server (the [`Settle`] of
//! this source).
//!
//! | pipeline | on the server |
//! |---|---|
//! | accept (at-most-once) | double ack on receipt |
//! | reply | publish to the reply subject, confirmed by the stream or a flush |
//! | ack | double ack (confirmed) |
//! | redeliver after a delay | nak with that delay |
//! | dead letter | publish to `dead_letter` with ricochet's headers and the stream position |
//! | terminate | term (confirmed) |

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, AckKind};
use tokio::time::Instant;
use tracing::warn;

use super::JetStreamRoute;
use crate::config::Delivery;
use crate::message::{dead_letter, DeadLetter, Reply};
use crate::message::{
    Accepted, Cause, Confirmed, DeadLettered, Inbound, Position, Redelivered, Settle, SettleError,
    Undelivered,
};
use crate::pipeline::Taken;
use crate::source::nats::{dead_letter_headers, Connection, LinkError};
use crate::telemetry::metrics::Settlement;

impl JetStreamRoute {
    /// One message from receipt to settlement (its slot is held by the task running this).
    pub(super) async fn handle(
        &self,
        message: jetstream::Message,
        delivered_on: Connection,
        _taken: Taken,
    ) {
        let route = &self.route;
        let Some(meta) = Meta::of(&message) else {
            warn!(route = %route.name, subject = %message.subject, "not a JetStream message; ignored");
            return;
        };
        let inbound = self.inbound(&message, &meta);
        let settle = Stream {
            source: self,
            message: &message,
            meta: &meta,
            // Scoped by stream: equal message ids in two streams are different requests.
            reply_id: [(
                "Nats-Msg-Id",
                format!("ricochet-reply:{}:{}", meta.stream, meta.idempotency_key),
            )],
            delivered_on,
        };
        let captures = route.pattern.matches(&inbound.subject);
        // Boxed, as core NATS does: the handling future is a few KB, which the task's
        // future would otherwise hold (and copy) inline, twice over in `with_progress`.
        let deliver = Box::pin(self.pipeline.deliver(route, captures, &inbound, &settle));
        self.with_progress(&message, deliver).await;
    }

    /// Runs `work`, telling the server the message is in progress while it is slow.
    async fn with_progress<T>(
        &self,
        message: &jetstream::Message,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let route = &self.route;
        if !(self.config.in_progress && self.delivery == Delivery::AtLeastOnce) {
            return work.await;
        }
        let half = self.config.ack_wait / 2;
        let progress = async {
            let mut tick = tokio::time::interval_at(Instant::now() + half, half);
            loop {
                tick.tick().await;
                match message.ack_with(AckKind::Progress).await {
                    Ok(()) => route.metrics.settled(Settlement::InProgress),
                    Err(e) => warn!(route = %route.name, error = %e, "in-progress signal failed"),
                }
            }
        };
        tokio::select! {
            done = work => done,
            never = progress => never,
        }
    }

    fn inbound(&self, message: &jetstream::Message, meta: &Meta) -> Inbound {
        let config = &self.route.config;
        let headers = crate::source::nats::headers(message.headers.as_ref());
        let mut inbound = Inbound::new(
            message.subject.to_string(),
            crate::message::reply_destination(
                &headers,
                &config.reply_to_header,
                self.reply_subject.as_deref(),
            ),
            headers,
            message.payload.clone(),
        );
        inbound.correlation = inbound
            .header(&config.correlation_header)
            .map(str::to_string);
        inbound.idempotency_key = Some(meta.idempotency_key.clone());
        inbound.delivered = meta.delivered;
        inbound.position = Position::Stream {
            sequence: meta.sequence,
        };
        inbound.sent_at = meta.published;
        inbound
    }
}

/// Publishing and settling one JetStream message.
struct Stream<'a> {
    source: &'a JetStreamRoute,
    message: &'a jetstream::Message,
    meta: &'a Meta,
    /// The reply's `Nats-Msg-Id`: a reply published again after a redelivery is
    /// de-duplicated by a stream that captures it.
    reply_id: [(&'static str, String); 1],
    /// The connection the message came on: its settlement waits less once that is gone.
    delivered_on: Connection,
}

impl Stream<'_> {
    /// An ack of `kind` the server confirms (double ack): one lost on the way is noticed, one
    /// lost with the connection is sent again once it is back.
    async fn confirmed(&self, what: &'static str, kind: AckKind) -> Result<Confirmed, SettleError> {
        let ack = || self.message.double_ack_with(kind);
        let link = self.source.replier.link();
        match link.settled(self.delivered_on, ack).await {
            Ok(()) => Ok(Confirmed::Now),
            Err(LinkError::ConnectionLost) => Err(SettleError::ConnectionLost),
            Err(LinkError::Failed(e)) => Err(SettleError::Broker {
                what,
                cause: Cause::boxed(e),
            }),
            Err(e) => Err(SettleError::Broker {
                what,
                cause: Cause::text(e.to_string()),
            }),
        }
    }
}

impl Settle for Stream<'_> {
    fn too_large(&self, _: &str, reply: &Reply) -> Option<(usize, usize, &'static str)> {
        let (size, limit) = self.source.replier.too_large(reply, &self.reply_id)?;
        Some((size, limit, "the NATS server's max_payload"))
    }

    fn destination_problem(&self, destination: &str) -> Option<&'static str> {
        reply_subject_problem(destination)
    }

    async fn accept(&self) -> Result<Accepted, SettleError> {
        self.confirmed("ack on receipt", AckKind::Ack).await?;
        Ok(Accepted::Settled)
    }

    async fn reply(&self, destination: &str, reply: &Reply) -> Result<Confirmed, Undelivered> {
        (self.source.replier)
            .publish_confirmed(destination, reply, &self.reply_id)
            .await
            .map(|()| Confirmed::Now)
            .map_err(|e| Undelivered::Failed(Cause::new(e)))
    }

    async fn dead_letter(&self, letter: &DeadLetter<'_>) -> Result<DeadLettered, Undelivered> {
        let Some(subject) = &self.source.dead_letter else {
            return Ok(DeadLettered::NoDestination);
        };
        let meta = self.meta;
        let origin = [
            (dead_letter::ORIGINAL_STREAM, meta.stream.clone()),
            (
                dead_letter::ORIGINAL_SUBJECT,
                letter.inbound.subject.clone(),
            ),
            (dead_letter::ORIGINAL_SEQUENCE, meta.sequence.to_string()),
        ];
        let id = format!("ricochet-dlq:{}:{}", meta.stream, meta.sequence);
        (self.source.replier)
            .publish_raw_confirmed(
                subject,
                dead_letter_headers(letter, &origin, id),
                letter.inbound.payload.clone(),
            )
            .await
            .map(|()| DeadLettered::Published(Confirmed::Now))
            .map_err(|e| Undelivered::Failed(Cause::new(e)))
    }

    async fn ack(&self) -> Result<Confirmed, SettleError> {
        self.confirmed("ack", AckKind::Ack).await
    }

    async fn redeliver(&self, delay: Duration) -> Result<Redelivered, SettleError> {
        let nak = self.message.ack_with(AckKind::Nak(Some(delay))).await;
        nak.map(|()| Redelivered::ByBroker)
            .map_err(|e| SettleError::Broker {
                what: "nak",
                cause: Cause::boxed(e),
            })
    }

    async fn terminate(&self) -> Result<Confirmed, SettleError> {
        self.confirmed("term", AckKind::Term).await
    }
}

/// What the ack subject and headers say about one delivery.
struct Meta {
    stream: String,
    sequence: u64,
    delivered: u32,
    /// Stable across redeliveries: the request's `Nats-Msg-Id`, else `stream:sequence`.
    idempotency_key: String,
    /// When the stream stored the message (the server's clock), the same on every delivery.
    published: Option<SystemTime>,
}

impl Meta {
    fn of(message: &jetstream::Message) -> Option<Self> {
        let info = message.info().ok()?;
        let msg_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_string());
        Some(Self {
            stream: info.stream.to_string(),
            sequence: info.stream_sequence,
            delivered: u32::try_from(info.delivered).unwrap_or(u32::MAX),
            idempotency_key: msg_id
                .unwrap_or_else(|| format!("{}:{}", info.stream, info.stream_sequence)),
            published: u64::try_from(info.published.unix_timestamp_nanos())
                .ok()
                .and_then(|nanos| UNIX_EPOCH.checked_add(Duration::from_nanos(nanos))),
        })
    }
}

/// Why ricochet will not publish to a reply subject a request names, if it will not: it must
/// be a plain subject, and not one of the server's own (`$JS.API...`, `$KV...`).
fn reply_subject_problem(subject: &str) -> Option<&'static str> {
    if subject.is_empty() || subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("is empty or contains spaces")
    } else if subject
        .split('.')
        .any(|t| t.is_empty() || t == "*" || t == ">")
    {
        Some("is not a plain subject (empty token or wildcard)")
    } else if subject.starts_with('$') {
        Some("names a system subject ($...)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::reply_subject_problem;

    #[test]
    fn reply_subjects_must_be_plain_and_not_system_subjects() {
        assert_eq!(reply_subject_problem("orders.replies.c1"), None);
        assert_eq!(reply_subject_problem("_INBOX.abc.def"), None);
        for bad in [
            "",
            "a b",
            "a.*",
            "a.>",
            "a..b",
            "$JS.API.STREAM.DELETE.ORDERS",
            "$KV.x.y",
        ] {
            assert!(reply_subject_problem(bad).is_some(), "{bad:?}");
        }
    }
}
