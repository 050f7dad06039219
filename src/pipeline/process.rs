//! Process: the middle of the flow, for one admitted message. The route's `validate` rules,
//! the request mapping, the call through the route's invoker
//! (rate limit, retries, breaker), and the service's answer (or ricochet's own error) as a
//! [`Reply`] with a [`Disposition`]. It publishes nothing: that is `conclude`'s.

use http::header::CONTENT_TYPE;
use http::HeaderValue;
use tracing::{debug, warn};

use super::{validate, Disposition, Pipeline, Processed, Route};
use crate::invoke::{Call, Class, Failure, InvokeError};
use crate::message::reply::{count_text, ATTEMPTS_HEADER};
use crate::message::{ErrorKind, Inbound, Reply};
use crate::route::Captures;
use crate::telemetry::metrics::ValidationFailure;
use crate::telemetry::trace::MessageTrace;
use crate::validate::{Invalid, Passed, Rules, AVRO};

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
    /// The route's `validate` rules, then the call with the message as it passed (an Avro
    /// record decoded to JSON, if the route asks).
    pub(super) async fn validated(
        &self,
        route: &Route,
        rules: &Rules,
        captures: &Captures,
        inbound: &Inbound,
        call: Call,
        trace: &MessageTrace<'_>,
    ) -> Processed {
        match validate::body(route, rules, inbound).await {
            Err(invalid) => self.refuse_invalid(route, &invalid, None),
            Ok(Passed::AsIs) => self.process(route, captures, inbound, call, trace).await,
            Ok(Passed::Decoded(json)) => {
                let decoded = validate::decoded(inbound, json);
                self.process(route, captures, &decoded, call, trace).await
            }
        }
    }

    /// Takes one validated message, by its `call`'s deadline, to its reply; publishes
    /// nothing.
    pub(super) async fn process(
        &self,
        route: &Route,
        captures: &Captures,
        inbound: &Inbound,
        call: Call,
        trace: &MessageTrace<'_>,
    ) -> Processed {
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
                call,
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
            reply: reply.with_header(ATTEMPTS_HEADER, count_text(attempts)),
            disposition,
            error,
            detail: None,
        }
    }

    /// A message ricochet answers itself without calling the service.
    pub(super) fn refuse(&self, route: &Route, kind: ErrorKind, detail: &str) -> Processed {
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
