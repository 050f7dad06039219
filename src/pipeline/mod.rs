//! One message through the whole flow, for every source:
//!
//! ```text
//! route -> validate -> map to HTTP -> invoke -> map to reply -> policy -> publish -> settle
//! ```
//!
//! [`Pipeline::deliver`] is the one path: the source hands it a message (already routed:
//! the captures of its route's pattern) and a [`Settle`] handle; the pipeline validates
//! (`validate`), calls the service ([`Pipeline::process`]), asks the settlement policy
//! (`policy`) what becomes of the message, publishes the reply or dead letter through the
//! handle and settles it. Metrics of those steps are recorded here, once.
//! The source decides concurrency (a permit of the route's `max_in_flight` per message).

pub mod policy;
pub mod validate;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::HeaderValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::Instant;
use tracing::{debug, error, warn};

pub use self::policy::Policy;
use self::policy::{Action, Reason};
use crate::config::RouteConfig;
use crate::invoke::{Class, Failure, InvokeError, RouteInvoker, Upstream};
use crate::mapping::reply::{ATTEMPTS_HEADER, TIMEOUT_HEADER};
use crate::mapping::{ErrorKind, HeaderFilter, Reply, RequestMapping};
use crate::reply::DeadLetter;
use crate::route::{Captures, Pattern};
use crate::settings::Settings;
use crate::source::{Inbound, Settle, SourceConfig, Undelivered};
use crate::telemetry::discovery::RequestStats;
use crate::telemetry::metrics::ValidationFailure;
use crate::telemetry::metrics::{Outcome, RouteMetrics, Settlement};
use crate::telemetry::trace::{MessageTrace, RouteSpans, Tracing};
use crate::validate::registry::Registry;
use crate::validate::{Invalid, Passed, Rules, AVRO};

/// A configured route, ready to serve.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub pattern: Pattern,
    /// The route as configured.
    pub config: RouteConfig,
    /// Its source's settings.
    pub source: SourceConfig,
    request: RequestMapping,
    response_headers: HeaderFilter,
    /// Limit, breaker and retries around the HTTP call.
    pub invoker: RouteInvoker,
    /// The message's deadline, measured from its receipt.
    total_timeout: Duration,
    /// Permits for `max_in_flight`; the source holds one per message being processed.
    pub limit: Arc<Semaphore>,
    /// Core NATS: messages taken while the route was full, waiting for a permit.
    queue: Queue,
    pub metrics: RouteMetrics,
    pub max_payload: usize,
    /// What becomes of a message once processed: the same rules for every source.
    pub policy: Policy,
    /// The route's `validate` rules, if it has any.
    validation: Option<Rules>,
    /// What the NATS micro services API's STATS reports of this route.
    pub stats: RequestStats,
    /// What the route's spans say of it.
    pub spans: RouteSpans,
}

/// The line of messages waiting for a slot of a full route, at most `max` long (core NATS:
/// `max_pending`; the durable sources leave such messages in the broker).
#[derive(Debug)]
pub struct Queue {
    waiting: AtomicUsize,
    max: usize,
}

impl Queue {
    fn new(max: usize) -> Self {
        Self {
            waiting: AtomicUsize::new(0),
            max,
        }
    }

    /// Takes a place in the line; false when it is full.
    fn join(&self) -> bool {
        (self.waiting)
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    fn leave(&self) {
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What [`Route::admit`] gives a message that must not hold its intake up.
pub enum Admission {
    /// A slot, free at once.
    Now(OwnedSemaphorePermit),
    /// A place in the route's waiting line: [`InLine::slot`] waits for a slot.
    Queued(InLine),
    /// No slot and the line is full (or the route closed): the message is refused.
    Full,
}

/// A place in a full route's waiting line, given back when it is dropped: once its message
/// has a slot, or if that message is abandoned on the way.
pub struct InLine(Arc<Route>);

impl InLine {
    /// Waits for a slot; `None` once the route is closed.
    pub async fn slot(self) -> Option<OwnedSemaphorePermit> {
        self.0.limit.clone().acquire_owned().await.ok()
    }
}

impl Drop for InLine {
    fn drop(&mut self) {
        self.0.queue.leave();
    }
}

/// How one delivery ended, for the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Answered or given up, and settled: the message is finished.
    Done,
    /// It comes again after the delay (JetStream has nak'd it; Kafka waits and runs it
    /// again).
    Redeliver(Duration),
    /// It is no longer this replica's: nothing was settled.
    Abandoned,
}

impl Route {
    /// A slot of the route's `max_in_flight`: at once when one is free, else counted as
    /// throttled and waited for. `None` once the route is closed.
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        match self.limit.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(TryAcquireError::Closed) => None,
            Err(TryAcquireError::NoPermits) => {
                self.metrics.throttled.increment(1);
                self.limit.clone().acquire_owned().await.ok()
            }
        }
    }

    /// For an intake that must not wait (core NATS): a slot at once, else a place in the
    /// waiting line of `max_pending` (counted as throttled), else refused.
    pub fn admit(self: &Arc<Self>) -> Admission {
        match self.limit.clone().try_acquire_owned() {
            Ok(permit) => Admission::Now(permit),
            Err(TryAcquireError::NoPermits) if self.queue.join() => {
                self.metrics.throttled.increment(1);
                Admission::Queued(InLine(self.clone()))
            }
            Err(_) => Admission::Full,
        }
    }

    /// Whether the service's 2xx answers are checked or encoded before they become replies.
    fn checks_responses(&self) -> bool {
        (self.validation.as_ref()).is_some_and(Rules::has_response_rules)
    }
}

/// What a given-up message's dead letter and last reply say.
struct Letter {
    reason: Reason,
    /// What exactly was wrong (the first violations), for the dead letter.
    detail: Option<String>,
    last_status: u16,
    /// The error reply for the caller; `None` when publishing the reply is what failed.
    reply: Option<Reply>,
}

/// What should become of a request message once its reply is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The service gave its final answer (any status): reply, then settle as done.
    Answered,
    /// A retryable failure outlasted local retries: a durable source redelivers later.
    Retry,
    /// The message can never be delivered (cannot be mapped, too large): dead letter.
    Undeliverable,
}

/// The result of processing one message.
#[derive(Debug)]
pub struct Processed {
    pub reply: Reply,
    pub disposition: Disposition,
    /// Set when the reply is an error of ricochet's own.
    pub error: Option<ErrorKind>,
    /// A refusal's detail for its dead letter (the first violations).
    pub detail: Option<String>,
}

pub struct Pipeline {
    routes: Vec<Arc<Route>>,
    upstream: Upstream,
    tracing: Tracing,
}

/// Where the message's reply goes, and why not when its broker cannot take the destination
/// it names (checked once: such a destination gets no reply).
fn destination<'a, S: Settle>(
    inbound: &'a Inbound,
    settle: &S,
) -> (Option<&'a str>, Option<&'static str>) {
    let problem = (inbound.reply.as_deref()).and_then(|d| settle.destination_problem(d));
    (
        inbound.reply.as_deref().filter(|_| problem.is_none()),
        problem,
    )
}

/// A validation failure as the pipeline answers it: a registry that cannot be asked is
/// retryable (503, the message comes again); anything else is the message's own fault
/// (400, dead letter with reason `validation`), or the service's for a response (502).
fn invalid_kind(invalid: &Invalid, response: bool) -> (ErrorKind, Disposition) {
    match (invalid.kind, response) {
        (ValidationFailure::RegistryUnavailable, _) => {
            (ErrorKind::RegistryUnavailable, Disposition::Retry)
        }
        (_, false) => (ErrorKind::Validation, Disposition::Undeliverable),
        (_, true) => (ErrorKind::InvalidResponse, Disposition::Undeliverable),
    }
}

impl Pipeline {
    /// Built from a validated configuration.
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let config = &settings.config;
        let mut routes = Vec::with_capacity(config.routes.len());
        // One registry (and its cache) for every route.
        let registry = (config.schema_registry.as_ref()).map(|r| Arc::new(Registry::new(r)));
        let parts = settings.sources.iter().zip(&settings.schemas);
        for (route, (source, schemas)) in config.routes.iter().zip(parts) {
            let durable = source.kind().is_durable();
            let pattern = Pattern::parse(&route.subject)?;
            let request = RequestMapping::new(route, &config.upstream, &pattern)
                .map_err(|e| anyhow::anyhow!("route {}: {e}", route.name))?;
            routes.push(Arc::new(Route {
                name: route.name.clone(),
                config: route.clone(),
                source: source.clone(),
                request,
                response_headers: HeaderFilter::from_config(&route.response_headers),
                invoker: RouteInvoker::new(route, &config.upstream, durable),
                total_timeout: route.total_timeout_or(&config.upstream),
                max_payload: usize::try_from(route.max_payload.bytes()).unwrap_or(usize::MAX),
                limit: Arc::new(Semaphore::new(route.max_in_flight)),
                queue: Queue::new(match source {
                    SourceConfig::Nats(nats) => nats.max_pending(route),
                    _ => 0,
                }),
                metrics: RouteMetrics::new(&route.name, source.kind().as_str()),
                policy: crate::source::policy(source),
                validation: Rules::new(route, schemas, registry.as_ref()),
                stats: RequestStats::default(),
                spans: RouteSpans::new(route, source, &config.nats.queue_group),
                pattern,
            }));
        }
        Ok(Self {
            routes,
            upstream: Upstream::new(&config.upstream)?,
            tracing: Tracing::new(&config.tracing)?,
        })
    }

    /// Exports the spans not yet exported; at shutdown.
    pub fn shutdown(&self) {
        self.tracing.shutdown();
    }

    /// Every route, in file order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// One message through the whole flow: validate, call the service, then reply, dead-letter
    /// and settle as the route's policy decides, through the source's `settle` handle.
    /// `captures` are those of the route's pattern, `None` when the subject does not match.
    pub async fn deliver<S: Settle>(
        &self,
        route: &Route,
        captures: Option<Captures>,
        inbound: &Inbound,
        settle: &S,
    ) -> Settled {
        if inbound.delivered > 1 {
            route.metrics.redeliveries.increment(1);
        }
        let trace = self.tracing.start(&route.spans, inbound);
        // A destination the broker cannot take: `validate` refuses the message.
        let (destination, problem) = destination(inbound, settle);
        let processed = match validate::check(route, inbound, captures.is_some(), problem) {
            Err((kind, detail)) => self.refuse(route, kind, &detail),
            Ok(()) => {
                let captures = captures.unwrap_or_default();
                match &route.validation {
                    None => self.process(route, &captures, inbound, &trace).await,
                    // Boxed: routes without validation keep the smaller future.
                    Some(rules) => {
                        let validated = self.validated(route, rules, &captures, inbound, &trace);
                        Box::pin(validated).await
                    }
                }
            }
        };
        self.conclude(route, inbound, destination, processed, settle, trace)
            .await
    }

    /// A message the source cannot take now (core NATS: its route is full and `max_pending`
    /// messages already wait): answered 503 `overloaded` at once, the service not called.
    pub async fn shed<S: Settle>(&self, route: &Route, inbound: &Inbound, settle: &S) -> Settled {
        let trace = self.tracing.start(&route.spans, inbound);
        let (destination, _) = destination(inbound, settle);
        let detail = "the route is at max_in_flight with max_pending messages waiting";
        let processed = self.refuse(route, ErrorKind::Overloaded, detail);
        self.conclude(route, inbound, destination, processed, settle, trace)
            .await
    }

    /// What the policy makes of a processed message: the reply, the dead letter, the
    /// settlement; recorded in metrics, STATS and the message's span.
    async fn conclude<S: Settle>(
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
                        Action::Answer => Settled::Done,
                    },
                }
            }
            Action::Redeliver(delay) => {
                debug!(route = %route.name, delivered = inbound.delivered, status = processed.reply.status.as_u16(), ?delay, "retryable failure; redelivering later");
                self.redeliver(route, delay, settle, t).await
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
    async fn reply<S: Settle>(
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
            Ok(()) => {
                route.metrics.replies_published.increment(1);
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
            Err(Undelivered::Dropped(_)) => Ok(()),
            other => other,
        }
    }

    /// Dead letter, error reply (best effort: the dead letter holds the request; none when
    /// the reply is what failed), terminate. A dead letter that could not be published makes
    /// the message come again instead.
    async fn give_up<S: Settle>(
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
            Ok(true) => {
                warn!(route = %route.name, reason = reason_text, subject = %inbound.subject, "message dead-lettered");
                route.metrics.dead_letters.increment(1);
            }
            Ok(false) if route.source.kind().is_durable() => {
                error!(route = %route.name, reason = reason_text, subject = %inbound.subject, "undeliverable message given up; the route has no dead-letter destination");
            }
            Ok(false) => {}
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
        let mut span = trace.settle("term");
        match settle.terminate().await {
            Ok(()) => route.metrics.settled(Settlement::Term),
            Err(e) => {
                span.failed("settle_failed");
                warn!(route = %route.name, error = %e, "term failed; the message will come again")
            }
        }
        Settled::Done
    }

    async fn ack<S: Settle>(&self, route: &Route, settle: &S, trace: &MessageTrace<'_>) -> Settled {
        if route.policy.at_most_once {
            // Settled on receipt, or nothing to settle (core NATS).
            return Settled::Done;
        }
        let mut span = trace.settle("ack");
        match settle.ack().await {
            Ok(()) => route.metrics.settled(Settlement::Ack),
            // The broker redelivers it: the message is not lost.
            Err(e) => {
                span.failed("settle_failed");
                warn!(route = %route.name, error = %e, "ack failed; the message will come again")
            }
        }
        Settled::Done
    }

    async fn redeliver<S: Settle>(
        &self,
        route: &Route,
        delay: Duration,
        settle: &S,
        trace: &MessageTrace<'_>,
    ) -> Settled {
        let mut span = trace.settle("nak");
        match settle.redeliver(delay).await {
            Ok(()) => route.metrics.settled(Settlement::Nak),
            Err(e) => {
                span.failed("settle_failed");
                warn!(route = %route.name, error = %e, "nak failed; the message will come again after its ack wait")
            }
        }
        Settled::Redeliver(delay)
    }

    /// The route's `validate` rules, then the call with the message as it passed (an Avro
    /// record decoded to JSON, if the route asks).
    async fn validated(
        &self,
        route: &Route,
        rules: &Rules,
        captures: &Captures,
        inbound: &Inbound,
        trace: &MessageTrace<'_>,
    ) -> Processed {
        match validate::body(route, rules, inbound).await {
            Err(invalid) => self.refuse_invalid(route, &invalid, None),
            Ok(Passed::AsIs) => self.process(route, captures, inbound, trace).await,
            Ok(Passed::Decoded(json)) => {
                let decoded = validate::decoded(inbound, json);
                self.process(route, captures, &decoded, trace).await
            }
        }
    }

    /// Takes one validated message from its deadline to its reply; publishes nothing.
    async fn process(
        &self,
        route: &Route,
        captures: &Captures,
        inbound: &Inbound,
        trace: &MessageTrace<'_>,
    ) -> Processed {
        let deadline = match self.deadline(route, inbound) {
            Ok(deadline) => deadline,
            Err(detail) => return self.refuse(route, ErrorKind::BadRequest, &detail),
        };
        let values = captures.values(&inbound.subject);
        let request = match route.request.build(inbound, &values) {
            Ok(request) => request,
            Err(e) => return self.refuse(route, ErrorKind::BadRequest, &e.to_string()),
        };
        let method = request.method().clone();
        let outcome = route
            .invoker
            .invoke(
                &self.upstream,
                request,
                deadline,
                &route.metrics,
                trace,
                &route.spans,
            )
            .await;
        let attempts = outcome.attempts;
        let disposition = match (outcome.class, &outcome.result) {
            (Class::Success, _) => Disposition::Answered,
            (Class::Retryable, _) => Disposition::Retry,
            // The service's final answer.
            (Class::Permanent, Ok(_)) => Disposition::Answered,
            // A body too large for the contract: no redelivery changes that.
            (Class::Permanent, Err(Failure::Upstream(InvokeError::ResponseTooLarge(_)))) => {
                Disposition::Undeliverable
            }
            // The service is unreachable or slow even if the route does not retry that
            // locally: a durable source redelivers later rather than dead-lettering.
            (Class::Permanent, Err(_)) => Disposition::Retry,
        };
        let error = outcome.result.as_ref().err().map(Failure::kind);
        let reply = match outcome.result {
            Ok(mut response) if response.status.is_success() && route.checks_responses() => {
                let rules = route.validation.as_ref().expect("checks_responses");
                // Boxed: routes without response rules keep the smaller future.
                match Box::pin(rules.response(&response.body)).await {
                    Ok(None) => {}
                    Ok(Some(encoded)) => {
                        response.body = encoded;
                        (response.headers).insert(CONTENT_TYPE, HeaderValue::from_static(AVRO));
                    }
                    Err(invalid) => {
                        warn!(route = %route.name, %method, kind = invalid.kind.as_str(), detail = %invalid.detail, "the service's response does not pass the route's response rules");
                        return self.refuse_invalid(route, &invalid, Some(attempts));
                    }
                }
                Reply::from_response(
                    response.status,
                    &response.headers,
                    response.body,
                    &route.response_headers,
                )
            }
            Ok(response) => {
                if !response.status.is_success() {
                    debug!(route = %route.name, %method, status = response.status.as_u16(), attempts, "service answered with an error status");
                }
                Reply::from_response(
                    response.status,
                    &response.headers,
                    response.body,
                    &route.response_headers,
                )
            }
            Err(Failure::CircuitOpen { retry_in }) => {
                route.metrics.error(ErrorKind::CircuitOpen);
                // Whole seconds, rounded up, as Retry-After wants.
                let seconds = retry_in.as_secs() + u64::from(retry_in.subsec_nanos() > 0);
                Reply::error(ErrorKind::CircuitOpen, "circuit open")
                    .with_header("Retry-After", seconds.to_string())
            }
            Err(failure) => {
                if let Failure::Upstream(e) = &failure {
                    warn!(route = %route.name, %method, error = %e, attempts, "HTTP call failed");
                }
                route.metrics.error(failure.kind());
                Reply::error(failure.kind(), &failure.to_string())
            }
        };
        Processed {
            reply: reply.with_header(ATTEMPTS_HEADER, attempts.to_string()),
            disposition,
            error,
            detail: None,
        }
    }

    /// The route's total timeout from receipt, shortened by a `Ricochet-Timeout` header.
    fn deadline(&self, route: &Route, inbound: &Inbound) -> Result<Instant, String> {
        let mut budget = route.total_timeout;
        if let Some(value) = inbound.header(TIMEOUT_HEADER) {
            let asked = parse_timeout(value).ok_or_else(|| {
                format!("{TIMEOUT_HEADER} {value:?} is not a duration like \"1500ms\" or \"2s\"")
            })?;
            budget = budget.min(asked);
        }
        Ok(Instant::from_std(inbound.received) + budget)
    }

    /// A message ricochet answers itself without calling the service.
    fn refuse(&self, route: &Route, kind: ErrorKind, detail: &str) -> Processed {
        debug!(route = %route.name, kind = kind.as_str(), detail, "message refused");
        route.metrics.error(kind);
        Processed {
            reply: Reply::error(kind, detail).with_header(ATTEMPTS_HEADER, "0"),
            disposition: Disposition::Undeliverable,
            error: Some(kind),
            detail: Some(detail.to_string()),
        }
    }

    /// A request that did not pass the route's validation, or a response (after `attempts`
    /// HTTP attempts): the error reply lists the violations, the dead letter their summary;
    /// counted by kind.
    fn refuse_invalid(&self, route: &Route, invalid: &Invalid, attempts: Option<u32>) -> Processed {
        let (kind, disposition) = invalid_kind(invalid, attempts.is_some());
        debug!(route = %route.name, kind = invalid.kind.as_str(), detail = %invalid.detail, "validation failed");
        route.metrics.validation_failed(invalid.kind);
        route.metrics.error(kind);
        let reply = match invalid.violations.is_empty() {
            true => Reply::error(kind, &invalid.detail),
            false => Reply::invalid(kind, &invalid.detail, &invalid.violations),
        };
        let attempts = attempts.unwrap_or(0).to_string();
        Processed {
            reply: reply.with_header(ATTEMPTS_HEADER, attempts),
            disposition,
            error: Some(kind),
            detail: Some(invalid.summary()),
        }
    }
}

/// The one oversize rule: a reply larger than the broker takes becomes a 502 saying why, so
/// the caller learns it instead of waiting; it keeps `Ricochet-Attempts` and the correlation
/// id, and counts as the reply.
fn too_large(route: &Route, reply: &Reply, size: usize, limit: usize, what: &str) -> Reply {
    let detail =
        format!("the service's response ({size} bytes) is larger than {what} ({limit} bytes)");
    warn!(route = %route.name, "{detail}; a 502 error reply is sent instead");
    route.metrics.error(ErrorKind::UpstreamUnavailable);
    let mut fallback = Reply::error(ErrorKind::UpstreamUnavailable, &detail);
    for name in [ATTEMPTS_HEADER, route.config.correlation_header.as_str()] {
        if let Some(value) = reply.headers.get(name) {
            // Bytes: a Kafka correlation id is echoed as the request had it.
            fallback = fallback.with_header(name.to_string(), value.to_vec());
        }
    }
    fallback
}

/// `Ricochet-Timeout`: a duration ("1500ms", "2s") or a plain number of milliseconds.
fn parse_timeout(value: &str) -> Option<Duration> {
    let value = value.trim();
    value
        .parse::<u64>()
        .map(Duration::from_millis)
        .ok()
        .or_else(|| humantime::parse_duration(value).ok())
}

#[cfg(test)]
mod tests;
