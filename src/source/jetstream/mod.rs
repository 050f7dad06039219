//! The JetStream source: one durable pull consumer per route, with at-least-once (default)
//! or at-most-once delivery.
//!
//! Intake pulls only as many messages as the route has free `max_in_flight` permits, so no
//! message waits in a local buffer while its `ack_wait` runs out. While the route's circuit
//! breaker is open nothing is pulled; when the break is over one message is pulled as the
//! probe, and full batches resume once the breaker has closed.
//!
//! Settlement of one message (at-least-once):
//!
//! | processing result | then |
//! |---|---|
//! | the service answered (any status) | publish the reply (confirmed), then double-ack |
//! | retryable failure, deliveries left | nak with the route's redelivery delay; no reply |
//! | retryable failure, last delivery | dead letter, error reply, term |
//! | can never be delivered | dead letter, error reply, term |
//!
//! A reply or dead letter that cannot be published leads to a nak: the message comes again.
//! While a call runs longer than half of `ack_wait`, in-progress is sent every half
//! `ack_wait` so the server does not redeliver a message still being worked on.

mod consumer;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use super::Inbound;
use crate::config::{Delivery, JetStreamConfig};
use crate::invoke::breaker::State;
use crate::mapping::{ErrorKind, Reply};
use crate::pipeline::{Disposition, Pipeline, Processed, Route};
use crate::reply::DeadLetter;
use crate::telemetry::Health;

/// How long one pull request waits for messages; also bounds how long shutdown waits for
/// the batch under way.
const PULL_EXPIRES: Duration = Duration::from_secs(1);
/// Most messages asked for in one pull.
const MAX_BATCH: usize = 256;
const SETUP_RETRY: Duration = Duration::from_secs(2);
/// After the server refused the consumer ricochet needs: nothing changes until an operator
/// acts, so look again less often.
const REFUSED_RETRY: Duration = Duration::from_secs(10);

/// Everything one route's consumer needs.
pub struct JetStreamRoute {
    route: Arc<Route>,
    config: JetStreamConfig,
    pipeline: Arc<Pipeline>,
    delivery: Delivery,
}

impl JetStreamRoute {
    pub fn new(route: Arc<Route>, pipeline: Arc<Pipeline>) -> Option<Self> {
        let config = route.config.jetstream.clone()?;
        // A JetStream route makes ricochet connect to NATS, so the publisher exists.
        pipeline.replier()?;
        if route.config.dead_letter.is_none() {
            warn!(route = %route.name, "no dead_letter subject: undeliverable messages will be terminated and only logged");
        }
        Some(Self {
            delivery: route.config.delivery.unwrap_or_default(),
            config,
            route,
            pipeline,
        })
    }

    fn replier(&self) -> &crate::reply::NatsReplier {
        self.pipeline
            .replier()
            .expect("checked in JetStreamRoute::new")
    }

    fn durable(&self) -> String {
        self.config
            .durable
            .clone()
            .unwrap_or_else(|| format!("ricochet-{}", self.route.name))
    }

    /// Binds the consumer (retrying until it can), then pulls until `stop`.
    pub async fn run(
        self,
        client: async_nats::Client,
        health: Arc<Health>,
        tracker: TaskTracker,
        stop: CancellationToken,
    ) {
        let this = Arc::new(self);
        let context = jetstream::new(client.clone());
        while !stop.is_cancelled() {
            // What the consumer may ask for depends on the server's version, known once the
            // connection is up: a flush returns once it is.
            if client.server_info().version.is_empty() {
                tokio::select! {
                    _ = client.flush() => {}
                    _ = stop.cancelled() => break,
                }
            }
            let server = client.server_info().version;
            let consumer = match this.bind(&context, &server).await {
                Ok(consumer) => consumer,
                Err(e) => {
                    let pause = match &e {
                        BindError::Refused(refusal) => {
                            error!(route = %this.route.name, stream = %this.config.stream, durable = %this.durable(), server = %server, "{refusal}; not consuming (readiness stays 503)");
                            REFUSED_RETRY
                        }
                        BindError::Failed(e) => {
                            error!(route = %this.route.name, stream = %this.config.stream, error = %e, "cannot set up the JetStream consumer; retrying");
                            SETUP_RETRY
                        }
                    };
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stop.cancelled() => break,
                    }
                    continue;
                }
            };
            info!(route = %this.route.name, stream = %this.config.stream, durable = %this.durable(), "JetStream consumer bound");
            health.intake_ready();
            if this.pull(&consumer, &tracker, &stop).await.is_ok() {
                break;
            }
            // Not ready until bound again.
            health.intake_lost();
            // The consumer or stream may be gone (deleted, lost with memory storage): bind
            // again after a pause instead of pulling at full speed.
            tokio::select! {
                _ = tokio::time::sleep(SETUP_RETRY) => {}
                _ = stop.cancelled() => break,
            }
        }
        info!(route = %this.route.name, "JetStream intake stopped");
    }

    /// Creates the durable consumer, or updates and binds the existing one, then reads its
    /// configuration back: a server that did not keep what ricochet relies on (the filter
    /// above all) is refused rather than consumed from.
    async fn bind(
        &self,
        context: &jetstream::Context,
        server_version: &str,
    ) -> Result<PullConsumer, BindError> {
        if server_version.is_empty() {
            return Err(BindError::Failed("not connected to NATS yet".into()));
        }
        let stream = context
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| BindError::Failed(format!("stream {:?}: {e}", self.config.stream)))?;
        let filters = if self.config.filter_subjects.is_empty() {
            vec![self.route.pattern.subscription_subject()]
        } else {
            self.config.filter_subjects.clone()
        };
        let wanted = consumer::Wanted {
            durable: self.durable(),
            description: format!("ricochet route {}", self.route.name),
            filters,
            ack_wait: self.config.ack_wait,
            max_ack_pending: i64::from(self.config.max_ack_pending),
        };
        let asked = consumer::config(&wanted, server_version)?;
        if let Ok(existing) = stream.consumer_info(&wanted.durable).await {
            consumer::check_existing(&asked, &existing.config, server_version)?;
        }
        let mut bound = stream
            .create_consumer(asked.clone())
            .await
            .map_err(|e| BindError::Failed(format!("consumer {:?}: {e}", self.durable())))?;
        let kept = bound
            .info()
            .await
            .map_err(|e| BindError::Failed(format!("consumer {:?}: {e}", self.durable())))?;
        consumer::check_kept(&asked, &kept.config)?;
        Ok(bound)
    }

    /// Pulls until `stop` (`Ok`) or until a pull fails (`Err`: bind again).
    async fn pull(
        self: &Arc<Self>,
        consumer: &PullConsumer,
        tracker: &TaskTracker,
        stop: &CancellationToken,
    ) -> Result<(), ()> {
        let route = &self.route;
        while !stop.is_cancelled() {
            // Pull nothing the breaker would refuse: refusals would be naks that use up
            // deliveries without calling the service.
            if let Err(wait) = route.invoker.breaker.admits() {
                debug!(route = %route.name, ?wait, "circuit open: not pulling");
                tokio::select! {
                    _ = tokio::time::sleep(wait.clamp(Duration::from_millis(10), PULL_EXPIRES)) => {}
                    _ = stop.cancelled() => break,
                }
                continue;
            }
            let probing = route.invoker.breaker.state() != State::Closed;
            let first = tokio::select! {
                permit = route.limit.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                _ = stop.cancelled() => break,
            };
            let mut permits = vec![first];
            let want = if probing { 1 } else { MAX_BATCH };
            while permits.len() < want {
                match route.limit.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            let batch = consumer
                .batch()
                .max_messages(permits.len())
                .expires(PULL_EXPIRES)
                .messages()
                .await;
            let mut batch = match batch {
                Ok(batch) => batch,
                Err(e) => {
                    warn!(route = %route.name, error = %e, "pull request failed; binding the consumer again");
                    return Err(());
                }
            };
            // The batch under way is always read to its end (at most PULL_EXPIRES), so every
            // message the server handed out is processed, even during shutdown.
            while let Some(message) = batch.next().await {
                let message = match message {
                    Ok(message) => message,
                    Err(e) => {
                        warn!(route = %route.name, error = %e, "pull failed; binding the consumer again");
                        return Err(());
                    }
                };
                let Some(permit) = permits.pop() else {
                    // More than asked for: cannot happen; leave it to redelivery.
                    break;
                };
                let this = self.clone();
                let task = tracker.spawn(async move { this.handle(message, permit).await });
                if probing {
                    // One probe at a time: the next pull waits for its verdict.
                    let _ = task.await;
                }
            }
        }
        Ok(())
    }

    /// One message from receipt to settlement. The permit is held throughout.
    async fn handle(&self, message: jetstream::Message, _permit: OwnedSemaphorePermit) {
        let route = &self.route;
        route.metrics.received.increment(1);
        route.metrics.in_flight.increment(1.0);
        let Some(meta) = Meta::of(&message) else {
            warn!(route = %route.name, subject = %message.subject, "not a JetStream message; ignored");
            route.metrics.in_flight.decrement(1.0);
            return;
        };
        let mut inbound = self.inbound(&message, &meta);
        if self.delivery == Delivery::AtMostOnce {
            if let Err(e) = message.double_ack().await {
                // Not acknowledged, so it comes again: do not process it twice.
                warn!(route = %route.name, error = %e, "ack on receipt failed; the message will be redelivered");
                route.metrics.in_flight.decrement(1.0);
                return;
            }
            route.metrics.settled("ack");
        }
        let processed = match inbound.reply.as_deref().map(reply_subject_problem) {
            Some(Some(problem)) => {
                let detail = format!("the {} header {problem}", route.config.reply_to_header);
                inbound.reply = None;
                self.pipeline.refuse(route, ErrorKind::BadRequest, &detail)
            }
            _ => self.process_with_progress(&message, &inbound).await,
        };
        match self.delivery {
            Delivery::AtMostOnce => self.finish_at_most_once(&inbound, &meta, processed).await,
            // exactly_once is refused for JetStream routes by validation.
            Delivery::AtLeastOnce | Delivery::ExactlyOnce => {
                self.settle(&message, &inbound, &meta, processed).await
            }
        }
        route.metrics.in_flight.decrement(1.0);
        route
            .metrics
            .message_duration
            .record(inbound.received.elapsed());
    }

    /// Runs the pipeline, telling the server the message is in progress while it is slow.
    async fn process_with_progress(
        &self,
        message: &jetstream::Message,
        inbound: &Inbound,
    ) -> Processed {
        let route = &self.route;
        let process = async {
            match route.pattern.matches(&inbound.subject) {
                Some(captures) => self.pipeline.process(route, &captures, inbound).await,
                None => self.pipeline.refuse(
                    route,
                    ErrorKind::NoRoute,
                    "the subject does not match the route's pattern",
                ),
            }
        };
        if !(self.config.in_progress && self.delivery == Delivery::AtLeastOnce) {
            return process.await;
        }
        let half = self.config.ack_wait / 2;
        let progress = async {
            let mut tick = tokio::time::interval_at(Instant::now() + half, half);
            loop {
                tick.tick().await;
                match message.ack_with(AckKind::Progress).await {
                    Ok(()) => route.metrics.settled("in_progress"),
                    Err(e) => warn!(route = %route.name, error = %e, "in-progress signal failed"),
                }
            }
        };
        tokio::select! {
            processed = process => processed,
            never = progress => never,
        }
    }

    async fn settle(
        &self,
        message: &jetstream::Message,
        inbound: &Inbound,
        meta: &Meta,
        processed: Processed,
    ) {
        let route = &self.route;
        let last_delivery = meta.delivered >= u64::from(self.config.max_deliver);
        let result = match processed.disposition {
            Disposition::Answered => match self.reply(inbound, meta, &processed.reply).await {
                Ok(()) => self.ack(message, AckKind::Ack).await,
                Err(()) if last_delivery => {
                    self.give_up(message, inbound, meta, "publish_failed", &processed)
                        .await
                }
                Err(()) => self.nak(message, meta).await,
            },
            Disposition::Retry if !last_delivery => {
                debug!(route = %route.name, delivered = meta.delivered, status = processed.reply.status.as_u16(), "retryable failure; redelivering later");
                self.nak(message, meta).await
            }
            Disposition::Retry => {
                self.give_up(message, inbound, meta, "max_deliver", &processed)
                    .await
            }
            Disposition::Undeliverable => {
                let reason = processed.error.map_or("undeliverable", ErrorKind::as_str);
                self.give_up(message, inbound, meta, reason, &processed)
                    .await
            }
        };
        if let Err(e) = result {
            // The server redelivers after ack_wait: the message is not lost.
            warn!(route = %route.name, error = %e, "settlement failed; the message will be redelivered");
        }
    }

    /// Dead letter, error reply (best effort: the dead letter holds the request), term. If
    /// the dead letter cannot be published, nak: the message comes again (the consumer
    /// redelivers without limit; ricochet counts deliveries itself).
    async fn give_up(
        &self,
        message: &jetstream::Message,
        inbound: &Inbound,
        meta: &Meta,
        reason: &str,
        processed: &Processed,
    ) -> Result<(), async_nats::Error> {
        if self
            .dead_letter(inbound, meta, reason, &processed.reply)
            .await
            .is_err()
        {
            return self.nak(message, meta).await;
        }
        if reason != "publish_failed" {
            let _ = self.reply(inbound, meta, &processed.reply).await;
        }
        self.ack(message, AckKind::Term).await
    }

    async fn finish_at_most_once(&self, inbound: &Inbound, meta: &Meta, processed: Processed) {
        if processed.disposition == Disposition::Undeliverable {
            let reason = processed.error.map_or("undeliverable", ErrorKind::as_str);
            let _ = self
                .dead_letter(inbound, meta, reason, &processed.reply)
                .await;
        }
        let _ = self.reply(inbound, meta, &processed.reply).await;
    }

    /// Publishes the reply, if the request has a destination. `Err` when it could not be.
    async fn reply(&self, inbound: &Inbound, meta: &Meta, reply: &Reply) -> Result<(), ()> {
        let route = &self.route;
        let Some(subject) = &inbound.reply else {
            debug!(route = %route.name, status = reply.status.as_u16(), "no reply destination; nothing to publish");
            route
                .metrics
                .outcome(crate::telemetry::metrics::Outcome::NoReply);
            return Ok(());
        };
        // Scoped by stream: equal message ids in two streams are different requests.
        let mut extra = vec![(
            "Nats-Msg-Id",
            format!("ricochet-reply:{}:{}", meta.stream, meta.idempotency_key),
        )];
        let correlation = &route.config.correlation_header;
        if let Some((_, id)) = inbound
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(correlation))
        {
            extra.push((correlation.as_str(), id.clone()));
        }
        match self
            .replier()
            .publish_confirmed(subject, reply, &extra)
            .await
        {
            Ok(()) => {
                route.metrics.replies_published.increment(1);
                route
                    .metrics
                    .outcome(crate::telemetry::metrics::Outcome::Replied);
                Ok(())
            }
            Err(e) => {
                warn!(route = %route.name, error = %e, "reply not published");
                route
                    .metrics
                    .outcome(crate::telemetry::metrics::Outcome::PublishFailed);
                Err(())
            }
        }
    }

    async fn dead_letter(
        &self,
        inbound: &Inbound,
        meta: &Meta,
        reason: &str,
        reply: &Reply,
    ) -> Result<(), ()> {
        let route = &self.route;
        let Some(subject) = &route.config.dead_letter else {
            error!(route = %route.name, reason, stream = %meta.stream, sequence = meta.sequence, "undeliverable message terminated; no dead_letter subject is configured");
            return Ok(());
        };
        let letter = DeadLetter {
            route: &route.name,
            reason,
            last_status: reply.status.as_u16(),
            delivered: meta.delivered,
            stream: &meta.stream,
            subject: &inbound.subject,
            sequence: meta.sequence,
        };
        let headers = letter.headers(&inbound.headers);
        match self
            .replier()
            .publish_raw_confirmed(subject, headers, inbound.payload.clone())
            .await
        {
            Ok(()) => {
                warn!(route = %route.name, reason, %subject, stream = %meta.stream, sequence = meta.sequence, "message dead-lettered");
                route.metrics.dead_letters.increment(1);
                Ok(())
            }
            Err(e) => {
                warn!(route = %route.name, error = %e, "dead letter not published; the message will be redelivered");
                Err(())
            }
        }
    }

    async fn nak(
        &self,
        message: &jetstream::Message,
        meta: &Meta,
    ) -> Result<(), async_nats::Error> {
        let delays = &self.config.redelivery_backoff;
        let index = usize::try_from(meta.delivered.saturating_sub(1)).unwrap_or(usize::MAX);
        let delay = delays.get(index).or(delays.last()).copied();
        message.ack_with(AckKind::Nak(delay)).await?;
        self.route.metrics.settled("nak");
        Ok(())
    }

    async fn ack(
        &self,
        message: &jetstream::Message,
        kind: AckKind,
    ) -> Result<(), async_nats::Error> {
        let action = if matches!(kind, AckKind::Term) {
            "term"
        } else {
            "ack"
        };
        // Double ack: the server confirms it, so an ack lost on the way is noticed.
        message.double_ack_with(kind).await?;
        self.route.metrics.settled(action);
        Ok(())
    }

    fn inbound(&self, message: &jetstream::Message, meta: &Meta) -> Inbound {
        let mut headers = super::nats::headers(message.headers.as_ref());
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let reply = header(&self.route.config.reply_to_header)
            .or_else(|| self.route.config.reply_subject.clone());
        if header(crate::invoke::retry::IDEMPOTENCY_KEY).is_none() {
            headers.push(("Idempotency-Key".to_string(), meta.idempotency_key.clone()));
        }
        Inbound {
            subject: message.subject.to_string(),
            reply,
            headers,
            payload: message.payload.clone(),
            received: std::time::Instant::now(),
        }
    }
}

/// Why a consumer could not be bound.
#[derive(Debug, thiserror::Error)]
enum BindError {
    /// The server or the existing consumer cannot give the route what it needs.
    #[error(transparent)]
    Refused(#[from] consumer::Refusal),
    /// The stream, the server or the connection failed; may pass.
    #[error("{0}")]
    Failed(String),
}

/// What the ack subject and headers say about one delivery.
struct Meta {
    stream: String,
    sequence: u64,
    delivered: u64,
    /// Stable across redeliveries: the request's `Nats-Msg-Id`, else `stream:sequence`.
    idempotency_key: String,
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
            delivered: u64::try_from(info.delivered).unwrap_or(1),
            idempotency_key: msg_id
                .unwrap_or_else(|| format!("{}:{}", info.stream, info.stream_sequence)),
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
