//! One message through the whole flow, for every source:
//!
//! ```text
//! admission -> validate -> lifetime -> map to HTTP -> invoke -> map to reply -> policy -> publish -> settle
//! ```
//!
//! [`Pipeline::deliver`] is the spine: a source that has taken a message (`admission`: the
//! breaker's gate, a `max_in_flight` slot, the [`admission::Taken`] guard) hands it over,
//! routed (the captures of its route's pattern), with a [`Settle`] handle. The pipeline
//! settles it on receipt when the route is at-most-once, checks it (`validate`: its route,
//! size and reply destination), judges whether anyone still waits for it and sets its
//! deadline (`lifetime`), validates its body against the route's rules (`validate`), calls
//! the service (`process`) or, on a route with a reply store, answers it from the store
//! when its reply is stored and stores the service's answer otherwise (`store`), and has
//! the settlement policy (`policy`) decide what becomes of it, which `conclude` carries out
//! through the handle. Metrics of those steps are recorded here, once.

pub mod admission;
mod conclude;
pub mod lifetime;
pub mod policy;
mod process;
#[cfg(test)]
pub(crate) mod scripted;
mod store;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use self::admission::Queue;
pub use self::admission::{Admission, Admitted, InLine, Slot, Taken};
use self::conclude::destination;
use self::lifetime::Judged;
pub use self::policy::Policy;
use crate::config::{Config, RouteConfig};
use crate::invoke::{Call, Concurrency, RouteInvoker, Upstream};
use crate::mapping::{HeaderFilter, RequestMapping};
use crate::message::{Accepted, ErrorKind, Inbound, Redelivered, Reply, Settle};
use crate::route::{Captures, Pattern};
use crate::store::ReplyStore;
use crate::telemetry::metrics::{RouteMetrics, Settlement};
use crate::telemetry::stats::RequestStats;
use crate::telemetry::trace::{RouteSpans, SpanSource, Tracing};
use crate::validate::json::CompiledSchemas;
use crate::validate::registry::Registry;
use crate::validate::Rules;

/// A configured route, ready to serve.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub pattern: Pattern,
    /// The route as configured (what every source shares; a source's own settings are
    /// its [`crate::source::Source`]'s).
    pub config: RouteConfig,
    request: RequestMapping,
    response_headers: HeaderFilter,
    /// Limit, breaker and retries around the HTTP call.
    pub invoker: RouteInvoker,
    /// The message's deadline, measured from its receipt.
    total_timeout: Duration,
    /// Slots of `max_in_flight` (fixed or adaptive, shared with the invoker, which feeds
    /// it); the source holds one per message being processed.
    pub limit: Arc<Concurrency>,
    /// Messages taken while the route was full, waiting for a permit (sources with
    /// `max_pending`).
    queue: Queue,
    pub metrics: RouteMetrics,
    pub max_payload: usize,
    /// The `source` metric label of the route's source.
    pub kind: &'static str,
    /// The consumer group its intake joins (a queue group, a durable consumer, a consumer
    /// group), if its source has one.
    pub consumer_group: Option<String>,
    /// The source keeps a message until it is settled (it can redeliver it).
    pub durable: bool,
    /// What becomes of a message once processed: the same rules for every source.
    pub policy: Policy,
    /// The route's `validate` rules, if it has any.
    validation: Option<Rules>,
    /// What the service discovery API's STATS reports of this route.
    pub stats: RequestStats,
    /// What the route's spans say of it.
    pub spans: RouteSpans,
    /// The route's reply store, if it has one.
    pub store: Option<ReplyStore>,
}

/// What the pipeline knows of a route's source (from its [`crate::source::Source`]): the
/// one place it learns anything source-specific.
#[derive(Debug, Clone)]
pub struct SourceFacts {
    /// The `source` metric label.
    pub kind: &'static str,
    /// The broker keeps a message until it is settled.
    pub durable: bool,
    pub policy: Policy,
    /// Messages that may wait inside ricochet for a slot of a full route.
    pub max_pending: usize,
    pub spans: SpanSource,
}

/// How one delivery ended, for the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Answered or given up, and settled: the message is finished.
    Done,
    /// It comes again: by the broker (settled as such), or, [`Redelivered::Local`], by the
    /// source itself after the delay (a partitioned log runs it again in its lane).
    Redeliver(Redelivered),
    /// It is no longer this replica's, or its settlement on receipt failed: nothing was
    /// settled, the broker delivers it again.
    Abandoned,
}

impl crate::telemetry::admin::RouteHealth for Route {
    fn name(&self) -> &str {
        &self.name
    }

    fn source(&self) -> &'static str {
        self.kind
    }

    fn circuit(&self) -> &'static str {
        self.invoker.breaker.state().name()
    }

    fn refusing(&self) -> bool {
        self.invoker.breaker.refusing()
    }
}

impl Route {
    /// Whether the service's 2xx answers are checked or encoded before they become replies.
    fn checks_responses(&self) -> bool {
        (self.validation.as_ref()).is_some_and(Rules::has_response_rules)
    }
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
    /// Nobody waits for it any more (`lifetime`): settled without calling the service.
    Expired,
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
impl Pipeline {
    /// Built from a validated configuration and what each route's source is (`sources`,
    /// one per route, in file order).
    pub fn new(
        config: &Config,
        sources: Vec<SourceFacts>,
        schemas: &[CompiledSchemas],
    ) -> anyhow::Result<Self> {
        let mut routes = Vec::with_capacity(config.routes.len());
        // One registry (and its cache) for every route.
        let registry = (config.schema_registry.as_ref()).map(|r| Arc::new(Registry::new(r)));
        anyhow::ensure!(
            sources.len() == config.routes.len() && schemas.len() == sources.len(),
            "one source and one schema set per route"
        );
        let parts = sources.into_iter().zip(schemas);
        for (route, (source, schemas)) in config.routes.iter().zip(parts) {
            let pattern = Pattern::parse(&route.subject)?;
            let request = RequestMapping::new(route, &config.upstream, &pattern)
                .map_err(|e| anyhow::anyhow!("route {}: {e}", route.name))?;
            let invoker = RouteInvoker::new(route, &config.upstream, source.durable);
            routes.push(Arc::new(Route {
                name: route.name.clone(),
                limit: invoker.concurrency.clone(),
                config: route.clone(),
                request,
                response_headers: HeaderFilter::from_config(&route.response_headers),
                invoker,
                total_timeout: route.total_timeout_or(&config.upstream),
                max_payload: usize::try_from(route.max_payload.bytes()).unwrap_or(usize::MAX),
                queue: Queue::new(source.max_pending),
                kind: source.kind,
                consumer_group: source.spans.consumer_group.clone(),
                durable: source.durable,
                metrics: RouteMetrics::new(&route.name, source.kind),
                policy: source.policy,
                validation: Rules::new(route, schemas, registry.as_ref()),
                stats: RequestStats::default(),
                spans: RouteSpans::new(route, source.spans),
                store: (route.reply_store.as_ref())
                    .map(|store| ReplyStore::new(store, &route.name, source.kind)),
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
        if route.policy.at_most_once {
            match settle.accept().await {
                Ok(Accepted::Settled) => route.metrics.settled(Settlement::Ack),
                Ok(Accepted::NothingToSettle) => {}
                Err(e) => {
                    // Not settled, so it comes again: do not process it twice.
                    warn!(route = %route.name, error = %e, "ack on receipt failed; the message will be redelivered");
                    return Settled::Abandoned;
                }
            }
        }
        if inbound.delivered > 1 {
            route.metrics.redeliveries.increment(1);
        }
        let trace = self.tracing.start(&route.spans, inbound);
        // A destination the broker cannot take: `validate` refuses the message.
        let (destination, problem) = destination(inbound, settle);
        let processed = match validate::check(route, inbound, captures.is_some(), problem) {
            Err((kind, detail)) => self.refuse(route, kind, &detail),
            Ok(()) => {
                let lifetime = &route.config.lifetime;
                let clocks = lifetime::Clocks::read();
                match lifetime::judge(lifetime, route.total_timeout, inbound, clocks) {
                    Err(detail) => self.refuse(route, ErrorKind::BadRequest, &detail),
                    Ok(Judged::Expired { bound, age, left }) => {
                        self.expired(route, bound, age, left)
                    }
                    Ok(Judged::Wanted(deadline)) => {
                        let captures = captures.unwrap_or_default();
                        let call = lifetime::call(lifetime, deadline, inbound);
                        let keyed = (route.store.as_ref()).and_then(|s| Some((s, s.key(inbound)?)));
                        match keyed {
                            None => self.call(route, &captures, inbound, call, &trace).await,
                            // Boxed: routes without a store keep the smaller future.
                            Some((store, key)) => {
                                let stored = self.through_store(
                                    route,
                                    (store, &key),
                                    &captures,
                                    inbound,
                                    call,
                                    &trace,
                                );
                                Box::pin(stored).await
                            }
                        }
                    }
                }
            }
        };
        self.conclude(route, inbound, destination, processed, settle, trace)
            .await
    }

    /// The call, by `call`'s deadline: the route's `validate` rules, if any, then `process`.
    async fn call(
        &self,
        route: &Route,
        captures: &Captures,
        inbound: &Inbound,
        call: Call,
        trace: &crate::telemetry::trace::MessageTrace<'_>,
    ) -> Processed {
        match &route.validation {
            None => self.process(route, captures, inbound, call, trace).await,
            // Boxed: routes without validation keep the smaller future.
            Some(rules) => {
                let validated = self.validated(route, rules, captures, inbound, call, trace);
                Box::pin(validated).await
            }
        }
    }

    /// A message the source cannot take now (its route is full and `max_pending`
    /// messages already wait): answered 503 `overloaded` at once, the service not called.
    pub async fn shed<S: Settle>(&self, route: &Route, inbound: &Inbound, settle: &S) -> Settled {
        let trace = self.tracing.start(&route.spans, inbound);
        let (destination, _) = destination(inbound, settle);
        let detail = "the route is at max_in_flight with max_pending messages waiting";
        let processed = self.refuse(route, ErrorKind::Overloaded, detail);
        self.conclude(route, inbound, destination, processed, settle, trace)
            .await
    }
}

#[cfg(test)]
mod tests;
