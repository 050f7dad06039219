//! The reply store stage, around the call for every source: a message with an idempotency
//! key on a route with a `reply_store` is looked up first. A stored reply is the answer
//! (published again, the message settled, the service not called); otherwise this delivery
//! claims the key, calls, and stores the service's final answer before `conclude` publishes
//! it and settles the message. A claim of another delivery is waited for (within this
//! message's deadline); a claim whose lease ended is taken over.

use tokio::time::Instant;
use tracing::{debug, warn};

use super::{Disposition, Pipeline, Processed, Route};
use crate::config::OnUnavailable;
use crate::invoke::Call;
use crate::message::reply::ATTEMPTS_HEADER;
use crate::message::{ErrorKind, Inbound, Reply};
use crate::route::Captures;
use crate::store::{
    now_ms, Acquired, Found, Kept, Lookup, ReplyStore, Step, StoreKey, Unprotected, LEASE_SLACK,
};
use crate::telemetry::trace::MessageTrace;

impl Pipeline {
    /// The call of a message with an entry `key` in the route's `store`.
    pub(super) async fn through_store(
        &self,
        route: &Route,
        (store, key): (&ReplyStore, &StoreKey),
        captures: &Captures,
        inbound: &Inbound,
        call: Call,
        trace: &MessageTrace<'_>,
    ) -> Processed {
        let deadline = call.deadline;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let lease = remaining + store.config.timeout + LEASE_SLACK;
        let lease_until_ms = now_ms().saturating_add(lease.as_millis() as u64);
        let mut span = trace.reply_store();
        let acquired = store.acquire(key, lease_until_ms, deadline).await;
        let found = match acquired {
            Err(e) => {
                store.metrics.failed(Step::Lookup);
                span.store_result("unavailable");
                span.failed(ErrorKind::StoreUnavailable.as_str());
                drop(span);
                let choice = store.config.on_unavailable;
                warn!(route = %route.name, error = %e, on_unavailable = choice.as_str(), "the reply store cannot be asked");
                return match choice {
                    OnUnavailable::Call => {
                        store.metrics.unprotected(Unprotected::Unavailable);
                        self.call(route, captures, inbound, call, trace).await
                    }
                    OnUnavailable::Redeliver => {
                        let detail = "the reply store cannot be asked; the service was not called";
                        self.not_called(route, ErrorKind::StoreUnavailable, detail)
                    }
                };
            }
            Ok(Acquired::Stored(reply, found)) => {
                let result = match found {
                    Found::AfterWait => Lookup::HitAfterWait,
                    _ => Lookup::Hit,
                };
                store.metrics.lookup(result);
                span.store_result(result.as_str());
                debug!(route = %route.name, result = result.as_str(), "answered from the reply store");
                return Processed {
                    reply,
                    disposition: Disposition::Answered,
                    error: None,
                    detail: None,
                };
            }
            Ok(Acquired::Busy) => {
                store.metrics.lookup(Lookup::Busy);
                span.store_result(Lookup::Busy.as_str());
                drop(span);
                let detail = "another delivery of this request is calling the service and \
                              did not answer within this message's deadline";
                return self.not_called(route, ErrorKind::Timeout, detail);
            }
            Ok(Acquired::Ours(found)) => found,
        };
        let result = match found {
            Found::TakenOver => Lookup::TakenOver,
            _ => Lookup::Miss,
        };
        store.metrics.lookup(result);
        span.store_result(result.as_str());
        drop(span);
        let processed = self.call(route, captures, inbound, call, trace).await;
        if processed.disposition == Disposition::Answered {
            match store.keep(key, &processed.reply).await {
                Ok(Kept::Stored) => {}
                Ok(Kept::TooLarge { size, limit }) => {
                    store.metrics.unprotected(Unprotected::TooLarge);
                    warn!(route = %route.name, size, limit, "the reply is larger than the reply store takes; not stored");
                }
                Err(e) => {
                    store.metrics.failed(Step::Store);
                    store.metrics.unprotected(Unprotected::StoreFailed);
                    warn!(route = %route.name, error = %e, "the reply could not be stored; it is published");
                }
            }
        } else if let Err(e) = store.release(key).await {
            // The claim then ends with its lease.
            store.metrics.failed(Step::Release);
            debug!(route = %route.name, error = %e, "the reply store claim could not be released");
        }
        processed
    }

    /// A message the stage answers without calling the service: it comes again when its
    /// source can redeliver it, else its caller gets the error.
    fn not_called(&self, route: &Route, kind: ErrorKind, detail: &str) -> Processed {
        route.metrics.error(kind);
        Processed {
            reply: Reply::error(kind, detail).with_header(ATTEMPTS_HEADER, "0"),
            disposition: Disposition::Retry,
            error: Some(kind),
            detail: Some(detail.to_string()),
        }
    }
}
