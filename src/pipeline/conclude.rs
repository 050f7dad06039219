//! Conclude: the last step of the flow. The settlement policy (`policy`) decides what
//! becomes of a processed message; this carries it out through the source's [`Settle`]
//! handle (reply, dead letter, ack, redelivery, termination) and records it once, in
//! metrics, STATS and the message's span.

use std::future::Future;
use std::time::Duration;

use tracing::{debug, error, warn};

use super::policy::{Action, Reason};
use super::{Pipeline, Processed, Route, Settled};
use crate::message::reply::ATTEMPTS_HEADER;
use crate::message::{
    Confirmed, DeadLetter, DeadLettered, ErrorKind, Inbound, Redelivered, Reply, Settle,
    SettleError, Undelivered,
};
use crate::telemetry::metrics::{Outcome, Settlement};
use crate::telemetry::stats::RequestStats;
use crate::telemetry::trace::MessageTrace;

/// What a given-up message's dead letter and last reply say.
pub(super) struct Letter {
    pub reason: Reason,
    /// What exactly was wrong (the first violations), for the dead letter.
    pub detail: Option<String>,
    pub last_status: u16,
    /// The error reply for the caller; `None` when publishing the reply is what failed (or
    /// nobody waits for it).
    pub reply: Option<Reply>,
}

/// Where the message's reply goes, and why not when its broker cannot take the destination
/// it names (checked once: such a destination gets no reply).
pub(super) fn destination<'a, S: Settle>(
    inbound: &'a Inbound,
    settle: &S,
) -> (Option<&'a str>, Option<&'static str>) {
    let problem = (inbound.reply.as_deref()).and_then(|d| settle.destination_problem(d));
    (
        inbound.reply.as_deref().filter(|_| problem.is_none()),
        problem,
    )
}

impl Pipeline {
    /// What the policy makes of a processed message: the reply, the dead letter, the
    /// settlement; recorded in metrics, STATS and the message's span.
    pub(super) async fn conclude<S: Settle>(
        &self,
        route: &Route,
        inbound: &Inbound,
        destination: Option<&str>,
        processed: Processed,
        settle: &S,
        trace: MessageTrace<'_>,
    ) -> Settled {
        let policy = &route.policy;
        let failed = RequestStats::error_of(&processed.reply);
        let error = processed.error.map(ErrorKind::as_str);
        let action = policy.decide(&processed, inbound.delivered);
        let mut outcome = match action {
            Action::Answer => "answered",
            Action::Redeliver(_) => "redelivered",
            Action::GiveUp(_) => "given_up",
            Action::Expire => "expired",
        };
        let t = &trace;
        let settled = match action {
            Action::Answer => {
                let last_status = processed.reply.status.as_u16();
                let reply = processed.reply;
                match (self.reply(route, inbound, destination, reply, settle, t)).await {
                    Ok(()) => self.ack(route, settle, t).await,
                    Err(Undelivered::Lost) => Settled::Abandoned,
                    Err(_) => match policy.reply_failed(inbound.delivered) {
                        Action::GiveUp(reason) => {
                            let letter = Letter {
                                reason,
                                detail: None,
                                last_status,
                                reply: None,
                            };
                            outcome = "given_up";
                            let give_up =
                                self.give_up(route, inbound, destination, letter, settle, t);
                            Box::pin(give_up).await
                        }
                        Action::Redeliver(delay) => {
                            outcome = "redelivered";
                            self.redeliver(route, delay, settle, t).await
                        }
                        Action::Answer | Action::Expire => Settled::Done,
                    },
                }
            }
            Action::Redeliver(delay) => {
                debug!(route = %route.name, delivered = inbound.delivered, status = processed.reply.status.as_u16(), ?delay, "retryable failure; redelivering later");
                self.redeliver(route, delay, settle, t).await
            }
            Action::Expire => {
                // Boxed: the rare path should not enlarge every message's future.
                Box::pin(self.expire(route, inbound, destination, processed, settle, t)).await
            }
            Action::GiveUp(reason) => {
                let letter = Letter {
                    reason,
                    detail: processed.detail,
                    last_status: processed.reply.status.as_u16(),
                    reply: Some(processed.reply),
                };
                // Boxed: the rare path should not enlarge every message's future.
                Box::pin(self.give_up(route, inbound, destination, letter, settle, t)).await
            }
        };
        if settled == Settled::Done {
            let elapsed = inbound.received.elapsed();
            route.metrics.message_duration.record(elapsed);
            route.stats.record(elapsed, failed);
        }
        if settled == Settled::Abandoned {
            outcome = "abandoned";
        }
        trace.finish(outcome, error);
        settled
    }

    /// Publishes the reply to `destination`, if there is one: the correlation id echoed, a
    /// reply over the broker's size limit replaced by a 502.
    pub(super) async fn reply<S: Settle>(
        &self,
        route: &Route,
        inbound: &Inbound,
        destination: Option<&str>,
        mut reply: Reply,
        settle: &S,
        trace: &MessageTrace<'_>,
    ) -> Result<(), Undelivered> {
        let Some(destination) = destination else {
            debug!(route = %route.name, status = reply.status.as_u16(), "message without reply subject or destination delivered; nothing to publish");
            route.metrics.outcome(Outcome::NoReply);
            return Ok(());
        };
        if let Some(id) = &inbound.correlation {
            // The request's id, whatever the service answered under that name.
            let name = &route.config.correlation_header;
            reply.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            reply = reply.with_header(name.clone(), id.clone());
        }
        if let Some((size, limit, what)) = settle.too_large(destination, &reply) {
            reply = too_large(route, &reply, size, limit, what);
        }
        let mut span = trace.send(destination);
        span.inject_reply(&mut reply);
        let result = settle.reply(destination, &reply).await;
        if result.is_err() {
            span.failed("publish_failed");
        }
        span.end();
        match &result {
            Ok(confirmed) => {
                if *confirmed == Confirmed::Now {
                    route.metrics.replies_published.increment(1);
                }
                route.metrics.outcome(Outcome::Replied);
            }
            Err(Undelivered::Lost) => {}
            Err(e) => {
                warn!(route = %route.name, error = %e, "reply not published");
                route.metrics.outcome(Outcome::PublishFailed);
            }
        }
        // A reply no retry can publish is lost to the caller, but the message is finished.
        match result {
            Ok(_) | Err(Undelivered::Dropped(_)) => Ok(()),
            Err(other) => Err(other),
        }
    }

    /// Dead letter, error reply (best effort: the dead letter holds the request; none when
    /// the reply is what failed), terminate. A dead letter that could not be published makes
    /// the message come again instead.
    pub(super) async fn give_up<S: Settle>(
        &self,
        route: &Route,
        inbound: &Inbound,
        destination: Option<&str>,
        given_up: Letter,
        settle: &S,
        trace: &MessageTrace<'_>,
    ) -> Settled {
        let policy = &route.policy;
        let reason_text = given_up.reason.as_str(policy);
        let letter = DeadLetter {
            route: &route.name,
            reason: reason_text,
            detail: given_up.detail.as_deref(),
            last_status: given_up.last_status,
            delivered: inbound.delivered,
            inbound,
        };
        match settle.dead_letter(&letter).await {
            Ok(DeadLettered::Published(confirmed)) => {
                warn!(route = %route.name, reason = reason_text, subject = %inbound.subject, "message dead-lettered");
                if confirmed == Confirmed::Now {
                    route.metrics.dead_letters.increment(1);
                }
            }
            Ok(DeadLettered::NoDestination) if route.durable => {
                error!(route = %route.name, reason = reason_text, subject = %inbound.subject, "undeliverable message given up; the route has no dead-letter destination");
            }
            Ok(DeadLettered::NoDestination) => {}
            Err(Undelivered::Lost) => return Settled::Abandoned,
            Err(Undelivered::Dropped(e)) => {
                error!(route = %route.name, reason = reason_text, error = %e, "the dead letter can never be published; dropped");
            }
            Err(e) if policy.at_most_once => {
                warn!(route = %route.name, error = %e, "dead letter not published (at-most-once: the message does not come again)");
            }
            Err(e) => {
                warn!(route = %route.name, error = %e, "dead letter not published; the message will come again");
                let delay = policy.dead_letter_failed(inbound.delivered);
                return self.redeliver(route, delay, settle, trace).await;
            }
        }
        if let Some(reply) = given_up.reply {
            let replied = (self.reply(route, inbound, destination, reply, settle, trace)).await;
            if let Err(Undelivered::Lost) = replied {
                return Settled::Abandoned;
            }
        }
        if policy.at_most_once {
            return Settled::Done;
        }
        let terminated = settle.terminate();
        let what = "term failed; the message will come again";
        if let Some(Confirmed::Now) = settled(route, trace, "term", what, terminated).await {
            route.metrics.settled(Settlement::Term);
        }
        Settled::Done
    }

    pub(super) async fn ack<S: Settle>(
        &self,
        route: &Route,
        settle: &S,
        trace: &MessageTrace<'_>,
    ) -> Settled {
        if route.policy.at_most_once {
            // Settled on receipt, or nothing to settle (request-reply without a stream).
            return Settled::Done;
        }
        let what = "ack failed; the message will come again";
        if let Some(Confirmed::Now) = settled(route, trace, "ack", what, settle.ack()).await {
            route.metrics.settled(Settlement::Ack);
        }
        Settled::Done
    }

    pub(super) async fn redeliver<S: Settle>(
        &self,
        route: &Route,
        delay: Duration,
        settle: &S,
        trace: &MessageTrace<'_>,
    ) -> Settled {
        let what =
            "redelivery not confirmed; the broker still holds the message and delivers it again";
        let redelivered = settled(route, trace, "nak", what, settle.redeliver(delay)).await;
        if redelivered.is_some() {
            route.metrics.settled(Settlement::Nak);
        }
        // Not confirmed: the broker redelivers it after its own deadline.
        Settled::Redeliver(redelivered.unwrap_or(Redelivered::ByBroker))
    }
}

/// One settlement at the broker, in its span: `None` (logged with `failed`, the span marked)
/// when the broker did not confirm it. Whatever failed, the broker still holds the message.
async fn settled<T>(
    route: &Route,
    trace: &MessageTrace<'_>,
    action: &'static str,
    failed: &'static str,
    settling: impl Future<Output = Result<T, SettleError>>,
) -> Option<T> {
    let mut span = trace.settle(action);
    match settling.await {
        Ok(done) => Some(done),
        Err(e) => {
            span.failed("settle_failed");
            warn!(route = %route.name, error = %e, "{failed}");
            None
        }
    }
}

/// The one oversize rule: a reply larger than the broker takes becomes a 502 saying why, so
/// the caller learns it instead of waiting; it keeps `Ricochet-Attempts` and the correlation
/// id, and counts as the reply.
pub(super) fn too_large(
    route: &Route,
    reply: &Reply,
    size: usize,
    limit: usize,
    what: &str,
) -> Reply {
    let detail =
        format!("the service's response ({size} bytes) is larger than {what} ({limit} bytes)");
    warn!(route = %route.name, "{detail}; a 502 error reply is sent instead");
    route.metrics.error(ErrorKind::UpstreamUnavailable);
    let mut fallback = Reply::error(ErrorKind::UpstreamUnavailable, &detail);
    for name in [ATTEMPTS_HEADER, route.config.correlation_header.as_str()] {
        if let Some(value) = reply.headers.get(name) {
            // Bytes: a correlation id may be any bytes, echoed as the request had it.
            fallback = fallback.with_header(name.to_string(), value.to_vec());
        }
    }
    fallback
}
