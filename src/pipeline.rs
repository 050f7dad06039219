//! One message through the whole flow:
//!
//! ```text
//! check size -> deadline -> map to HTTP -> invoke -> map to reply   (process)
//!                                                   -> publish -> settle   (the source)
//! ```
//!
//! [`Pipeline::process`] decides what the reply is and what should become of the request
//! message ([`Disposition`]); sources publish and settle in their own way. Core NATS has
//! nothing to settle, so [`Pipeline::handle`] does all of it for that source.
//! The source decides concurrency (a permit of the route's `max_in_flight` per message).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::{Config, RouteConfig, SourceKind};
use crate::invoke::{Class, Failure, InvokeError, RouteInvoker, Upstream};
use crate::mapping::reply::{ATTEMPTS_HEADER, TIMEOUT_HEADER};
use crate::mapping::{ErrorKind, HeaderFilter, Reply, RequestMapping};
use crate::reply::NatsReplier;
use crate::route::{Captures, Pattern, RouteTable};
use crate::source::Inbound;
use crate::telemetry::metrics::{Outcome, RouteMetrics};

/// A configured route, ready to serve.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub pattern: Pattern,
    pub queue_group: String,
    /// The route as configured, for source-specific settings.
    pub config: RouteConfig,
    request: RequestMapping,
    response_headers: HeaderFilter,
    /// Limit, breaker and retries around the HTTP call.
    pub invoker: RouteInvoker,
    /// The message's deadline, measured from its receipt.
    total_timeout: Duration,
    max_payload: usize,
    /// Permits for `max_in_flight`; the source holds one per message being processed.
    pub limit: Arc<Semaphore>,
    pub metrics: RouteMetrics,
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
}

pub struct Pipeline {
    routes: Vec<Arc<Route>>,
    /// Core NATS routes, in file order: the first match wins.
    core: RouteTable<Route>,
    upstream: Upstream,
    /// `None` when no route uses NATS (Kafka only): ricochet then needs no NATS server.
    replier: Option<NatsReplier>,
}

impl Pipeline {
    /// Built from a validated configuration.
    pub fn new(config: &Config, replier: Option<NatsReplier>) -> anyhow::Result<Self> {
        let mut routes = Vec::with_capacity(config.routes.len());
        let mut core = Vec::new();
        for route in &config.routes {
            let pattern = Pattern::parse(&route.subject)?;
            let request = RequestMapping::new(route, &config.upstream, &pattern)
                .map_err(|e| anyhow::anyhow!("route {}: {e}", route.name))?;
            let source = match route.source {
                SourceKind::Nats => "nats",
                SourceKind::Jetstream => "jetstream",
                SourceKind::Kafka => "kafka",
            };
            let runtime = Arc::new(Route {
                name: route.name.clone(),
                queue_group: route
                    .queue_group
                    .clone()
                    .unwrap_or_else(|| config.nats.queue_group.clone()),
                config: route.clone(),
                request,
                response_headers: HeaderFilter::from_config(&route.response_headers),
                invoker: RouteInvoker::new(route, &config.upstream),
                total_timeout: route.total_timeout_or(&config.upstream),
                max_payload: usize::try_from(route.max_payload.bytes()).unwrap_or(usize::MAX),
                limit: Arc::new(Semaphore::new(route.max_in_flight)),
                metrics: RouteMetrics::new(&route.name, source),
                pattern: pattern.clone(),
            });
            if route.source == SourceKind::Nats {
                core.push((pattern, runtime.clone()));
            }
            routes.push(runtime);
        }
        Ok(Self {
            routes,
            core: RouteTable::new(core),
            upstream: Upstream::new(&config.upstream),
            replier,
        })
    }

    /// Every route, in file order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The NATS publisher; present whenever a NATS or JetStream route exists.
    pub fn replier(&self) -> Option<&NatsReplier> {
        self.replier.as_ref()
    }

    /// The core NATS routes.
    pub fn core_routes(&self) -> &RouteTable<Route> {
        &self.core
    }

    /// Core NATS: processes one routed message and publishes its reply, if it has a reply
    /// subject.
    pub async fn handle(&self, route: &Route, captures: Captures, inbound: Inbound) {
        route.metrics.received.increment(1);
        let processed = self.process(route, &captures, &inbound).await;
        let reply = processed.reply;
        let outcome = match &inbound.reply {
            Some(subject) => match self.publish(subject, &reply).await {
                Ok(()) => {
                    route.metrics.replies_published.increment(1);
                    Outcome::Replied
                }
                Err(e) => {
                    warn!(route = %route.name, error = %e, "reply not published");
                    Outcome::PublishFailed
                }
            },
            None => {
                info!(
                    route = %route.name,
                    status = reply.status.as_u16(),
                    "message without reply subject delivered; nothing to publish"
                );
                Outcome::NoReply
            }
        };
        route.metrics.outcome(outcome);
        route
            .metrics
            .message_duration
            .record(inbound.received.elapsed());
    }

    async fn publish(
        &self,
        subject: &str,
        reply: &Reply,
    ) -> Result<(), crate::reply::PublishError> {
        match &self.replier {
            Some(replier) => replier.publish(subject, reply).await,
            None => Err(crate::reply::PublishError::no_connection(subject)),
        }
    }

    /// Takes one message from the size check to its reply; publishes nothing.
    pub async fn process(
        &self,
        route: &Route,
        captures: &Captures,
        inbound: &Inbound,
    ) -> Processed {
        if inbound.payload.len() > route.max_payload {
            let detail = format!(
                "message of {} bytes exceeds the route's max_payload of {} bytes",
                inbound.payload.len(),
                route.max_payload
            );
            return self.refuse(route, ErrorKind::PayloadTooLarge, &detail);
        }
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
            .invoke(&self.upstream, request, deadline, &route.metrics)
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
        }
    }

    /// The route's total timeout from receipt, shortened by a `Ricochet-Timeout` header.
    fn deadline(&self, route: &Route, inbound: &Inbound) -> Result<Instant, String> {
        let mut budget = route.total_timeout;
        if let Some((_, value)) = inbound
            .headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(TIMEOUT_HEADER))
        {
            let asked = parse_timeout(value).ok_or_else(|| {
                format!("{TIMEOUT_HEADER} {value:?} is not a duration like \"1500ms\" or \"2s\"")
            })?;
            budget = budget.min(asked);
        }
        Ok(Instant::from_std(inbound.received) + budget)
    }

    /// A message ricochet answers itself without calling the service.
    pub fn refuse(&self, route: &Route, kind: ErrorKind, detail: &str) -> Processed {
        debug!(route = %route.name, kind = kind.as_str(), detail, "message refused");
        route.metrics.error(kind);
        Processed {
            reply: Reply::error(kind, detail).with_header(ATTEMPTS_HEADER, "0".into()),
            disposition: Disposition::Undeliverable,
            error: Some(kind),
        }
    }
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
mod tests {
    use super::*;

    #[test]
    fn caller_timeouts_parse() {
        assert_eq!(parse_timeout("1500"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout(" 250ms "), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout("soon"), None);
    }
}
